"""SeeDiff on synthetic attention: equations, presets, ablation switches, segment mode.

References here are written as loops over seeds / classes (the paper's and the official
code's formulation) and compared with the vectorised plugin on random attention.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.schema import ExtractionConfig
from benchmark.types import AttentionMaps, PromptQuery, SegmentContext
from methods import get_method
from methods.seediff import (
    SeeDiff,
    SeeDiffCode,
    SeeDiffCodeParams,
    SeeDiffParams,
    SeeDiffSettings,
    expand_seeds,
    foreground_seeds,
    otsu_foreground,
    pamr,
    seediff_maps,
)

CLASSES = ["background", "cat", "dog", "cow"]
WORD_COLUMN = 5
SIDES = [4, 8, 16]
IMAGE_SIZE = 128  # latent 16 -> expansion sides 4, 8, 16


# ------------------------------------------------------------------------------- helpers
def random_sa(side: int, generator: torch.Generator, groups: int = 1, sharpness: float = 3.0) -> torch.Tensor:
    n = side * side
    return torch.softmax(sharpness * torch.randn(groups, n, n, generator=generator), dim=-1)


def block_attention(labels: torch.Tensor, sides: Sequence[int], sharpness: float, noise: float,
                    generator: torch.Generator) -> Dict[int, torch.Tensor]:
    """Self-attention with the segment structure of ``labels`` (n, n): at side s the label of
    each block's centre pixel; a query attends (softmax) to keys of its own label with
    logit ``sharpness``, plus Gaussian noise. {s: (1, s², s²)}."""
    n = labels.shape[-1]
    out = {}
    for s in sides:
        f = n // s
        coarse = labels[f // 2 :: f, f // 2 :: f].reshape(-1)
        logits = sharpness * (coarse[:, None] == coarse[None, :]).float()
        logits = logits + noise * torch.randn(logits.shape, generator=generator)
        out[s] = torch.softmax(logits, dim=1).unsqueeze(0)
    return out


def cross_from_maps(maps: torch.Tensor) -> torch.Tensor:
    """(P, r, r) word maps in [0, 1) -> (P, r², 77) row-stochastic cross-attention."""
    p, r, _ = maps.shape
    word = 0.9 * maps.reshape(p, r * r) / maps.max()
    rest = ((1.0 - word) / 76).unsqueeze(-1).expand(p, r * r, 77).clone()
    rest[:, :, WORD_COLUMN] = word
    return rest


HEADS = 8


def make_attn(ca: Dict[int, torch.Tensor], sa: Dict[int, torch.Tensor], words: Sequence[str]) -> AttentionMaps:
    """One cross-attention layer: the per-layer map (head-sum) is HEADS × the mean map."""
    cross = {r: cross_from_maps(m) for r, m in ca.items()}
    return AttentionMaps(
        self_attn=dict(sa),
        cross_attn=cross,
        queries=[PromptQuery(f"a photo of a {w}", w) for w in words],
        token_positions=[[WORD_COLUMN] for _ in words],
        cross_attn_layers={r: (HEADS * c).unsqueeze(0) for r, c in cross.items()},
    )


def ctx_for(candidates: List[int], out_size=(32, 32), image=None) -> SegmentContext:
    return SegmentContext(image_id="img", out_size=out_size, class_names=CLASSES, candidates=candidates, image=image)


def method(cls=SeeDiff, **settings) -> SeeDiff:
    settings_cls = cls.Settings
    return cls(settings=settings_cls(**settings), extract=ExtractionConfig(image_size=IMAGE_SIZE))


def up(m: torch.Tensor, side: int, mode: str = "bilinear") -> torch.Tensor:
    if m.shape[-1] == side:
        return m
    return F.interpolate(m[None, None], size=(side, side), mode=mode, align_corners=False)[0, 0]


def max_norm(m: torch.Tensor) -> torch.Tensor:
    return m / m.max() if m.max() > 0 else torch.zeros_like(m)


def minmax(m: torch.Tensor) -> torch.Tensor:
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else torch.zeros_like(m)


def mean_rows(sa: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Eq. 7 as written: 1/|S| Σ_{(i,j)∈S} SA[i, j, :, :] (loop over seeds)."""
    idx = [int(i) for i in torch.nonzero(seeds.reshape(-1)).flatten()]
    if not idx:
        return torch.zeros(sa.shape[1])
    total = torch.zeros(sa.shape[1])
    for i in idx:
        total += sa[i]
    return total / len(idx)


