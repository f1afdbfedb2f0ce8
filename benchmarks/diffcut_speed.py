"""DiffCut's post-processing seconds per image next to DiffSeg's, measured in one run.

DiffCut: ``DiffCut.segment`` on structured synthetic features of SSD-1B's shape at
1024 px (32 x 32 tokens x 1280 channels: 3 x 3 blocks plus a disc, one random centre per
region, Gaussian noise), without and with the PAMR + median refinement. DiffSeg:
``DiffSeg.segment`` on block self-attention of the same kind of label map at sides
64/32/16/8 (SD at 512 px). Both produce a map of ``--out`` x ``--out`` px. Post-processing
only: the diffusion pass is not timed. Inputs are synthetic: the seconds are what counts,
not the segments.

    python benchmarks/diffcut_speed.py [--repeats 3] [--threads N] [--out 512]
                                       [--side 32] [--channels 1280] [--attn-side 64]
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
from methods.attention_ops import block_attention  # noqa: E402
from methods.diffcut import DiffCut, DiffCutParams  # noqa: E402
from methods.diffseg import DiffSeg, DiffSegParams  # noqa: E402


def region_labels(side: int) -> torch.Tensor:
    """(side, side) 3 x 3 blocks plus a disc: 10 regions."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    labels = (yy * 3 // side) * 3 + (xx * 3 // side)
    radius = side * 0.19
    return torch.where((yy - side * 0.62) ** 2 + (xx - side * 0.34) ** 2 < radius**2, 9, labels)


def structured_features(side: int, channels: int, generator: torch.Generator, noise: float = 0.8) -> torch.Tensor:
    labels = region_labels(side).flatten()
    centres = torch.randn(int(labels.max()) + 1, channels, generator=generator)
    return centres[labels] + noise * torch.randn(side * side, channels, generator=generator)


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, lazy imports)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=int, default=512, help="output side in px")
    parser.add_argument("--side", type=int, default=32, help="DiffCut feature grid side (32 at 1024 px)")
    parser.add_argument("--channels", type=int, default=1280, help="DiffCut feature channels (SSD-1B: 1280)")
    parser.add_argument("--attn-side", type=int, default=64, help="DiffSeg's largest self-attention side")
    parser.add_argument("--mask-size", type=int, default=128, help="DiffCut's concept-assignment side")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, args.out, args.out), generator=g, dtype=torch.uint8)
    ctx = SegmentContext("bench", (args.out, args.out), image=image)

    features = AttentionMaps(features={"last_down_attn1": structured_features(args.side, args.channels, generator)[None]})
    sides = tuple(args.attn_side >> i for i in range(4) if args.attn_side >> i >= 2)
    attention = block_attention(region_labels(sides[0]), sides, sharpness=6.0, noise=0.7, generator=generator)
    diffseg_params = DiffSegParams(anchor_grid=min(16, sides[0]))

    rows = []
    for refinement in (False, True):
        params = DiffCutParams(refinement=refinement, mask_size=args.mask_size)
        method = DiffCut()
        n_segments = int(method.segment(features, ctx, params).unique().numel())
        t = seconds(lambda: method.segment(features, ctx, params), args.repeats)
        rows.append((f"diffcut (tau 0.5, alpha 10{', PAMR + median' if refinement else ''})", t, n_segments,
                     f"{args.side}x{args.side}x{args.channels} features"))
    diffseg = DiffSeg()
    n_segments = int(diffseg.segment(AttentionMaps(attention), ctx, diffseg_params).unique().numel())
    t = seconds(lambda: diffseg.segment(AttentionMaps(attention), ctx, diffseg_params), args.repeats)
    rows.append(("diffseg (KL 1.1, 3 merges)", t, n_segments, "self-attention " + "/".join(map(str, sides))))

    print(f"post-processing seconds per image (median of {args.repeats}, {torch.get_num_threads()} threads, "
          f"{args.out}x{args.out} output; synthetic inputs, diffusion pass not timed)")
    print(f"{'method':<42} {'s/image':>8} {'segments':>9}  input")
    for name, t, n, what in rows:
        print(f"{name:<42} {t:>8.3f} {n:>9}  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
