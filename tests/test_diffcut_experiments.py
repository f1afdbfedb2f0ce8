"""``experiment=diffcut_<dataset>`` on fixture data in the official layouts with the tiny
SDXL (PIPELINE CHECK), and the methods x models matrix on the tiny SD and tiny SDXL.

Each experiment runs on DiffCut's label mapping of its benchmark (``dataset=*_diffcut``
where it differs from the existing config: datasets/README.md, "DiffCut label mappings").
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

import dataset_layouts as layouts
from benchmark.compose import compose_config, run_with_overrides
from benchmark.config import validate

REPO = Path(__file__).resolve().parents[1]
#: experiment -> (dataset preset, fixture writer of its official layout, background class)
EXPERIMENTS = {
    "voc21": ("voc20_diffcut", partial(layouts.write_voc, config="voc20_diffcut"), 20),
    "context60": ("context59_diffcut", partial(layouts.write_context, config="context59_diffcut"), 59),
    "coco_object": ("coco_object_diffcut", partial(layouts.write_coco_object, config="coco_object_diffcut"), 80),
    "cocostuff27": ("cocostuff27", layouts.write_cocostuff, None),
    "cityscapes27": ("cityscapes27", layouts.write_cityscapes, None),
    "ade20k": ("ade20k_diffcut", partial(layouts.write_ade20k, config="ade20k_diffcut"), None),
}
#: small sizes so the pipeline check is fast: 64 px input (2 x 2 DiffCut tokens), 16 px masks
SMALL = ["model=tiny_sdxl", "model.dtype=fp32", "dataset.resolution=64", "dataset.num_workers=0",
         "method.extract.image_size=64", "method.mask_size=16", "method.pamr_iterations=2", "run.progress=false"]


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_diffcut_experiment_runs_on_official_layout_with_tiny_sdxl(experiment, tmp_path):
    dataset, writer, _ = EXPERIMENTS[experiment]
    expected = writer(tmp_path / "data")
    ids = "[" + ",".join(f"'{i}'" for i in sorted(expected)[:2]) + "]"
    out = run_with_overrides(
        [f"experiment=diffcut_{experiment}", f"dataset.root={tmp_path / 'data'}", f"dataset.ids={ids}",
         "method.grid.tau=[0.3,0.6]"] + SMALL,
        tmp_path / "run",
    )
    p = out.payload
    assert p["method"] == "diffcut" and p["dataset"] == dataset and p["random_weights"] is True
    assert p["n_images"] == 2 and len(p["results"]) == 2  # tau as an in-run grid axis: one pass
    assert out.passes_this_run == 2
    # a 2-image subset is not the full split: published numbers are withheld, with the reason
    assert not p.get("published") and any("subset" in r or "split" in r for r in p["published_withheld"])
    assert "PIPELINE CHECK" in (tmp_path / "run" / "table.md").read_text()


def test_diffcut_experiments_compose_with_the_official_settings():
    for experiment, (dataset, _, background) in EXPERIMENTS.items():
        v = validate(compose_config([f"experiment=diffcut_{experiment}"]))
        assert v.dataset.name == dataset and v.reference["dataset"] == dataset
        params = v.method.points[0]
        assert (params.tau, params.alpha, params.refinement, params.mask_size) == (0.5, 10.0, True, 128)
        assert (v.method.extract.image_size, v.method.extract.timestep, v.method.extract.noise) == (1024, 50, True)
        assert v.metric.params.background == background


METHODS = ["diffseg", "kmeans", "diffsegmenter", "ca", "ca_sa", "seediff", "diffcut"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny", "tiny_sdxl"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_on_tiny_sd_and_tiny_sdxl(model, method, tmp_path):
    # 128 px for the tiny SD (grids 16..2, like 512 px for SD), 256 px for the tiny SDXL
    # (grids 16 and 8, like 1024 px for SDXL)
    size = 128 if model == "tiny" else 256
    args = [f"model={model}", f"method={method}", "dataset=synthetic", "dataset.n_images=1", "run.progress=false",
            f"method.extract.image_size={size}"]
    if method in ("diffsegmenter", "ca", "ca_sa", "seediff"):
        args.append("method.candidates=gt")
    out = run_with_overrides(args, tmp_path / "run")
    assert out.payload["n_images"] == 1 and out.payload["random_weights"] is True


@pytest.mark.slow
def test_seediff_default_sides_on_tiny_sdxl_expand_over_the_captured_sides(tmp_path):
    """The SDXL family has no attention at the latent side: SeeDiff's default expansion
    (latent/4, /2, /1) runs over the sides the model has; explicit missing sides name the key."""
    from benchmark.runner import run_benchmark

    args = ["model=tiny_sdxl", "method=seediff", "dataset=synthetic", "dataset.n_images=1", "run.progress=false",
            "method.extract.image_size=256", "method.candidates=gt"]
    out = run_benchmark(compose_config(args), tmp_path / "run")
    assert out.payload["n_images"] == 1
    from benchmark.config import ConfigError

    with pytest.raises(ConfigError, match=r"method.sa_resolutions: self-attention side\(s\) \[8, 16, 32\] requested, "
                                          r"but model 'tiny_sdxl' has no attention at \[32\]"):  # at start
        run_benchmark(compose_config(args + ["method.sa_resolutions=[8,16,32]"]), tmp_path / "run2")
