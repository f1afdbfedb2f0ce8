"""End-to-end runs of the harness: results contract, predictions, resume, grids, W&B."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark.compose import compose_config, run_with_overrides
from benchmark.config import validate
from benchmark.records import from_frame, sum_counts

TINY_FAST = ["model=tiny", "dataset=synthetic", "dataset.n_images=3", "method.extract.image_size=128", "run.progress=false"]


def _gt_predictions(overrides, out_dir: Path) -> Path:
    """Write the ground truth of a dataset config as prediction PNGs."""
    from benchmark.data import build_dataset

    v = validate(compose_config(overrides))
    ds = build_dataset(v.dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(len(ds)):
        s = ds[i]
        label = s.label.numpy().copy()
        label[label == ds.ignore_index] = 0  # ignored pixels are not scored
        Image.fromarray(label.astype(np.uint8), mode="L").save(out_dir / f"{s.image_id}.png")
    return out_dir


def test_predictions_of_ground_truth_score_100(tmp_path):
    data = ["dataset=synthetic", "dataset.n_images=3"]
    preds = _gt_predictions(data, tmp_path / "preds")
    out = run_with_overrides(data + ["method=predictions", f"method.dir={preds}", "metric=miou", "run.progress=false"], tmp_path / "run")
    m = out.payload["results"][0]["metrics"]
    assert m["mIoU"] == pytest.approx(100.0) and m["aAcc"] == pytest.approx(100.0)
    assert out.payload["diffusion_passes"] == 0 and out.payload["model"] == "none"


def _write_folder_dataset(root: Path):
    """One 4x4 image: left half class 0, right half class 1; two classes."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / "img0.png")
    label = np.zeros((4, 4), np.uint8)
    label[:, 2:] = 1
    Image.fromarray(label, mode="L").save(root / "labels" / "img0.png")
    (root / "classes.txt").write_text("left\nright\n")
    return label


def test_predictions_with_known_perturbation_give_hand_computed_values(tmp_path):
    label = _write_folder_dataset(tmp_path / "data")
    pred = label.copy()
    pred[:, 2] = 0  # one column of "right" predicted as "left": 4 pixels wrong
    (tmp_path / "preds").mkdir()
    Image.fromarray(pred, mode="L").save(tmp_path / "preds" / "img0.png")
    out = run_with_overrides(
        ["dataset=folder", f"dataset.root={tmp_path / 'data'}", "dataset.classes_file=classes.txt", "method=predictions",
         f"method.dir={tmp_path / 'preds'}", "metric=miou", "run.progress=false"],
        tmp_path / "run",
    )
    m = out.payload["results"][0]["metrics"]
    # left: TP 8, FP 4, FN 0 -> 66.67 ; right: TP 4, FP 0, FN 4 -> 50
    assert m["per_class_IoU"]["left"] == pytest.approx(200 / 3)
    assert m["per_class_IoU"]["right"] == pytest.approx(50.0)
    assert m["mIoU"] == pytest.approx((200 / 3 + 50) / 2)
    assert m["aAcc"] == pytest.approx(75.0) and m["mAcc"] == pytest.approx(75.0)


def test_predictions_missing_file_and_size_mismatch_name_the_image(tmp_path):
    _write_folder_dataset(tmp_path / "data")
    (tmp_path / "preds").mkdir()
    base = ["dataset=folder", f"dataset.root={tmp_path / 'data'}", "dataset.classes_file=classes.txt", "method=predictions",
            f"method.dir={tmp_path / 'preds'}", "metric=miou", "run.progress=false"]
    with pytest.raises(FileNotFoundError, match=r"img0.*img0\.png"):
        run_with_overrides(base, tmp_path / "run1")
    Image.fromarray(np.zeros((5, 4), np.uint8), mode="L").save(tmp_path / "preds" / "img0.png")
    with pytest.raises(ValueError, match=r"img0.*5x4.*4x4"):
        run_with_overrides(base, tmp_path / "run2")