def cosine_rows(sa: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """The official code's expansion: Σ over seeds of cos(SA, SA[seed]) (loop over seeds)."""
    total = torch.zeros(sa.shape[0])
    for i in torch.nonzero(seeds.reshape(-1)).flatten():
        total += F.cosine_similarity(sa, sa[int(i)].unsqueeze(0), dim=1)
    return total


def otsu_reference(m: torch.Tensor) -> torch.Tensor:
    """Otsu as in cv2 on uint16(m² · 255) with the levels in float32 (src/seediff_app.py):
    foreground mask of ``m``'s shape (``test_seediff_official.otsu_official``)."""
    from test_seediff_official import otsu_official

    return torch.from_numpy(otsu_official(m.float().numpy())).reshape(m.shape)


def paper_reference(ca: torch.Tensor, sa: Dict[int, torch.Tensor], sides: Sequence[int], alpha: float, stage: str) -> torch.Tensor:
    """Eqs. 6–11 for one class, step by step."""
    seeds = max_norm(up(ca, sides[0])) >= alpha  # Eq. 6
    current = max_norm(mean_rows(sa[sides[0]], seeds)).reshape(sides[0], sides[0])  # Eq. 7
    for side in sides[1:]:
        upsampled = up(current, side)  # Eq. 8
        seeds = upsampled >= alpha  # Eq. 9
        current = max_norm(mean_rows(sa[side], seeds)).reshape(side, side)
    if stage == "ire":
        return current
    background_seeds = (1.0 - current) >= alpha  # Eq. 10 (+ Eq. 9)
    background = max_norm(mean_rows(sa[sides[-1]], background_seeds)).reshape(current.shape)
    return (1.0 - background) * current  # Eq. 11


def code_reference(ca: torch.Tensor, sa: Dict[int, torch.Tensor], sides: Sequence[int]) -> torch.Tensor:
    """The official code's aggregate_attention chain for one class (16 -> 32 -> 64)."""
    first = minmax(up(ca, sides[0], "bicubic"))
    current = minmax(cosine_rows(sa[sides[0]], otsu_reference(first))).reshape(first.shape)
    for side in sides[1:]:
        ca_init = up(current, side, "bicubic")
        background = ~otsu_reference(ca_init)
        vis = minmax(1.0 - cosine_rows(sa[side], background)).reshape(side, side)
        current = minmax(minmax(ca_init) * vis)
    return current


# ------------------------------------------------------------------------------- equations
def test_seeds_equal_the_thresholded_ca_map():
    g = torch.Generator().manual_seed(0)
    ca = torch.rand(2, 8, 8, generator=g)
    identity = {8: torch.eye(64).unsqueeze(0)}
    params = SeeDiffParams(stage="ire", sa_resolutions=[8], ca_resolution=8, alpha=0.6)
    # with SA = identity the expansion returns the seed indicator itself (normalised)
    maps = seediff_maps(ca, identity, [8], params)
    expected = (ca / ca.amax((1, 2), keepdim=True) >= 0.6).float()
    assert torch.equal(maps, expected)
    flat = ca.reshape(2, -1) / ca.reshape(2, -1).amax(1, keepdim=True)
    assert torch.equal(foreground_seeds(flat, params), flat >= 0.6)


def test_expansion_equals_the_mean_of_the_seeds_sa_rows():
    g = torch.Generator().manual_seed(1)
    sa = random_sa(8, g)
    seeds = torch.rand(3, 64, generator=g) > 0.7
    out = expand_seeds(seeds, sa, "mean")
    for p in range(3):
        assert torch.allclose(out[p], mean_rows(sa[0], seeds[p]), atol=1e-6)
    # one self-attention per class prompt (extract.self_attn_per_prompt=true)
    per_prompt = random_sa(8, g, groups=3)
    out = expand_seeds(seeds, per_prompt, "mean")
    for p in range(3):
        assert torch.allclose(out[p], mean_rows(per_prompt[p], seeds[p]), atol=1e-6)
    # an empty seed set expands to nothing
    assert torch.equal(expand_seeds(torch.zeros(1, 64, dtype=torch.bool), sa, "mean"), torch.zeros(1, 64))


def test_cosine_expansion_equals_the_official_loop():
    g = torch.Generator().manual_seed(2)
    sa = random_sa(8, g)
    seeds = torch.rand(2, 64, generator=g) > 0.6
    out = expand_seeds(seeds, sa, "cosine")
    for p in range(2):
        assert torch.allclose(out[p], cosine_rows(sa[0], seeds[p]), atol=1e-5)


def test_otsu_matches_a_loop_over_split_levels():
    g = torch.Generator().manual_seed(3)
    maps = torch.cat((torch.rand(4, 256, generator=g), torch.rand(1, 256, generator=g) * 1.1 - 0.05))  # bicubic overshoot
    bimodal = torch.cat((0.2 * torch.rand(1, 200, generator=g), 0.8 + 0.2 * torch.rand(1, 56, generator=g)), 1)
    maps = torch.cat((maps, bimodal, torch.full((1, 256), 0.5)))  # a constant map has no split
    got = otsu_foreground(maps)
    for p in range(maps.shape[0]):
        assert torch.equal(got[p], otsu_reference(maps[p])), p
    assert got[-2].sum() == 56  # the bright mode exactly


@pytest.mark.parametrize("stage", ["ire", "be"])
def test_iterative_expansion_and_background_refinement_equal_the_equations(stage):
    g = torch.Generator().manual_seed(4)
    ca = torch.rand(3, 4, 4, generator=g) ** 3
    sa = {s: random_sa(s, g) for s in SIDES}
    params = SeeDiffParams(stage=stage, ca_resolution=4, sa_resolutions=SIDES)
    maps = seediff_maps(ca, sa, SIDES, params)
    for p in range(3):
        ref = paper_reference(ca[p], {s: a[0] for s, a in sa.items()}, SIDES, params.alpha, stage)
        assert torch.allclose(maps[p], ref, atol=1e-5), p


def test_official_code_chain_equals_a_direct_reference():
    g = torch.Generator().manual_seed(5)
    ca = torch.rand(2, 4, 4, generator=g) ** 2
    sa = {s: random_sa(s, g) for s in SIDES}
    params = SeeDiffCodeParams(ca_resolution=4, sa_resolutions=SIDES)
    maps = seediff_maps(ca, sa, SIDES, params)
    for p in range(2):
        ref = code_reference(ca[p], {s: a[0] for s, a in sa.items()}, SIDES)
        assert torch.allclose(maps[p], ref, atol=1e-5), p


# ------------------------------------------------------------------------------- known object
def object_scene(scale: int = 1, seed: int = 0):
    """A (16·scale)² scene with one square object; CA peaks only in the object's centre
    (sparse seeds, as Fig. 5 of the paper); SA has the object/background block structure
    at sides (4, 8, 16)·scale; CA at every one of those sides."""
    g = torch.Generator().manual_seed(seed)
    n = 16 * scale
    labels = torch.zeros(n, n, dtype=torch.long)
    labels[3 * scale : 12 * scale, 4 * scale : 13 * scale] = 1
    sides = [s * scale for s in SIDES]
    sa = block_attention(labels, sides, sharpness=6.0, noise=0.5, generator=g)
    peak = torch.zeros(n, n)
    peak[6 * scale : 9 * scale, 7 * scale : 10 * scale] = 1.0
    peak = peak + 0.15 * torch.rand(n, n, generator=g)
    ca = {r: F.adaptive_avg_pool2d(peak[None, None], r)[0, 0][None] for r in sides}
    return labels, sa, ca


def iou(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float((pred & target).sum()) / float((pred | target).sum())


@pytest.mark.parametrize("cls", [SeeDiff, SeeDiffCode])
def test_known_object_is_recovered(cls):
    # sides 8, 16, 32: the first expansion side must resolve the object (16 at 512 px)
    labels, sa, ca = object_scene(scale=2)
    attn = make_attn(ca, sa, ["cat"])
    m = cls(settings=cls.Settings(), extract=ExtractionConfig(image_size=256))
    params = cls.Params(ca_resolution=8, pamr_iterations=0)
    pred = m.segment(attn, ctx_for([1], out_size=(64, 64)), params)
    target = F.interpolate(labels[None, None].float(), size=(64, 64), mode="nearest")[0, 0].bool()
    assert pred.shape == (64, 64) and pred.dtype == torch.long
    assert set(pred.unique().tolist()) <= {0, 1}
    assert iou(pred == 1, target) >= 0.9


# ------------------------------------------------------------------------------- ablation switches
def scene_params(**kw) -> SeeDiffParams:
    return SeeDiffParams(**{"ca_resolution": 4, "sa_resolutions": SIDES, **kw})


def test_stage_caa_is_the_thresholded_cross_attention_only():
    labels, sa, ca = object_scene()
    m = method()
    attn = make_attn(ca, sa, ["cat"])
    soft = m.soft_masks(attn, ctx_for([1]), scene_params(stage="caa"))
    expected = up(max_norm(ca[4][0]), 32)
    assert torch.allclose(soft[0], expected, atol=1e-6)
    # CAA never looks at self-attention, and does not request it
    other = make_attn(ca, {s: torch.full_like(a, 1.0 / a.shape[-1]) for s, a in sa.items()}, ["cat"])
    assert torch.equal(m.segment(attn, ctx_for([1]), scene_params(stage="caa")),
                       m.segment(other, ctx_for([1]), scene_params(stage="caa")))
    assert m.attention_request(scene_params(stage="caa")).self_resolutions == ()


def test_stage_ca_sa_is_self_attention_times_cross_attention():
    g = torch.Generator().manual_seed(6)
    ca = torch.rand(1, 4, 4, generator=g)
    sa = {s: random_sa(s, g) for s in SIDES}
    for power in (1, 2):
        maps = seediff_maps(ca, sa, SIDES, scene_params(stage="ca_sa", sa_power=power))
        vec = max_norm(up(max_norm(ca[0]), 16)).reshape(-1)
        for _ in range(power):
            vec = sa[16][0] @ vec
        assert torch.allclose(maps[0].reshape(-1), max_norm(vec), atol=1e-6)
    assert method().attention_request(scene_params(stage="ca_sa")).self_resolutions == (16,)


def test_stage_cre_expands_the_ca_seeds_once_per_side_without_chaining():
    g = torch.Generator().manual_seed(7)
    ca = torch.rand(1, 4, 4, generator=g) ** 2
    sa = {s: random_sa(s, g) for s in SIDES}
    maps = seediff_maps(ca, sa, SIDES, scene_params(stage="cre"))
    total = torch.zeros(16, 16)
    for side in SIDES:
        seeds = max_norm(up(ca[0], side)) >= 0.5
        total += up(max_norm(mean_rows(sa[side][0], seeds)).reshape(side, side), 16)
    assert torch.allclose(maps[0], max_norm(total / 3), atol=1e-5)
    ire = seediff_maps(ca, sa, SIDES, scene_params(stage="ire"))
    assert not torch.allclose(maps, ire)


def test_stage_be_is_ire_refined_by_the_background_expansion():
    g = torch.Generator().manual_seed(8)
    ca = torch.rand(2, 4, 4, generator=g) ** 2
    sa = {s: random_sa(s, g) for s in SIDES}
    ire = seediff_maps(ca, sa, SIDES, scene_params(stage="ire"))
    be = seediff_maps(ca, sa, SIDES, scene_params(stage="be"))
    assert not torch.allclose(ire, be)
    assert bool((be <= ire + 1e-6).all())  # (1 − M_bg) ⊙ M never exceeds M


def leaky_attention(labels: torch.Tensor, sides: Sequence[int], leak: float) -> Dict[int, torch.Tensor]:
    """Object rows give ``leak`` of their attention to the background (blurry boundaries,
    Fig. 5(a)); background rows attend to the background only."""
    n = labels.shape[-1]
    out = {}
    for s in sides:
        f = n // s
        obj = (labels[f // 2 :: f, f // 2 :: f].reshape(-1) == 1).float()
        bg = 1.0 - obj
        rows = torch.where(obj[:, None] > 0, (1 - leak) * obj / obj.sum() + leak * bg / bg.sum(), bg / bg.sum())
        out[s] = rows.unsqueeze(0)
    return out


def test_background_refinement_removes_a_leaked_background_region():
    labels = torch.zeros(16, 16, dtype=torch.long)
    labels[:, :8] = 1  # equal areas: the leaked background level is 0.3 / 0.7 = 0.43, in [β, α)
    sa = leaky_attention(labels, [16], leak=0.3)
    ca = {4: F.adaptive_avg_pool2d((labels == 1).float()[None, None], 4)[0, 0][None] + 0.01}
    attn = make_attn(ca, sa, ["cat"])
    target = F.interpolate(labels[None, None].float(), size=(32, 32), mode="nearest")[0, 0].bool()
    m = method()
    one_side = dict(ca_resolution=4, sa_resolutions=[16])  # one expansion, then the refinement
    ire = m.segment(attn, ctx_for([1]), SeeDiffParams(stage="ire", **one_side))
    be = m.segment(attn, ctx_for([1]), SeeDiffParams(stage="be", **one_side))
    assert iou(ire == 1, target) < 0.6  # the leak survives binarisation at β
    assert iou(be == 1, target) == 1.0  # (1 − M_bg) ⊙ M removes it


def test_ca_resolution_selects_the_map_the_seeds_come_from():
    """Table 4: the same scene with different CA content at 4 and 8: the mask follows the key."""
    labels, sa, _ = object_scene()
    left, right = torch.zeros(1, 4, 4), torch.zeros(1, 8, 8)
    left[0, 1:3, 0:2] = 1.0
    right[0, 2:6, 5:8] = 1.0
    attn = make_attn({4: left + 0.01, 8: right + 0.01}, sa, ["cat"])
    m = method()
    a = m.soft_masks(attn, ctx_for([1]), scene_params(stage="caa", ca_resolution=4))[0]
    b = m.soft_masks(attn, ctx_for([1]), scene_params(stage="caa", ca_resolution=8))[0]
    assert a[8:24, 0:16].mean() > 0.8 and a[:, 20:].max() < 0.2
    assert b[8:24, 20:].mean() > 0.8 and b[:, :8].max() < 0.2
    # full pipeline: the seeds are those of the chosen map resized to the first side (4)
    identity = {s: torch.eye(s * s).unsqueeze(0) for s in SIDES}
    for r, ca in ((4, left), (8, right)):
        maps = seediff_maps(ca, identity, [4], scene_params(stage="ire", ca_resolution=r, sa_resolutions=[4]))
        assert torch.equal(maps[0], (max_norm(up(ca[0], 4)) >= 0.5).float())
    request = m.attention_request(SeeDiffParams(ca_resolution=8, sa_resolutions=SIDES))
    assert request.cross_resolutions == (8,) and request.self_resolutions == (16, 8, 4)
    with pytest.raises(ValueError, match="ca_resolution=16"):
        m.segment(attn, ctx_for([1]), SeeDiffParams(ca_resolution=16, sa_resolutions=SIDES))


def test_alpha_beta_and_background_score_act_as_thresholds():
    labels, sa, ca = object_scene()
    attn = make_attn(ca, sa, ["cat"])
    m = method()
    base = m.segment(attn, ctx_for([1]), scene_params())
    loose = m.segment(attn, ctx_for([1]), scene_params(beta=0.05))
    strict = m.segment(attn, ctx_for([1]), scene_params(beta=0.95))
    assert (loose == 1).sum() > (base == 1).sum() > (strict == 1).sum()
    assert bool((m.segment(attn, ctx_for([1]), scene_params(bg_threshold=1.0)) == 0).all())
    few = seediff_maps(ca[4], sa, SIDES, scene_params(stage="ire", alpha=0.95))
    many = seediff_maps(ca[4], sa, SIDES, scene_params(stage="ire", alpha=0.05))
    assert not torch.allclose(few, many)


def test_code_preset_switches_change_the_output():
    g = torch.Generator().manual_seed(9)
    ca = torch.rand(1, 4, 4, generator=g) ** 2
    sa = {s: random_sa(s, g) for s in SIDES}
    base = SeeDiffCodeParams(ca_resolution=4, sa_resolutions=SIDES, pamr_iterations=0)
    out = seediff_maps(ca, sa, SIDES, base)
    for key, value in (("seed_rule", "threshold"), ("expansion", "mean"), ("background", "last"), ("resize", "bilinear"),
                       ("normalize", "max")):
        changed = SeeDiffCodeParams(**{**base.__dict__, key: value})
        assert not torch.allclose(seediff_maps(ca, sa, SIDES, changed), out), key


# ------------------------------------------------------------------------------- segment mode
def test_segment_mode_argmax_over_candidates_and_background():
    labels = torch.zeros(16, 16, dtype=torch.long)
    labels[2:8, 2:8] = 1
    labels[9:15, 9:15] = 2
    g = torch.Generator().manual_seed(10)
    sa = block_attention(labels, SIDES, sharpness=6.0, noise=0.3, generator=g)
    cat, dog = (labels == 1).float(), (labels == 2).float()
    ca = {4: torch.stack([F.adaptive_avg_pool2d(x[None, None], 4)[0, 0] for x in (cat, dog)]) + 0.02}
    m = method()
    ctx = ctx_for([1, 3])  # cat and cow prompted; queries follow the candidate order
    assert [q.word for q in m.queries(ctx)] == ["cat", "cow"]
    assert m.queries(ctx)[0].text == "a photo of a cat"
    attn = make_attn(ca, sa, ["cat", "cow"])
    pred = m.segment(attn, ctx, scene_params())
    target = F.interpolate(labels[None, None].float(), size=(32, 32), mode="nearest")[0, 0].long()
    assert iou(pred == 1, target == 1) >= 0.9 and iou(pred == 3, target == 2) >= 0.9
    assert bool((pred[target == 0] == 0).float().mean() > 0.9)
    # no candidates: everything is background
    assert bool((m.segment(AttentionMaps(), ctx_for([]), scene_params()) == 0).all())
    with pytest.raises(ValueError, match="captured for prompts"):
        m.segment(attn, ctx_for([1]), scene_params())


def test_datasets_without_background_take_the_best_candidate_everywhere():
    labels, sa, ca = object_scene()
    around = F.adaptive_avg_pool2d((labels == 0).float()[None, None], 4)[0, 0][None] + 0.01
    two = {4: torch.cat((ca[4], around))}  # "cat" on the object, "dog" around it
    attn = make_attn(two, sa, ["cat", "dog"])
    ctx = SegmentContext("img", (32, 32), class_names=["cat", "dog"], candidates=None)
    pred = method().segment(attn, ctx, scene_params(bg_threshold=0.9))  # bg_threshold unused
    target = F.interpolate(labels[None, None].float(), size=(32, 32), mode="nearest")[0, 0].bool()
    assert set(pred.unique().tolist()) == {0, 1}
    assert iou(pred == 0, target) >= 0.9


def test_multi_token_class_words_use_the_token_rule():
    m = method()
    cross = torch.rand(1, 16, 77)
    attn = AttentionMaps(cross_attn={4: cross}, queries=[PromptQuery("a photo of a cat", "cat")], token_positions=[[5, 6]])
    for token, cols in (("first", [5]), ("last", [6]), ("mean", [5, 6])):
        soft = m.soft_masks(attn, ctx_for([1]), scene_params(stage="caa", token_rule=token))[0]
        expected = up(max_norm(cross[0][:, cols].mean(1).reshape(4, 4)), 32)
        assert torch.allclose(soft, expected, atol=1e-6), token


# ------------------------------------------------------------------------------- PAMR
def pamr_reference(image: torch.Tensor, mask: torch.Tensor, iterations: int) -> torch.Tensor:
    """PAMR with dilation 1 written with 3×3 shift kernels (the reference implementation's form)."""
    def shifts(x, centre):
        kernels = []
        for dy in range(3):
            for dx in range(3):
                if (dy, dx) == (1, 1) and not centre:
                    continue
                k = torch.zeros(1, 1, 3, 3)
                k[0, 0, dy, dx] = 1.0
                kernels.append(k)
        w = torch.cat(kernels)
        return F.conv2d(F.pad(x[:, None], [1] * 4, mode="replicate"), w)

    x = image.float()
    std = shifts(x, True).std(1, keepdim=True)
    aff = -(x[:, None] - shifts(x, False)).abs() / (1e-8 + 0.2 * std)
    aff = torch.softmax(aff.mean(0), 0)
    out = mask.float()
    for _ in range(iterations):
        out = (shifts(out, False) * aff).sum(1)
    return out


def test_pamr_equals_the_shift_kernel_reference_and_snaps_to_colour_edges():
    g = torch.Generator().manual_seed(11)
    image = torch.zeros(3, 12, 12)
    image[:, :, 6:] = 200.0
    image += 5 * torch.rand(3, 12, 12, generator=g)
    mask = torch.zeros(1, 12, 12)
    mask[:, :, 4:] = 1.0  # two columns too far left
    out = pamr(image, mask, 20)
    assert torch.allclose(out, pamr_reference(image, mask, 20), atol=1e-5)
    # no mass crosses the colour edge: the bright side keeps its mask, and the two wrong
    # columns are averaged into the dark region, below the code's 0.8 threshold
    out = pamr(image, mask, 200)
    assert float(out[0, :, 6:].min()) > 0.99
    assert float(out[0, :, :6].max()) < 0.6


def test_pamr_option_needs_the_image_and_changes_the_mask():
    labels, sa, ca = object_scene()
    attn = make_attn(ca, sa, ["cat"])
    m = method()
    params = scene_params(pamr_iterations=50)
    with pytest.raises(ValueError, match="needs the image"):
        m.segment(attn, ctx_for([1]), params)
    # the image shows the object narrower than the attention does: PAMR follows the colours
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[:, 6:24, 8:20] = 255
    in_image = torch.zeros(32, 32, dtype=torch.bool)
    in_image[6:24, 8:20] = True
    with_pamr = m.segment(attn, ctx_for([1], image=image), params) == 1
    without = m.segment(attn, ctx_for([1], image=image), scene_params()) == 1
    assert iou(with_pamr, in_image) > 0.9 > iou(without, in_image)
    # a mask covering the whole image is constant under PAMR: it is kept, not normalised away
    flat = make_attn({4: torch.ones(1, 4, 4)}, sa, ["cat"])
    assert bool((m.segment(flat, ctx_for([1], image=image), scene_params(stage="caa", pamr_iterations=5)) == 1).all())


# ------------------------------------------------------------------------------- plugin contract
def test_registry_presets_and_requests():
    assert get_method("seediff") is SeeDiff and get_method("seediff_code") is SeeDiffCode
    assert SeeDiff.task == "open_vocabulary" and "extension" in SeeDiff.note
    paper = SeeDiff(extract=ExtractionConfig())
    request = paper.attention_request(SeeDiffParams())
    assert request.self_resolutions == (64, 32, 16) and request.cross_resolutions == (16,)
    assert request.self_layers == "all"
    code = SeeDiffCode(extract=ExtractionConfig())
    assert code.attention_request(SeeDiffCodeParams()).self_layers == "first_up"
    p = SeeDiffCodeParams()
    assert (p.seed_rule, p.expansion, p.background, p.normalize, p.resize) == ("otsu", "cosine", "each_step", "minmax", "bicubic")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"stage": "full"}, "method.stage='full'"),
        ({"alpha": 1.5}, "method.alpha=1.5"),
        ({"sa_resolutions": [32, 16]}, "ascending"),
        ({"seed_rule": "mean"}, "seed_rule"),
        ({"pamr_iterations": -1}, "pamr_iterations"),
    ],
)
def test_bad_params_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SeeDiffParams(**kwargs)


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="self_layers"):
        SeeDiffSettings(self_layers="first")
    with pytest.raises(ValueError, match="candidates"):
        SeeDiffSettings(candidates="some")
