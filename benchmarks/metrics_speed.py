"""Per-image counting cost of every metric, and the cost of the Hungarian match.

Target (project issue 4): counting a 512x512 image with 171 classes takes well under
10 ms on the 2-core CPU. Run: python benchmarks/metrics_speed.py [--size 512] [--repeats 30]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from benchmark.metrics import METRICS, HungarianDataset


def best_ms(fn, repeats: int) -> float:
    """Median wall time of fn() in ms, after warm-up calls (the first large allocations
    page-fault until glibc's malloc raises its mmap threshold; a long run never sees that)."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def make_inputs(size: int, num_classes: int, num_segments: int, rng: np.random.Generator):
    label = rng.integers(0, num_classes, size=(size, size), dtype=np.int64).astype(np.uint8 if num_classes < 255 else np.int64)
    label[rng.random((size, size)) < 0.1] = 255  # 10 % ignored pixels
    class_pred = torch.from_numpy(rng.integers(0, num_classes, size=(size, size)))
    segment_pred = torch.from_numpy(rng.integers(0, num_segments, size=(size, size)))
    return class_pred, segment_pred, torch.from_numpy(label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"counting one {args.size}x{args.size} image (10% ignored), median of {args.repeats}, torch inputs")
    for num_classes in (27, 171):
        names = [f"c{i}" for i in range(num_classes)]
        class_pred, segment_pred, label = make_inputs(args.size, num_classes, num_classes + 5, rng)
        for name, cls in METRICS.items():
            if name == "zeroshot":
                params = cls.Params(unseen=names[-3:])
            elif name == "hungarian_dataset":
                params = cls.Params(num_clusters=num_classes + 5)
            else:
                params = cls.Params()
            metric = cls(num_classes, names, 255, params)
            pred = class_pred if name in ("miou", "zeroshot") else segment_pred
            ms = best_ms(lambda: metric.counts(pred, label, "bench"), args.repeats)
            print(f"  C={num_classes:<4d} {name:<18s} {ms:7.2f} ms/image")
    print("Hungarian match (scipy linear_sum_assignment, maximize=True) on random counts")
    for n in (27, 171):
        hist = rng.integers(0, 10_000, size=(n, n))
        ms = best_ms(lambda: linear_sum_assignment(hist, maximize=True), args.repeats)
        print(f"  {n}x{n}: {ms:7.3f} ms")
        metric = HungarianDataset(n, [f"c{i}" for i in range(n)])
        ms = best_ms(lambda: metric.compute({"histogram": hist}), args.repeats)
        print(f"  hungarian_dataset.compute, {n} classes: {ms:7.3f} ms")


if __name__ == "__main__":
    main()
