"""Every option of every config group composes and validates; bad configs fail at start."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.__main__ import CONF_DIR, GROUPS, UsageError, check_group_choices, group_options, prepare_argv
from benchmark.compose import compose_config
from benchmark.config import ConfigError, validate

REPO = Path(__file__).resolve().parent.parent


def _all_group_options():
    for group in ("dataset", "model", "method", "metric", "logger"):
        for option in group_options(group):
            yield group, option


@pytest.mark.parametrize("group,option", list(_all_group_options()))
def test_every_group_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}"]
    if group == "method" and option == "predictions":
        overrides.append("method.dir=/nonexistent")  # only validated, not read
    if group == "method" and option == "diffseg_semantic":
        overrides.append("method.candidates_file=/nonexistent.json")  # captions: only validated, not read
    cfg = compose_config(overrides)
    v = validate(cfg)
    section = getattr(v, group)
    name = section.name if hasattr(section, "name") else section["name"]
    if group == "metric" and option == "auto":
        assert name in ("hungarian_image", "miou")
    else:
        assert name == option


@pytest.mark.parametrize("option", group_options("experiment"))
def test_every_experiment_composes_and_validates(option):
    v = validate(compose_config([f"experiment={option}"]))
    assert v.method.points, option


def test_group_yaml_names_match_file_stems():
    for group in ("dataset", "model", "method", "metric", "logger"):
        for path in (CONF_DIR / group).glob("*.yaml"):
            text = path.read_text()
            assert f"name: {path.stem}\n" in text, f"{path} must declare name: {path.stem}"


def test_unknown_key_names_key_and_suggests():
    cfg = compose_config(["+method.kl_treshold=0.9"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    msg = str(err.value)
    assert "method.kl_treshold" in msg and "kl_threshold" in msg and "Did you mean" in msg


def test_unknown_nested_key_is_rejected():
    cfg = compose_config(["+method.extract.timestpe=10"])
    with pytest.raises(ConfigError, match=r"method\.extract\.timestpe.*Did you mean 'timestep'"):
        validate(cfg)


def test_wrong_type_names_key():
    cfg = compose_config(["method.extract.timestep=abc"])
    with pytest.raises(ConfigError, match=r"method\.extract\.timestep"):
        validate(cfg)


def test_unknown_top_level_key():
    cfg = compose_config(["+rnu.batch_size=2"])
    with pytest.raises(ConfigError, match=r"'rnu'.*Did you mean 'run'"):
        validate(cfg)


def test_bad_choice_value_lists_choices():
    cfg = compose_config(["method.extract.latent=avg"])
    with pytest.raises(ConfigError, match=r"method\.extract\.latent.*mean, sample"):
        validate(cfg)


def test_unknown_group_option_suggests():
    with pytest.raises(UsageError):
        check_group_choices(["method=difseg"])
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark", "method=difseg"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 2
    assert "Did you mean 'diffseg'" in proc.stderr and "Valid choices" in proc.stderr


def test_grid_override_needs_no_plus_and_expands_product():
    args = prepare_argv(["method.grid.kl_threshold=[0.8,0.9,1.0]"])
    assert args == ["++method.grid.kl_threshold=[0.8,0.9,1.0]"]
    v = validate(compose_config(["method.grid.kl_threshold=[0.8,0.9,1.0]", "method.grid.anchor_grid=[8,16]"]))
    assert len(v.method.points) == 6
    assert v.method.grid_keys == ["kl_threshold", "anchor_grid"]
    assert [p.kl_threshold for p in v.method.points][:2] == [0.8, 0.8]


def test_unknown_grid_axis_is_rejected_with_hint():
    cfg = compose_config(["method.grid.timestep=[100,300]"])
    with pytest.raises(ConfigError, match=r"method\.grid\.timestep.*sweep them with -m"):
        validate(cfg)


def test_help_and_cfg_job_show_settable_keys():
    out = subprocess.run(
        [sys.executable, "-m", "benchmark", "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    ).stdout
    for group in ("dataset", "model", "method", "metric", "logger"):
        assert f"{group}:" in out
    assert "method.grid" in out
    job = subprocess.run(
        [sys.executable, "-m", "benchmark", "--cfg", "job", "method=diffseg"], capture_output=True, text=True,
        cwd=REPO, timeout=120,
    ).stdout
    assert "kl_threshold" in job and "extract:" in job


def test_groups_constant_matches_conf_dirs():
    present = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    assert {"dataset", "model", "method", "metric", "logger", "experiment"} <= present
    assert set(GROUPS) >= {"dataset", "model", "method", "metric", "logger", "experiment"}


def test_plugin_value_checks_surface_as_config_errors():
    cfg = compose_config(["method.kl_threshold=[1.0,1.1]"])  # 2 values for 3 merge iterations
    with pytest.raises(ConfigError, match="kl_threshold"):
        validate(cfg)


SWEEP_BASES = {"alpha_beta": ["method=seediff"], "bg_threshold": ["method=diffsegmenter"]}


@pytest.mark.parametrize("option", group_options("sweep"))
def test_every_sweep_composes_and_validates(option):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = SWEEP_BASES.get(option, ["experiment=diffseg_cocostuff27"]) + [f"sweep={option}"]
    v = validate(compose_config(overrides))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        full = compose("config", overrides=overrides, return_hydra_config=True)
    job_axes = dict(full.hydra.sweeper.params or {})
    # a sweep is either an in-run grid (cheap axes) or Hydra job axes (expensive ones)
    assert (len(v.method.points) > 1) != bool(job_axes), option
    for key in job_axes:
        assert key.split(".")[0] in ("method", "model", "dataset"), key


def test_predictions_need_a_dir_and_kind_picks_the_auto_metric():
    with pytest.raises(ConfigError, match="method.dir"):
        validate(compose_config(["method=predictions"]))
    assert validate(compose_config(["method=predictions", "method.dir=/x"])).metric.name == "miou"
    v = validate(compose_config(["method=predictions", "method.dir=/x", "method.kind=segments"]))
    assert v.metric.name == "hungarian_image"


@pytest.mark.parametrize("overrides,key", [
    # the preset has a grid (its official background sweep): the bad value is not a grid axis
    (["experiment=diffsegmenter_voc21", "method.ing_offset=two"], "'method.ing_offset'"),
    (["method=diffcut", "method.alpha=x", "method.grid.tau=[0.3,0.4]"], "'method.alpha'"),
])
def test_a_bad_value_outside_the_grid_is_named_as_written(overrides, key):
    """Found by a new user: method.ing_offset=two was reported as
    'method.grid(bg_threshold=0.3).ing_offset', a grid the user never wrote."""
    with pytest.raises(ConfigError) as err:
        validate(compose_config(overrides))
    assert key in str(err.value) and "grid(" not in str(err.value), str(err.value)


def test_a_bad_grid_value_is_still_named_with_its_grid_point():
    with pytest.raises(ConfigError, match=r"method\.grid\(tau='x'\)\.tau"):
        validate(compose_config(["method=diffcut", "method.grid.tau=[0.3,x]"]))
