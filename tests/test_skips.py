"""Images skipped for unreadable files (dataset.on_error=skip) are retried on every rerun
and shown in the table and the summary line (issue 14.11)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.compose import run_with_overrides
from benchmark.runner import print_summary

IDS = [f"img{i}" for i in range(6)]


def _dataset(root: Path) -> None:
    """6 images of 4x4 (2 classes), their labels, and the labels as predictions."""
    for sub in ("images", "labels", "preds"):
        (root / sub).mkdir(parents=True)
    for i, image_id in enumerate(IDS):
        Image.fromarray(np.full((4, 4, 3), 10 * i, np.uint8)).save(root / "images" / f"{image_id}.png")
        label = np.zeros((4, 4), np.uint8)
        label[:, i % 4:] = 1
        Image.fromarray(label, mode="L").save(root / "labels" / f"{image_id}.png")
        Image.fromarray(label, mode="L").save(root / "preds" / f"{image_id}.png")
    (root / "classes.txt").write_text("left\nright\n")


def _image_lines(run_dir: Path):
    path = run_dir / "records.rank0.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if '"kind":"image"' in line]


def test_skipped_image_is_retried_after_the_file_is_fixed(tmp_path, capsys):
    root = tmp_path / "data"
    _dataset(root)
    good = (root / "images" / "img3.png").read_bytes()
    (root / "images" / "img3.png").write_bytes(good[:30])  # truncated: unreadable
    args = ["dataset=folder", f"dataset.root={root}", "dataset.classes_file=classes.txt", "dataset.on_error=skip",
            "method=predictions", f"method.dir={root / 'preds'}", "metric=miou", "run.progress=false"]
    run_dir = tmp_path / "run"

    first = run_with_overrides(args, run_dir)
    assert first.payload["n_images"] == 5 and [s["image_id"] for s in first.payload["skipped"]] == ["img3"]
    table = (run_dir / "table.md").read_text()
    assert "SKIPPED 1 of 6 images" in table and "img3 (" in table and "img3.png" in table
    header, _, row = [line for line in table.splitlines() if line.startswith("|")]
    assert header.endswith("| n_images | n_skipped |") and row.endswith("| 5 | 1 |")
    assert (run_dir / "table.csv").read_text().splitlines()[0].endswith("n_images,n_skipped")
    print_summary(first)
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("5 images (1 of 6 SKIPPED, unreadable: img3;")

    # still broken: retried (one more record), still skipped, listed once
    again = run_with_overrides(args, run_dir)
    assert [s["image_id"] for s in again.payload["skipped"]] == ["img3"] and len(_image_lines(run_dir)) == 7

    # fixed: the rerun computes img3 only, and every image counts
    (root / "images" / "img3.png").write_bytes(good)
    fixed = run_with_overrides(args, run_dir)
    lines = _image_lines(run_dir)
    assert len(lines) == 8 and lines[-1]["image_id"] == "img3" and lines[-1]["status"] == "ok"
    assert fixed.payload["n_images"] == 6 and fixed.payload["skipped"] == []
    assert fixed.payload["results"][0]["metrics"]["mIoU"] == 100.0
    assert "SKIPPED" not in (run_dir / "table.md").read_text()
    assert "n_skipped" not in (run_dir / "table.csv").read_text()
    print_summary(fixed)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("6 images, 0 diffusion passes")
