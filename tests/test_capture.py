"""Attention capture on the tiny SD: values equal an explicit softmax(QKᵀ/√d) reference,
outputs equal the plain pass, the right layers are captured, processors are restored,
batching does not change results."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from benchmark.attention.capture import AttentionCapture, CapturingAttnProcessor
from benchmark.attention.layers import list_layers, select_layers
from benchmark.models.diffusion import _randn, derive_seed
from benchmark.schema import ExtractionConfig
from benchmark.types import AttentionRequest, PromptQuery

ALL_16 = (16, 8, 4, 2)  # attention sides of a 16x16 latent (128 px image)


class ExplicitAttention:
    """Reference processor: full probability matrix softmax(q kᵀ / √d) per head, recorded per layer."""

    def __init__(self, name, store):
        self.name, self.store = name, store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        b, n, _ = hidden_states.shape
        q = attn.to_q(hidden_states).view(b, n, attn.heads, -1).transpose(1, 2)
        k = attn.to_k(context).view(b, context.shape[1], attn.heads, -1).transpose(1, 2)
        v = attn.to_v(context).view(b, context.shape[1], attn.heads, -1).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        self.store[self.name] = probs
        out = (probs @ v).transpose(1, 2).reshape(b, n, -1)
        return attn.to_out[1](attn.to_out[0](out))


def explicit_probabilities(unet, latents, t, emb):
    store = {}
    original = dict(unet.attn_processors)
    unet.set_attn_processor({name: ExplicitAttention(name, store) for name in original})
    try:
        with torch.inference_mode():
            out = unet(latents, t, encoder_hidden_states=emb).sample
    finally:
        unet.set_attn_processor(dict(original))
    return store, out


def reference_mean(store, unet, kind, side, selection, groups):
    """Head-mean, layer-mean, then mean of the rows of each group."""
    names = {layer.name for layer in select_layers(list_layers(unet.attn_processors), kind, selection)}
    per_layer = [p.mean(1) for name, p in store.items() if name in names and p.shape[2] == side * side]
    assert per_layer, (kind, side, selection)
    layer_mean = torch.stack(per_layer).mean(0)  # (B, N, M)
    groups = torch.as_tensor(groups)
    return torch.stack([layer_mean[groups == g].mean(0) for g in range(int(groups.max()) + 1)])


def unet_inputs(model, side=16, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, side, side, generator=g)
    emb = model.encode_prompts(["a photo of a dog", "a photograph of potted plant", "", "a cat"][:batch])
    return latents, torch.tensor([300] * batch), emb


def plain_output(unet, latents, t, emb):
    with torch.inference_mode():
        return unet(latents, t, encoder_hidden_states=emb).sample


def test_capture_equals_explicit_softmax_reference_and_plain_output(tiny_model):
    unet = tiny_model.unet
    latents, t, emb = unet_inputs(tiny_model, batch=3)
    store, ref_out = explicit_probabilities(unet, latents, t, emb)
    plain = plain_output(unet, latents, t, emb)
    torch.testing.assert_close(ref_out, plain, atol=1e-5, rtol=0)  # the reference itself is right
    request = AttentionRequest(ALL_16, ALL_16)
    groups = [0, 1, 0]  # rows 0 and 2 averaged together (two prompts of one image)
    # chunk of 37 query rows (split over 3 batch rows) exercises ragged chunks
    with AttentionCapture(unet, request, groups, chunk_size=37, cross_groups=[0, 1, 2]) as capture, torch.inference_mode():
        out = unet(latents, t, encoder_hidden_states=emb).sample
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=0)
    self_maps, cross_maps = capture.self_attention(), capture.cross_attention()
    assert sorted(self_maps) == sorted(cross_maps) == sorted(ALL_16)
    for side in ALL_16:
        expected_self = reference_mean(store, unet, "self", side, "all", groups)
        expected_cross = reference_mean(store, unet, "cross", side, "all", [0, 1, 2])
        assert self_maps[side].shape == (2, side**2, side**2) and self_maps[side].dtype == torch.float32
        assert cross_maps[side].shape == (3, side**2, 77)
        torch.testing.assert_close(self_maps[side], expected_self, atol=1e-5, rtol=0)
        torch.testing.assert_close(cross_maps[side], expected_cross, atol=1e-5, rtol=0)
        torch.testing.assert_close(self_maps[side].sum(-1), torch.ones(2, side**2), atol=1e-5, rtol=0)
        torch.testing.assert_close(cross_maps[side].sum(-1), torch.ones(3, side**2), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "selection, counts",
    [
        ("all", {16: 5, 8: 5, 4: 5, 2: 1}),
        ("down", {16: 2, 8: 2, 4: 2}),
        ("up", {16: 3, 8: 3, 4: 3}),
        ("mid", {2: 1}),
        ("first_up", {16: 1, 8: 1, 4: 1}),
    ],
)
def test_layer_selection_per_resolution(tiny_model, selection, counts):
    unet = tiny_model.unet
    latents, t, emb = unet_inputs(tiny_model, batch=1)
    request = AttentionRequest(tuple(counts), tuple(counts), selection, selection)
    with AttentionCapture(unet, request, [0]) as capture:
        plain_output(unet, latents, t, emb)
    for kind in ("self", "cross"):
        found = {side: len(names) for (k, side), names in capture.layers.items() if k == kind}
        assert found == counts
    if selection == "first_up":  # the first layer of each up block
        names = capture.layers[("self", 16)]
        assert names == ["up_blocks.3.attentions.0.transformer_blocks.0.attn1.processor"]
    if selection == "all":  # equals the reference restricted to the same layers
        store, _ = explicit_probabilities(unet, latents, t, emb)
        torch.testing.assert_close(
            capture.self_attention()[8], reference_mean(store, unet, "self", 8, selection, [0]), atol=1e-5, rtol=0
        )


def test_first_up_reference_values(tiny_model):
    unet = tiny_model.unet
    latents, t, emb = unet_inputs(tiny_model, batch=1)
    request = AttentionRequest((16, 8), (16,), "first_up", "first_up")
    with AttentionCapture(unet, request, [0]) as capture:
        plain_output(unet, latents, t, emb)
    store, _ = explicit_probabilities(unet, latents, t, emb)
    for side in (16, 8):
        expected = reference_mean(store, unet, "self", side, "first_up", [0])
        torch.testing.assert_close(capture.self_attention()[side], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        capture.cross_attention()[16], reference_mean(store, unet, "cross", 16, "first_up", [0]), atol=1e-5, rtol=0
    )


def test_64_latent_captures_16_self_attention_layers(tiny_model):
    unet = tiny_model.unet
    latents, t, emb = unet_inputs(tiny_model, side=64, batch=1)
    request = AttentionRequest((64, 32, 16, 8), (16,))
    plain = plain_output(unet, latents, t, emb)
    with AttentionCapture(unet, request, [0], chunk_size=1000) as capture, torch.inference_mode():
        out = unet(latents, t, encoder_hidden_states=emb).sample
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=0)
    self_maps = capture.self_attention()
    assert {side: a.shape for side, a in self_maps.items()} == {s: (1, s * s, s * s) for s in (64, 32, 16, 8)}
    assert {side: len(n) for (k, side), n in capture.layers.items() if k == "self"} == {64: 5, 32: 5, 16: 5, 8: 1}
    assert sum(len(n) for n in capture.layers.values()) == 16 + 5  # 16 self + the 5 cross layers at 16
    torch.testing.assert_close(self_maps[64].sum(-1), torch.ones(1, 4096), atol=1e-5, rtol=0)


def test_unrequested_layers_keep_their_processor_and_all_are_restored(tiny_model):
    unet = tiny_model.unet
    before = dict(unet.attn_processors)
    request = AttentionRequest((8,), (), "up")
    with AttentionCapture(unet, request, [0]):
        during = unet.attn_processors
        captured = {n for n, p in during.items() if isinstance(p, CapturingAttnProcessor)}
        assert captured == {
            n for n in before if n.startswith("up_blocks") and n.endswith("attn1.processor")
        }
        assert all(during[n] is before[n] for n in before if n not in captured)
        assert type(before[next(iter(captured))]).__name__ == "AttnProcessor2_0"
    after = unet.attn_processors
    assert all(after[n] is before[n] for n in before)


def test_processors_restored_after_an_exception(tiny_model):
    unet = tiny_model.unet
    before = dict(unet.attn_processors)
    latents, t, emb = unet_inputs(tiny_model, batch=1)
    with pytest.raises(RuntimeError, match="describe 2 batch rows"):
        # groups for 2 rows, batch of 1: the capturing layer raises mid-pass
        with AttentionCapture(unet, AttentionRequest((16,)), [0, 0]):
            plain_output(unet, latents, t, emb)
    assert all(unet.attn_processors[n] is p for n, p in before.items())
    with pytest.raises(KeyError):
        with AttentionCapture(unet, AttentionRequest((16,), (16,)), [0]):
            raise KeyError("boom")
    assert all(unet.attn_processors[n] is p for n, p in before.items())


def test_unavailable_resolution_is_reported(tiny_model):
    unet = tiny_model.unet
    latents, t, emb = unet_inputs(tiny_model, batch=1)
    with AttentionCapture(unet, AttentionRequest((64, 16)), [0]) as capture:
        plain_output(unet, latents, t, emb)
    with pytest.raises(ValueError, match=r"resolution\(s\) \[64\].*ran at \[16, 8, 4, 2\]"):
        capture.self_attention()
    with pytest.raises(ValueError, match="first_up"):
        with AttentionCapture(unet, AttentionRequest((2,), (), "first_up"), [0]) as capture:
            plain_output(unet, latents, t, emb)
        capture.self_attention()
    with pytest.raises(ValueError, match="Valid choices"):
        AttentionCapture(unet, AttentionRequest((16,), (), "middle"), [0])


# -- DiffusionModel.capture ---------------------------------------------------------------
def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [(100, 140), (128, 128), (90, 60)]
    return [torch.randint(0, 256, (3, *sizes[i % 3]), dtype=torch.uint8, generator=g) for i in range(n)]


EXTRACT = ExtractionConfig(image_size=128, latent="sample", timestep=100, noise=True, seed=3)
REQUEST = AttentionRequest((16, 8), (16, 4))
QUERIES = [
    [PromptQuery("a photograph of dog", "dog")],
    [PromptQuery("a photograph of cat", "cat"), PromptQuery("a photograph of potted plant", "potted plant")],
]


def assert_maps_close(a, b, atol=1e-5):
    assert sorted(a.self_attn) == sorted(b.self_attn) and sorted(a.cross_attn) == sorted(b.cross_attn)
    for side in a.self_attn:
        torch.testing.assert_close(a.self_attn[side], b.self_attn[side], atol=atol, rtol=0)
    for side in a.cross_attn:
        torch.testing.assert_close(a.cross_attn[side], b.cross_attn[side], atol=atol, rtol=0)
    assert a.token_positions == b.token_positions and a.queries == b.queries


def test_batch_equals_single_images_and_one_unet_call(tiny_model, monkeypatch):
    images = _images(2)
    calls, rows = tiny_model.unet_calls, tiny_model.unet_rows
    batch = tiny_model.capture(images, QUERIES, REQUEST, EXTRACT)
    assert (tiny_model.unet_calls - calls, tiny_model.unet_rows - rows) == (1, 3)  # all 3 prompts in one call
    assert batch[0].self_attn[16].shape == (1, 256, 256) and batch[1].self_attn[16].shape == (1, 256, 256)
    assert batch[1].cross_attn[16].shape == (2, 256, 77)
    assert batch[1].token_positions == [[4], [4, 5]]
    singles = [tiny_model.capture([im], [q], REQUEST, EXTRACT)[0] for im, q in zip(images, QUERIES)]
    for b, s in zip(batch, singles):
        assert_maps_close(b, s)
    # rows split over several UNet calls (max_batch) give the same maps
    monkeypatch.setattr(tiny_model, "max_batch", 1)
    calls = tiny_model.unet_calls
    split = tiny_model.capture(images, QUERIES, REQUEST, EXTRACT)
    assert tiny_model.unet_calls - calls == 3
    for b, s in zip(batch, split):
        assert_maps_close(b, s)


@pytest.mark.parametrize("per_prompt", [False, True])
def test_queries_sharing_a_text_share_one_unet_row(tiny_model, per_prompt):
    """One caption read at several nouns (Semantic DiffSeg) is one UNet row, not one per noun:
    the row's latent, timestep and embedding are the same, so each query gets the maps of a
    capture of that query alone (also per-prompt self-attention and the per-layer maps)."""
    images = _images(2, seed=4)
    caption = "a photograph of cat and dog"
    queries = [
        [PromptQuery(caption, "cat"), PromptQuery(caption, "dog"), PromptQuery("a photograph of dog", "dog")],
        [PromptQuery(caption, "dog")],
    ]
    extract = dataclasses.replace(EXTRACT, self_attn_per_prompt=per_prompt)
    request = AttentionRequest((16, 8), (16, 4), cross_layer_resolutions=(4,))
    rows = tiny_model.unet_rows
    shared = tiny_model.capture(images, queries, request, extract)
    assert tiny_model.unet_rows - rows == 3  # 2 distinct texts of image 0 + 1 of image 1
    assert shared[0].cross_attn[16].shape == (3, 256, 77)
    assert shared[0].token_positions == [[4], [7], [4]]  # the tiny vocabulary splits "and"
    for i, qs in enumerate(queries):
        for j, q in enumerate(qs):
            alone = tiny_model.capture([images[i]], [[q]], request, extract)[0]
            for side, maps in alone.cross_attn.items():
                torch.testing.assert_close(shared[i].cross_attn[side][j], maps[0], atol=1e-6, rtol=0)
            torch.testing.assert_close(shared[i].cross_attn_layers[4][:, j], alone.cross_attn_layers[4][:, 0], atol=1e-6, rtol=0)
            if per_prompt:
                for side, maps in alone.self_attn.items():
                    torch.testing.assert_close(shared[i].self_attn[side][j], maps[0], atol=1e-6, rtol=0)
    if not per_prompt:  # an image's self-attention: the mean over its distinct prompts, each once
        distinct = tiny_model.capture([images[0]], [[queries[0][0], queries[0][2]]], request, extract)[0]
        for side, maps in distinct.self_attn.items():
            torch.testing.assert_close(shared[0].self_attn[side], maps, atol=1e-6, rtol=0)
    # each query's maps are its own tensors (methods may modify them in place)
    shared[0].cross_attn[16][0].zero_()
    assert shared[0].cross_attn[16][1].abs().sum() > 0


def test_queries_sharing_a_text_but_weighting_other_words_keep_their_own_rows(tiny_model):
    """A ``word_weight`` changes the embedding at its word's tokens: two queries of one
    caption weighting different words are two rows, each equal to a capture of it alone;
    identical weighted queries still share one."""
    from benchmark.models.diffusion import prompt_rows

    image = _images(1, seed=6)[0]
    caption = "a photograph of cat and dog"
    queries = [PromptQuery(caption, "cat", 1.21), PromptQuery(caption, "dog", 1.21), PromptQuery(caption, "cat", 1.21)]
    assert prompt_rows(queries) == [0, 1, 0]
    assert prompt_rows([PromptQuery(caption, "cat"), PromptQuery(caption, "dog")]) == [0, 0]
    request = AttentionRequest((16,), (16,))
    rows = tiny_model.unet_rows
    shared = tiny_model.capture([image], [queries], request, EXTRACT)[0]
    assert tiny_model.unet_rows - rows == 2
    for j, q in enumerate(queries):
        alone = tiny_model.capture([image], [[q]], request, EXTRACT)[0]
        torch.testing.assert_close(shared.cross_attn[16][j], alone.cross_attn[16][0], atol=1e-6, rtol=0)


def test_capture_pipeline_matches_manual_steps(tiny_model):
    """VAE sample x scaling factor, add_noise at t, one UNet pass: the documented recipe."""
    image = _images(1)[0]
    maps = tiny_model.capture([image], [QUERIES[0]], REQUEST, EXTRACT, image_ids=["img-7"])[0]
    with torch.inference_mode():
        pixels = F.interpolate(image[None].float(), size=(128, 128), mode="bilinear", align_corners=False) / 127.5 - 1
        posterior = tiny_model.vae.encode(pixels).latent_dist
        eps = _randn((4, 16, 16), derive_seed(EXTRACT.seed, "latent", "img-7"))
        z = (posterior.mean + posterior.std * eps) * tiny_model.vae.config.scaling_factor
        noise = _randn((4, 16, 16), derive_seed(EXTRACT.seed, "noise", "img-7"))
        zt = tiny_model.scheduler.add_noise(z, noise[None], torch.tensor([100]))
        emb = tiny_model.encode_prompts([QUERIES[0][0].text])
    store, _ = explicit_probabilities(tiny_model.unet, zt, torch.tensor([100]), emb)
    for side in (16, 8):
        expected = reference_mean(store, tiny_model.unet, "self", side, "all", [0])
        torch.testing.assert_close(maps.self_attn[side], expected, atol=1e-5, rtol=0)
    expected = reference_mean(store, tiny_model.unet, "cross", 16, "all", [0])
    torch.testing.assert_close(maps.cross_attn[16], expected, atol=1e-5, rtol=0)
    # the noise/sample depend on the image id, not on its position in a batch
    other = tiny_model.capture([image], [QUERIES[0]], REQUEST, EXTRACT, image_ids=["img-8"])[0]
    assert not torch.allclose(other.self_attn[16], maps.self_attn[16], atol=1e-4)


def test_several_timesteps_in_one_pass(tiny_model):
    images = _images(2)
    queries = [[PromptQuery("")], [PromptQuery("")]]
    calls = tiny_model.unet_calls
    both = tiny_model.capture(images, queries, REQUEST, EXTRACT, timesteps=[50, 600])
    assert tiny_model.unet_calls - calls == 1
    for image, q, t, got in zip(images, queries, (50, 600), both):
        alone = tiny_model.capture([image], [q], REQUEST, dataclasses.replace(EXTRACT, timestep=t))[0]
        assert_maps_close(got, alone)
    assert not torch.allclose(both[0].self_attn[16], both[1].self_attn[16], atol=1e-4)


def test_self_attention_per_prompt(tiny_model):
    image = _images(1)[0]
    averaged = tiny_model.capture([image], [QUERIES[1]], REQUEST, EXTRACT)[0]
    per_prompt = tiny_model.capture([image], [QUERIES[1]], REQUEST, dataclasses.replace(EXTRACT, self_attn_per_prompt=True))[0]
    assert per_prompt.self_attn[16].shape == (2, 256, 256)
    torch.testing.assert_close(per_prompt.self_attn[16].mean(0, keepdim=True), averaged.self_attn[16], atol=1e-5, rtol=0)


def test_capture_input_errors(tiny_model):
    image = _images(1)[0]
    with pytest.raises(ValueError, match="image 0: expected a uint8 or float32"):
        tiny_model.capture([image.double()], [QUERIES[0]], REQUEST, EXTRACT)
    with pytest.raises(ValueError, match="image_size=100"):
        tiny_model.capture([image], [QUERIES[0]], REQUEST, dataclasses.replace(EXTRACT, image_size=100))
    with pytest.raises(ValueError, match=r"resolution\(s\) \[64\] requested.*attention at \[16, 8, 4, 2\]"):
        tiny_model.capture([image], [QUERIES[0]], AttentionRequest((64, 16)), EXTRACT)
    with pytest.raises(ValueError, match="generation mode"):
        tiny_model.capture([image], [QUERIES[0]], REQUEST, dataclasses.replace(EXTRACT, steps=3))
    with pytest.raises(ValueError, match="'horse'.*'a photograph of dog'"):
        tiny_model.capture([image], [[PromptQuery("a photograph of dog", "horse")]], REQUEST, EXTRACT)
    calls = tiny_model.unet_calls
    empty = tiny_model.capture([image], [QUERIES[0]], AttentionRequest(), EXTRACT)[0]
    assert tiny_model.unet_calls == calls and empty.self_attn == {} and empty.token_positions == [[4]]


def test_bf16_model_gives_float32_probabilities():
    from benchmark.models import ModelConfig, load_model

    model = load_model(ModelConfig(dtype="bf16", device="cpu"))
    maps = model.capture(_images(1), [QUERIES[0]], REQUEST, EXTRACT)[0]
    assert maps.self_attn[16].dtype == torch.float32
    torch.testing.assert_close(maps.self_attn[16].sum(-1), torch.ones(1, 256), atol=1e-5, rtol=0)
    torch.testing.assert_close(maps.cross_attn[4].sum(-1), torch.ones(1, 16), atol=1e-5, rtol=0)


# -- generate mode ------------------------------------------------------------------------
def test_generate_averages_conditional_attention_over_steps(tiny_model):
    from diffusers import DDIMScheduler

    extract = ExtractionConfig(image_size=128, steps=3, guidance_scale=2.0, seed=5)
    queries = [PromptQuery("a photo of a dog", "dog"), PromptQuery("a photo of a cat", "cat")]
    request = AttentionRequest((16, 8), (16,))
    rows = tiny_model.unet_rows
    images, maps = tiny_model.generate(queries, request, extract)
    assert tiny_model.unet_rows - rows == 2 * 3 * 2  # images x steps x (cond + uncond)
    assert [im.shape for im in images] == [(3, 128, 128)] * 2 and images[0].dtype == torch.uint8
    assert [m.token_positions for m in maps] == [[[5]], [[5]]]

    # reference: the same DDIM loop by hand, one explicit capture per step, averaged
    scheduler = DDIMScheduler.from_config(tiny_model.scheduler.config)
    scheduler.set_timesteps(3)
    latents = torch.stack([_randn((4, 16, 16), derive_seed(5, "generate", i)) for i in range(2)])
    with torch.inference_mode():
        cond = tiny_model.encode_prompts([q.text for q in queries])
        emb = torch.cat([tiny_model.encode_prompts(["", ""]), cond])
    per_step = []
    for t in scheduler.timesteps:
        store, eps = explicit_probabilities(tiny_model.unet, torch.cat([latents, latents]), t.expand(4), emb)
        # rows 2, 3 = the conditional branch of images 0, 1 (each image its own group)
        per_step.append(
            {
                kind: reference_mean(store, tiny_model.unet, kind, 16, "all", [0, 1, 2, 3])[2:]
                for kind in ("self", "cross")
            }
        )
        eps_u, eps_c = eps.chunk(2)
        latents = scheduler.step(eps_u + 2.0 * (eps_c - eps_u), t, latents).prev_sample
    for i in range(2):
        expected_self = torch.stack([s["self"][i] for s in per_step]).mean(0)
        expected_cross = torch.stack([s["cross"][i] for s in per_step]).mean(0)
        torch.testing.assert_close(maps[i].self_attn[16][0], expected_self, atol=1e-5, rtol=0)
        torch.testing.assert_close(maps[i].cross_attn[16][0], expected_cross, atol=1e-5, rtol=0)
    # the decoded final latents (the reference used a different attention kernel: ±1 rounding)
    expected_images = torch.stack(tiny_model.decode_latents(latents))
    assert (torch.stack(images).int() - expected_images.int()).abs().max() <= 1


def test_processor_handles_masks_and_4d_inputs_like_sdpa():
    """The paths SD's UNet does not use (attention masks, (B, C, H, W) inputs) still match SDPA."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from benchmark.attention.capture import _Accumulator

    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=2, dim_head=16).eval()
    hidden, context = torch.randn(2, 16, 32), torch.randn(2, 5, 24)
    mask = torch.zeros(2, 1, 5)
    mask[0, 0, 3:] = -10000.0  # row 0 may not attend to keys 3, 4
    acc = _Accumulator("cross", (4,), 2)
    acc.set_groups(torch.tensor([0, 1]))
    capturing = CapturingAttnProcessor(AttnProcessor2_0(), acc, "x", chunk_size=3)
    with torch.no_grad():
        expected = AttnProcessor2_0()(attn, hidden, context, attention_mask=mask)
        got = capturing(attn, hidden, context, attention_mask=mask)
        q = attn.to_q(hidden).view(2, 16, 2, 16).transpose(1, 2)
        k = attn.to_k(context).view(2, 5, 2, 16).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / 4.0 + mask[:, None], dim=-1).mean(1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    with torch.no_grad():  # the same mask in SDPA's boolean form
        got_bool = capturing(attn, hidden, context, attention_mask=mask == 0)
    torch.testing.assert_close(got_bool, expected, atol=1e-5, rtol=0)
    captured = acc.result("all")[4]  # mean of the two calls, which saw the same probabilities
    torch.testing.assert_close(captured, probs, atol=1e-5, rtol=0)
    assert captured[0, :, 3:].max() < 1e-6

    self_attn = Attention(query_dim=32, heads=2, dim_head=16, norm_num_groups=8, residual_connection=True).eval()
    image_like = torch.randn(1, 32, 4, 4)
    acc = _Accumulator("self", (4,), 1)
    acc.set_groups(torch.tensor([0]))
    with torch.no_grad():
        expected = AttnProcessor2_0()(self_attn, image_like)
        got = CapturingAttnProcessor(AttnProcessor2_0(), acc, "y", chunk_size=5)(self_attn, image_like)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(acc.result("all")[4].sum(-1), torch.ones(1, 16), atol=1e-5, rtol=0)


@pytest.mark.parametrize("loop_order", ["per_head", "batched"])
def test_cross_attention_layers_are_kept_one_by_one_as_head_sums(tiny_model, loop_order):
    """``cross_layer_resolutions``: each layer's head-SUM on its own (SeeDiff sums heads and
    normalises each 16x16 layer), up layers first then down (its ``from_where=("up", "down")``),
    in both loop orders of the capture kernel."""
    unet = tiny_model.unet
    latents, t, emb = unet_inputs(tiny_model, batch=2)
    store, _ = explicit_probabilities(unet, latents, t, emb)
    side = 8
    request = AttentionRequest((), (side,), cross_layer_resolutions=(side,))
    with AttentionCapture(unet, request, [0, 1], chunk_size=29, loop_order=loop_order) as capture, torch.inference_mode():
        unet(latents, t, encoder_hidden_states=emb)
    layers = capture.cross_attention_layers()[side]
    names = [layer.name for layer in select_layers(list_layers(unet.attn_processors), "cross", "all")
             if store[layer.name].shape[2] == side * side]
    ordered = [n for n in names if n.startswith("up")] + [n for n in names if n.startswith("down")] + [
        n for n in names if n.startswith("mid")]
    assert len(ordered) >= 2 and layers.shape == (len(ordered), 2, side * side, 77)
    for k, name in enumerate(ordered):
        torch.testing.assert_close(layers[k], store[name].sum(1), atol=1e-5, rtol=0)
    heads = torch.tensor([store[n].shape[1] for n in ordered], dtype=torch.float32).view(-1, 1, 1, 1)
    torch.testing.assert_close((layers / heads).mean(0), capture.cross_attention()[side], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="cross_layer_resolutions"):
        AttentionCapture(unet, AttentionRequest((), (side,), cross_layer_resolutions=(4,)), [0, 1])


def test_generate_with_pndm_as_the_official_code(tiny_model):
    """SeeDiff's code: SD v1.x's default PNDM (skip_prk_steps: steps + 1 UNet calls),
    attention of the conditional half averaged over every call, image truncated to uint8."""
    from diffusers import PNDMScheduler

    extract = ExtractionConfig(image_size=64, steps=4, guidance_scale=7.0, seed=2)
    query = PromptQuery("a photo of a dog", "dog")
    request = AttentionRequest((8,), (8,))
    calls = tiny_model.unet_calls
    images, maps = tiny_model.generate([query], request, extract, scheduler_name="pndm", to_uint8="truncate")
    assert tiny_model.unet_calls - calls == 5  # 4 PLMS steps + the repeated first one

    scheduler = PNDMScheduler.from_config(tiny_model.scheduler.config, skip_prk_steps=True)
    scheduler.set_timesteps(4)
    assert len(scheduler.timesteps) == 5
    latents = _randn((4, 8, 8), derive_seed(2, "generate", 0))[None]
    with torch.inference_mode():
        emb = torch.cat([tiny_model.encode_prompts([""]), tiny_model.encode_prompts([query.text])])
    per_step = []
    for t in scheduler.timesteps:
        store, eps = explicit_probabilities(tiny_model.unet, torch.cat([latents, latents]), t.expand(2), emb)
        per_step.append(reference_mean(store, tiny_model.unet, "cross", 8, "all", [0, 1])[1])
        eps_u, eps_c = eps.chunk(2)
        latents = scheduler.step(eps_u + 7.0 * (eps_c - eps_u), t, latents).prev_sample
    # guidance 7 amplifies the kernels' float rounding along the trajectory
    torch.testing.assert_close(maps[0].cross_attn[8][0], torch.stack(per_step).mean(0), atol=1e-4, rtol=0)
    with torch.inference_mode():
        x = tiny_model.vae.decode(latents / tiny_model.vae.config.scaling_factor).sample.float()
    truncated = ((x / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8)[0]  # astype(np.uint8)
    assert (images[0].int() - truncated.int()).abs().max() <= 1  # kernel rounding of the latents only
    rounded = tiny_model.decode_latents(latents, "round")[0]
    assert (rounded.int() - tiny_model.decode_latents(latents, "truncate")[0].int()).max() == 1  # rounding != truncation
    with pytest.raises(ValueError, match="scheduler"):
        tiny_model.generate([query], request, extract, scheduler_name="euler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_per_head_loop_equals_batched_loop_and_skipped_rows_use_sdpa(tiny_model, dtype):
    """The speed-up of issue 17 (per-head, cache-sized chunks on the CPU; fused SDPA for rows
    nobody reads) leaves the captured maps and the UNet output as the all-heads loop (the
    previous implementation, still the GPU path) computes them, on seeded inputs, also with
    uncaptured rows (-1, as classifier-free guidance's unconditional half) and ragged chunks."""
    unet = copy.deepcopy(tiny_model.unet).to(dtype)  # the fixture is shared: leave it in float32
    latents, t, emb = unet_inputs(tiny_model, batch=4, seed=3)
    latents, emb = latents.to(dtype), emb.to(dtype)
    plain = plain_output(unet, latents, t, emb)
    request = AttentionRequest(ALL_16, ALL_16)
    groups, cross = [-1, 0, -1, 0], [-1, 0, -1, 1]
    results = {}
    for order in ("per_head", "batched"):
        with AttentionCapture(unet, request, groups, chunk_size=37, cross_groups=cross, loop_order=order) as capture:
            assert {p.loop_order for p in unet.attn_processors.values() if isinstance(p, CapturingAttnProcessor)} == {order}
            with torch.inference_mode():
                out = unet(latents, t, encoder_hidden_states=emb).sample
        results[order] = (out, capture.self_attention(), capture.cross_attention())
    (out_a, self_a, cross_a), (out_b, self_b, cross_b) = results["per_head"], results["batched"]
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out_a, out_b, atol=tol, rtol=0)
    torch.testing.assert_close(out_a, plain, atol=tol, rtol=0)
    for side in ALL_16:
        assert self_a[side].dtype == torch.float32 and self_a[side].shape == (1, side**2, side**2)
        torch.testing.assert_close(self_a[side], self_b[side], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(cross_a[side], cross_b[side], atol=1e-6, rtol=1e-5)


def test_per_head_loop_gives_the_same_floats_on_any_number_of_worker_threads(tiny_model):
    """Issue 17: the CPU loop splits the query chunks over worker threads (single-threaded
    torch operations each). A chunk is computed the same way whichever thread takes it, so
    2 and 3 workers give identical floats; one worker (torch's own threads per operation)
    equals them up to the matrix-product kernels' rounding; the output equals the plain pass
    and torch's thread count is restored afterwards, under inference mode as under no_grad."""
    unet = tiny_model.unet
    latents, t, emb = unet_inputs(tiny_model, batch=4, seed=5)
    plain = plain_output(unet, latents, t, emb)
    request = AttentionRequest(ALL_16, ALL_16)
    threads = torch.get_num_threads()
    results = {}
    for workers, mode in ((1, torch.inference_mode), (2, torch.inference_mode), (3, torch.no_grad)):
        with AttentionCapture(unet, request, [-1, 0, -1, 0], chunk_size=23, loop_order="per_head", workers=workers) as capture:
            with mode():
                out = unet(latents, t, encoder_hidden_states=emb).sample
        assert torch.get_num_threads() == threads
        results[workers] = (out, capture.self_attention(), capture.cross_attention())
    for side in ALL_16:
        assert torch.equal(results[2][1][side], results[3][1][side]) and torch.equal(results[2][2][side], results[3][2][side])
        torch.testing.assert_close(results[1][1][side], results[2][1][side], atol=1e-6, rtol=1e-5)
    assert torch.equal(results[2][0], results[3][0])
    torch.testing.assert_close(results[2][0], plain, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="workers"):
        AttentionCapture(unet, request, [0], workers=0)


def test_worker_error_is_raised_after_every_worker_stopped_and_threads_are_restored():
    from benchmark.attention.capture import _run_on_cpu_workers
    import threading
    import time

    threads = torch.get_num_threads()
    finished, names = [], []

    def work():
        names.append(threading.current_thread().name)
        if threading.current_thread() is threading.main_thread():
            raise RuntimeError("chunk failed")
        time.sleep(0.2)  # still writing when the caller's chunk fails: it must be waited for
        finished.append(torch.get_num_threads())

    with pytest.raises(RuntimeError, match="chunk failed"):
        _run_on_cpu_workers(work, 3)
    assert finished == [1, 1]  # both workers ran to the end, one thread each
    assert len(names) == 3 and torch.get_num_threads() == threads


def test_chunk_size_defaults_per_device_and_does_not_change_the_maps(tiny_model):
    """``model.chunk_size: null``: 128 query rows per batch row on the CPU, 2048 summed over
    the batch rows on a GPU (fewer kernel launches); any chunk gives the same maps."""
    from benchmark.attention.capture import default_chunk_size
    from benchmark.models import ModelConfig

    assert default_chunk_size(torch.device("cpu")) == 128 and default_chunk_size(torch.device("cuda", 0)) == 2048
    assert ModelConfig(name="tiny").chunk_size is None
    latents, t, emb = unet_inputs(tiny_model, batch=2, seed=7)
    request = AttentionRequest(ALL_16, ALL_16)
    maps = {}
    for chunk in (None, 1000, 7):
        with AttentionCapture(tiny_model.unet, request, [0, 0], chunk_size=chunk) as capture, torch.inference_mode():
            tiny_model.unet(latents, t, encoder_hidden_states=emb)
        maps[chunk] = capture.self_attention()
    for side in ALL_16:
        torch.testing.assert_close(maps[None][side], maps[1000][side], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(maps[None][side], maps[7][side], atol=1e-6, rtol=1e-5)


def test_a_larger_worker_pool_replaces_the_smaller_one_and_its_threads_exit():
    import threading
    import time

    from benchmark.attention import capture as capture_module

    def alive():
        return sum(t.name.startswith("attention-capture") for t in threading.enumerate())

    capture_module._run_on_cpu_workers(lambda: None, 2)
    capture_module._run_on_cpu_workers(lambda: None, 4)
    capture_module._run_on_cpu_workers(lambda: time.sleep(0.05), 4)  # the new pool: 3 threads
    deadline = time.time() + 5
    while alive() > capture_module._POOL["workers"] and time.time() < deadline:
        time.sleep(0.05)
    assert alive() <= capture_module._POOL["workers"] == 3
