"""benchmark.clip_filter: the CLIP (+ BLIP) candidate filter, with tiny random CLIP and BLIP
models built in code and saved to a temporary folder (no downloads)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmark.clip_filter import ClipCandidateFilter, caption_phrases
from benchmark.models.loading import ModelNotFoundError
from methods.open_vocab import OpenVocabSettings

NAMES = ["background", "cat", "dog", "sofa", "dining table", "bed"]
#: words the tiny BLIP tokenizer knows (its captions are random sequences of them)
BLIP_WORDS = "a photograph of cat dog sofa bed dining table sitting on the sky tree road building water grass".split()


@pytest.fixture(scope="module")
def tiny_filter_models(tmp_path_factory):
    """Folders holding a tiny random CLIP and a tiny random BLIP, in save_pretrained layout."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor)

    from benchmark.models.tiny import build_tiny_tokenizer

    root = tmp_path_factory.mktemp("filter_models")
    torch.manual_seed(0)
    tok = build_tiny_tokenizer()
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    ))
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(root / "clip")
    clip.save_pretrained(root / "clip")

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + BLIP_WORDS)}
    blip = BlipForConditionalGeneration(BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, encoder_hidden_size=32, max_position_embeddings=64,
                         bos_token_id=vocab["[CLS]"], sep_token_id=vocab["[SEP]"], eos_token_id=vocab["[SEP]"],
                         pad_token_id=vocab["[PAD]"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    ))
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=BertTokenizer(vocab=vocab)).save_pretrained(root / "blip")
    blip.save_pretrained(root / "blip")
    return root


def _settings(models, **changes):
    base = OpenVocabSettings(clip_model=str(models / "clip"), captioner_model=str(models / "blip"), filter_device="cpu",
                             candidates="clip")
    return dataclasses.replace(base, **changes)


