"""Every official dataset config, read from its fixture tree, scores its own ground truth
(saved as prediction PNGs and read back through ``method=predictions``) at 100 %."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import dataset_layouts as layouts
from benchmark.compose import run_with_overrides
from test_datasets import CURATED, OFFICIAL


def _write_predictions(expected, out_dir, ignore_index=255):
    out_dir.mkdir(parents=True)
    for image_id, label in expected.items():
        label = np.asarray(label).copy()
        label[label == ignore_index] = 0  # ignored pixels are not scored
        mode = "I;16" if label.max() > 255 else "L"
        Image.fromarray(label.astype(np.uint16 if mode == "I;16" else np.uint8), mode=mode).save(
            out_dir / f"{image_id}.png"
        )


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_ground_truth_as_predictions_scores_100(name, tmp_path):
    writer = OFFICIAL[name][0]
    expected = writer(tmp_path / "data")
    _write_predictions(expected, tmp_path / "preds")
    overrides = [f"dataset={name}", f"dataset.root={tmp_path / 'data'}", "dataset.preprocess=original",
                 "dataset.num_workers=0", "method=predictions", f"method.dir={tmp_path / 'preds'}",
                 "metric=miou", "run.progress=false"]
    if name in CURATED:
        overrides.append("dataset.ids=[" + ",".join(f"'{i}'" for i in sorted(expected)) + "]")
    out = run_with_overrides(overrides, tmp_path / "run")
    m = out.payload["results"][0]["metrics"]
    assert out.payload["n_images"] == len(expected)
    assert m["mIoU"] == pytest.approx(100.0) and m["aAcc"] == pytest.approx(100.0), name
    # a wrong prediction is not scored 100: the comparison is real
    first = sorted(expected)[0]
    bad = np.asarray(expected[first]).copy()
    valid = bad != 255
    bad[valid] = (bad[valid] + 1) % OFFICIAL[name][2]
    bad[~valid] = 0
    Image.fromarray(bad.astype(np.uint8), mode="L").save(tmp_path / "preds" / f"{first}.png")
    worse = run_with_overrides(overrides, tmp_path / "run_bad")
    assert worse.payload["results"][0]["metrics"]["aAcc"] < 100.0


def test_folder_ground_truth_scores_100(tmp_path):
    expected = layouts.write_folder(tmp_path / "data")
    _write_predictions(expected, tmp_path / "preds")
    out = run_with_overrides(
        ["dataset=folder", f"dataset.root={tmp_path / 'data'}", "dataset.classes_file=classes.txt",
         "dataset.num_workers=0", "method=predictions", f"method.dir={tmp_path / 'preds'}", "metric=miou",
         "run.progress=false"],
        tmp_path / "run",
    )
    assert out.payload["results"][0]["metrics"]["mIoU"] == pytest.approx(100.0)
