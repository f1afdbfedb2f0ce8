"""Inputs and failures as users meet them (issue 14 items 1-5, 8, 12, 13): ids as text, user
config folders, unknown keys, every problem in one message, messages without tracebacks,
empty selections, a clean run directory after a failed start, failed sweep jobs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

from benchmark.__main__ import UsageError, check_group_choices, group_options, prepare_argv
from benchmark.compose import compose_config, run_with_overrides
from benchmark.config import ConfigError, InputError, is_user_error, validate
from test_runner import _write_folder_dataset

REPO = Path(__file__).resolve().parent.parent
CURATED = REPO / "datasets" / "cocostuff27_val2017_curated.txt"
TINY = ["model=tiny", "dataset=synthetic", "dataset.n_images=1", "method.extract.image_size=128", "run.progress=false"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))


def _cli(args, env=None, timeout=300, python_code=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", python_code, *args] if python_code else [sys.executable, "-m", "benchmark", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env or ENV, timeout=timeout)


def _error_lines(stderr: str):
    """stderr without Hydra's own log lines (timestamped)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("[20")]


# --------------------------------------------------------------------------------------
# item 1: ids that YAML reads as numbers
# --------------------------------------------------------------------------------------
def _curated_ids():
    ids = CURATED.read_text().split()
    assert len(ids) == 2175
    return ids


def _experiment_dir(tmp_path: Path, body: str, name: str = "mine") -> Path:
    conf = tmp_path / "userconf"
    (conf / "experiment").mkdir(parents=True, exist_ok=True)
    (conf / "experiment" / f"{name}.yaml").write_text("# @package _global_\n" + body)
    return conf


def test_every_curated_id_is_text_or_refused_never_another_image(tmp_path):
    ids = _curated_ids()
    # unquoted in a config file, as a user would paste them
    conf = _experiment_dir(tmp_path, "dataset:\n  ids: [" + ", ".join(ids) + "]\n")
    cfg = compose_config([f"hydra.searchpath=[file://{conf}]", "experiment=mine"])
    parsed = list(OmegaConf.to_container(cfg.dataset.ids))
    numbers = [(i, v) for i, v in enumerate(parsed) if not isinstance(v, str)]
    assert len(numbers) == 746  # the octal-looking ids (YAML 1.1: leading 0, digits 0-7)
    assert all(isinstance(v, int) and v == int(ids[i], 8) for i, v in numbers)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    problems = err.value.problems
    assert len(problems) == 746  # every one named, not only the first
    first, value = numbers[0]
    assert any(f"'dataset.ids[{first}]'" in p and f"number {value} (int)" in p for p in problems)
    assert "Quote each id" in str(err.value) and "'dataset.ids=[\"000000165713\"]'" in str(err.value)
    # 000000165713 -> octal 60363 is refused, never matched to image 000000060363
    i = ids.index("000000165713")
    assert parsed[i] == 60363 and any(f"'dataset.ids[{i}]' was read as the number 60363" in p for p in problems)

    # quoted: every id arrives as the same text
    conf = _experiment_dir(tmp_path, "dataset:\n  ids: [" + ", ".join(f"'{i}'" for i in ids) + "]\n")
    v = validate(compose_config([f"hydra.searchpath=[file://{conf}]", "experiment=mine"]))
    assert v.dataset.ids == ids


def test_numbers_on_the_command_line_and_in_other_text_keys_are_refused():
    # Hydra's grammar keeps leading-zero digits as text but reads 165713 as an int
    assert validate(compose_config(["dataset.ids=[000000165713]"])).dataset.ids == ["000000165713"]
    with pytest.raises(ConfigError, match=r"'dataset\.ids\[0\]' was read as the number 165713"):
        validate(compose_config(["dataset.ids=[165713]"]))
    # the same kind on any key that holds text: a number or yes/no would become other text
    with pytest.raises(ConfigError) as err:
        validate(compose_config(["method=diffsegmenter", "method.template=2024", "logger.group=true"]))
    assert len(err.value.problems) == 2
    assert "'method.template' expects text but was read as the number 2024 (int)" in str(err.value)
    assert "'logger.group' expects text but was read as the number True (bool)" in str(err.value)


