"""Data-loading throughput: images/s of ``make_loader`` on a VOC-sized fixture tree.

    python benchmarks/data_speed.py [--images 96] [--workers 0 2 4]

Writes a temporary VOC2012 tree of 500x375 JPEGs with palette labels (the typical VOC
size), then times decoding + label lookup + preprocessing for each preset and worker
count. The diffusion pass of one 512x512 image takes far longer than these numbers
(tens of ms on a GPU), so loading is not the bottleneck when images/s here exceeds the
model's rate.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataset_layouts  # noqa: E402

from benchmark.data import build_dataset, make_loader  # noqa: E402


def measure(root: Path, preset: str, workers: int, n_images: int) -> float:
    dataset = build_dataset({"name": "voc21", "root": str(root), "preprocess": preset})
    loader = make_loader(dataset, list(range(n_images)), batch_size=4, num_workers=workers)
    start = time.perf_counter()
    count = sum(len(batch) for batch in loader)
    elapsed = time.perf_counter() - start
    assert count == n_images
    return n_images / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    logging.getLogger("benchmark.data").setLevel(logging.ERROR)  # the fixture is not the 1449-image split
    with tempfile.TemporaryDirectory() as tmp:
        ids = [f"2007_{i:06d}" for i in range(args.images)]
        dataset_layouts.write_voc(Path(tmp), ids=ids, size=(375, 500))
        print(f"{args.images} VOC-sized images (500x375 JPEG + palette PNG), batch 4")
        print(f"{'preset':<10}{'workers':>8}{'images/s':>12}")
        for preset in ("original", "diffseg", "stego"):
            for workers in args.workers:
                rate = measure(Path(tmp), preset, workers, args.images)
                print(f"{preset:<10}{workers:>8}{rate:>12.1f}")


if __name__ == "__main__":
    main()
