"""``python -m benchmark.generate``: SeeDiff generate mode with the tiny random-weight SD.

Pipeline checks: the pairs are written in the VOC layout, read back by the dataset
readers, scored, resumed and seeded per id. (Random weights: the masks mean nothing.)
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.config import ConfigError
from benchmark.generate import Generator, compose_generate_config, generate, image_id, voc_palette

REPO = Path(__file__).resolve().parent.parent
# 64 px -> latent 8 -> expansion sides 2, 4, 8; CA at 4; 2 denoising steps with guidance
TINY = [
    "model=tiny", "method.extract.image_size=64", "method.extract.steps=2", "method.ca_resolution=4",
    "progress=false",
]


def _cfg(out_dir: Path, *extra: str):
    return compose_generate_config(TINY + [f"out_dir={out_dir}", "class_subset=[cat,pottedplant]", *extra])


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    summary = generate(_cfg(out, "n_per_class=2"))
    return out, summary


def test_pairs_are_written_in_the_voc_layout(generated):
    out, summary = generated
    ids = ["cat_000000", "cat_000001", "pottedplant_000000", "pottedplant_000001"]
    assert summary["n_pairs"] == 4 and summary["generated_now"] == 4 and summary["random_weights"]
    assert (out / "ImageSets" / "Segmentation" / "train.txt").read_text().split() == ids
    for i in ids:
        image = Image.open(out / "JPEGImages" / f"{i}.jpg")
        label = Image.open(out / "SegmentationClass" / f"{i}.png")
        assert image.mode == "RGB" and image.size == (64, 64)
        assert label.mode == "P" and label.size == (64, 64)
        assert label.getpalette()[: 3 * 21] == voc_palette()[: 3 * 21]
        values = set(np.unique(np.array(label)).tolist())
        own = 8 if i.startswith("cat") else 16  # voc21 indices of cat and pottedplant
        assert values <= {0, own}, (i, values)
    assert not list(out.rglob(".*.tmp"))  # atomic writes leave no temporaries
    record = json.loads((out / "generation.json").read_text())
    assert record["method"] == "seediff" and record["extract"]["steps"] == 2
    # the official code's generation: PNDM (steps + 1 UNet calls), truncated uint8 images
    assert record["scheduler"] == "pndm" and record["to_uint8"] == "truncate"


def test_voc_reader_reads_the_pairs_back_and_they_score(generated, tmp_path):
    from benchmark.compose import run_with_overrides

    out, _ = generated
    # score the generated masks against themselves through the harness: reader + metric
    preds = tmp_path / "preds"
    preds.mkdir()
    for png in (out / "SegmentationClass").glob("*.png"):
        Image.fromarray(np.array(Image.open(png)), mode="L").save(preds / png.name)
    result = run_with_overrides(
        ["dataset=voc21", f"dataset.root={out}", "dataset.split=train", "dataset.num_workers=0",
         "method=predictions", f"method.dir={preds}", "metric=miou", "run.progress=false"],
        tmp_path / "run",
    )
    assert result.payload["n_images"] == 4
    metrics = result.payload["results"][0]["metrics"]
    assert metrics["aAcc"] == pytest.approx(100.0)
    from benchmark.data import build_dataset, dataset_config

    ds = build_dataset(dataset_config({"name": "voc21", "root": str(out), "split": "train", "num_workers": 0}))
    sample = ds[ds.ids.index("cat_000001")]
    written = np.array(Image.open(out / "SegmentationClass" / "cat_000001.png"))
    assert torch.equal(sample.label, torch.from_numpy(written.astype(np.int64)))
    assert tuple(sample.image.shape) == (3, 64, 64)


def test_seediff_segment_mode_scores_the_generated_folder_with_an_ablation_grid(generated, tmp_path):
    """Segment mode (the harness' extension) on the generated pairs: one diffusion pass per
    image serves every stage of the Table 2/5 grid."""
    from benchmark.compose import run_with_overrides

    out, _ = generated
    result = run_with_overrides(
        ["dataset=voc21", f"dataset.root={out}", "dataset.split=train", "dataset.num_workers=0", "model=tiny",
         "method=seediff", "method.extract.image_size=64", "method.ca_resolution=4", "method.candidates=gt",
         "metric=miou", "run.progress=false", "method.grid.stage=[caa,ca_sa,cre,ire,be]"],
        tmp_path / "run",
    )
    payload = result.payload
    assert payload["n_images"] == 4 and payload["diffusion_passes"] == 4
    assert [r["params"]["stage"] for r in payload["results"]] == ["caa", "ca_sa", "cre", "ire", "be"]
    assert payload["random_weights"] and all(r["metrics"]["aAcc"] is not None for r in payload["results"])


def test_resume_skips_written_pairs_and_regenerates_identically(generated, tmp_path):
    out, _ = generated
    again = generate(_cfg(out, "n_per_class=2"))
    assert again["generated_now"] == 0
    # a lost pair is regenerated from its id's seed: identical to the first time
    png = out / "SegmentationClass" / "pottedplant_000001.png"
    jpg = out / "JPEGImages" / "pottedplant_000001.jpg"
    before = (png.read_bytes(), jpg.read_bytes())
    png.unlink()
    resumed = generate(_cfg(out, "n_per_class=2"))
    assert resumed["generated_now"] == 1
    assert (png.read_bytes(), jpg.read_bytes()) == before
    # the pair of an id does not depend on the other ids generated
    alone = tmp_path / "alone"
    generate(compose_generate_config(TINY + [f"out_dir={alone}", "class_subset=[pottedplant]", "n_per_class=2"]))
    assert (alone / "JPEGImages" / "pottedplant_000001.jpg").read_bytes() == before[1]


def test_resuming_with_other_settings_is_refused(generated):
    out, _ = generated
    with pytest.raises(ConfigError, match="generation settings.*params"):
        generate(_cfg(out, "n_per_class=2", "method.beta=0.5"))


def test_uncertain_band_marks_255(tmp_path):
    out = tmp_path / "gen"
    # random weights give near-uniform attention: beta close to 1 leaves pixels outside the mask
    generate(_cfg(out, "n_per_class=1", "class_subset=[cat]", "method.beta=0.99", "uncertain_from=0.0"))
    label = np.array(Image.open(out / "SegmentationClass" / "cat_000000.png"))
    # every pixel outside the mask has a soft value >= 0: all of them become uncertain
    assert set(np.unique(label).tolist()) == {8, 255}


@pytest.mark.parametrize(
    "extra, match",
    [
        (["n_per_class=0"], "n_per_class"),
        (["classes=voc99"], "classes='voc99'.*voc21"),
        (["class_subset=[unicorn]"], "unicorn"),
        (["class_subset=[background]"], "background"),
        (["method.extract.steps=1"], "steps=1"),
        (["+method.grid.beta=[0.3,0.5]"], "grid"),
        (["method.stage=everything"], "method.stage"),
        (["uncertain_from=0.9"], "uncertain_from"),
        (["scheduler=euler"], "scheduler='euler'"),
        (["to_uint8=floor"], "to_uint8='floor'"),
    ],
)
def test_bad_config_fails_at_start_naming_the_key(tmp_path, extra, match):
    with pytest.raises((ConfigError, ValueError), match=match):
        Generator(_cfg(tmp_path / "x", *extra))


def test_other_methods_have_no_generate_mode(tmp_path):
    base = [o for o in TINY if not o.startswith("method.ca_resolution")]
    with pytest.raises(ConfigError, match="method='diffseg' has no generate mode"):
        Generator(compose_generate_config(base + ["method=diffseg", f"out_dir={tmp_path}"]))


def test_missing_out_dir_is_named(tmp_path):
    with pytest.raises(ConfigError, match="out_dir is required"):
        Generator(compose_generate_config(TINY))


def test_ids_are_file_safe():
    assert image_id("potted plant", 3) == "potted-plant_000003"
    assert image_id("traffic light/sign", 12) == "traffic-light-sign_000012"


def test_command_line_help_lists_the_keys():
    out = subprocess.run(
        [sys.executable, "-m", "benchmark.generate", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "n_per_class" in out.stdout and "out_dir" in out.stdout and "SeeDiff" in out.stdout
