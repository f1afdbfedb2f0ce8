"""The SDXL family on the tiny SDXL: layout, conditioning, attention capture of every
transformer block against an explicit softmax(QKᵀ/√d), block-output feature capture in
the same pass, and loading SDXL-layout folders."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmark.attention.capture import CapturingAttnProcessor, _Accumulator
from benchmark.attention.features import FeatureCapture, resolve_feature
from benchmark.attention.layers import list_layers
from benchmark.schema import ExtractionConfig
from benchmark.types import AttentionRequest, PromptQuery
from tests.test_capture import ExplicitAttention

EXTRACT = ExtractionConfig(image_size=128, latent="mean", timestep=50, noise=True, seed=0)


def _image(seed=0, side=96):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, side, side), generator=g, dtype=torch.uint8)


def _inputs(model, side=16, batch=2):
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, 4, side, side, generator=g)
    texts = ["a photo of a dog", ""][:batch]
    emb = model.encode_prompts(texts)
    cond = {"text_embeds": model.pooled_prompts(texts), "time_ids": model.add_time_ids(side * 8, batch)}
    return latents, torch.tensor([300] * batch), emb, cond


def test_tiny_sdxl_has_the_sdxl_block_layout(tiny_sdxl_model):
    model = tiny_sdxl_model
    names = list(model.unet.attn_processors)
    for attn in ("attn1", "attn2"):
        layers = [n for n in names if n.endswith(f"{attn}.processor")]
        # SDXL: down 2x1 + 2x10, mid 10, up 3x10 + 3x2
        assert [sum(n.startswith(p) for n in layers) for p in ("down_blocks", "mid_block", "up_blocks")] == [24, 10, 36]
    assert not any(n.startswith("down_blocks.0.") for n in names)  # no attention in the first stage
    assert model.uses_text_time and model.text_encoder_2 is not None
    assert type(model.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert model.attention_sides(128) == [64, 32]  # 1024 px
    assert model.size_multiple == 32
    emb = model.encode_prompts(["a photo of a dog"])
    assert emb.shape == (1, 77, 64)  # both encoders' penultimate states, concatenated
    assert model.pooled_prompts(["a photo of a dog"]).shape == (1, 32)
    assert model.add_time_ids(1024, 2).tolist() == [[1024, 1024, 0, 0, 1024, 1024]] * 2
    assert model.fingerprint.startswith("tiny-sdxl-v")


def test_sd_layout_sides_unchanged(tiny_model):
    assert tiny_model.attention_sides(64) == [64, 32, 16, 8]
    assert resolve_feature(tiny_model.unet, "last_down_attn1")[0] == "down_blocks.2.attentions.1.transformer_blocks.0.attn1"


def test_every_sdxl_block_capture_equals_explicit_softmax(tiny_sdxl_model):
    """Each of the 140 attention layers, captured by the real processor with its own
    accumulator, equals the head mean of softmax(q kᵀ / √d) from the same layer's q and k."""
    unet = tiny_sdxl_model.unet
    latents, t, emb, cond = _inputs(tiny_sdxl_model)
    store = {}
    original = dict(unet.attn_processors)
    unet.set_attn_processor({name: ExplicitAttention(name, store) for name in original})
    try:
        with torch.no_grad():
            ref_out = unet(latents, t, encoder_hidden_states=emb, added_cond_kwargs=cond).sample
    finally:
        unet.set_attn_processor(dict(original))
    layers = list_layers(original)
    assert len(layers) == 140
    accumulators = {}
    for layer in layers:
        side = int(store[layer.name].shape[2] ** 0.5)
        acc = _Accumulator(layer.kind, [side], 2)
        acc.set_groups(torch.tensor([0, 1]))
        accumulators[layer.name] = acc
    unet.set_attn_processor(
        {n: CapturingAttnProcessor(original[n], accumulators[n], n, 64) if n in accumulators else original[n] for n in original}
    )
    try:
        with torch.no_grad():
            out = unet(latents, t, encoder_hidden_states=emb, added_cond_kwargs=cond).sample
    finally:
        unet.set_attn_processor(dict(original))
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for layer in layers:
        (side, captured), = accumulators[layer.name].result("all").items()
        expected = store[layer.name].float().mean(1)  # (B, N, keys): head mean
        assert captured.shape == expected.shape, layer.name
        torch.testing.assert_close(captured, expected, atol=1e-6, rtol=1e-5, msg=layer.name)


