"""Performance figures of the harness' expensive parts.

    python -m benchmark.perf capture [--arch sd2_base|sd14] [--size 64] [--repeats 3]
    python -m benchmark.perf capture --device cuda --dtype fp16 --batch 8   # GPU images/s
    python -m benchmark.perf e2e --arch sd2_base --device cuda --dtype fp16 --batch 8 --workers 8 --images 256
    python -m benchmark.perf e2e --arch tiny --images 8 --size 16              # CPU pipeline check
    python -m benchmark.perf kernel [--threads 1]   # one 64x64 layer: QK^T / softmax / P.V / head-sum

``capture`` builds a full-size random-weight UNet (architecture written in code, no
download) and runs one UNet pass on the same inputs three ways: plain (fused SDPA
everywhere), capturing all 16 self-attention layers (64/32/16/8 for a 64x64 latent), and
capturing the cross-attention of all 16 layers for one prompt.

* Memory: each variant runs once in its own subprocess, so its peak RSS (``ru_maxrss``)
  is its own (model + inputs + one pass), not a high-water mark left by another variant.
* Time: one process times the variants interleaved (plain, self, cross, plain, ...) for
  ``--repeats`` rounds after a warm-up round, so a load change on a shared machine hits
  all variants alike; the ratio uses the minimum per variant (the least disturbed pass),
  medians are printed too.
* The captured outputs are compared with the plain one.
* ``--device cuda --dtype fp16 --batch N``: the same on a GPU; times are synchronised,
  memory is the CUDA peak (``max_memory_allocated``) and images/s = N / pass time is
  printed per variant (one UNet pass + capture per image).

Last two lines (machine-readable): ``capture_overhead_ratio=<self capture / plain>`` and
``peak_rss_mb=<peak RSS of the self-capture variant>``.

``e2e`` runs N images of the synthetic dataset (``dataset=synthetic``, generated in the
loader's workers at ``--size`` × 8 px) through the harness' own pieces: the runner's
dataset, method, metric and per-image context (``method=<name>`` composed as the CLI
does), ``DiffusionModel.capture`` (VAE encoding, UNet in ``--dtype``, attention
probabilities in float32), ``method.segment`` on the model's device, and the metric's
counting (on the CPU, as the runner does). Data loading overlaps the rest: worker
processes, pinned host memory and non-blocking host-to-device copies. Weights: a
full-size random UNet (``--arch sd2_base | sd14``) with a full-size VAE and text encoder
of the same family, built in code with random weights (nothing is downloaded), or the
tiny SD (``--arch tiny``, tests). Prints seconds and images/s per stage (the stage alone:
N / its seconds; "data wait" is the time the loop waited for the workers) and overall,
and the peak GPU memory (``torch.cuda.max_memory_allocated``) on CUDA. The first batch
warms up (kernels, allocator) and is not timed. Random weights: a pipeline and speed
check, never accuracy. Last lines: ``images_per_s_end_to_end=...`` and
``peak_gpu_memory_mb=...`` (``nan`` on the CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

VARIANTS = ("plain", "self16", "cross")
#: timed only (no memory subprocess): self16 with the capture loop order that is NOT the
#: default here (``default_loop_order``), so both orders are compared within one run
TIMED_ONLY = ("self16_other_order",)
#: timed only, on a CPU with several threads: self16 without the capture's worker threads
ONE_WORKER = "self16_one_worker"


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB, macOS in bytes
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _setup(arch: str, size: int, chunk_size: int, device: str = "cpu", dtype: str = "fp32", batch: int = 1):
    """The UNet, its fixed inputs and one pass function per variant."""
    import torch

    from benchmark.attention.capture import AttentionCapture
    from benchmark.models.architectures import UNET_CONFIGS, build_random_unet
    from benchmark.types import AttentionRequest

    torch_dtype = getattr(torch, DTYPES[dtype])
    unet = build_random_unet(arch).to(device=device, dtype=torch_dtype)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, 4, size, size, generator=g).to(device, torch_dtype)
    context = torch.randn(batch, 77, UNET_CONFIGS[arch]["cross_attention_dim"], generator=g).to(device, torch_dtype)
    t = torch.full((batch,), 300, device=device)
    sides = tuple(size >> i for i in range(4))
    requests = {
        "plain": None,
        "self16": AttentionRequest(self_resolutions=sides),
        "cross": AttentionRequest(cross_resolutions=sides),
        "self16_other_order": AttentionRequest(self_resolutions=sides),
    }

    def make_pass(request, loop_order=None, workers=None):
        def one_pass():
            groups = list(range(batch))  # one image per batch row
            scope = nullcontext() if request is None else AttentionCapture(
                unet, request, groups, chunk_size or None, loop_order=loop_order, workers=workers
            )
            with scope as capture, torch.inference_mode():
                out = unet(latents, t, encoder_hidden_states=context).sample
            if capture is not None:
                maps = capture.self_attention() or capture.cross_attention()
                assert sorted(maps) == sorted(sides), sorted(maps)
            return out

        return one_pass

    from benchmark.attention.capture import default_loop_order

    other = "batched" if default_loop_order(torch.device(device)) == "per_head" else "per_head"
    passes = {name: make_pass(request, other if name in TIMED_ONLY else None) for name, request in requests.items()}
    if device == "cpu" and torch.get_num_threads() > 1:
        # the per-head loop on the calling thread only (torch's threads inside each operation)
        passes[ONE_WORKER] = make_pass(requests["self16"], "per_head", workers=1)
    return passes


def memory_of_variant(args: argparse.Namespace, variant: str, out_path: str) -> dict:
    """Run in a fresh process: peak memory of building the model and one pass of ``variant``
    (host RSS on the CPU, CUDA peak allocation on a GPU)."""
    import torch

    cuda = args.device.startswith("cuda")
    passes = _setup(args.arch, args.size, args.chunk_size, args.device, args.dtype, args.batch)
    if cuda:
        built = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        built = _rss_mb()
    out = passes[variant]()
    _sync(args.device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mb()
    torch.save(out.float().cpu(), out_path)
    return {"variant": variant, "rss_after_build_mb": built, "peak_rss_mb": peak}


def time_variants(args: argparse.Namespace) -> dict:
    import torch

    passes = _setup(args.arch, args.size, args.chunk_size, args.device, args.dtype, args.batch)
    timed = VARIANTS + tuple(name for name in passes if name not in VARIANTS)
    times = {v: [] for v in timed}
    cpu_times = {v: [] for v in timed}
    for round_ in range(args.repeats + 1):  # round 0 warms up allocators and kernels
        for variant in timed:
            _sync(args.device)
            start, start_cpu = time.perf_counter(), time.process_time()
            passes[variant]()
            _sync(args.device)
            if round_:
                times[variant].append(time.perf_counter() - start)
                cpu_times[variant].append(time.process_time() - start_cpu)
    return {"times": times, "cpu_times": cpu_times, "threads": torch.get_num_threads()}


def capture_benchmark(args: argparse.Namespace) -> None:
    import torch

    memory, outputs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            out_path = os.path.join(tmp, f"{variant}.pt")
            cmd = [
                sys.executable, "-m", "benchmark.perf", "_memory", variant, "--arch", args.arch,
                "--size", str(args.size), "--chunk-size", str(args.chunk_size), "--threads", str(args.threads),
                "--device", args.device, "--dtype", args.dtype, "--batch", str(args.batch), "--out", out_path,
            ]
            print(f"[memory] {variant}: one pass in a fresh process ...", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout + proc.stderr)
                raise SystemExit(f"variant {variant} failed (exit {proc.returncode})")
            memory[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            outputs[variant] = torch.load(out_path)
    from benchmark.attention.capture import default_chunk_size

    print(f"[time] {args.repeats} interleaved rounds after a warm-up ...", flush=True)
    timing = time_variants(args)
    best = {v: min(ts) for v, ts in timing["times"].items()}
    print(f"UNet {args.arch}, latent {args.size}x{args.size}, {args.dtype} on {args.device}, batch {args.batch}, "
          f"chunk {args.chunk_size or default_chunk_size(torch.device(args.device))}, {timing['threads']} threads, "
          f"{args.repeats} timed passes per variant")
    memory_kind = "CUDA peak MB" if args.device.startswith("cuda") else "peak RSS MB"
    best_cpu = {v: min(ts) for v, ts in timing["cpu_times"].items()}
    print(f"{'variant':8s} {'min s':>7s} {'median s':>9s} {'ratio':>6s} {'cpu ratio':>9s} {memory_kind:>12s} "
          f"{'RSS ratio':>9s} {'pass +MB':>9s} {'max|dout|':>10s}")
    plain_mem = memory["plain"]["peak_rss_mb"]
    for variant in VARIANTS:
        m = memory[variant]
        diff = (outputs[variant] - outputs["plain"]).abs().max().item()
        print(f"{variant:8s} {best[variant]:7.2f} {statistics.median(timing['times'][variant]):9.2f} "
              f"{best[variant] / best['plain']:6.3f} {best_cpu[variant] / best_cpu['plain']:9.3f} "
              f"{m['peak_rss_mb']:12.0f} {m['peak_rss_mb'] / plain_mem:9.3f} "
              f"{m['peak_rss_mb'] - m['rss_after_build_mb']:9.0f} {diff:10.2e}")
    for variant in (v for v in best if v not in VARIANTS):
        print(f"{variant:8s} {best[variant]:7.2f} {statistics.median(timing['times'][variant]):9.2f} "
              f"{best[variant] / best['plain']:6.3f} {best_cpu[variant] / best_cpu['plain']:9.3f}   (timed only)")
    print("(ratio: wall-clock minimum / plain; cpu ratio: process CPU time, less sensitive to other processes "
          "on the machine; pass +MB: peak RSS minus RSS after building the model)")
    for variant in VARIANTS:
        print(f"images_per_s_{variant}={args.batch / best[variant]:.2f}")
    print(f"cpu_capture_overhead_ratio={best_cpu['self16'] / best_cpu['plain']:.3f}")
    from benchmark.attention.capture import default_loop_order

    order = default_loop_order(torch.device(args.device))
    print(f"loop_order={order} (self16_other_order: the other one)")
    print(f"capture_overhead_ratio_other_order={best['self16_other_order'] / best['plain']:.3f}")
    if ONE_WORKER in best:
        print(f"capture_overhead_ratio_one_worker={best[ONE_WORKER] / best['plain']:.3f}")
    print(f"cross_capture_overhead_ratio={best['cross'] / best['plain']:.3f}")
    print(f"peak_rss_ratio={memory['self16']['peak_rss_mb'] / plain_mem:.3f}")
    print(f"capture_overhead_ratio={best['self16'] / best['plain']:.3f}")
    print(f"peak_rss_mb={memory['self16']['peak_rss_mb']:.0f}")


# -- end to end (data -> capture -> post-processing -> counting) ---------------------------
E2E_STAGES = ("data wait", "host->device", "capture", "post-process", "metric")

#: text encoder of each UNet family (CLIP ViT-L/14 for SD 1.x, OpenCLIP ViT-H for SD 2.x)
TEXT_ENCODERS = {
    "sd14": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    "sd2_base": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                     hidden_act="gelu"),
}
#: the SD 1.x/2.x VAE (``vae/config.json`` of both families)
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, sample_size=512,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
)


def stack_collate(samples):
    """Batch of equal-size samples as stacked tensors (which DataLoader can pin) plus their ids
    and metadata; ``unstack`` restores the samples."""
    import torch

    return {
        "ids": [s.image_id for s in samples],
        "meta": [s.meta for s in samples],
        "images": torch.stack([s.image for s in samples]),
        "labels": torch.stack([s.label for s in samples]),
    }


def _components(arch: str, device: str, dtype):
    """SD components with random weights: tiny SD, or a full-size UNet/VAE/text encoder of ``arch``."""
    import torch

    from benchmark.models.tiny import MAX_LENGTH, build_tiny_components

    parts = build_tiny_components()
    if arch == "tiny":
        return parts
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from benchmark.models.architectures import build_random_unet

    tokenizer = parts["tokenizer"]
    torch.manual_seed(0)
    with torch.device(device):  # PyTorch's default init, run where the weights live (fast on a GPU)
        vae = AutoencoderKL(**SD_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), max_position_embeddings=MAX_LENGTH, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TEXT_ENCODERS[arch],
        ))
    for module in (vae, text_encoder):
        module.eval().requires_grad_(False)
    return dict(parts, unet=build_random_unet(arch), vae=vae, text_encoder=text_encoder)


def e2e_benchmark(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from benchmark.compose import compose_config
    from benchmark.models.diffusion import DiffusionModel
    from benchmark.runner import Runner
    from benchmark.types import Sample

    cuda = args.device.startswith("cuda")
    torch_dtype = getattr(torch, DTYPES[args.dtype])
    image_px = args.size * 8
    overrides = [
        f"method={args.method}", "dataset=synthetic", f"dataset.n_images={args.images + args.batch}",
        f"dataset.height={image_px}", f"dataset.width={image_px}", f"method.extract.image_size={image_px}",
        f"dataset.num_workers={args.workers}", *args.set,
    ]
    from benchmark.config import error_message, is_user_error

    with tempfile.TemporaryDirectory() as run_dir:
        try:
            runner = Runner(compose_config(overrides), run_dir)
            runner._build()  # dataset, method, metric, attention request: as a run builds them
        except Exception as err:  # a --method / --set the harness refuses: its message, exit 2
            if not is_user_error(err):
                raise
            print(f"Error: {error_message(err)}", file=sys.stderr)
            raise SystemExit(2) from None
    method, metric, request, dataset = runner.method, runner.metric, runner.request, runner.dataset
    if not method.needs_diffusion:
        raise SystemExit(f"e2e: method {args.method!r} needs no diffusion pass; nothing to measure")
    params = runner.v.method.points[0]
    chunk = args.chunk_size or None  # None: the capture's per-device default
    model = DiffusionModel(
        **_components(args.arch, args.device, torch_dtype), device=args.device, dtype=torch_dtype,
        model_id=f"random-{args.arch}", fingerprint=f"random-{args.arch}", chunk_size=chunk, max_batch=args.batch,
    )
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats()
    loader = DataLoader(
        dataset, batch_size=args.batch, shuffle=False, num_workers=args.workers, collate_fn=stack_collate,
        pin_memory=cuda, prefetch_factor=4 if args.workers else None, persistent_workers=False,
    )
    seconds = dict.fromkeys(E2E_STAGES, 0.0)
    timed_images = 0
    segments = []
    start_all = None
    batches = iter(loader)
    for index in range(len(loader)):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        images = batch["images"].to(args.device, non_blocking=True)
        _sync(args.device)
        t2 = time.perf_counter()
        samples = [Sample(i, images[k], batch["labels"][k], m) for k, (i, m) in enumerate(zip(batch["ids"], batch["meta"]))]
        contexts = [runner._context(Sample(s.image_id, batch["images"][k], s.label, s.meta)) for k, s in enumerate(samples)]
        for ctx, s in zip(contexts, samples):
            ctx.image = s.image  # colour refinements (PAMR) read the image on the device
        with torch.inference_mode():
            maps = model.capture(
                [s.image for s in samples], [method.queries(c) for c in contexts], request, runner.v.method.extract,
                image_ids=[s.image_id for s in samples],
            )
            _sync(args.device)
            t3 = time.perf_counter()
            preds = [method.segment(m, c, params) for m, c in zip(maps, contexts)]
            _sync(args.device)
        t4 = time.perf_counter()
        for pred, s in zip(preds, samples):
            pred = pred.to("cpu")
            metric.counts(pred, s.label, s.image_id)
            segments.append(int(torch.unique(pred).numel()))
        t5 = time.perf_counter()
        if index == 0:  # warm-up batch
            start_all = time.perf_counter()
            continue
        timed_images += len(samples)
        for stage, (a, b) in zip(E2E_STAGES, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5))):
            seconds[stage] += b - a
    total = time.perf_counter() - start_all if start_all is not None else float("nan")
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
    device_name = torch.cuda.get_device_name(args.device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"e2e: method {args.method}, UNet {args.arch} ({'random weights' if args.arch != 'tiny' else 'tiny SD'}), "
          f"{args.dtype} UNet / float32 attention, {image_px} px images, batch {args.batch}, {args.workers} workers, "
          f"on {args.device} ({device_name}); {timed_images} images timed after a warm-up batch")
    print(f"{'stage':<14}{'seconds':>9}{'images/s':>10}")
    for stage in E2E_STAGES:
        rate = timed_images / seconds[stage] if seconds[stage] > 0 else float("inf")
        print(f"{stage:<14}{seconds[stage]:>9.3f}{rate:>10.2f}")
    rate = timed_images / total if total > 0 else float("nan")
    print(f"{'overall':<14}{total:>9.3f}{rate:>10.2f}")
    print(f"mean segments per image: {sum(segments) / max(1, len(segments)):.1f} (random weights: a pipeline check)")
    print(f"images_per_s_end_to_end={rate:.3f}")
    print(f"peak_gpu_memory_mb={peak:.0f}")
    return {"seconds": seconds, "images": timed_images, "total": total, "peak_mb": peak}


# -- where the capture time goes (one attention layer) -----------------------------------
def kernel_profile(args: argparse.Namespace) -> dict:
    """Time one self-attention layer of the largest resolution (``--size``² queries and keys,
    ``--heads`` × 64 channels: SD 2-base's 64×64 layers) four ways, interleaved over
    ``--repeats`` rounds (minimum kept): fused SDPA (the plain pass), the capture kernel in
    both loop orders (``CapturingAttnProcessor``), and each capture step on its own
    (Q Kᵀ, softmax, P V, head-sum + add) for both loop orders."""
    import torch
    import torch.nn.functional as F

    from benchmark.attention.capture import CapturingAttnProcessor, _Accumulator

    n, heads, dim = args.size * args.size, args.heads, 64
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, dim, generator=g) for _ in range(3))
    scale = dim ** -0.5
    acc = _Accumulator("self", (args.size,), 1)
    acc.set_groups(torch.tensor([0]))
    buffer = acc.buffer(args.size, n, q.device)
    proc = CapturingAttnProcessor(None, acc, "profile", args.chunk_size)
    qs, kt = q * scale, k.transpose(-1, -2)

    def capture(order, workers=None):
        out = torch.empty_like(q)
        proc.chunk_workers = workers
        getattr(proc, "_per_head" if order == "per_head" else "_batched")(qs, kt, v, None, buffer, out)

    def timed_steps(parts, *steps):
        """Run ``steps`` (zero-argument callables) in order, adding each one's seconds to
        its entry of ``parts`` (same order)."""
        t = time.perf_counter()
        for key, step in zip(parts, steps):
            if step is not None:
                step()
                now = time.perf_counter()
                parts[key] += now - t
                t = now

    def steps(order):
        """Each capture step timed on its own, in the order and with the buffers of
        ``CapturingAttnProcessor._per_head`` / ``._batched``."""
        parts = dict.fromkeys(("QK^T", "softmax", "P.V", "head-sum+add"), 0.0)
        out = torch.empty_like(q)
        rows = args.chunk_size
        if order == "per_head":
            scores, probs, head_sum = (torch.empty(rows, n) for _ in range(3))
            for start in range(0, n, rows):
                stop = min(n, start + rows)
                chunk = stop - start
                for h in range(heads):
                    target = head_sum[:chunk] if h == 0 else probs[:chunk]
                    timed_steps(
                        parts,
                        lambda: torch.mm(qs[0, h, start:stop], kt[0, h], out=scores[:chunk]),
                        lambda: torch.ops.aten._softmax.out(scores[:chunk], -1, False, out=target),
                        lambda: torch.mm(target, v[0, h], out=out[0, h, start:stop]),
                        (lambda: head_sum[:chunk].add_(target)) if h else None,
                    )
                t = time.perf_counter()
                buffer[0, start:stop].add_(head_sum[:chunk], alpha=1.0 / heads)
                parts["head-sum+add"] += time.perf_counter() - t
            return parts
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            results = {}
            timed_steps(
                parts,
                lambda: results.__setitem__("scores", torch.matmul(qs[..., start:stop, :], kt)),
                lambda: results.__setitem__("probs", torch.softmax(results["scores"], dim=-1)),
                lambda: out[..., start:stop, :].copy_(torch.matmul(results["probs"], v)),
                lambda: buffer[:, start:stop].index_add_(
                    0, torch.zeros(1, dtype=torch.long), results["probs"].sum(1), alpha=1.0 / heads
                ),
            )
        return parts

    variants = {
        "sdpa (plain)": lambda: F.scaled_dot_product_attention(q, k, v),
        "capture per_head": lambda: capture("per_head"),
        "capture batched": lambda: capture("batched"),
    }
    if torch.get_num_threads() > 1:
        # the per-head loop on the calling thread only, each operation using torch's threads
        variants["per_head 1 worker"] = lambda: capture("per_head", workers=1)
    best = {name: float("inf") for name in variants}
    best_cpu = dict(best)
    parts = {order: None for order in ("per_head", "batched")}
    for round_ in range(args.repeats + 1):
        for name, fn in variants.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            if round_:
                best[name] = min(best[name], time.perf_counter() - t)
                best_cpu[name] = min(best_cpu[name], time.process_time() - c)
        for order in parts:
            got = steps(order)
            if round_:
                parts[order] = got if parts[order] is None else {k_: min(parts[order][k_], got[k_]) for k_ in got}
    print(f"one self-attention layer: {n} queries x {n} keys, {heads} heads x {dim} channels, fp32, "
          f"chunk {args.chunk_size} rows, {torch.get_num_threads()} threads, min of {args.repeats} interleaved rounds")
    for name, seconds in best.items():
        print(f"{name:<19}{seconds:8.3f} s  x{seconds / best['sdpa (plain)']:.2f}   "
              f"cpu {best_cpu[name]:.3f} s  x{best_cpu[name] / best_cpu['sdpa (plain)']:.2f}")
    for order, got in parts.items():
        print(f"steps {order:<12}" + "  ".join(f"{k_} {v_:.3f}" for k_, v_ in got.items()) + f"  (sum {sum(got.values()):.3f})")
    print(f"kernel_ratio_per_head={best['capture per_head'] / best['sdpa (plain)']:.3f}")
    print(f"kernel_ratio_batched={best['capture batched'] / best['sdpa (plain)']:.3f}")
    return {"best": best, "parts": parts}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.perf", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("capture", help="attention capture overhead on a full-size random-weight UNet")
    e2e = sub.add_parser("e2e", help="images/s end to end: data loading, capture, post-processing, counting")
    e2e.add_argument("--method", default="diffseg", help="registered method (its preset is composed as the CLI does)")
    e2e.add_argument("--images", type=int, default=32, help="timed images (one more batch warms up)")
    e2e.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    e2e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="extra harness override, e.g. method.kl_threshold=0.9 (repeatable)")
    kern = sub.add_parser("kernel", help="where one layer's capture time goes: QK^T, softmax, P.V, head-sum")
    kern.add_argument("--size", type=int, default=64, help="attention side (queries = keys = side²)")
    kern.add_argument("--heads", type=int, default=5, help="heads of 64 channels (SD 2-base at 64: 5; SD 1.x: 8 of 40)")
    kern.add_argument("--chunk-size", type=int, default=128, help="query rows per capture chunk")
    kern.add_argument("--repeats", type=int, default=5)
    kern.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    kern.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    child = sub.add_parser("_memory", help=argparse.SUPPRESS)
    child.add_argument("variant", choices=VARIANTS)
    child.add_argument("--out", required=True)
    cap.add_argument("--repeats", type=int, default=3, help="timed passes per variant")
    for p in (cap, child, e2e):
        p.add_argument("--arch", default="sd2_base", choices=("sd2_base", "sd14") + (("tiny",) if p is e2e else ()))
        p.add_argument("--size", type=int, default=64, help="latent side (64 = 512 px images)")
        p.add_argument("--chunk-size", type=int, default=0,
                       help="query rows per capture chunk (0: the capture's default, 128 on the CPU, 2048 on a GPU)")
    for p in (cap, child, e2e):
        p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
        p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
        p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="UNet dtype (probabilities are float32)")
        p.add_argument("--batch", type=int, default=1, help="images per UNet pass")
    args = parser.parse_args(argv)
    bad = [f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= {least}"
           for name, least in (("size", 1), ("threads", 0), ("repeats", 1), ("heads", 1), ("batch", 1),
                               ("chunk_size", 1 if args.command == "kernel" else 0))
           if getattr(args, name, least) < least]
    if bad:
        parser.error("; ".join(bad))
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.command == "kernel":
        return kernel_profile(args)
    if args.size % 8:
        parser.error(f"--size {args.size}: must be a multiple of 8")
    if args.command == "e2e" and (args.images < 1 or args.batch < 1 or args.workers < 0):
        parser.error(f"--images {args.images} / --batch {args.batch} must be >= 1 and --workers {args.workers} >= 0")
    if args.command == "capture":
        capture_benchmark(args)
    elif args.command == "e2e":
        e2e_benchmark(args)
    else:
        print(json.dumps(memory_of_variant(args, args.variant, args.out)))


if __name__ == "__main__":
    main()
