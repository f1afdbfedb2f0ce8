"""methods.open_vocab: prompts, token rules, candidates, fusion, refinement, background."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from benchmark.candidates import resolve_candidates
from benchmark.types import AttentionMaps, PromptQuery, SegmentContext
from methods.open_vocab import (
    OpenVocabParams,
    OpenVocabSettings,
    caption_continuation,
    class_prompt_names,
    fuse_cross_attention,
    label_with_background,
    max_over_prompts,
    minmax,
    plan_prompts,
    prompt_text,
    refine_with_self_attention,
    word_attention,
    word_columns,
)

VOC_LIKE = ["background", "cat", "dog", "sofa", "pottedplant"]


# -- token rules ---------------------------------------------------------------------------------
def test_token_rule_on_single_and_multi_token_names(tiny_model):
    # the tiny SD's tokenizer (conftest fixture) decides the sub-token positions
    single = tiny_model.token_positions("a photograph of cat", "cat")
    multi = tiny_model.token_positions("a photograph of pottedplant", "pottedplant")
    assert single == [4]  # BOS, a, photograph, of -> the name starts right after the template
    assert len(multi) >= 2 and multi[0] == 4 and multi == list(range(4, 4 + len(multi)))
    # column t of every query row holds the value t: the reduction reveals which columns are read
    cross = torch.arange(77, dtype=torch.float32).expand(2, 3, 77).clone()
    for rule, expected in (("first", [4.0, 4.0]), ("last", [4.0, float(multi[-1])]),
                           ("mean", [4.0, sum(multi) / len(multi)])):
        out = word_attention(cross, [single, multi], rule)
        assert out.shape == (2, 3)
        assert torch.allclose(out[:, 0], torch.tensor(expected)), rule
    assert word_columns(multi, "first") == multi[:1] and word_columns(multi, "last") == multi[-1:]
    assert word_columns(multi, "mean") == multi


def test_token_rule_errors_name_the_problem():
    with pytest.raises(ValueError, match="token_rule='middle'"):
        OpenVocabParams(token_rule="middle")
    with pytest.raises(ValueError, match="no token positions.*'a photograph of cat'"):
        word_attention(torch.zeros(1, 4, 77), [[]], "first", [PromptQuery("a photograph of cat", "cat")])
    with pytest.raises(ValueError, match="outside the 10 captured"):
        word_attention(torch.zeros(1, 4, 10), [[12]], "first")


# -- prompts, synonyms, captions --------------------------------------------------------------------
def test_prompt_templates_and_caption_continuation():
    assert prompt_text("a photograph of", "cat") == "a photograph of cat"
    assert prompt_text("a photo of a {name}.", "cat") == "a photo of a cat."
    # official per-class caption: BLIP conditioned on the prompt, its continuation appended
    per_class = {"cat": "a photograph of cat sitting on a bed"}
    assert prompt_text("a photograph of", "cat", per_class) == "a photograph of cat sitting on a bed"
    assert prompt_text("a photograph of", "dog", per_class) == "a photograph of dog"  # no caption for dog
    # one caption for the image: its text after the template prefix
    assert prompt_text("a photography of", "cat", "A  photography of two cats on a sofa") == (
        "a photography of cat two cats on a sofa"
    )
    assert caption_continuation("two cats on a sofa", "a photography of") == "two cats on a sofa"


def test_synonyms_replace_names_and_unknown_keys_fail():
    names = class_prompt_names(VOC_LIKE, {"pottedplant": ["potted plant", "plant"], "sofa": ["sofa", "couch"]})
    assert names[1] == ["cat"] and names[3] == ["sofa", "couch"] and names[4] == ["potted plant", "plant"]
    with pytest.raises(ValueError, match=r"\['sofas'\].*Did you mean 'sofa'"):
        class_prompt_names(VOC_LIKE, {"sofas": ["couch"]})
    with pytest.raises(ValueError, match="synonyms\\['sofa'\\]"):
        OpenVocabSettings(synonyms={"sofa": []})


def test_candidate_modes_all_gt_file_drive_the_prompts(tmp_path):
    label = torch.tensor([[0, 1, 1], [3, 3, 255]])
    settings = OpenVocabSettings(template="a photograph of", synonyms={"sofa": ["sofa", "couch"]})

    def plan(mode, path=None, caption_prompt=False):
        cands, caption = resolve_candidates(mode, "img1", label, VOC_LIKE, 255, path)
        ctx = SegmentContext("img1", (2, 3), VOC_LIKE, candidates=cands, caption=caption)
        settings.caption_prompt = caption_prompt
        return plan_prompts(ctx, settings)

    everything = plan("all")
    assert everything.classes == (1, 2, 3, 4) and everything.background == 0
    assert [q.text for q in everything.queries] == [
        "a photograph of cat", "a photograph of dog", "a photograph of sofa", "a photograph of couch",
        "a photograph of pottedplant",
    ]
    assert everything.prompt_class == (1, 2, 3, 3, 4)
    assert [q.word for q in everything.queries] == ["cat", "dog", "sofa", "couch", "pottedplant"]

    gt = plan("gt")
    assert gt.classes == (1, 3) and gt.prompt_class == (1, 3, 3)

    path = tmp_path / "cands.json"
    path.write_text(json.dumps({"img1": {"classes": ["dog", 4], "caption": {"dog": "a photograph of dog on a bed"}}}))
    from_file = plan("file", str(path), caption_prompt=True)
    assert from_file.classes == (2, 4)
    assert [q.text for q in from_file.queries] == ["a photograph of dog on a bed", "a photograph of pottedplant"]


def test_no_candidate_means_all_background_with_one_bare_prompt():
    from methods.diffsegmenter import DiffSegmenter

    method = DiffSegmenter()
    ctx = SegmentContext("x", (5, 7), VOC_LIKE, candidates=[])
    assert method.queries(ctx) == [PromptQuery("a photograph of")]
    pred = method.segment(AttentionMaps(), ctx, OpenVocabParams())
    assert pred.shape == (5, 7) and pred.dtype == torch.long and bool((pred == 0).all())
    # without a background class an empty candidate list falls back to every class
    no_bg = SegmentContext("x", (5, 7), ["cat", "dog"], candidates=[])
    assert plan_prompts(no_bg, OpenVocabSettings()).classes == (0, 1)


# -- fusion and refinement against a direct reference ----------------------------------------------
def _random_cross_attention(p, sides, generator):
    return {s: torch.softmax(3 * torch.randn(p, s * s, 77, generator=generator), -1) for s in sides}


def _official_fusion(cross, positions, rule):
    """The official loop (ptp_stable_*.py): per prompt, per side 8..64, fixed weights."""
    weights = {8: 0.3, 16: 0.5, 32: 0.1, 64: 0.1}
    out = []
    for p, pos in enumerate(positions):
        cols = {"first": pos[:1], "last": pos[-1:], "mean": pos}[rule]
        fused = 0
        for side in (8, 16, 32, 64):
            att = cross[side][p][:, cols].mean(1).view(side, side)
            if side != 64:
                att = F.interpolate(att[None, None], size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
            att = (att - att.min()) / (att.max() - att.min())
            fused = fused + weights[side] * att
        out.append(fused)
    return torch.stack(out)


@pytest.mark.parametrize("rule", ["first", "last", "mean"])
def test_fusion_weights_match_the_official_loop(rule):
    g = torch.Generator().manual_seed(0)
    cross = _random_cross_attention(3, (64, 32, 16, 8), g)
    positions = [[4], [4, 5, 6], [5, 6]]
    ours = fuse_cross_attention(cross, positions, rule, [0.1, 0.1, 0.5, 0.3])
    assert torch.allclose(ours, _official_fusion(cross, positions, rule), atol=1e-6)
    # the weights matter: another weighting gives another map
    other = fuse_cross_attention(cross, positions, rule, [0.25, 0.25, 0.25, 0.25])
    assert not torch.allclose(ours, other, atol=1e-3)


def test_self_attention_refinement_matches_direct_products():
    g = torch.Generator().manual_seed(1)
    n, p = 16, 3
    maps = torch.rand(p, n, n, generator=g)
    sa = torch.softmax(4 * torch.randn(p, n * n, n * n, generator=g), -1)
    # one SA for all prompts: M = SA . vec(CA)
    shared = refine_with_self_attention(maps, sa[:1])
    direct = torch.stack([(sa[0] @ maps[i].reshape(-1, 1)).view(n, n) for i in range(p)])
    assert torch.allclose(shared, direct, atol=1e-5)
    # one SA per prompt
    own = refine_with_self_attention(maps, sa)
    direct_own = torch.stack([(sa[i] @ maps[i].reshape(-1)).view(n, n) for i in range(p)])
    assert torch.allclose(own, direct_own, atol=1e-5)
    # SA^2 . CA
    squared = refine_with_self_attention(maps, sa[:1], power=2)
    direct_sq = torch.stack([(sa[0] @ sa[0] @ maps[i].reshape(-1)).view(n, n) for i in range(p)])
    assert torch.allclose(squared, direct_sq, atol=1e-5)
    with pytest.raises(ValueError, match=r"does not fit 3 prompt maps of side 16"):
        refine_with_self_attention(maps, sa[:2])


# -- scores -> labels ---------------------------------------------------------------------------------
def test_minmax_synonym_max_and_background_rule():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
    norm = minmax(maps)
    assert torch.allclose(norm[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]])) and bool((norm[1] == 0).all())
    scores = torch.tensor([[0.1, 0.9], [0.7, 0.2], [0.3, 0.95]]).view(3, 1, 2)
    per_class = max_over_prompts(scores, prompt_class=[5, 7, 7], classes=[5, 7])
    assert torch.allclose(per_class.view(2, 2), torch.tensor([[0.1, 0.9], [0.7, 0.95]]))
    value, ids = per_class.max(0)
    class_ids = torch.tensor([5, 7])[ids]
    # background 0 scores 0.8: the first pixel (best 0.7) is background, the second is class 7
    assert label_with_background(value, class_ids, 0, 0.8).tolist() == [[0, 7]]
    # a tie goes to background, like the official argmax with background at index 0
    assert label_with_background(value, class_ids, 0, 0.95).tolist() == [[0, 0]]
    # no background class: the best candidate everywhere
    assert label_with_background(value, class_ids, None, 0.99).tolist() == [[7, 7]]


def test_candidates_file_keyed_by_image_paths_matches_stems(tmp_path):
    label = torch.tensor([[0, 1]])
    path = tmp_path / "official.json"
    path.write_text(json.dumps({"/data/VOC2012/JPEGImages/img7.jpg": ["cat", "dog"]}))
    cands, caption = resolve_candidates("file", "img7", label, VOC_LIKE, 255, str(path))
    assert cands == [1, 2] and caption is None
    with pytest.raises(KeyError, match="img8.*file stem"):
        resolve_candidates("file", "img8", label, VOC_LIKE, 255, str(path))


def test_caption_weight_on_every_caption_prompt_and_caption_settings_checked():
    ctx = SegmentContext("img1", (2, 3), VOC_LIKE, candidates=[1, 2], caption={"cat": "a photograph of cat on a mat"})
    settings = OpenVocabSettings(template="a photograph of", candidates="file", candidates_file="x.json",
                                 caption_prompt=True)
    plan = plan_prompts(ctx, settings)
    weights = {q.word: q.word_weight for q in plan.queries}
    # "dog" got no caption: the official prompt is still "a photograph of dog++"
    assert weights == {"cat": 1.21, "dog": 1.21}
    with pytest.raises(ValueError, match="candidates=clip"):
        OpenVocabSettings(captioner="blip", candidates="all")
    with pytest.raises(ValueError, match="caption_prompt=true needs captions"):
        OpenVocabSettings(caption_prompt=True, candidates="gt")