def test_sdxl_capture_reads_the_sides_the_model_has(tiny_sdxl_model):
    model = tiny_sdxl_model
    image = _image()
    # SD sides of 128 px are 16/8/4/2; the tiny SDXL has attention at 8 and 4 only
    maps = model.capture([image], [[PromptQuery("a photo of a dog", "dog")]], AttentionRequest((16, 8, 4, 2), (16, 8, 4, 2)), EXTRACT)[0]
    assert sorted(maps.self_attn) == [4, 8] and sorted(maps.cross_attn) == [4, 8]
    assert maps.self_attn[8].shape == (1, 64, 64) and maps.cross_attn[4].shape == (1, 16, 77)
    torch.testing.assert_close(maps.self_attn[8].sum(-1), torch.ones(1, 64))
    with pytest.raises(ValueError, match=r"resolution\(s\) \[2\] requested.*has attention at \[8, 4\]"):
        model.capture([image], [[PromptQuery("")]], AttentionRequest((2,)), EXTRACT)
    # the latent side (an SD UNet's finest grid) is served by the finest grid the model has
    finest = model.capture([image], [[PromptQuery("a photo of a dog", "dog")]], AttentionRequest((16,)), EXTRACT)[0]
    assert sorted(finest.self_attn) == [8]
    torch.testing.assert_close(finest.self_attn[8], maps.self_attn[8])


def test_feature_capture_equals_hooked_block_output_in_the_same_pass(tiny_sdxl_model):
    model = tiny_sdxl_model
    images = [_image(0), _image(1)]
    path, module = resolve_feature(model.unet, "last_down_attn1")
    assert path == "down_blocks.2.attentions.1.transformer_blocks.9.attn1"  # DiffCut tools/ldm.py register_hooks
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        calls = model.unet_calls
        request = AttentionRequest((8,), (), features=("last_down_attn1",))
        maps = model.capture(images, [[PromptQuery("")], [PromptQuery("")]], request, EXTRACT)
    finally:
        handle.remove()
    assert model.unet_calls == calls + 1 and len(seen) == 1  # no second pass
    for i, m in enumerate(maps):
        assert m.features["last_down_attn1"].shape == (1, 16, 64)  # (G, 4x4 tokens, channels)
        torch.testing.assert_close(m.features["last_down_attn1"][0], seen[0][i].float())
    features_only = model.capture(images[:1], [[PromptQuery("")]], AttentionRequest(features=("last_down_attn1",)), EXTRACT)[0]
    assert features_only.self_attn == {}
    torch.testing.assert_close(features_only.features["last_down_attn1"], maps[0].features["last_down_attn1"])


def test_feature_capture_groups_rows_and_names_bad_modules(tiny_sdxl_model):
    unet = tiny_sdxl_model.unet
    latents, t, emb, cond = _inputs(tiny_sdxl_model, batch=2)
    with FeatureCapture(unet, ["down_blocks.1.attentions.0.transformer_blocks.1.attn1"], [0, 0], 1) as cap:
        with torch.no_grad():
            unet(latents, t, encoder_hidden_states=emb, added_cond_kwargs=cond)
    with FeatureCapture(unet, ["down_blocks.1.attentions.0.transformer_blocks.1.attn1"], [0, 1], 2) as each:
        with torch.no_grad():
            unet(latents, t, encoder_hidden_states=emb, added_cond_kwargs=cond)
    mean = cap.result()["down_blocks.1.attentions.0.transformer_blocks.1.attn1"]
    rows = each.result()["down_blocks.1.attentions.0.transformer_blocks.1.attn1"]
    torch.testing.assert_close(mean[0], rows.mean(0))
    with pytest.raises(ValueError, match="'down_blocks.9.attn1' is neither an alias"):
        FeatureCapture(unet, ["down_blocks.9.attn1"], [0], 1)


