"""Third-party methods through the ``diffattn_seg.methods`` entry-point group: a small
plugin package (source + a ``.dist-info`` with ``entry_points.txt``) is put on a temporary
``sys.path`` entry and then behaves like a built-in method: listed by ``--help``, in the
"Valid choices" / "did you mean" errors, its keys validated, grids and runs end to end."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmark.compose import compose_config, run_with_overrides
from benchmark.config import ConfigError, validate

REPO = Path(__file__).resolve().parents[1]
TINY_FAST = ["model=tiny", "dataset=synthetic", "dataset.n_images=1", "method.extract.image_size=64",
             "run.progress=false"]

PLUGIN_SOURCE = '''
"""A third-party method: k-means-free banding of the largest self-attention's first
principal direction (enough to test the plugin path; not a segmentation method)."""
from dataclasses import dataclass
from typing import ClassVar, List

import torch
import torch.nn.functional as F

from benchmark.types import AttentionRequest
from methods.base import Method

#: (image_id, n_bands, captured self-attention sides) of every segment() call
CALLS: List[tuple] = []


@dataclass
class BandParams:
    n_bands: int = 2

    def __post_init__(self):
        if self.n_bands < 1:
            raise ValueError(f"method.n_bands={self.n_bands}: expected >= 1")


@dataclass
class BandSettings:
    side: int = 0  # 0: the largest captured side


class AttentionBands(Method):
    name = "attn_bands"
    Params = BandParams
    Settings = BandSettings
    default_config: ClassVar[dict] = {"extract": {"timestep": 100}}

    def attention_request(self, params):
        side = self.image_size // 8 // 2
        return AttentionRequest(self_resolutions=(side,))

    def segment(self, attn, ctx, params):
        side = max(attn.self_attn)
        CALLS.append((ctx.image_id, params.n_bands, sorted(attn.self_attn)))
        sa = attn.self_attn[side][0]  # (side*side, side*side)
        score = sa.diagonal().reshape(1, 1, side, side)
        score = F.interpolate(score, size=ctx.out_size, mode="bilinear", align_corners=False)[0, 0]
        ranks = score.flatten().argsort().argsort().reshape(score.shape)
        return (ranks * params.n_bands // ranks.numel()).long()


class NotAMethod:
    pass
'''


def _write_plugin(site: Path, dist: str = "attn_bands_plugin", entries: str = "") -> Path:
    """A plugin as pip would leave it in site-packages: the module and its dist-info."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{dist}.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[diffattn_seg.methods]\n"
        f"attn_bands = {dist}:AttentionBands\n"
        f"not_a_method = {dist}:NotAMethod\n"
        f"missing_class = {dist}:Nowhere\n"
        "diffseg = somebody.else:DiffSeg\n" + entries
    )
    return site


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    import methods

    site = _write_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    methods.reload_plugins()
    yield site
    monkeypatch.undo()
    sys.modules.pop("attn_bands_plugin", None)
    methods.reload_plugins()
    from hydra.core.config_store import ConfigStore

    repo = ConfigStore.instance().repo.get("method", {})
    for name in ("attn_bands.yaml", "not_a_method.yaml", "missing_class.yaml"):
        repo.pop(name, None)


def test_plugin_is_listed_validated_and_runs_end_to_end(plugin_site, tmp_path, caplog):
    import methods
    from benchmark.__main__ import group_options

    assert "attn_bands" in methods.METHODS and methods.PLUGINS["attn_bands"].dist == "attn_bands_plugin 0.1"
    # a built-in name cannot be taken over by a plugin
    assert methods.METHODS["diffseg"] == methods.BUILTIN_METHODS["diffseg"]
    assert "attn_bands" in group_options("method") and "diffseg" in group_options("method")

    # its config is built from its dataclasses, default_config applied
    cfg = compose_config(TINY_FAST + ["method=attn_bands", "method.n_bands=3"])
    assert cfg.method.name == "attn_bands" and cfg.method.n_bands == 3 and cfg.method.side == 0
    assert cfg.method.extract.timestep == 100 and cfg.method.extract.image_size == 64
    spec = validate(cfg).method
    assert spec.cls.__name__ == "AttentionBands" and spec.points[0].n_bands == 3

    # validation like a built-in: unknown key, bad value, unknown grid axis
    with pytest.raises(ConfigError, match=r"method\.n_band'.*Did you mean 'n_bands'"):
        validate(compose_config(TINY_FAST + ["method=attn_bands", "+method.n_band=3"]))
    with pytest.raises(ConfigError, match="n_bands=0: expected >= 1"):
        validate(compose_config(TINY_FAST + ["method=attn_bands", "method.n_bands=0"]))
    with pytest.raises(ConfigError, match="grid axis 'method.grid.timestep'"):
        validate(compose_config(TINY_FAST + ["method=attn_bands", "method.grid.timestep=[1,2]"]))

    # end to end, with an in-run grid over its own parameter
    out = run_with_overrides(TINY_FAST + ["method=attn_bands", "method.grid.n_bands=[2,4]"], tmp_path / "run")
    payload = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert payload["method"]["name"] == "attn_bands" if isinstance(payload["method"], dict) else payload["method"]
    assert [r["params"]["n_bands"] for r in out.payload["results"]] == [2, 4]
    assert payload["n_images"] == 1 and payload["diffusion_passes"] == 1
    for r in out.payload["results"]:
        assert 0.0 <= r["metrics"]["mIoU"] <= 100.0
    plugin = sys.modules["attn_bands_plugin"]
    assert sorted(plugin.CALLS) == [("synthetic_000000", 2, [4]), ("synthetic_000000", 4, [4])]


def test_plugin_names_in_unknown_choice_errors_and_broken_plugins_fail_at_start(plugin_site, capsys):
    from benchmark.__main__ import UsageError, check_group_choices

    with pytest.raises(UsageError):
        check_group_choices(["method=attn_band"])
    err = capsys.readouterr().err
    assert "attn_bands" in err and "Did you mean 'attn_bands'" in err

    from methods import get_method
    from benchmark.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="attn_bands"):
        get_method("attn_band")
    # a plugin entry whose class is missing or is not a Method fails when chosen, naming the plugin
    with pytest.raises(ConfigError, match=r"missing_class.*attn_bands_plugin 0\.1.*cannot be loaded"):
        validate(compose_config(TINY_FAST + ["method=missing_class"]))
    with pytest.raises(ConfigError, match="not a subclass of methods.base.Method"):
        validate(compose_config(TINY_FAST + ["method=not_a_method"]))


def test_without_the_plugin_the_name_is_unknown(capsys):
    import methods

    assert "attn_bands" not in methods.METHODS
    with pytest.raises(SystemExit):
        compose_config(TINY_FAST + ["method=attn_bands"])
    assert "unknown method 'attn_bands'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_help_and_run_list_the_plugin(tmp_path):
    """The real CLI in a fresh interpreter, the plugin found through PYTHONPATH."""
    site = _write_plugin(tmp_path / "site")
    env = {"PYTHONPATH": f"{site}:{REPO}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    helped = subprocess.run([sys.executable, "-m", "benchmark", "--help"], capture_output=True, text=True,
                            cwd=REPO, env=env, timeout=300)
    assert helped.returncode == 0, helped.stderr[-2000:]
    groups = helped.stdout.split("== Config groups")[1].split("==")[1]
    assert "attn_bands" in groups and "diffseg" in groups
    ran = subprocess.run([sys.executable, "-m", "benchmark", *TINY_FAST, "method=attn_bands",
                          f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=REPO, env=env,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_images"] == 1