def test_results_contract_and_grid_shares_one_pass(tmp_path):
    run_with_overrides(TINY_FAST + ["method=diffseg", "method.grid.kl_threshold=[0.9,1.1,1.3]"], tmp_path / "run")
    run_dir = tmp_path / "run"
    payload = json.loads((run_dir / "metrics.json").read_text())
    for key in ("method", "dataset", "model", "n_images", "diffusion_passes", "results", "provenance"):
        assert key in payload
    assert payload["n_images"] == 3
    assert payload["diffusion_passes"] == 3  # one pass per image for the whole grid
    assert len(payload["results"]) == 3
    assert [r["params"]["kl_threshold"] for r in payload["results"]] == [0.9, 1.1, 1.3]
    for r in payload["results"]:
        assert {"mIoU", "ACC", "per_class_IoU"} <= set(r["metrics"])
    prov = payload["provenance"]
    assert {"config", "versions", "git", "started", "finished", "device", "dtype"} <= set(prov)
    assert payload["random_weights"] is True
    table = (run_dir / "table.md").read_text()
    assert "PIPELINE CHECK" in table
    assert (run_dir / "table.csv").exists() and "\\toprule" in (run_dir / "table.tex").read_text()
    frame = pd.read_parquet(run_dir / "per_image.parquet")
    assert len(frame) == 3 * 3  # (configuration, image) rows
    # totals recomputed from the parquet equal the reported metrics
    recs, params = from_frame(frame)
    from benchmark.metrics import get_metric

    v = validate(compose_config(TINY_FAST + ["method=diffseg"]))
    from benchmark.data import build_dataset

    ds = build_dataset(v.dataset)
    metric = get_metric("hungarian_image")(ds.num_classes, ds.class_names, ds.ignore_index)
    totals = sum_counts(recs, len(params), metric.state_shapes())
    for total, r in zip(totals, payload["results"]):
        assert metric.compute(total)["mIoU"] == pytest.approx(r["metrics"]["mIoU"], nan_ok=True)


