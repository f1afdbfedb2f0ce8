"""benchmarks/methods_speed.py: one run times every registered method (new ones included)
on the same synthetic attention and counts the UNet prompts of each preset's candidate mode."""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.types import AttentionRequest
from methods.base import Method

REPO = Path(__file__).resolve().parent.parent


def _load_script():
    spec = importlib.util.spec_from_file_location("methods_speed", REPO / "benchmarks" / "methods_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class _ToyParams:
    side: int = 16


class ToyPlugin(Method):
    """A method registered after the script was written: it must show up without edits."""

    name = "toy_plugin"

    def attention_request(self, params):
        return AttentionRequest(self_resolutions=(params.side,))

    def segment(self, attn, ctx, params):
        maps = attn.self_attn[params.side][0]
        segments = maps.argmax(-1).view(1, 1, params.side, params.side).float()
        return torch.nn.functional.interpolate(segments, size=tuple(ctx.out_size), mode="nearest")[0, 0].long()


ToyPlugin.Params = _ToyParams


def test_methods_speed_times_registered_methods_and_counts_prompts(monkeypatch, capsys):
    import methods

    monkeypatch.setitem(methods.METHODS, "toy_plugin", f"{__name__}:ToyPlugin")
    script = _load_script()
    script.main(["--only", "predictions,ca,diffsegmenter,diffseg_semantic,toy_plugin", "--repeats", "0", "--out", "96",
                 "--threads", "1"])
    out = capsys.readouterr().out
    assert re.search(r"^predictions\s+skipped: needs no diffusion pass", out, re.M), out
    seconds = {m: float(v) for m, v in re.findall(r"^seconds_per_image_(\w+)=(\d+\.\d+)$", out, re.M)}
    assert set(seconds) == {"ca", "diffsegmenter", "diffseg_semantic", "toy_plugin"} and min(seconds.values()) > 0, out
    prompts = {m: int(v) for m, v in re.findall(r"^unet_prompts_per_image_(\w+)=(\d+)$", out, re.M)}
    # presets use candidates=all: one prompt per VOC class without background (20); gt: the 3 objects;
    # diffseg_semantic reads a (synthetic) captions file: one caption, one UNet row for its 3 nouns
    assert prompts == {"ca": 20, "diffsegmenter": 20, "diffseg_semantic": 1, "toy_plugin": 1}, out
    assert re.search(r"^diffsegmenter\s.*\ball\s+20\s+3\s+1\s+\d+$", out, re.M), out
    # candidates=gt gives diffseg_semantic no caption: not countable, "n/a" (it printed -1)
    assert re.search(r"^diffseg_semantic\s.*\bfile\s+1\s+n/a\s+1\s+\d+$", out, re.M), out


def test_synthetic_scene_is_structured():
    script = _load_script()
    labels = script.scene_labels()
    assert labels.shape == (64, 64) and set(torch.unique(labels).tolist()) == {0, 1, 2, 3}
    from benchmark.types import PromptQuery

    query = PromptQuery(text="a photograph of cat", word="cat")
    assert script.token_position(query) == [4]  # BOS, a, photograph, of, cat
    maps = script.cross_attention(labels, (16,), [query], [1], [[4]], torch.Generator().manual_seed(0))[16]
    torch.testing.assert_close(maps.sum(-1), torch.ones(1, 256))
    inside = (torch.nn.functional.avg_pool2d(labels.eq(1).float()[None, None], 4).flatten() > 0.5)
    assert maps[0, inside, 4].mean() > 5 * maps[0, ~inside, 4].mean()


def test_methods_speed_synthesises_block_features_and_per_layer_cross_attention(capsys):
    """DiffCut reads block-output features and seediff_code per-layer cross-attention: both
    are synthesised, so both methods are timed rather than skipped."""
    script = _load_script()
    script.main(["--only", "diffcut,seediff_code", "--repeats", "0", "--out", "64", "--threads", "1",
                 "--set", "seediff_code.pamr_iterations=2"])
    out = capsys.readouterr().out
    seconds = {m: float(v) for m, v in re.findall(r"^seconds_per_image_(\w+)=(\d+\.\d+)$", out, re.M)}
    assert set(seconds) == {"diffcut", "seediff_code"}, out
    assert not re.search(r"skipped", out), out


def test_a_misspelled_set_key_is_a_usage_error_not_a_skipped_method(capsys):
    """``--set diffseg.kl_treshold=1`` used to print "diffseg skipped: its preset needs
    more than synthetic inputs" and exit 0 (and a typo for diffseg_semantic, whose preset
    gets a synthetic captions file, ended in a ConfigError traceback): both now fail at
    start with the config's message, exit code 2, before anything is timed."""
    import pytest

    script = _load_script()
    for item, key in (("diffseg.kl_treshold=1", "kl_treshold"), ("diffseg_semantic.votng=mean", "votng"),
                      ("seediff_code.pamr_iterations=abc", "pamr_iterations")):
        with pytest.raises(SystemExit) as exit_info:
            script.main(["--only", "diffseg", "--repeats", "0", "--out", "64", "--set", item])
        assert exit_info.value.code == 2
        captured = capsys.readouterr()
        assert key in captured.err and "seconds_per_image" not in captured.out, captured
    assert script.override_error("diffseg_semantic", ["method.voting=majority"]) is None