def test_a_single_id_without_brackets_is_a_one_element_list():
    """Leftover item 5: dataset.ids=<one id> failed with "AnyNode is not a ListConfig"."""
    assert validate(compose_config(["dataset.ids=synthetic_000001"])).dataset.ids == ["synthetic_000001"]
    assert validate(compose_config(['dataset.ids="00042"'])).dataset.ids == ["00042"]
    assert validate(compose_config(["dataset.ids=000000165713"])).dataset.ids == ["000000165713"]
    # the number checks still apply: Hydra reads 2008_000002 as the int 2008000002
    for override, number in (("dataset.ids=2008_000002", 2008000002), ("dataset.ids=165713", 165713)):
        with pytest.raises(ConfigError, match=rf"'dataset\.ids\[0\]' was read as the number {number} \(int\)"):
            validate(compose_config([override]))


def test_a_single_id_selects_that_image(tmp_path):
    out = run_with_overrides(TINY[:2] + ["dataset.n_images=3", "dataset.ids=synthetic_000002"] + TINY[3:]
                             + ["run.report=false"], tmp_path / "run")
    assert out.payload["image_ids"] == ["synthetic_000002"]


@pytest.mark.slow
def test_numeric_id_on_the_cli_exits_2_naming_key_value_and_quoting():
    proc = _cli(["dataset.ids=[165713]"] + TINY[1:])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "dataset.ids[0]" in proc.stderr and "165713 (int)" in proc.stderr and "Quote" in proc.stderr


# --------------------------------------------------------------------------------------
# item 2: user config folders, for every group, in every Hydra way
# --------------------------------------------------------------------------------------
USER_OPTIONS = {
    "dataset": "name: synthetic\nn_images: 1\nheight: 32\nwidth: 32\nnum_workers: 0\n",
    "model": "name: tiny\n",
    "method": "name: diffseg\nkl_threshold: 0.8\n",
    "metric": "name: miou\n",
    "logger": "name: none\n",
    "sweep": "# @package _global_\nmethod:\n  grid:\n    kl_threshold: [0.7, 0.9]\n",
    "experiment": "# @package _global_\ndefaults:\n  - override /dataset: my_dataset\n  - override /method: my_method\n"
                  "method:\n  extract:\n    image_size: 128\nrun:\n  progress: false\n",
}


def _user_conf(root: Path) -> Path:
    for group, body in USER_OPTIONS.items():
        (root / group).mkdir(parents=True, exist_ok=True)
        (root / group / f"my_{group}.yaml").write_text(body)
    return root


def test_user_config_dir_and_searchpath_options_for_every_group(tmp_path):
    conf = _user_conf(tmp_path / "conf")
    for way in (["--config-dir", str(conf)], [f"--config-dir={conf}"], [f"hydra.searchpath=[file://{conf}]"]):
        for group in USER_OPTIONS:
            check_group_choices(way + [f"{group}=my_{group}"])  # no UsageError
    # composing through hydra.searchpath: every group's user option is read
    args = [f"hydra.searchpath=[file://{conf}]"] + [f"{g}=my_{g}" for g in USER_OPTIONS if g != "experiment"]
    v = validate(compose_config(args))
    assert v.dataset.n_images == 1 and v.method.points[0].kl_threshold == 0.7 and len(v.method.points) == 2
    assert v.metric.name == "miou"
    v = validate(compose_config([f"hydra.searchpath=[file://{conf}]", "experiment=my_experiment"]))
    assert v.dataset.height == 32 and v.method.extract.image_size == 128 and v.method.points[0].kl_threshold == 0.8
    # the did-you-mean list includes the user's options
    with pytest.raises(UsageError):
        check_group_choices(["--config-dir", str(conf), "experiment=my_experimnt"])
    assert "my_experiment" in group_options("experiment", [f"file://{conf}"])
    assert "my_experiment" not in group_options("experiment")


