"""Model presets, the tiny SD and its tokenizer, loading from folders and from the HF cache."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from benchmark.models import ModelConfig, ModelNotFoundError, load_model
from benchmark.models.tiny import MULTI_TOKEN_EXAMPLES, TINY_WORDS, build_tiny_components, save_tiny

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
PRESETS = {
    "tiny": None,
    "sd14": "CompVis/stable-diffusion-v1-4",
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2_base": "stabilityai/stable-diffusion-2-base",
    "sd21_base": "stabilityai/stable-diffusion-2-1-base",
    "sd2": "stabilityai/stable-diffusion-2",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "ssd1b": "segmind/SSD-1B",
    "vega": "segmind/Segmind-Vega",
    "tiny_sdxl": None,
}


@pytest.mark.parametrize("name, hub_id", PRESETS.items())
def test_presets_are_valid_model_configs(name, hub_id):
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    assert set(data) == {f.name for f in dataclasses.fields(ModelConfig)}  # every key, no unknown one
    cfg = ModelConfig(**data)
    assert (cfg.name, cfg.path, cfg.download) == (name, hub_id, False)


def test_model_config_rejects_bad_values():
    with pytest.raises(ValueError, match="'fp64'.*model.dtype"):
        ModelConfig(dtype="fp64")
    with pytest.raises(ValueError, match="'gpu'.*model.device"):
        ModelConfig(device="gpu")
    with pytest.raises(ValueError, match="model.path"):
        ModelConfig(name="sd14", path=None)
    with pytest.raises(ValueError, match="model.chunk_size"):
        ModelConfig(chunk_size=0)


# -- the tiny model -------------------------------------------------------------------------
def test_tiny_model_has_sd_attention_layout(tiny_model):
    names = list(tiny_model.unet.attn_processors)
    for attn in ("attn1", "attn2"):
        layers = [n for n in names if n.endswith(f"{attn}.processor")]
        assert len(layers) == 16
        assert [sum(n.startswith(p) for n in layers) for p in ("down_blocks", "mid_block", "up_blocks")] == [6, 1, 9]
    assert tiny_model.size_multiple == 64 and tiny_model.max_length == 77
    assert tiny_model.fingerprint.startswith("tiny-v")


def test_tiny_build_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_components(seed=0)
    assert torch.equal(torch.rand(1), expected_next)
    b, c = build_tiny_components(seed=0), build_tiny_components(seed=1)
    wa, wb, wc = (m["unet"].conv_in.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_tiny_tokenizer_whole_word_and_multi_token_names(tiny_model):
    tok = tiny_model.tokenizer
    single = {w: tok(w, add_special_tokens=False).input_ids for w in TINY_WORDS}
    assert all(len(ids) == 1 for ids in single.values())
    assert len({ids[0] for ids in single.values()}) == len(TINY_WORDS)  # distinct tokens
    for word in MULTI_TOKEN_EXAMPLES:
        assert len(tok(word, add_special_tokens=False).input_ids) > 1
    ids = tiny_model.token_ids("A photo of a Dog.")
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and ids[5] == single["dog"][0]


def test_token_positions(tiny_model):
    assert tiny_model.token_positions("a photograph of dog", "dog") == [4]
    assert tiny_model.token_positions("a photograph of potted plant", "potted plant") == [4, 5]
    assert tiny_model.token_positions("a photograph of potted plant", "plant") == [5]
    n = len(tiny_model.tokenizer("pottedplant", add_special_tokens=False).input_ids)
    assert tiny_model.token_positions("a photography of pottedplant", "pottedplant") == list(range(4, 4 + n))
    assert tiny_model.token_positions("a dog and a dog", "dog") == [2]  # first occurrence
    with pytest.raises(ValueError, match=r"'cat'.*'a photograph of dog'"):
        tiny_model.token_positions("a photograph of dog", "cat")
    long_prompt = "a " * 80 + "dog"
    with pytest.raises(ValueError, match="not found in the 77-token"):
        tiny_model.token_positions(long_prompt, "dog")


# -- loading from folders and the HF cache --------------------------------------------------
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny_sd") / "tiny", seed=0)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_saved_tiny_loads_back_through_load_model(tiny_folder, tiny_model):
    loaded = load_model(ModelConfig(name="tiny_saved", path=str(tiny_folder), device="cpu"))
    for part in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(loaded, part), getattr(tiny_model, part))
    assert loaded.token_ids("a photograph of potted plant") == tiny_model.token_ids("a photograph of potted plant")
    assert loaded.scheduler.config.beta_schedule == "scaled_linear"
    assert loaded.model_id == str(tiny_folder.resolve()) and loaded.fingerprint.startswith("local:")
    again = load_model(ModelConfig(name="tiny_saved", path=str(tiny_folder), device="cpu"))
    assert again.fingerprint == loaded.fingerprint
    other = save_tiny(tiny_folder.parent / "seed1", seed=1)
    assert load_model(ModelConfig(name="t", path=str(other), device="cpu")).fingerprint != loaded.fingerprint


def _fake_hub_cache(root: Path, repo_id: str, folder: Path, commit: str = "a" * 40) -> Path:
    """The HF cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    import shutil

    repo = root / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return repo


