"""Performance figures of the harness' expensive parts.

    python -m benchmark.perf capture [--arch sd2_base|sd14] [--size 64] [--repeats 3]
    python -m benchmark.perf capture --device cuda --dtype fp16 --batch 8   # GPU images/s

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
    }

    def make_pass(request):
        def one_pass():
            groups = list(range(batch))  # one image per batch row
            scope = nullcontext() if request is None else AttentionCapture(unet, request, groups, chunk_size)
            with scope as capture, torch.inference_mode():
                out = unet(latents, t, encoder_hidden_states=context).sample
            if capture is not None:
                maps = capture.self_attention() or capture.cross_attention()
                assert sorted(maps) == sorted(sides), sorted(maps)
            return out

        return one_pass

    return {name: make_pass(request) for name, request in requests.items()}


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
    times = {v: [] for v in VARIANTS}
    cpu_times = {v: [] for v in VARIANTS}
    for round_ in range(args.repeats + 1):  # round 0 warms up allocators and kernels
        for variant in VARIANTS:
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
    print(f"[time] {args.repeats} interleaved rounds after a warm-up ...", flush=True)
    timing = time_variants(args)
    best = {v: min(ts) for v, ts in timing["times"].items()}
    print(f"UNet {args.arch}, latent {args.size}x{args.size}, {args.dtype} on {args.device}, batch {args.batch}, "
          f"chunk {args.chunk_size}, {timing['threads']} threads, {args.repeats} timed passes per variant")
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
    print("(ratio: wall-clock minimum / plain; cpu ratio: process CPU time, less sensitive to other processes "
          "on the machine; pass +MB: peak RSS minus RSS after building the model)")
    for variant in VARIANTS:
        print(f"images_per_s_{variant}={args.batch / best[variant]:.2f}")
    print(f"cross_capture_overhead_ratio={best['cross'] / best['plain']:.3f}")
    print(f"peak_rss_ratio={memory['self16']['peak_rss_mb'] / plain_mem:.3f}")
    print(f"capture_overhead_ratio={best['self16'] / best['plain']:.3f}")
    print(f"peak_rss_mb={memory['self16']['peak_rss_mb']:.0f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.perf", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("capture", help="attention capture overhead on a full-size random-weight UNet")
    child = sub.add_parser("_memory", help=argparse.SUPPRESS)
    child.add_argument("variant", choices=VARIANTS)
    child.add_argument("--out", required=True)
    cap.add_argument("--repeats", type=int, default=3, help="timed passes per variant")
    for p in (cap, child):
        p.add_argument("--arch", default="sd2_base", choices=("sd2_base", "sd14"))
        p.add_argument("--size", type=int, default=64, help="latent side (64 = 512 px images)")
        p.add_argument("--chunk-size", type=int, default=128, help="query rows per capture chunk")
    for p in (cap, child):
        p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
        p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
        p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="UNet dtype (probabilities are float32)")
        p.add_argument("--batch", type=int, default=1, help="images per UNet pass")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.size % 8:
        parser.error(f"--size {args.size}: must be a multiple of 8")
    if args.command == "capture":
        capture_benchmark(args)
    else:
        print(json.dumps(memory_of_variant(args, args.variant, args.out)))


if __name__ == "__main__":
    main()
