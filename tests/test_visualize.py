"""Palettes, overlays, Hungarian-matched colouring, example figures, report.html, summary."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.visualize import (
    IGNORE_COLOUR,
    UNMATCHED_GREYS,
    colour_classes,
    colour_segments,
    dataset_palette,
    distinct_palette,
    matched_classes,
    overlay,
)

VOC21 = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
         "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def test_voc_palette_is_the_devkit_colour_map_and_voc20_keeps_class_colours():
    pal = dataset_palette("voc21", VOC21)
    # VOC devkit colours: background black, aeroplane (128,0,0), person (192,128,128), tvmonitor (0,64,128)
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[15].tolist() == [192, 128, 128]
    assert pal[20].tolist() == [0, 64, 128]
    pal20 = dataset_palette("voc20", VOC21[1:])
    assert len(pal20) == 20 and (pal20 == pal[1:]).all()


def test_cityscapes_palette_is_the_official_label_colours():
    pytest.importorskip("cityscapesscripts", reason="cityscapesscripts (a declared dependency) is not installed here")
    pal = dataset_palette("cityscapes19", ["road", "sidewalk", "car"])
    assert pal.tolist() == [[128, 64, 128], [244, 35, 232], [0, 0, 142]]


def test_distinct_palette_has_distinct_colours_beyond_sixty_classes():
    pal = distinct_palette(171)
    assert pal.shape == (171, 3) and len({tuple(c) for c in pal.tolist()}) == 171
    assert dataset_palette("cocostuff27", [f"c{i}" for i in range(27)]).tolist() == pal[:27].tolist()


def test_overlay_colours_follow_the_palette_and_alpha():
    pal = dataset_palette("voc21", VOC21)
    label = np.array([[0, 15], [255, 1]])
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    colours = colour_classes(label, pal, ignore_index=255)
    assert colours[0, 1].tolist() == [192, 128, 128]
    assert colours[1, 0].tolist() == list(IGNORE_COLOUR)
    blended = overlay(image, colours, alpha=0.5)
    assert blended[0, 1].tolist() == [146, 114, 114]  # (100 + 192) / 2, (100 + 128) / 2
    assert blended[1, 1].tolist() == [114, 50, 50]  # aeroplane (128, 0, 0)
    # an image of another size is resized to the mask before blending
    assert overlay(np.full((4, 4, 3), 100, np.uint8), colours, 0.5).shape == (2, 2, 3)


def test_segments_take_their_hungarian_matched_class_colour_not_their_raw_id():
    """Raw ids 0 and 1 cover classes 5 and 2; segment 3 is left over (grey)."""
    label = np.zeros((4, 6), dtype=np.int64)
    label[:, :3] = 5
    label[:, 3:] = 2
    pred = np.zeros_like(label)
    pred[:, 3:] = 1
    pred[0, 0] = 3  # a small extra segment inside class 5
    names = [f"c{i}" for i in range(6)]
    pal = dataset_palette("cocostuff27", names)  # distinct colours
    mapping = matched_classes(pred, label, "hungarian_image", 6, 255)
    assert mapping == {0: 5, 1: 2}
    colours = colour_segments(pred, mapping, pal)
    assert colours[1, 0].tolist() == pal[5].tolist() and colours[1, 4].tolist() == pal[2].tolist()
    assert colours[0, 0].tolist() == [UNMATCHED_GREYS[3]] * 3
    # raw-id colouring would have been wrong
    assert pal[0].tolist() != pal[5].tolist() and pal[1].tolist() != pal[2].tolist()
    # the same match as the metric's counts: class 5's TP is segment 0's pixels in it
    from benchmark.metrics import HungarianImage

    counts = HungarianImage(6, names, 255).counts(pred, label, "x")
    assert counts["tp"][5] == 11 and counts["tp"][2] == 12


def test_dataset_level_assignment_colours_clusters():
    mapping = matched_classes(np.array([[0, 1, 2]]), np.array([[1, 0, 0]]), "hungarian_dataset", 3, 255,
                              assignment=[2, None, 0])
    assert mapping == {0: 2, 2: 0}
    with pytest.raises(ValueError, match="assignment"):
        matched_classes(np.array([[0]]), np.array([[0]]), "hungarian_dataset", 3, 255)
    assert matched_classes(np.array([[0, 7]]), np.array([[0, 0]]), "miou", 3, 255) == {0: 0}


def _payload(method, dataset, params_list, metric_values, config, grid_keys=(), metric="miou"):
    return {
        "method": method, "dataset": dataset, "model": "tiny", "metric": metric, "n_images": 2,
        "grid_keys": list(grid_keys), "random_weights": True,
        "results": [{"params": p, "metrics": {"mIoU": v, "aAcc": 50.0}} for p, v in zip(params_list, metric_values)],
        "provenance": {"config": config},
    }


def test_summary_is_method_by_dataset_with_only_distinguishing_settings(tmp_path):
    from benchmark.summary import write_summary

    def cfg(method, dataset, **method_keys):
        return {"method": {"name": method, **method_keys}, "dataset": {"name": dataset, "root": f"/d/{dataset}"},
                "model": {"name": "tiny", "dtype": "fp32"}, "run": {"seed": 0}, "hydra": {"x": 1}}

    payloads = [
        # DiffSeg: tau differs per dataset (a per-dataset setting) and timestep distinguishes rows
        _payload("diffseg", "coco", [{"kl_threshold": 1.1}], [40.0], cfg("diffseg", "coco", kl_threshold=1.1, extract={"timestep": 100})),
        _payload("diffseg", "coco", [{"kl_threshold": 1.1}], [42.0], cfg("diffseg", "coco", kl_threshold=1.1, extract={"timestep": 300})),
        _payload("diffseg", "city", [{"kl_threshold": 0.9}], [20.0], cfg("diffseg", "city", kl_threshold=0.9, extract={"timestep": 100})),
        _payload("diffseg", "city", [{"kl_threshold": 0.9}], [21.0], cfg("diffseg", "city", kl_threshold=0.9, extract={"timestep": 300})),
        # an in-run grid of another method
        _payload("seediff", "coco", [{"stage": "caa"}, {"stage": "be"}], [10.0, 30.0],
                 cfg("seediff", "coco", stage="be"), grid_keys=["stage"]),
    ]
    runs = [tmp_path / f"r{i}" for i in range(len(payloads))]
    wide, paths = write_summary(payloads, runs, tmp_path)
    assert list(wide.columns) == ["method", "settings", "coco", "city"]
    rows = {(r.method, r.settings): (r.coco, r.city) for r in wide.itertuples()}
    assert rows == {
        ("diffseg", "timestep=100"): (40.0, 20.0),
        ("diffseg", "timestep=300"): (42.0, 21.0),
        ("seediff", "stage=caa"): (10.0, rows[("seediff", "stage=caa")][1]),
        ("seediff", "stage=be"): (30.0, rows[("seediff", "stage=be")][1]),
    }
    assert np.isnan(rows[("seediff", "stage=be")][1])
    long = pd.read_csv(tmp_path / "summary_long.csv")
    assert len(long) == 6 and "method.kl_threshold" in long.columns and "method.extract.timestep" in long.columns
    assert "dataset.root" not in long.columns and "hydra.x" not in long.columns
    md = (tmp_path / "summary.md").read_text()
    assert "Headline metric per dataset: mIoU" in md and "| diffseg | timestep=100 | 40.00 | 20.00 |" in md


def test_summary_takes_the_reported_point_of_an_official_sweep(tmp_path):
    """DiffSegmenter's official background protocol sweeps bg_threshold and reports its best
    point: the summary has one row for that run, not one per threshold."""
    from benchmark.summary import summary_frames

    config = {"method": {"name": "diffsegmenter", "bg_protocol": "official_sweep"}, "dataset": {"name": "voc21"}}
    thresholds = [0.30, 0.31, 0.32]
    payload = _payload("diffsegmenter", "voc21", [{"bg_threshold": t} for t in thresholds], [50.0, 55.0, 52.0],
                       config, grid_keys=["bg_threshold"])
    payload["protocol"] = {"bg_protocol": "official_sweep", "bg_sweep_tie": "first"}
    wide, long = summary_frames([payload], [tmp_path / "r0"])
    assert len(wide) == 1 and wide.iloc[0]["voc21"] == 55.0 and len(long) == 1
    payload["protocol"] = {"bg_protocol": "fixed"}  # a user's own grid: every point is a row
    wide, _ = summary_frames([payload], [tmp_path / "r0"])
    assert sorted(wide["voc21"]) == [50.0, 52.0, 55.0]


def test_categorical_grid_axes_are_drawn_as_bars(tmp_path):
    from benchmark.report import plot_metric_vs_params

    frame = pd.DataFrame({"stage": ["caa", "cre", "be"], "mIoU": [10.0, 20.0, 30.0],
                          "weights": [[1, 2], [1, 2], [1, 2]]})
    written = plot_metric_vs_params(frame, ["stage", "weights"], tmp_path)
    assert [p.name for p in written] == ["plot_stage.png"]  # a single-valued axis has no plot
    assert written[0].stat().st_size > 5000


TINY = ["model=tiny", "dataset=synthetic", "dataset.n_images=2", "method.extract.image_size=128", "run.progress=false"]


@pytest.mark.run_report
def test_single_run_writes_example_figures_and_a_self_contained_report(tmp_path):
    from benchmark.compose import run_with_overrides

    run = tmp_path / "run"
    run_with_overrides(TINY + ["method=diffseg", "run.n_examples=1", "method.grid.kl_threshold=[0.9,1.1]"], run)
    figures = sorted((run / "examples").glob("figure_*.png"))
    assert [p.name for p in figures] == ["figure_synthetic_000000.png"]
    assert sorted(p.name for p in (run / "examples").glob("*_pred_*.png")) == [
        "synthetic_000000_pred_0.png", "synthetic_000000_pred_1.png"]
    page = (run / "report.html").read_text()
    assert "PIPELINE CHECK" in page.split("<h2>")[0]  # the mark is at the top
    sources = re.findall(r'<img src="([^"]+)"', page)
    pngs = {"plot_kl_threshold.png", "plot_per_class_IoU.png", "figure_synthetic_000000.png"}
    assert len(sources) == len(pngs)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    for s in sources:  # every embedded image decodes as a PNG
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "kl_threshold" in page and "Provenance" in page
    payload = json.loads((run / "metrics.json").read_text())
    assert payload["n_images"] == 2


def test_large_grids_show_the_default_and_the_best_point():
    from benchmark.report import example_points

    taus = [0.7, 0.8, 0.9, 1.0, 1.1, 1.2]
    payload = _payload("diffseg", "coco", [{"kl_threshold": t} for t in taus], [10, 12, 30, 20, 15, 5],
                       {"method": {"name": "diffseg", "kl_threshold": 1.1}}, grid_keys=["kl_threshold"])
    assert example_points(payload) == [(4, "default"), (2, "best")]
    small = dict(payload, results=payload["results"][:3])
    assert example_points(small) == [(0, ""), (1, ""), (2, "")]


def test_wandb_overlays_show_segments_as_their_matched_classes():
    """W&B masks of an unsupervised run use the metric's match (same colours as the ground
    truth); unmatched segments share one extra id; class-id predictions pass through."""
    import numpy as np

    from benchmark.loggers import matched_prediction

    label = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]])
    pred = np.array([[7, 7, 3, 3], [7, 7, 3, 3], [5, 5, 9, 9]])  # 9: an extra segment
    labels = {0: "sky", 1: "tree", 2: "road", 255: "ignore"}
    payload = {"metric": "hungarian_image", "class_names": ["sky", "tree", "road"], "ignore_index": 255,
               "results": [{"metrics": {}}]}
    out, names = matched_prediction(pred, label, payload, labels)
    assert out.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 256, 256]]
    assert names[256] == "unmatched segment" and names[0] == "sky"
    payload = {**payload, "metric": "miou"}
    out, names = matched_prediction(label, label, payload, labels)
    assert out.tolist() == label.tolist() and names == labels