def test_resume_after_kill_equals_fresh_run(tmp_path):
    args = TINY_FAST + ["method=diffseg", "dataset.n_images=4"]
    run_with_overrides(args, tmp_path / "fresh")
    # a run killed after two images, in the middle of writing the third record
    killed = tmp_path / "killed"
    killed.mkdir()
    lines = (tmp_path / "fresh" / "records.rank0.jsonl").read_text().splitlines()
    (killed / "records.rank0.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    resumed = run_with_overrides(args, killed)
    assert resumed.passes_this_run == 2  # only the two missing images were recomputed
    a = json.loads((tmp_path / "fresh" / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert a["results"] == b["results"]
    assert a["diffusion_passes"] == b["diffusion_passes"] == 4
    fa = pd.read_parquet(tmp_path / "fresh" / "per_image.parquet")
    fb = pd.read_parquet(killed / "per_image.parquet")
    pd.testing.assert_frame_equal(fa, fb)
    # re-running a finished run does no work
    again = run_with_overrides(args, killed)
    assert again.passes_this_run == 0


def test_resume_refuses_a_different_configuration(tmp_path):
    from benchmark.records import RunMismatchError

    run_with_overrides(TINY_FAST + ["method=diffseg", "dataset.n_images=1"], tmp_path / "run")
    with pytest.raises(RunMismatchError, match="kl_threshold|method"):
        run_with_overrides(TINY_FAST + ["method=diffseg", "dataset.n_images=1", "method.kl_threshold=0.5"], tmp_path / "run")
    # resume=false keeps the old records aside instead of deleting them
    run_with_overrides(
        TINY_FAST + ["method=diffseg", "dataset.n_images=1", "method.kl_threshold=0.5", "run.resume=false"], tmp_path / "run"
    )
    assert list((tmp_path / "run").glob("old_records.*/records.rank0.jsonl"))


def test_wandb_offline_run_leaves_run_folder_with_metrics(tmp_path):
    import wandb

    run_with_overrides(TINY_FAST + ["dataset.n_images=1", "logger=wandb", "logger.mode=offline"], tmp_path / "run")
    wandb.teardown()  # wait for the wandb service to flush the offline run to disk
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "no offline W&B run folder"
    # wandb >= 0.19 keeps the history and summary in the binary transaction log (protobuf:
    # keys are stored as plain strings), the tables as JSON media files
    log = next(runs[0].glob("*.wandb")).read_bytes()
    assert b"metrics/mIoU" in log and b"diffusion_passes" in log
    tables = {p.name.split("_")[0] for p in runs[0].rglob("*.table.json")}
    assert {"results", "per"} <= tables
    assert list(runs[0].rglob("*.mask.png")), "mask overlays were not logged"


def test_wandb_finishes_when_the_job_fails(tmp_path, monkeypatch):
    import wandb

    from benchmark.runner import Runner

    finished = []
    original = wandb.sdk.wandb_run.Run.finish

    def spy(self, *a, **k):
        finished.append(k.get("exit_code"))
        return original(self, *a, **k)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "finish", spy)
    monkeypatch.setattr(Runner, "run", lambda self: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        run_with_overrides(TINY_FAST + ["logger=wandb", "logger.mode=offline"], tmp_path / "run")
    assert finished == [1]


def test_default_cli_run_says_pipeline_check(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark", f"hydra.run.dir={tmp_path}", "run.progress=false",
         "dataset.n_images=2", "method.extract.image_size=128"],
        capture_output=True, text=True, cwd=repo, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PIPELINE CHECK" in proc.stdout
    assert (tmp_path / "metrics.json").exists()


def test_experiment_withholds_published_numbers_from_non_comparable_runs(tmp_path):
    import dataset_layouts as layouts

    expected = layouts.write_cocostuff(tmp_path / "data", config="cocostuff27")
    ids = "[" + ",".join(f"'{i}'" for i in sorted(expected)) + "]"
    out = run_with_overrides(
        ["experiment=diffseg_cocostuff27", "model=tiny", f"dataset.root={tmp_path / 'data'}", f"dataset.ids={ids}",
         "dataset.num_workers=0", "method.extract.image_size=128", "run.progress=false"],
        tmp_path / "run",
    )
    # a dataset.ids subset is not the published split: no paper numbers, and the table says why
    assert out.payload["published"] == {}
    assert any("subset" in r and "dataset.ids (3 ids)" in r for r in out.payload["published_withheld"])
    frame = pd.read_csv(tmp_path / "run" / "table.csv")
    assert "mIoU (paper)" not in frame.columns and "ΔmIoU" not in frame.columns
    table = (tmp_path / "run" / "table.md").read_text()
    assert "PIPELINE CHECK" in table and "Published numbers not shown" in table and "dataset.ids (3 ids)" in table
    # the same experiment on another dataset does not show cocostuff27's numbers
    other = run_with_overrides(
        ["experiment=diffseg_cocostuff27", "model=tiny", "dataset=synthetic", "dataset.n_images=1",
         "method.extract.image_size=128", "run.progress=false"],
        tmp_path / "other",
    )
    assert other.payload["published"] == {}
    # nor beside another method or metric than the published one
    kmeans = run_with_overrides(
        ["experiment=diffseg_cocostuff27", "model=tiny", f"dataset.root={tmp_path / 'data'}", f"dataset.ids={ids}",
         "dataset.num_workers=0", "method.extract.image_size=128", "run.progress=false", "metric=hungarian_dataset"],
        tmp_path / "metric",
    )
    assert kmeans.payload["published"] == {}


def test_short_split_and_extraction_overrides_withhold_published_numbers_in_the_table(tmp_path):
    """Leftover items 1-2: the whole (3-image) fixture split is not VOC val's 1449 images, and
    an image size or timestep other than the preset's is not the published protocol."""
    import dataset_layouts as layouts

    layouts.write_voc(tmp_path / "data", config="voc20_diffcut")
    common = ["experiment=diffcut_voc21", "model=tiny_sdxl", "model.dtype=fp32", f"dataset.root={tmp_path / 'data'}",
              "dataset.resolution=64", "dataset.num_workers=0", "method.extract.image_size=64", "method.mask_size=16",
              "method.pamr_iterations=2", "run.progress=false", "run.report=false", "reference.model=tiny_sdxl"]
    out = run_with_overrides(common + ["method.extract.timestep=100"], tmp_path / "run")
    p = out.payload
    assert p["n_images"] == 3 and p["published"] == {} and p["protocol"]["subset"] is None
    assert p["protocol"]["published_count"] == 1449
    table = (tmp_path / "run" / "table.md").read_text()
    reasons = ["published on the 1449 images of the full split, this run evaluated 3",
               "published with method.extract.image_size=1024 (the experiment's preset), this run has "
               "method.extract.image_size=64",
               "published with method.extract.timestep=50 (the experiment's preset), this run has "
               "method.extract.timestep=100"]
    for reason in reasons:
        assert reason in table and any(reason in r for r in p["published_withheld"])
    assert len(p["published_withheld"]) == 3
    # with the reference told this split and size (as a comparable run would have them), the numbers show
    shown = run_with_overrides(common + ["reference.n_images=3", "reference.extract.image_size=64"], tmp_path / "shown")
    assert shown.payload["published_withheld"] == [] and shown.payload["published"]


def test_reference_without_published_entry_fails_at_start():
    from benchmark.config import ConfigError

    with pytest.raises(ConfigError, match="no published numbers for diffseg/voc21"):
        validate(compose_config(["experiment=diffseg_cocostuff27", "reference.dataset=voc21"]))


def test_attention_cache_is_reused_and_reported(tmp_path):
    args = TINY_FAST + ["dataset.n_images=2", f"cache.dir={tmp_path / 'cache'}"]
    first = run_with_overrides(args, tmp_path / "a")
    assert first.passes_this_run == 2
    report = first.payload["attention_cache"]
    assert report["written"] == 2 and report["hits"] == 0 and report["mb_per_image"] > 0
    second = run_with_overrides(args, tmp_path / "b")  # a new run directory, same extraction
    assert second.passes_this_run == 0 and second.payload["attention_cache"]["hits"] == 2
    assert second.payload["results"] == first.payload["results"]


def test_background_grid_is_labelled_an_oracle(tmp_path):
    out = run_with_overrides(
        ["model=tiny", "dataset=synthetic", "dataset.n_images=1", "method=ca", "method.extract.image_size=128",
         "method.candidates=gt", "method.grid.bg_threshold=[0.3,0.5]", "run.progress=false"],
        tmp_path / "run",
    )
    assert out.payload["oracle_keys"] == ["bg_threshold"] and out.payload["diffusion_passes"] >= 1
    assert "ORACLE" in (tmp_path / "run" / "table.md").read_text()


def test_cache_key_follows_the_pixels_and_warm_equals_cold(tmp_path):
    cache = f"cache.dir={tmp_path / 'cache'}"
    base = TINY_FAST + ["dataset.n_images=2", cache, "method=kmeans"]
    cold = run_with_overrides(base, tmp_path / "cold")
    warm = run_with_overrides(base, tmp_path / "warm")
    assert warm.passes_this_run == 0
    # identical numbers whether the attention was just captured or read back (float16)
    assert warm.payload["results"] == cold.payload["results"]
    pd.testing.assert_frame_equal(  # every count equal; only the passes spent differ
        pd.read_parquet(tmp_path / "cold" / "per_image.parquet").drop(columns=["passes"]),
        pd.read_parquet(tmp_path / "warm" / "per_image.parquet").drop(columns=["passes"]),
    )
    # same ids, other pixels (another synthetic seed): no stale hit
    other = run_with_overrides(base + ["dataset.seed=1"], tmp_path / "other")
    assert other.passes_this_run == 2 and other.payload["attention_cache"]["hits"] == 0


def test_fully_cached_run_never_loads_the_weights(tmp_path, monkeypatch):
    from benchmark.models import loading
    from benchmark.models.tiny import save_tiny

    folder = save_tiny(tmp_path / "sd", seed=0)  # a checkpoint folder, loaded like a real one
    args = TINY_FAST + ["dataset.n_images=2", f"cache.dir={tmp_path / 'cache'}", f"model.path={folder}",
                        "model.name=local_sd"]
    first = run_with_overrides(args, tmp_path / "a")
    assert first.passes_this_run == 2

    def refuse(*a, **k):
        raise AssertionError("weights were loaded although every image was cached")

    monkeypatch.setattr(loading, "load_components", refuse)
    second = run_with_overrides(args, tmp_path / "b")
    assert second.passes_this_run == 0 and second.payload["results"] == first.payload["results"]
    # a cache miss does load them
    with pytest.raises(AssertionError, match="weights were loaded"):
        run_with_overrides(args + ["dataset.n_images=3"], tmp_path / "c")