def _plugin_package(root: Path, conf: Path) -> Path:
    """What a pip-installed package registering a search path puts on sys.path."""
    pkg = root / "site" / "hydra_plugins" / "bench_user_conf"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(f"""
        from hydra.core.config_search_path import ConfigSearchPath
        from hydra.plugins.search_path_plugin import SearchPathPlugin


        class UserConf(SearchPathPlugin):
            def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
                search_path.append(provider="bench-user-conf", path="file://{conf}")
    """))
    return root / "site"


def test_cli_runs_user_experiment_from_config_dir_searchpath_and_plugin(tmp_path):
    conf = _user_conf(tmp_path / "conf")
    site = _plugin_package(tmp_path, conf)
    plugin_env = dict(ENV, PYTHONPATH=f"{site}{os.pathsep}{REPO}")
    for args, env in ((["--config-dir", str(conf)], ENV), ([f"hydra.searchpath=[file://{conf}]"], ENV), ([], plugin_env)):
        proc = _cli(["--cfg", "job"] + args + ["experiment=my_experiment"], env=env)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        job = yaml.safe_load(proc.stdout)
        assert job["dataset"]["height"] == 32 and job["method"]["kl_threshold"] == 0.8, args
        bad = _cli(args + ["experiment=my_experimnt"], env=env)
        assert bad.returncode == 2 and "Did you mean 'my_experiment'" in bad.stderr, (args, bad.stderr[-2000:])


