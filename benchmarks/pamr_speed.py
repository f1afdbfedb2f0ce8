"""PAMR (SeeDiff's official-preset refinement, 5000 iterations) per image: the vectorised
``methods.seediff.pamr`` against a direct implementation of the official rules.

``pamr_direct`` follows BAIKLAB-Admin/SeeDiff ``src/pamr.py`` operation for operation:
8 shift kernels applied by ``F.conv2d`` to the replicate-padded input per dilation
(``LocalAffinity``), the 9-kernel std (``LocalStDev``), ``-|Δx| / (1e-8 + 0.2 σ)`` averaged
over image channels and soft-maxed over neighbours, then per iteration the conv-shifted
mask times the affinity summed over neighbours. Tests check both give the same masks.

Timing: a few iterations are timed and scaled to ``--iterations`` (the refinement is the
same step repeated; the affinity is computed once). Prints seconds per image.

    python benchmarks/pamr_speed.py [--size 512] [--labels 1] [--iterations 5000] [--timed 20] [--threads N]

``pamr_seconds(...)`` returns the figures for other scripts (e.g. benchmarks/methods_speed.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, Sequence

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from methods.seediff import pamr  # noqa: E402


def _shift_kernels(centre: bool) -> torch.Tensor:
    """src/pamr.py ``_init_aff`` of LocalAffinityCopy (centre=False: 8 one-hot 3×3 kernels)
    and LocalStDev (centre=True: 9); row-major order."""
    picks = [(i, j) for i in range(3) for j in range(3) if centre or (i, j) != (1, 1)]
    weight = torch.zeros(len(picks), 1, 3, 3)
    for k, (i, j) in enumerate(picks):
        weight[k, 0, i, j] = 1.0
    return weight


def _local(x: torch.Tensor, kernel: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """LocalAffinity.forward: (B, K, H, W) -> (B, K, P·len(dilations), H, W)."""
    b, k, h, w = x.shape
    x = x.reshape(b * k, 1, h, w).float()
    parts = [F.conv2d(F.pad(x, [d] * 4, mode="replicate"), kernel, dilation=d) for d in dilations]
    return torch.cat(parts, 1).reshape(b, k, -1, h, w)


def pamr_direct(image: torch.Tensor, masks: torch.Tensor, iterations: int, dilations: Sequence[int] = (1,)) -> torch.Tensor:
    """PAMR as src/pamr.py computes it; image (3, H, W), masks (C, H, W) -> (C, H, W)."""
    x = image.float()[None]
    mask = masks.float()[None]
    copy = _shift_kernels(False)
    diff_kernel = -copy
    diff_kernel[:, 0, 1, 1] = 1.0  # LocalAffinity: centre 1, neighbour −1
    x_std = _local(x, _shift_kernels(True), dilations).std(2, keepdim=True)
    aff = -_local(x, diff_kernel, dilations).abs() / (1e-8 + 0.2 * x_std)
    aff = F.softmax(aff.mean(1, keepdim=True), 2)
    for _ in range(iterations):
        mask = (_local(mask, copy, dilations) * aff).sum(2)
    return mask[0]


def pamr_seconds(size: int = 512, labels: int = 1, iterations: int = 5000, timed: int = 20,
                 dilations: Sequence[int] = (1,), seed: int = 0) -> Dict[str, float]:
    """{"vectorised": s, "direct": s} per image for ``iterations`` steps (timed on ``timed``),
    plus the largest absolute difference of their outputs after ``timed`` steps."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, size, size, generator=g) * 255
    masks = (torch.rand(labels, size, size, generator=g) > 0.5).float()
    out = {}
    results = {}
    for name, fn in (("vectorised", pamr), ("direct", pamr_direct)):
        fn(image, masks, 1, dilations)  # warm-up
        start = time.perf_counter()
        results[name] = fn(image, masks, timed, dilations)
        out[name] = (time.perf_counter() - start) / timed * iterations
    out["max_abs_diff"] = float((results["vectorised"] - results["direct"]).abs().max())
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--labels", type=int, default=1, help="masks refined together (classes of one image)")
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--timed", type=int, default=20, help="iterations actually timed (scaled to --iterations)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device != "cpu":
        torch.set_default_device(args.device)
    r = pamr_seconds(args.size, args.labels, args.iterations, args.timed)
    print(f"PAMR {args.size}x{args.size}, {args.labels} label(s), {args.iterations} iterations, "
          f"{torch.get_num_threads()} thread(s), device {args.device}")
    print(f"  vectorised (methods.seediff.pamr): {r['vectorised']:.2f} s/image")
    print(f"  direct (src/pamr.py rules):       {r['direct']:.2f} s/image   speed-up {r['direct'] / r['vectorised']:.2f}x")
    print(f"  max |difference| after {args.timed} iterations: {r['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