def test_hub_id_loads_from_local_cache_offline(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_hub_cache(tmp_path, "someorg/tiny-sd", tiny_folder)
    model = load_model(ModelConfig(name="sd_cached", path="someorg/tiny-sd", device="cpu"))
    assert model.model_id == "someorg/tiny-sd" and model.fingerprint == "someorg/tiny-sd@" + "a" * 40
    assert model.unet.config.layers_per_block == 2


def test_missing_hub_id_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # download=true is refused too while HF_HUB_OFFLINE is set: nothing reaches the network
    for download in (False, True):
        with pytest.raises(ModelNotFoundError) as err:
            load_model(ModelConfig(name="sd14", path="CompVis/stable-diffusion-v1-4", download=download))
        text = str(err.value)
        assert "CompVis/stable-diffusion-v1-4" in text and str(tmp_path) in text
        assert "huggingface-cli download CompVis/stable-diffusion-v1-4" in text and "model.path=" in text
        assert "HF_HUB_OFFLINE" in text


def test_bad_local_folders(tmp_path):
    with pytest.raises(ModelNotFoundError, match="/no/such/folder"):
        load_model(ModelConfig(name="x", path="/no/such/folder"))
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"lacks the component folder\(s\) \['vae'"):
        load_model(ModelConfig(name="x", path=str(tmp_path)))
    (tmp_path / "model_index.json").write_text(json.dumps({}))
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        (tmp_path / part).mkdir()
    with pytest.raises(ModelNotFoundError, match="could not load the components"):
        load_model(ModelConfig(name="x", path=str(tmp_path)))


def test_word_weight_emphasises_only_the_words_tokens(tiny_model):
    from benchmark.types import PromptQuery

    text, word = "a photograph of pottedplant on a table", "pottedplant"
    plain = tiny_model.encode_prompts([text])[0]
    empty = tiny_model.encode_prompts([""])[0]
    same = tiny_model.encode_queries([PromptQuery(text, word)])[0]
    assert torch.equal(same, plain)
    weighted = tiny_model.encode_queries([PromptQuery(text, word, word_weight=1.21)])[0]
    pos = tiny_model.token_positions(text, word)
    assert len(pos) > 1  # a multi-token name: every sub-token is weighted
    expected = plain.clone()
    expected[pos] = empty[pos] + 1.21 * (plain[pos] - empty[pos])
    torch.testing.assert_close(weighted, expected)
    others = [i for i in range(77) if i not in pos]
    assert torch.equal(weighted[others], plain[others])
    with pytest.raises(ValueError, match="needs the word"):
        tiny_model.encode_queries([PromptQuery(text, None, word_weight=1.21)])


def test_caption_prompts_carry_the_official_word_weight():
    from benchmark.types import SegmentContext
    from methods.open_vocab import OpenVocabSettings, plan_prompts

    names = ["background", "cat", "dog"]
    ctx = SegmentContext("img", (4, 4), names, candidates=[1], caption="a cat on a sofa")
    plain = plan_prompts(ctx, OpenVocabSettings(template="a photograph of"))
    assert [q.word_weight for q in plain.queries] == [1.0]
    captioned = plan_prompts(ctx, OpenVocabSettings(template="a photograph of", caption_prompt=True, candidates="file",
                                                    candidates_file="captions.json"))
    assert [q.word_weight for q in captioned.queries] == [1.21] and captioned.queries[0].word == "cat"
