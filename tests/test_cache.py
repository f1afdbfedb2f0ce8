"""Attention cache: content keys, round trip, corrupt/truncated files, concurrent writers."""
from __future__ import annotations

import logging
import multiprocessing
import os

import pytest
import torch

from benchmark.attention.cache import AttentionCache
from benchmark.schema import ExtractionConfig
from benchmark.types import AttentionMaps, AttentionRequest, PromptQuery


def random_maps(seed=0, prompts=2):
    g = torch.Generator().manual_seed(seed)

    def rows(*shape):  # probability rows, like captured attention
        return torch.softmax(torch.randn(*shape, generator=g) * 3, dim=-1)

    return AttentionMaps(
        self_attn={16: rows(1, 256, 256), 8: rows(1, 64, 64)},
        cross_attn={16: rows(prompts, 256, 77)},
        queries=[PromptQuery("a photo of a dog", "dog"), PromptQuery("")][:prompts],
        token_positions=[[5], []][:prompts],
    )


KEY_PARTS = dict(
    model="tiny-v1:abc",
    dtype="torch.float32",
    extract=ExtractionConfig(image_size=128),
    request=AttentionRequest((16, 8), (16,)),
    prompts=[PromptQuery("a photo of a dog", "dog")],
    image_id="2007_000032",
)


def test_key_is_a_stable_content_hash():
    cache = AttentionCache("/nonexistent")
    key = cache.key(**KEY_PARTS)
    assert len(key) == 64 and key == cache.key(**dict(reversed(list(KEY_PARTS.items()))))
    import dataclasses

    assert key == cache.key(**{**KEY_PARTS, "extract": dataclasses.asdict(KEY_PARTS["extract"])})
    changed = [
        {"model": "tiny-v1:abd"},
        {"dtype": "torch.float16"},
        {"extract": ExtractionConfig(image_size=128, timestep=100)},
        {"extract": ExtractionConfig(image_size=128, noise=True)},
        {"extract": ExtractionConfig(image_size=128, seed=1)},
        {"extract": ExtractionConfig(image_size=128, latent="sample")},
        {"extract": ExtractionConfig(image_size=256)},
        {"request": AttentionRequest((16,), (16,))},
        {"prompts": [PromptQuery("a photo of a dog", None)]},
        {"image_id": "2007_000033"},
    ]
    keys = {cache.key(**{**KEY_PARTS, **c}) for c in changed}
    assert key not in keys and len(keys) == len(changed)
    assert AttentionCache("/nonexistent", dtype="float32").key(**KEY_PARTS) != key  # storage dtype is part of it
    with pytest.raises(TypeError, match="parts.extra"):
        cache.key(extra=object())


@pytest.mark.parametrize("dtype, atol", [("float16", 2e-3), ("bfloat16", 1e-2), ("float32", 0.0)])
def test_round_trip(tmp_path, dtype, atol):
    cache = AttentionCache(tmp_path, dtype=dtype)
    maps = random_maps()
    key = cache.key(**KEY_PARTS)
    assert cache.load(key) is None
    size = cache.save(key, maps)
    assert size == os.path.getsize(cache.path(key)) and size >= AttentionCache.nbytes(maps, dtype)
    back = cache.load(key)
    assert back.queries == maps.queries and back.token_positions == maps.token_positions
    assert list(back.self_attn) == [16, 8] and list(back.cross_attn) == [16]
    for got, want in [(back.self_attn[s], maps.self_attn[s]) for s in (16, 8)] + [(back.cross_attn[16], maps.cross_attn[16])]:
        assert got.dtype == torch.float32 and got.shape == want.shape
        torch.testing.assert_close(got, want, atol=atol, rtol=0)
        torch.testing.assert_close(got.sum(-1), torch.ones(got.shape[:-1]), atol=1e-5, rtol=0)
    assert (cache.hits, cache.misses) == (1, 1)
    assert not [p for p in tmp_path.rglob("*.tmp")]


@pytest.mark.parametrize("damage", ["truncate", "flip_data_byte", "empty", "garbage_header"])
def test_corrupt_file_is_reported_removed_and_recomputed(tmp_path, caplog, damage):
    cache = AttentionCache(tmp_path)
    key = cache.key(**KEY_PARTS)
    cache.save(key, random_maps())
    path = cache.path(key)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip_data_byte":
        data[-1000] ^= 0xFF
    elif damage == "empty":
        data = bytearray()
    else:
        data[8:20] = b"not json!!!!"
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="benchmark.attention.cache"):
        assert cache.load(key) is None
    assert str(path) in caplog.text and "recomputed" in caplog.text
    assert not path.exists() and cache.corrupt == 1
    cache.save(key, random_maps())  # the recomputed maps replace it
    assert cache.load(key) is not None


def _writer(root, key, seed, n):
    cache = AttentionCache(root)
    for _ in range(n):
        cache.save(key, random_maps(seed))


def test_concurrent_writers_and_reader_never_see_a_partial_file(tmp_path):
    cache = AttentionCache(tmp_path)
    key = cache.key(**KEY_PARTS)
    ctx = multiprocessing.get_context("spawn" if os.name == "nt" else "fork")
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), key, seed, 8)) for seed in (1, 2, 3)]
    for w in writers:
        w.start()
    while any(w.is_alive() for w in writers):
        cache.load(key)  # a reader during the writes: a miss or a complete file, never a corrupt one
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert cache.corrupt == 0
    final = cache.load(key)
    assert any(torch.allclose(final.self_attn[16], random_maps(s).self_attn[16], atol=2e-3) for s in (1, 2, 3))
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="cache.dtype"):
        AttentionCache(tmp_path, dtype="int8")
    with pytest.raises(ValueError, match="not an attention cache key"):
        AttentionCache(tmp_path).load("../etc/passwd")