def test_features_round_trip_the_cache(tiny_sdxl_model, tmp_path):
    from benchmark.attention.cache import AttentionCache

    maps = tiny_sdxl_model.capture(
        [_image()], [[PromptQuery("")]], AttentionRequest((8,), features=("last_down_attn1",)), EXTRACT
    )[0]
    cache = AttentionCache(tmp_path, dtype="float16")
    key = cache.key(test="features")
    cache.save(key, maps)
    loaded = cache.load(key)
    stored = cache.as_stored(maps)
    torch.testing.assert_close(loaded.features["last_down_attn1"], stored.features["last_down_attn1"], atol=0, rtol=0)
    torch.testing.assert_close(loaded.self_attn[8], stored.self_attn[8], atol=0, rtol=0)
    assert AttentionCache.nbytes(maps) == 2 * (64 * 64 + 16 * 64)


def test_sdxl_folder_round_trip_loads_both_encoders(tmp_path):
    from benchmark.models import ModelConfig, load_model
    from benchmark.models.tiny import save_tiny

    folder = save_tiny(tmp_path / "xl", name="tiny_sdxl")
    model = load_model(ModelConfig(name="local_xl", path=str(folder), device="cpu"))
    built = load_model(ModelConfig(name="tiny_sdxl", path=None, device="cpu"))
    assert model.text_encoder_2 is not None and model.uses_text_time
    torch.testing.assert_close(model.encode_prompts(["a cat"]), built.encode_prompts(["a cat"]))
    torch.testing.assert_close(model.pooled_prompts(["a cat"]), built.pooled_prompts(["a cat"]))
    import shutil

    shutil.rmtree(folder / "tokenizer_2")
    with pytest.raises(Exception, match="tokenizer_2"):
        load_model(ModelConfig(name="local_xl", path=str(folder), device="cpu"))


def test_start_up_check_names_what_the_model_lacks(tmp_path):
    from benchmark.models import ModelConfig
    from benchmark.models.loading import LazyModel
    from benchmark.models.tiny import save_tiny

    folder = save_tiny(tmp_path / "xl", name="tiny_sdxl")
    lazy = LazyModel(ModelConfig(name="local_xl", path=str(folder), device="cpu"))
    assert not lazy.loaded
    lazy.check_request(AttentionRequest((32, 16, 8, 4), features=("last_down_attn1",)), 256)  # serves 16 and 8
    with pytest.raises(ValueError, match=r"resolution\(s\) \[2\] requested.*'local_xl'.*has attention at \[8, 4\]"):
        lazy.check_request(AttentionRequest((2,)), 128)
    with pytest.raises(ValueError, match="multiple of 32"):
        lazy.check_request(AttentionRequest((8,)), 100)
    with pytest.raises(ValueError, match="'mid_block.attn9' is neither an alias"):
        lazy.check_request(AttentionRequest(features=("mid_block.attn9",)), 256)
    assert not lazy.loaded  # checked from the folder's config files only


def test_start_up_check_failures_are_user_errors(tmp_path):
    """What the model lacks is the user's choice of size/model/feature: printed alone with exit
    code 2 (ConfigError), not a ValueError traceback (found by a new user: image_size=200)."""
    from benchmark.config import ConfigError, is_user_error
    from benchmark.models import ModelConfig
    from benchmark.models.loading import LazyModel
    from benchmark.models.tiny import save_tiny

    folder = save_tiny(tmp_path / "xl", name="tiny_sdxl")
    lazy = LazyModel(ModelConfig(name="local_xl", path=str(folder), device="cpu"))
    for request, size in ((AttentionRequest((2,)), 128), (AttentionRequest((8,)), 200),
                          (AttentionRequest(features=("mid_block.attn9",)), 256)):
        with pytest.raises(ConfigError) as err:
            lazy.check_request(request, size)
        assert is_user_error(err.value)


