"""Per-image cost of DiffSeg's post-processing on CPU (target: total <= 0.5 s at 512 px).

Builds row-stochastic self-attention for sides 64/32/16/8 and times each stage of
methods.diffseg on it: aggregation, iteration-0 anchor-pixel distances, iteration-0
merge, the later merge iterations, non-maximum suppression at the output size.

Two inputs: "random" (softmax of Gaussian logits: no structure, many proposals survive)
and "structured" (block attention of a 9-segment label map plus noise, like real images).

    python benchmarks/diffseg_speed.py [--repeats 5] [--threads N] [--out 512] [--fp32]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from statistics import median

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.types import AttentionMaps, SegmentContext  # noqa: E402
from methods.attention_ops import (  # noqa: E402
    Workspace,
    aggregate_self_attention,
    anchor_grid,
    block_attention,
    self_attention_by_side,
    upsample_argmax,
    weights_by_side,
)
from methods.diffseg import DiffSeg, DiffSegParams, anchor_distances, merge_anchors, merge_proposals  # noqa: E402

SIDES = (64, 32, 16, 8)


def random_attention(generator: torch.Generator, scale: float) -> dict:
    return {
        s: torch.softmax(scale * torch.randn(1, s * s, s * s, generator=generator), dim=-1) for s in SIDES
    }


def structured_attention(generator: torch.Generator) -> dict:
    n = SIDES[0]
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    labels = (yy * 3 // n) * 3 + (xx * 3 // n)  # 3 x 3 blocks
    labels = torch.where((yy - 40) ** 2 + (xx - 22) ** 2 < 150, 9, labels)  # plus a disc
    return block_attention(labels, SIDES, sharpness=6.0, noise=0.7, generator=generator)


def time_stages(self_attn: dict, params: DiffSegParams, out_size, workspace: Workspace) -> dict:
    """The stages of DiffSeg.segment, timed one by one (same buffers reuse as the method)."""
    times = {}
    t = time.perf_counter()
    maps = self_attention_by_side(self_attn)
    side = max(maps)
    weights = weights_by_side(list(maps), params.resolution_weights)
    out = workspace.get("aggregated", (side * side, side * side), torch.float32, torch.device("cpu"))
    aggregated = aggregate_self_attention(maps, weights, side, out=out)
    times["aggregate"] = time.perf_counter() - t

    t = time.perf_counter()
    anchors = anchor_grid(side, params.anchor_grid)
    distances, usable = anchor_distances(aggregated, anchors[:, 0] * side + anchors[:, 1], params.fp16_first_iteration, workspace)
    times["kl_anchors"] = time.perf_counter() - t

    taus = params.thresholds()
    t = time.perf_counter()
    proposals = merge_anchors(aggregated, distances, usable, taus[0], params.fp16_first_iteration)
    times["merge_iter0"] = time.perf_counter() - t
    times["proposals_iter0"] = proposals.shape[0]

    t = time.perf_counter()
    for tau in taus[1:]:
        proposals = merge_proposals(proposals, tau)
    times["merge_later"] = time.perf_counter() - t
    times["proposals_final"] = proposals.shape[0]

    t = time.perf_counter()
    upsample_argmax(proposals.view(-1, side, side), out_size, params.upsample)
    times["nms"] = time.perf_counter() - t
    times["total"] = sum(times[k] for k in ("aggregate", "kl_anchors", "merge_iter0", "merge_later", "nms"))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=int, default=512, help="output side in pixels")
    parser.add_argument("--fp32", action="store_true", help="fp16_first_iteration=false")
    parser.add_argument("--kl-threshold", type=float, default=1.1)
    parser.add_argument("--random-scale", type=float, default=3.0, help="std of the random attention logits")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = DiffSegParams(kl_threshold=args.kl_threshold, fp16_first_iteration=not args.fp32)
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "random": random_attention(generator, scale=args.random_scale),
        "structured": structured_attention(generator),
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, output {args.out}x{args.out}, "
        f"fp16_first_iteration={params.fp16_first_iteration}, kl_threshold={args.kl_threshold}, "
        f"median of {args.repeats} runs (after one warm-up)"
    )
    stages = ("aggregate", "kl_anchors", "merge_iter0", "merge_later", "nms", "total")
    print(
        f"{'input':<11}" + "".join(f"{s:>12}" for s in stages) + f"{'proposals':>14}{'segment()':>12}{'cpu':>9}"
    )
    out_size = (args.out, args.out)
    for name, self_attn in inputs.items():
        workspace = Workspace()
        time_stages(self_attn, params, out_size, workspace)  # warm-up
        runs = [time_stages(self_attn, params, out_size, workspace) for _ in range(args.repeats)]
        row = "".join(f"{median(r[s] for r in runs):>11.3f}s" for s in stages)
        proposals = f"{runs[0]['proposals_iter0']}->{runs[0]['proposals_final']}"
        wall, cpu = time_segment(self_attn, params, out_size, args.repeats)
        print(f"{name:<11}{row}{proposals:>14}{median(wall):>11.3f}s{median(cpu):>8.3f}s")


def time_segment(self_attn: dict, params: DiffSegParams, out_size, repeats: int) -> tuple:
    """End-to-end DiffSeg.segment per image, wall and process CPU seconds (the CPU time is
    what a busy shared machine cannot inflate by queueing); every call sees new tensors,
    as a new image would (no memo hit)."""
    method = DiffSeg()
    ctx = SegmentContext(image_id="bench", out_size=out_size)
    wall, cpu = [], []
    for i in range(repeats + 1):
        attn = AttentionMaps(self_attn={s: a.clone() for s, a in self_attn.items()})
        t, c = time.perf_counter(), time.process_time()
        method.segment(attn, ctx, params)
        if i:  # the first call allocates the buffers
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return wall, cpu


if __name__ == "__main__":
    main()
