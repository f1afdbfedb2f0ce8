"""SeeDiff official-code rules (BAIKLAB-Admin/SeeDiff ``src/seediff_app.py``) on small inputs:
per-layer CA normalisation, float32 Otsu levels, strict thresholds, constant maps, the
class-specific token offsets, and resolution defaults that follow the input size.

References are the official rules written out step by step (loops, numpy float32)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.schema import ExtractionConfig
from benchmark.types import AttentionMaps, PromptQuery, SegmentContext
from methods.seediff import (
    SeeDiff,
    SeeDiffCode,
    SeeDiffCodeParams,
    SeeDiffParams,
    class_cross_attention,
    class_token_columns,
    otsu_foreground,
)

HEADS = 8


def official_layer_sum(per_head: torch.Tensor) -> torch.Tensor:
    """aggregate_attention for one class column: per layer (heads, r, r) summed over heads;
    var() > 1e-4 -> min-max, else min-max × 0.01; the layers summed; then min-max
    (``ca_map_norm`` of save_cross_attention's 16-side call)."""
    out = []
    for layer in per_head:
        m = layer.sum(0)
        norm = (m - m.min()) / (m.max() - m.min())
        out.append(norm if m.var() > 1e-4 else norm * 0.01)
    total = torch.stack(out).sum(0)
    return (total - total.min()) / (total.max() - total.min())


def otsu_official(m: np.ndarray, dtype=np.float32) -> np.ndarray:
    """cv2 THRESH_OTSU on ``((m*m)*255).astype(np.uint16)`` with m float32: loop over splits
    (``dtype=np.float64``: the same rule with the levels computed in float64)."""
    m = m.astype(dtype).reshape(-1)
    levels = ((m * m) * dtype(255)).astype(np.uint16).astype(np.int64)
    n, best, split = levels.size, 0.0, 0
    for t in range(int(levels.max()) + 1):
        low, high = levels[levels <= t], levels[levels > t]
        q1, q2 = low.size / n, high.size / n
        if min(q1, q2) < 1.1920929e-07:
            continue
        sigma = q1 * q2 * (low.mean() - high.mean()) ** 2
        if sigma > best:
            best, split = sigma, t
    return levels > split


def attn_from_layers(per_head: torch.Tensor, word: str = "cat", positions=(5,)) -> AttentionMaps:
    """per_head: (L, heads, r², T) probabilities of one prompt."""
    layers = per_head.sum(1).unsqueeze(1)  # (L, 1, r², T)
    mean = per_head.mean(1).mean(0).unsqueeze(0)  # (1, r², T)
    r = int(per_head.shape[2] ** 0.5)
    return AttentionMaps(
        cross_attn={r: mean}, queries=[PromptQuery(f"a photo of a {word}", word)],
        token_positions=[list(positions)], cross_attn_layers={r: layers},
    )


def peaks(values: dict, r: int = 16) -> torch.Tensor:
    m = torch.zeros(r * r)
    for i, v in values.items():
        m[i] = v
    return m


def layers_with_peaks(peak_list, r=16, t=77, column=5) -> torch.Tensor:
    """(L, heads, r², T): layer l has its class column from peak_list[l] (split over heads)."""
    out = torch.full((len(peak_list), HEADS, r * r, t), 1.0 / t)
    for l, values in enumerate(peak_list):
        out[l, :, :, column] = peaks(values, r) / HEADS
    return out


# --------------------------------------------------------------------------- item 9
def test_per_layer_normalisation_equals_the_official_rule_and_changes_the_seeds():
    # two layers with peaks of different height: the layer mean sees one peak, the
    # official per-layer min-max sees both
    per_head = layers_with_peaks([{0: 1.0}, {255: 0.3}])
    attn = attn_from_layers(per_head)
    code = SeeDiffCodeParams(ca_resolution=16)
    ca = class_cross_attention(attn, 16, code)[0]
    reference = official_layer_sum(per_head[..., 5].view(2, HEADS, 16, 16))
    norm = (ca - ca.min()) / (ca.max() - ca.min())
    torch.testing.assert_close(norm, reference, atol=1e-6, rtol=0)
    seeds_code = otsu_foreground(norm.view(1, -1))[0].nonzero().flatten().tolist()
    assert seeds_code == np.flatnonzero(otsu_official(reference.numpy())).tolist() == [0, 255]
    mean_params = SeeDiffCodeParams(ca_resolution=16, ca_aggregation="mean")
    mean = class_cross_attention(attn, 16, mean_params)[0]
    mean = (mean - mean.min()) / (mean.max() - mean.min())
    assert otsu_foreground(mean.view(1, -1))[0].nonzero().flatten().tolist() == [0]


def test_low_variance_layers_are_damped_by_0_01():
    g = torch.Generator().manual_seed(3)
    per_head = layers_with_peaks([{10: 1.0, 40: 0.5}, {100: 0.1}, {200: 0.9}])  # layer 1: var < 1e-4
    per_head = per_head + 1e-3 * torch.rand(per_head.shape, generator=g)
    ca = class_cross_attention(attn_from_layers(per_head), 16, SeeDiffCodeParams(ca_resolution=16))[0]
    norm = (ca - ca.min()) / (ca.max() - ca.min())
    reference = official_layer_sum(per_head[..., 5].view(3, HEADS, 16, 16))
    torch.testing.assert_close(norm, reference, atol=1e-6, rtol=0)
    assert per_head[1, :, :, 5].sum(0).var() <= 1e-4 and float(reference.view(-1)[100]) < 0.02


def test_code_preset_captures_the_16_side_layers_one_by_one():
    request = SeeDiffCode(extract=ExtractionConfig()).attention_request(SeeDiffCodeParams())
    assert request.cross_resolutions == (16,) and request.cross_layer_resolutions == (16,)
    assert SeeDiff(extract=ExtractionConfig()).attention_request(SeeDiffParams()).cross_layer_resolutions == ()


# --------------------------------------------------------------------------- item 10
def test_otsu_levels_are_float32_as_the_official_code():
    # bicubically upsampled maps (values above 1 are overshoot); 0.99014753 is a float32
    # whose square × 255 is 250 in float32 and 249.99999... in float64
    values = torch.from_numpy(np.array([[0.99014753, 0.9298956, 0.9911372, 1.0488088]], dtype=np.float32))
    ours = otsu_foreground(values)[0].numpy()
    np.testing.assert_array_equal(ours, otsu_official(values[0].numpy()))
    assert ours.tolist() != otsu_official(values[0].numpy(), np.float64).tolist()  # float64: another foreground


@pytest.mark.parametrize("cls, params, kept", [
    (SeeDiff, SeeDiffParams(ca_resolution=4, sa_resolutions=[4]), True),   # Eq. 12: >= beta
    (SeeDiffCode, SeeDiffCodeParams(ca_resolution=4, sa_resolutions=[4], pamr_iterations=0), False),  # code: > 0.3
])
def test_beta_is_strict_in_the_code_preset(cls, params, kept):
    m = cls(extract=ExtractionConfig(image_size=128))
    soft = torch.tensor([[[0.3, 0.2], [0.9, 0.31]]])
    m.soft_masks = lambda *args, **kw: soft
    ctx = SegmentContext("img", (2, 2), class_names=["background", "cat"], candidates=[1])
    scores = m.prompt_scores(None, ctx, params)[0]
    assert bool(scores[0, 0] > 0) is kept and float(scores[1, 1]) == pytest.approx(0.31) and float(scores[0, 1]) == 0


def test_pamr_threshold_is_strict_in_the_code_preset():
    from methods.seediff import passes

    x = torch.tensor([0.8, 0.81, 0.79])
    assert passes(x, 0.8, True).tolist() == [False, True, False]
    assert passes(x, 0.8, False).tolist() == [True, True, False]
    assert SeeDiffCodeParams().strict_thresholds and not SeeDiffParams().strict_thresholds


def test_constant_maps_give_a_defined_empty_result():
    # the official code divides 0 by 0 here (NaN maps); the harness's min-max gives zeros,
    # Otsu finds no foreground and the class mask is empty, without NaN anywhere
    r = 4
    per_head = torch.full((2, HEADS, r * r, 77), 1.0 / 77)
    attn = attn_from_layers(per_head)
    sides = [4, 8, 16]
    attn.self_attn = {s: torch.full((1, s * s, s * s), 1.0 / (s * s)) for s in sides}
    m = SeeDiffCode(extract=ExtractionConfig(image_size=128))
    params = SeeDiffCodeParams(ca_resolution=4, sa_resolutions=sides, pamr_iterations=0)
    ctx = SegmentContext("img", (16, 16), class_names=["background", "cat"], candidates=[1])
    soft = m.soft_masks(attn, ctx, params)
    assert torch.isfinite(soft).all()
    assert bool((m.segment(attn, ctx, params) == 0).all())
    assert not otsu_foreground(torch.full((1, 16), float("nan"))).any()


# --------------------------------------------------------------------------- item 11
@pytest.mark.parametrize("word, positions, columns", [
    ("pottedplant", [5, 6, 7], [5, 7]),   # pot ted plant: first and +2 ("plant")
    ("tvmonitor", [5, 6], [5, 7]),        # tv monitor: first and +2 (as the code: the end-of-text token)
    ("cell phone", [5, 6], [5, 7]),
    ("diningtable", [5, 6, 7], [6]),      # din ing table: +1 (as the code: "ing")
    ("aeroplane", [5, 6], [5]),           # every other name: its first token
    ("cat", [5], [5]),
])
def test_official_token_offsets(word, positions, columns):
    params = SeeDiffCodeParams()
    assert class_token_columns(positions, word, params, "p") == columns
    assert class_token_columns(positions, word, SeeDiffParams(token_rule="last"), "p") == positions[-1:]


def test_offset_columns_are_normalised_per_layer_and_summed():
    g = torch.Generator().manual_seed(1)
    per_head = torch.softmax(torch.randn(2, HEADS, 256, 77, generator=g), -1)
    attn = attn_from_layers(per_head, "pottedplant", positions=(5, 6, 7))
    ca = class_cross_attention(attn, 16, SeeDiffCodeParams(ca_resolution=16))[0]
    # the code appends the maps of column 5 (every layer), then of column 7
    stacked = torch.cat([per_head[..., 5], per_head[..., 7]]).view(4, HEADS, 16, 16)
    torch.testing.assert_close((ca - ca.min()) / (ca.max() - ca.min()), official_layer_sum(stacked), atol=1e-6, rtol=0)


# ------------------------------------------------------------------ issue 14 item 10
@pytest.mark.parametrize("cls", [SeeDiff, SeeDiffCode])
@pytest.mark.parametrize("size, ca, sa", [(512, 16, (64, 32, 16)), (768, 24, (96, 48, 24)), (192, 6, (24, 12, 6))])
def test_resolution_defaults_follow_the_input_size(cls, size, ca, sa):
    m = cls(extract=ExtractionConfig(image_size=size))
    request = m.attention_request(cls.Params())
    assert request.cross_resolutions == (ca,) and request.self_resolutions == sa


def test_a_side_missing_at_the_input_size_names_the_key():
    m = SeeDiff(extract=ExtractionConfig(image_size=192))
    with pytest.raises(ValueError, match=r"method.ca_resolution=16: .*image_size=192"):
        m.attention_request(SeeDiffParams(ca_resolution=16))
    with pytest.raises(ValueError, match=r"method.sa_resolutions=\[16, 32\]"):
        m.attention_request(SeeDiffParams(sa_resolutions=[16, 32]))


def test_sides_the_model_did_not_capture_are_a_user_error():
    """SDXL-family models have no attention at latent/1 (their first stage): SeeDiff's default
    sides keep the captured ones; sides named in method.sa_resolutions that were not captured
    are a user error naming the key and the captured sides (message alone, exit code 2)."""
    from benchmark.config import is_user_error

    m = SeeDiff(extract=ExtractionConfig(image_size=256))
    attn = AttentionMaps(self_attn={16: torch.full((1, 256, 256), 1 / 256), 8: torch.full((1, 64, 64), 1 / 64)})
    assert m.captured_sides(attn, SeeDiffParams(), m.expansion_sides(SeeDiffParams())) == [8, 16]
    explicit = SeeDiffParams(sa_resolutions=[8, 16, 32])
    with pytest.raises(ValueError, match=r"sa_resolutions.*\[32\].*captured: \[8, 16\]") as err:
        m.captured_sides(attn, explicit, m.expansion_sides(explicit))
    assert is_user_error(err.value)


@pytest.mark.slow
def test_seediff_presets_run_from_the_cli_at_192_px(tmp_path):
    from benchmark.compose import run_with_overrides

    for name in ("seediff", "seediff_code"):
        result = run_with_overrides(
            ["dataset=synthetic", "dataset.n_images=1", "model=tiny", f"method={name}", "method.extract.image_size=192",
             "method.pamr_iterations=2", "metric=miou", "run.progress=false"],
            tmp_path / name,
        )
        assert result.payload["n_images"] == 1, name


# ------------------------------------------------------------------ PAMR (issue 17 item 2)
def _pamr_speed_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "pamr_speed.py"
    spec = importlib.util.spec_from_file_location("pamr_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dilations", [(1,), (1, 2)])
def test_vectorised_pamr_equals_the_official_conv_formulation(dilations):
    from methods.seediff import pamr

    bench = _pamr_speed_module()
    g = torch.Generator().manual_seed(5)
    image = torch.rand(3, 13, 17, generator=g) * 255
    masks = (torch.rand(3, 13, 17, generator=g) > 0.6).float()
    expected = bench.pamr_direct(image, masks, 40, dilations)
    torch.testing.assert_close(pamr(image, masks, 40, dilations), expected, atol=1e-5, rtol=0)
    # one label at a time gives the same as all labels together
    torch.testing.assert_close(pamr(image, masks[1:2], 40, dilations)[0], expected[1], atol=1e-5, rtol=0)


def test_pamr_benchmark_reports_both_implementations():
    r = _pamr_speed_module().pamr_seconds(size=24, labels=2, iterations=100, timed=3)
    assert r["vectorised"] > 0 and r["direct"] > 0 and r["max_abs_diff"] < 1e-5


# --------------------------------------------------------------------------- item 13
def _cross(maps: torch.Tensor, column: int = 5) -> torch.Tensor:
    p, n = maps.shape[0], maps[0].numel()
    out = torch.full((p, n, 77), 0.1 / 76)
    out[:, :, column] = 0.9 * maps.reshape(p, n)
    return out


def test_table5_rows_follow_the_supplement():
    """DiffuMask row: CA of all sides aggregated; CA·SA row: CA16 · SA32^τ, τ = 4."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(7)
    sides = [2, 4, 8, 16]  # 128 px: latent 16
    ca = {s: torch.rand(1, s, s, generator=g) for s in sides}
    sa = {s: torch.softmax(3 * torch.randn(1, s * s, s * s, generator=g), -1) for s in (4, 8, 16)}
    attn = AttentionMaps(sa, {s: _cross(m) for s, m in ca.items()}, [PromptQuery("a photo of a cat", "cat")], [[5]])
    m = SeeDiff(extract=ExtractionConfig(image_size=128))

    caa = SeeDiffParams(stage="caa", caa_sides="all")
    assert m.attention_request(caa).cross_resolutions == (16, 8, 4, 2)
    got = m.prompt_maps(attn, caa)[0]
    per_side = [F.interpolate((0.9 * ca[s] / (0.9 * ca[s]).max())[None], size=(16, 16), mode="bilinear",
                              align_corners=False)[0, 0] for s in sides]
    mean = torch.stack(per_side).mean(0)
    torch.testing.assert_close(got, mean / mean.max(), atol=1e-5, rtol=0)

    ca_sa = SeeDiffParams(stage="ca_sa", sa_power=4, ca_sa_side=8)  # latent/2 (32 at 512 px)
    request = m.attention_request(ca_sa)
    assert request.self_resolutions == (8,) and request.cross_resolutions == (4,)
    got = m.prompt_maps(attn, ca_sa)[0]
    c = F.interpolate((0.9 * ca[4] / (0.9 * ca[4]).max())[None], size=(8, 8), mode="bilinear", align_corners=False)
    v = c.reshape(-1)
    for _ in range(4):
        v = sa[8][0] @ v  # (SA · vec CA)[i] = Σ_j SA[i, j] CA[j]
    torch.testing.assert_close(got, (v / v.max()).reshape(8, 8), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="method.ca_sa_side=5"):
        m.attention_request(SeeDiffParams(stage="ca_sa", ca_sa_side=5))


def test_table5_preset_sets_the_supplement_rows():
    import yaml
    from pathlib import Path

    preset = yaml.safe_load((Path(__file__).resolve().parent.parent / "conf/experiment/seediff_table5.yaml").read_text())
    method = preset["method"]
    assert method["grid"]["stage"] == ["caa", "ca_sa", "be"]
    assert method["caa_sides"] == "all" and method["sa_power"] == 4 and method["ca_sa_side"] == 32


def _real_clip_tokenizer():
    import gzip
    from pathlib import Path

    from transformers import CLIPTokenizer

    path = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        pytest.skip(f"the real CLIP BPE vocabulary is not at {path} (shared reference folder absent)")
    merges = gzip.open(path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    # open_clip's SimpleTokenizer vocabulary: bytes, bytes + </w>, merges, the two specials
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    units = [chr(c) for c in cs]
    vocab = units + [u + "</w>" for u in units] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=[tuple(m.split()) for m in merges])


@pytest.mark.parametrize("name, read", [
    ("pottedplant", ["pot", "plant</w>"]),
    ("diningtable", ["ing"]),
    ("tvmonitor", ["tv", "<|endoftext|>"]),
    ("parking meter", ["parking</w>", "<|endoftext|>"]),
])
def test_official_offsets_on_the_real_clip_vocabulary(name, read):
    """What the official offsets read with SD's CLIP BPE (reproduced as the code has them)."""
    tok = _real_clip_tokenizer()
    ids = tok(f"a photo of a {name}")["input_ids"]
    tokens = tok.convert_ids_to_tokens(ids)
    positions = list(range(5, len(ids) - 1))  # the name's sub-tokens after "<sot> a photo of a"
    columns = class_token_columns(positions, name, SeeDiffCodeParams(), name)
    assert [tokens[c] for c in columns] == read