def _image(seed=0):
    return torch.randint(0, 256, (3, 40, 52), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_image_text_criterion_is_a_softmax_over_classes_with_the_threshold(tiny_filter_models):
    f = ClipCandidateFilter(_settings(tiny_filter_models, synonyms={"sofa": ["sofa", "couch"]}))
    pixels = _image().permute(1, 2, 0).numpy()
    classes, probs = f.image_scores(pixels, NAMES)
    assert classes == [1, 2, 3, 4, 5]  # background is never a candidate
    assert probs.shape == (5,) and float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    # the scaled cosine of a class is the max over its names
    image = f.image_embedding(pixels)
    names = f.text_embeddings(["a photo of a sofa.", "a photo of a couch.", "a photo of a cat."])
    cos = (image @ names.T)[0]
    ratio = float(probs[2] / probs[0])  # sofa vs cat
    expected = float(torch.exp(f.clip.logit_scale.exp() * (torch.maximum(cos[0], cos[1]) - cos[2])))
    assert ratio == pytest.approx(expected, rel=1e-3)
    # thresholds: 0 keeps every class, above 1 none (no captioner: image criterion only)
    assert f(_image(), NAMES) == ([], None)  # default 0.97 is never reached by 5 random classes...
    assert float(probs.max()) < 0.97  # ...as checked here
    assert ClipCandidateFilter(_settings(tiny_filter_models, clip_image_threshold=0.0))(_image(), NAMES) == ([1, 2, 3, 4, 5], None)
    best = int(probs.argmax())
    keep_best = ClipCandidateFilter(_settings(tiny_filter_models, clip_image_threshold=float(probs.max()) - 1e-4))
    assert keep_best(_image(), NAMES)[0] == [classes[best]]


def test_caption_class_text_criterion_matches_words_and_word_pairs(tiny_filter_models):
    assert caption_phrases("A cat sitting at the dining table.") == [
        "cat", "sitting", "dining", "table", "cat sitting", "dining table",
    ]
    f = ClipCandidateFilter(_settings(tiny_filter_models, synonyms={"sofa": ["sofa", "couch"]}))
    classes, sim = f.text_scores("a dog on a couch by the dining table", NAMES)
    assert classes == [1, 2, 3, 4, 5]
    # exact names (dog; couch, a synonym of sofa; the pair "dining table") have cosine 1
    assert torch.allclose(sim[[1, 2, 3]], torch.ones(3), atol=1e-5)
    # random weights give other pairs high similarities too, but not identity
    assert float(sim[[0, 4]].max()) < 0.9999
    whole = ClipCandidateFilter(_settings(tiny_filter_models, clip_text_match="caption"))
    assert float(whole.text_scores("dog", NAMES)[1][1]) == pytest.approx(1.0, abs=1e-5)


def test_blip_captions_feed_the_text_criterion_and_the_prompts(tiny_filter_models):
    settings = _settings(tiny_filter_models, captioner="blip", clip_image_threshold=2.0, clip_text_threshold=0.9999)
    f = ClipCandidateFilter(settings)
    image = _image(1)
    caption = f.caption(image.permute(1, 2, 0).numpy())
    candidates, returned = f(image, NAMES)
    assert returned == caption and isinstance(caption, str) and caption
    # with the image criterion off, exactly the classes named in the caption remain
    named = [c for c in range(1, len(NAMES)) if NAMES[c] in caption_phrases(caption)]
    assert candidates == named
    # caption_prompt: one caption per prompt name of the kept classes, conditioned on its prompt
    every = ClipCandidateFilter(dataclasses.replace(settings, clip_image_threshold=0.0, caption_prompt=True,
                                                    template="a photograph of"))
    candidates, per_name = every(image, NAMES)
    assert candidates == [1, 2, 3, 4, 5] and set(per_name) == {"cat", "dog", "sofa", "dining table", "bed"}
    assert per_name["cat"].startswith("a photograph of cat")


def test_missing_models_fail_at_construction_with_what_was_tried(tiny_filter_models, tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match=r"CLIP model '/no/such/clip' \(method\.clip_model\).*save_pretrained"):
        ClipCandidateFilter(_settings(tiny_filter_models, clip_model="/no/such/clip"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"'openai/clip-vit-large-patch14' \(method\.clip_model\).*empty_hf_home"):
        ClipCandidateFilter(_settings(tiny_filter_models, clip_model="openai/clip-vit-large-patch14"))
    with pytest.raises(ModelNotFoundError, match=r"BLIP captioning model '/no/blip' \(method\.captioner_model\)"):
        ClipCandidateFilter(_settings(tiny_filter_models, captioner="blip", captioner_model="/no/blip"))


TINY = ["model=tiny", "dataset=synthetic", "dataset.n_images=2", "method.extract.image_size=128", "run.progress=false",
        "metric=miou", "method=diffsegmenter", "method.candidates=clip", "method.filter_device=cpu"]


def test_runner_fails_at_start_without_the_filter_model(tmp_path):
    from benchmark.compose import run_with_overrides

    with pytest.raises(ModelNotFoundError, match="method.clip_model"):
        run_with_overrides(TINY + ["method.clip_model=/no/such/clip"], tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_runner_uses_filter_candidates_and_captions(tiny_filter_models, tmp_path, monkeypatch):
    from benchmark.compose import run_with_overrides
    from methods.open_vocab import OpenVocabularyMethod

    prompts = []
    original = OpenVocabularyMethod.queries
    monkeypatch.setattr(OpenVocabularyMethod, "queries", lambda self, ctx: prompts.append(original(self, ctx)) or prompts[-1])
    models = tiny_filter_models
    base = TINY + [f"method.clip_model={models / 'clip'}", f"method.captioner_model={models / 'blip'}"]
    # no class passes; synthetic has no background class, so every class is prompted
    # (the fallback) -> 6 prompts per image, plain template prompts
    none = run_with_overrides(base + ["method.clip_image_threshold=2.0"], tmp_path / "none")
    assert none.payload["diffusion_passes"] == 2 * 6
    assert all(q.text == f"a photograph of {q.word}" for qs in prompts for q in qs)
    # captions appended to the prompts (per-class BLIP captions conditioned on the prompt)
    prompts.clear()
    captioned = run_with_overrides(
        base + ["method.clip_image_threshold=0.0", "method.captioner=blip", "method.caption_prompt=true"],
        tmp_path / "captioned",
    )
    assert captioned.payload["n_images"] == 2 and captioned.payload["diffusion_passes"] == 2 * 6
    texts = [q.text for qs in prompts for q in qs]
    assert len(texts) == 2 * 6 and all(t.startswith("a photograph of ") for t in texts)
    assert any(len(t.split()) > 4 for t in texts)  # a continuation was appended


def test_official_file_candidates_with_blip_captions_load_only_blip(tiny_filter_models, tmp_path, monkeypatch):
    """The official pipeline: candidates from the filter file, per-prompt BLIP captions."""
    import json

    from benchmark.compose import run_with_overrides
    from methods.open_vocab import OpenVocabularyMethod

    prompts = []
    original = OpenVocabularyMethod.queries
    monkeypatch.setattr(OpenVocabularyMethod, "queries", lambda self, ctx: prompts.append(original(self, ctx)) or prompts[-1])
    models = tiny_filter_models
    settings = _settings(models, candidates="file", candidates_file="x.json", captioner="blip", caption_prompt=True,
                         clip_model="/no/such/clip")
    flt = ClipCandidateFilter(settings)  # CLIP is not needed with candidates from a file
    assert flt.clip is None and flt.blip is not None
    image = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8)
    names = ["background", "cat", "dog"]
    captions = flt.captions_for(image, [2], names)
    assert set(captions) == {"dog"} and isinstance(captions["dog"], str)
    path = tmp_path / "cands.json"
    base = TINY + [f"method.clip_model=/no/such/clip", f"method.captioner_model={models / 'blip'}"]
    # the official layout (union of the two criteria), keys are file names of the ids
    path.write_text(json.dumps({"image_similarity": {"synthetic_000000.jpg": ["tree"], "synthetic_000001.jpg": ["road"]},
                                "text_similarity": {"synthetic_000000.jpg": [], "synthetic_000001.jpg": ["water"]}}))
    out = run_with_overrides(
        base + ["method.candidates=file", f"method.candidates_file={path}", "method.captioner=blip",
                "method.caption_prompt=true"],
        tmp_path / "run",
    )
    assert out.payload["n_images"] == 2
    words = [[q.word for q in qs] for qs in prompts]
    assert words == [["tree"], ["road", "water"]]
    assert all(q.word_weight == pytest.approx(1.21) for qs in prompts for q in qs)


def test_caption_max_tokens_null_uses_the_generation_defaults(tiny_filter_models, monkeypatch):
    seen = []
    flt = ClipCandidateFilter(_settings(tiny_filter_models, captioner="blip", caption_max_tokens=None))
    original = flt.blip.generate
    monkeypatch.setattr(flt.blip, "generate", lambda **kw: seen.append(kw) or original(**kw))
    flt.caption(torch.randint(0, 256, (20, 24, 3), dtype=torch.uint8).numpy())
    assert "max_new_tokens" not in seen[0]  # the official model.generate(**inputs)
    flt.max_tokens = 3
    flt.caption(torch.randint(0, 256, (20, 24, 3), dtype=torch.uint8).numpy())
    assert seen[1]["max_new_tokens"] == 3