def test_sd2_768_layout_and_v_prediction_generation(tmp_path):
    """SD 2.x at 768 px: attention at 96/48/24/12 for its 96x96 latent; a v-prediction
    scheduler config is read from the folder and drives generation."""
    import json

    from benchmark.models import ModelConfig, load_model
    from benchmark.models.architectures import UNET_CONFIGS
    from benchmark.models.diffusion import attention_sides
    from benchmark.models.tiny import save_tiny

    assert attention_sides(UNET_CONFIGS["sd2_base"], 96) == [96, 48, 24, 12]  # 768 px
    folder = save_tiny(tmp_path / "v", seed=0)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "v_prediction"
    config_path.write_text(json.dumps(config))
    model = load_model(ModelConfig(name="sd2_local", path=str(folder), device="cpu"))
    assert model.scheduler.config.prediction_type == "v_prediction"
    extract = ExtractionConfig(image_size=64, steps=2, guidance_scale=1.0, seed=0)
    images, maps = model.generate([PromptQuery("a photo of a dog", "dog")], AttentionRequest((8,), (8,)), extract)
    eps_model = load_model(ModelConfig(name="tiny", path=None, device="cpu"))
    eps_images, _ = eps_model.generate([PromptQuery("a photo of a dog", "dog")], AttentionRequest((8,), (8,)), extract)
    assert images[0].shape == (3, 64, 64) and maps[0].self_attn[8].shape == (1, 64, 64)
    assert not torch.equal(images[0], eps_images[0])  # the prediction type changes the denoising

# -- leftover item 3: sides the user named that the model lacks are refused at start -------------
@pytest.fixture(scope="module")
def xl_folder(tmp_path_factory):
    from benchmark.models.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("xl") / "tiny_sdxl", name="tiny_sdxl")


XL_SEEDIFF = ["method=seediff", "model=tiny_sdxl", "dataset=synthetic", "dataset.n_images=2",
              "method.extract.image_size=128", "run.progress=false", "run.report=false"]


@pytest.mark.parametrize("override, key, asked", [
    ("method.sa_resolutions=[4,8,16]", "method.sa_resolutions", "[4, 8, 16]"),
    ("method.ca_resolution=16", "method.ca_resolution", "[16]"),
    ("+method.grid.ca_sa_side=[8,16]", "method.ca_sa_side", "[16]"),
])
def test_explicit_sides_the_model_lacks_are_refused_before_any_image(tmp_path, monkeypatch, xl_folder, override, key,
                                                                     asked):
    """tiny_sdxl at 128 px (latent 16) has attention at 8 and 4 only; main refused these at the
    first image (after loading the weights and a diffusion pass)."""
    import benchmark.models.loading as loading
    from benchmark.compose import run_with_overrides
    from benchmark.config import ConfigError, is_user_error

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before the start-up check refused the config")

    monkeypatch.setattr(loading, "load_model", no_weights)  # a saved folder loads lazily: the check reads its config
    extra = ["method.stage=ca_sa"] if "ca_sa_side" in override else []
    with pytest.raises(ConfigError) as err:
        run_with_overrides(XL_SEEDIFF + [f"model.path={xl_folder}"] + extra + [override], tmp_path / "run")
    message = str(err.value)
    assert is_user_error(err.value)
    assert message.startswith(f"{key}: ") and f"side(s) {asked} requested" in message
    assert "'tiny_sdxl'" in message and "its attention sides there: [8, 4]" in message
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())  # nothing written


def test_default_sides_are_still_fitted_to_the_model_silently():
    """sa_resolutions / ca_resolution null: the derived sides (16 = the latent side, which
    the SDXL family lacks) are fitted to the model, as before; sides it has pass the check."""
    from benchmark.compose import compose_config
    from benchmark.runner import Runner

    runner = Runner(compose_config(XL_SEEDIFF), "/nonexistent/run")
    runner.check()  # no error
    assert runner.explicit_sides == [] and 16 in runner.request.self_resolutions
    given = Runner(compose_config(XL_SEEDIFF + ["method.sa_resolutions=[4,8]", "method.ca_resolution=4"]), "/nonexistent/run")
    given.check()
    assert [(e.key, e.kind, e.sides) for e in given.explicit_sides] == [
        ("method.sa_resolutions", "self", (4, 8)), ("method.ca_resolution", "cross", (4,))]