@pytest.mark.slow
def test_cli_full_run_of_a_user_experiment(tmp_path):
    conf = _user_conf(tmp_path / "conf")
    proc = _cli(["--config-dir", str(conf), "experiment=my_experiment", f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_images"] == 1


# --------------------------------------------------------------------------------------
# item 3: an unknown key without "+"
# --------------------------------------------------------------------------------------
def test_unknown_key_without_plus_gets_the_same_answer_as_with_plus():
    answers = []
    for override in ("method.kl_treshold=1.0", "+method.kl_treshold=1.0"):
        with pytest.raises(ConfigError) as err:
            validate(compose_config([override]))
        answers.append(str(err.value))
    assert answers[0] == answers[1]
    assert "Valid keys" in answers[0] and "Did you mean 'kl_threshold'" in answers[0]
    # top level and nested keys, and an existing key is still overridden
    with pytest.raises(ConfigError, match=r"'rnu'.*Did you mean 'run'"):
        validate(compose_config(["rnu.batch_size=2"]))
    with pytest.raises(ConfigError, match=r"method\.extract\.timestpe.*Did you mean 'timestep'"):
        validate(compose_config(["method.extract.timestpe=10"]))
    assert validate(compose_config(["method.kl_threshold=0.7"])).method.points[0].kl_threshold == 0.7
    # group choices and hydra keys keep Hydra's own meaning
    assert prepare_argv(["method=diffseg", "hydra.run.dir=x", "run.seed=1"]) == ["method=diffseg", "hydra.run.dir=x", "++run.seed=1"]


@pytest.mark.slow
def test_unknown_key_without_plus_on_the_cli():
    outs = [_cli([o, "run.progress=false"]) for o in ("method.kl_treshold=1.0", "+method.kl_treshold=1.0")]
    for proc in outs:
        assert proc.returncode == 2 and "Did you mean 'kl_threshold'" in proc.stderr, proc.stderr[-2000:]
        assert "not in struct" not in proc.stderr and "Traceback" not in proc.stderr
    assert _error_lines(outs[0].stderr) == _error_lines(outs[1].stderr)


# --------------------------------------------------------------------------------------
# item 4: every conflicting setting in one message; presets follow their switches
# --------------------------------------------------------------------------------------
def test_all_conflicting_settings_in_one_message():
    with pytest.raises(ConfigError) as err:
        validate(compose_config(["experiment=diffsegmenter_context60", "method.candidates=gt",
                                 "method.captioner=blip", "method.caption_prompt=true"]))
    problems = err.value.problems
    assert len(problems) == 2
    assert any("method.captioner=blip" in p for p in problems)
    assert any("method.caption_prompt=true" in p for p in problems)
    # problems of several sections together
    with pytest.raises(ConfigError) as err:
        validate(compose_config(["method.kl_treshold=1", "method.extract.latent=avg", "run.batch_size=0",
                                 "logger.name=wandbb", "dataset.limit=-1x"]))
    text = str(err.value)
    assert len(err.value.problems) == 5, text
    for key in ("method.kl_treshold", "method.extract.latent", "run.batch_size", "logger.name", "dataset.limit"):
        assert key in text


def _switch_values(text: str):
    """Documented values of each switch an experiment sets (method.candidates)."""
    return {"candidates": ["all", "gt", "file", "clip"]} if "\n  candidates:" in text else {}


@pytest.mark.parametrize("option", group_options("experiment"))
def test_experiment_presets_stay_coherent_when_a_switch_is_flipped(option):
    text = (REPO / "conf" / "experiment" / f"{option}.yaml").read_text()
    for key, values in _switch_values(text).items():
        for value in values:
            extra = ["method.candidates_file=/x.json"] if value == "file" else []
            v = validate(compose_config([f"experiment={option}", f"method.{key}={value}"] + extra))
            assert getattr(v.method.settings, key) == value
    if "diffsegmenter" in option:  # the published preset itself is unchanged
        s = validate(compose_config([f"experiment={option}"])).method.settings
        assert (s.candidates, s.captioner, s.caption_prompt) == ("clip", "blip", True)


# --------------------------------------------------------------------------------------
# item 5: user errors print the message alone (exit 2); bugs keep their traceback
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,expect", [
    (["dataset.limit=0"], "dataset.limit=0 selects no image"),
    pytest.param(["dataset=voc21", "dataset.root=/nowhere/voc", "method=predictions", "method.dir=/x"], "/nowhere/voc",
                 marks=pytest.mark.slow),
    pytest.param(["method.kl_threshold=[1.0,1.1]"], "kl_threshold", marks=pytest.mark.slow),
])
def test_config_and_data_errors_print_the_message_alone(tmp_path, args, expect):
    proc = _cli(args + ["run.progress=false", f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 2, (args, proc.stderr[-2000:])
    lines = _error_lines(proc.stderr)
    assert lines and lines[0].startswith("Error: ") and expect in proc.stderr, (args, proc.stderr)
    assert "Traceback" not in proc.stderr and len(lines) <= 3, (args, proc.stderr)
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").glob("records*"))


@pytest.mark.slow
def test_a_bug_keeps_its_traceback(tmp_path):
    code = ("import sys, benchmark.runner as r\n"
            "def broken(*a, **k):\n    raise ZeroDivisionError('a bug')\n"
            "r.Runner._loop = broken\n"
            "from benchmark.__main__ import main\nmain(sys.argv[1:])\n")
    proc = _cli(TINY + [f"hydra.run.dir={tmp_path / 'run'}"], python_code=code)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ZeroDivisionError: a bug" in proc.stderr


def test_user_errors_and_bugs_are_told_apart():
    from benchmark.data.errors import DatasetNotFoundError
    from benchmark.records import RunMismatchError

    for err in (ConfigError("x"), RunMismatchError("x"), DatasetNotFoundError("x"), FileNotFoundError("x")):
        assert is_user_error(err), err
    for err in (ZeroDivisionError(), RuntimeError("x"), ValueError("x"), KeyError("x")):
        assert not is_user_error(err), err


# --------------------------------------------------------------------------------------
# item 8: empty selections; report on unreadable run directories
# --------------------------------------------------------------------------------------
def test_empty_selection_is_an_error_at_start(tmp_path):
    for override, expect in (("dataset.ids=[]", "dataset.ids=[] selects no image"),
                             ("dataset.limit=0", "dataset.limit=0 selects no image")):
        with pytest.raises(ConfigError) as err:
            run_with_overrides(TINY + [override], tmp_path / "run")
        assert expect in str(err.value)
    assert not (tmp_path / "run").exists()


def _empty_run_like_before(run_dir: Path, good_run: Path) -> None:
    """The files an empty run left before empty selections were refused."""
    run_dir.mkdir(parents=True)
    payload = json.loads((good_run / "metrics.json").read_text())
    payload.update(n_images=0, n_expected=0)
    (run_dir / "metrics.json").write_text(json.dumps(payload))
    pd.DataFrame().to_parquet(run_dir / "per_image.parquet")


def test_report_names_unreadable_run_dirs_and_keeps_the_rest(tmp_path, capsys):
    from benchmark.report import main as report_main
    from benchmark.report import report

    run_with_overrides(TINY, tmp_path / "sweep" / "0")
    _empty_run_like_before(tmp_path / "sweep" / "1", tmp_path / "sweep" / "0")
    result = report([tmp_path / "sweep"], plots=False)
    assert [r.name for r in result["runs"]] == ["0"]
    assert [(e["run_dir"].name, e["status"]) for e in result["failed"]] == [("1", "unreadable")]
    combined = pd.read_csv(tmp_path / "sweep" / "combined.csv")
    assert combined["run"].tolist() == [0, 1] and combined["status"].tolist() == ["ok", "unreadable"]
    assert "no per-image record" in combined["error"][1]
    assert "unreadable run" in capsys.readouterr().err
    # the unreadable directory alone: an error naming it (exit 2), not a KeyError
    with pytest.raises(SystemExit) as exit_:
        report_main([str(tmp_path / "sweep" / "1"), "--no-plots"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "sweep" / "1") in err and "no per-image record" in err and "KeyError" not in err


# --------------------------------------------------------------------------------------
# item 12: nothing written to the run directory before every check passed
# --------------------------------------------------------------------------------------
def test_a_failed_start_leaves_the_run_directory_usable(tmp_path):
    _write_folder_dataset(tmp_path / "data")
    for name, shape in (("bad", (5, 4)), ("good", (4, 4))):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros(shape, np.uint8), mode="L").save(tmp_path / name / "img0.png")
    base = ["dataset=folder", f"dataset.root={tmp_path / 'data'}", "dataset.classes_file=classes.txt",
            "method=predictions", "metric=miou", "run.progress=false"]
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"img0.*5x4.*4x4") as err:
        run_with_overrides(base + [f"method.dir={tmp_path / 'bad'}"], run_dir)
    assert is_user_error(err.value)
    assert not list(run_dir.glob("records*")) if run_dir.exists() else True
    # the corrected rerun into the same directory (another fingerprint) runs
    out = run_with_overrides(base + [f"method.dir={tmp_path / 'good'}"], run_dir)
    assert out.payload["n_images"] == 1
    # a header-only records file of another configuration (older versions wrote one at
    # start) holds nothing to protect either
    run2 = tmp_path / "run2"
    run2.mkdir()
    (run2 / "records.rank0.jsonl").write_text(json.dumps({"kind": "header", "fingerprint": {"other": 1}}) + "\n")
    assert run_with_overrides(base + [f"method.dir={tmp_path / 'good'}"], run2).payload["n_images"] == 1
    # a mismatch with real records is refused before anything is written
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(Exception, match="different configuration") as err:
        run_with_overrides(base + [f"method.dir={tmp_path / 'good'}", "metric=hungarian_image"], run_dir)
    assert is_user_error(err.value)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_size_check_failing_at_the_first_image_does_not_block_the_corrected_rerun(tmp_path):
    run_dir = tmp_path / "run"
    # 64 px input: DiffSeg's 16 anchors per axis do not fit the 8-side attention
    with pytest.raises(ValueError, match="anchor_grid=16"):
        run_with_overrides(TINY + ["method.extract.image_size=64"], run_dir)
    assert not list(run_dir.glob("records*")) if run_dir.exists() else True
    assert run_with_overrides(TINY, run_dir).payload["n_images"] == 1


# --------------------------------------------------------------------------------------
# item 13: failed sweep jobs are rows of the combined table
# --------------------------------------------------------------------------------------
def test_failed_job_is_a_row_of_the_combined_table(tmp_path):
    from benchmark.__main__ import record_failed_job
    from benchmark.report import report

    sweep = tmp_path / "sweep"
    run_with_overrides(TINY + ["dataset.limit=1"], sweep / "0")
    cfg = compose_config(TINY + ["dataset.limit=0"])
    record_failed_job(sweep / "1", ConfigError("dataset.limit=0 selects no image"), cfg, ["dataset.limit=0"])
    # a job folder as a job that died leaves it (Hydra's .hydra/ only, no results)
    (sweep / "2" / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config(TINY + ["dataset.limit=3"]), sweep / "2" / ".hydra" / "config.yaml")
    result = report([sweep], plots=False)
    combined = pd.read_csv(sweep / "combined.csv")
    assert combined["run"].tolist() == [0, 1, 2]
    assert combined["dataset.limit"].tolist() == [1, 0, 3]
    assert combined["status"].tolist() == ["ok", "failed", "incomplete"]
    assert combined["error"][1] == "dataset.limit=0 selects no image"
    assert "did not finish" in combined["error"][2]
    assert "failed" in (sweep / "combined.md").read_text()
    assert result["failed"][0]["user_error"] is True


@pytest.mark.slow
def test_multirun_with_a_failing_job_lists_it_and_exits_non_zero(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _cli(["-m"] + TINY + ["dataset.limit=1,0", f"hydra.sweep.dir={sweep}"], timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "1 of 2 sweep jobs failed" in proc.stderr and "Traceback" not in proc.stderr
    combined = pd.read_csv(sweep / "combined.csv")
    assert combined["status"].tolist() == ["ok", "failed"]
    assert "dataset.limit=0 selects no image" in combined["error"][1]
    # fixing the job's config in the same sweep dir: the error file goes, the table is whole
    proc = _cli(["-m"] + TINY + ["dataset.limit=1,2", f"hydra.sweep.dir={sweep}"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (sweep / "1" / "error.json").exists()
    assert "status" not in pd.read_csv(sweep / "combined.csv").columns


def test_hydra_composition_errors_exit_2_without_traceback(tmp_path):
    conf = _experiment_dir(tmp_path, "defaults:\n  - override /dataset: nope\n", name="bad")
    for args, expect in ((["method.kl_threshold=[1,2"], "no viable alternative"),
                         (["--config-dir", str(conf), "experiment=bad"], "Could not find 'dataset/nope'")):
        proc = _cli(args)
        assert proc.returncode == 2 and expect in proc.stderr, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("overrides, points", [
    (["method.extract.image_size=64"], "method.anchor_grid=16"),  # tiny at 64 px: largest self side 8
    (["method.extract.image_size=128", "method.grid.anchor_grid=[8,32]"], "method.anchor_grid=32"),  # one grid point
])
def test_an_anchor_grid_larger_than_the_captured_side_is_refused_at_start(tmp_path, overrides, points):
    """DiffSeg's anchor grid must fit the largest self-attention side the model captures at
    the run's image size: refused before any image (it failed at the first one, with a
    traceback), naming the key, the side and the remedy."""
    run = tmp_path / "run"
    with pytest.raises(ValueError) as err:  # a user error: the CLI prints it alone, exit code 2
        run_with_overrides(TINY[:3] + ["method=diffseg", "run.progress=false"] + overrides, run)
    assert is_user_error(err.value)
    message = str(err.value)
    assert message.startswith(points) and "largest self-attention side" in message and "lower method.anchor_grid" in message
    assert not run.exists() or not any(run.iterdir())
    run_with_overrides(TINY + ["method=diffseg", "run.report=false"], tmp_path / "ok")  # 128 px: side 16 fits


def test_an_unusable_cache_dir_is_refused_before_any_image_naming_the_key(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError) as err:
        run_with_overrides(TINY + ["method=diffseg", f"cache.dir={blocker}/cache"], tmp_path / "run")
    assert is_user_error(err.value)
    assert str(err.value).startswith(f"cache.dir={blocker}/cache: cannot create the attention cache folder")


def test_a_missing_candidates_file_message_describes_captions_too(tmp_path):
    from benchmark.candidates import resolve_candidates

    with pytest.raises(FileNotFoundError, match=r'does not exist \(expected a JSON object image_id -> \[class names\] or -> \{"caption"'):
        resolve_candidates("file", "img", torch.zeros(1, 1), ["background", "cat"], 255, str(tmp_path / "missing.json"))
