"""benchmark.show: attention maps and method intermediates for one image (tiny model)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.show import ShowError, fused_heat_map, query_points, self_attention_of_point, show, word_maps

TINY = ["model=tiny", "dataset=synthetic", "dataset.n_images=2", "method.extract.image_size=64", "run.progress=false"]


def test_word_maps_sum_subtoken_columns_and_fusion_is_scaled_to_one():
    cross = torch.zeros(4, 77)
    cross[:, 2] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    cross[:, 3] = torch.tensor([0.4, 0.3, 0.2, 0.1])
    assert torch.allclose(word_maps(cross, [2, 3]), torch.full((2, 2), 0.5))
    fused = fused_heat_map({2: word_maps(cross, [2]), 1: torch.ones(1, 1)}, (4, 4))
    assert fused.shape == (4, 4) and float(fused.max()) == pytest.approx(1.0)
    sa = torch.eye(4).unsqueeze(0)  # each query attends to itself
    assert self_attention_of_point(sa, (0.75, 0.25)).flatten().argmax().item() == 2
    assert query_points(4) == [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)]


def test_show_writes_attention_maps_and_diffseg_merges_for_a_dataset_image(tmp_path):
    out = tmp_path / "show"
    result = show("synthetic_000000", TINY + ["method=diffseg", "method.anchor_grid=4"], out, n_points=2, prompt="a dog and a cat")
    names = {p.name for p in result["written"]}
    assert names == {"cross_attention.png", "self_attention.png", "diffseg_merges.png", "prediction.png", "maps.pt"}
    for p in result["written"]:
        assert p.stat().st_size > 3000, p
    maps = torch.load(out / "maps.pt")
    # every self-attention side of a 64 px input (latent 8: sides 8, 4, 2, 1) for each query point
    assert len(maps["self_attn_points"]) == 2
    for per_side in maps["self_attn_points"].values():
        assert sorted(per_side) == ["1×1", "2×2", "4×4", "8×8"]
    # one row per word of --prompt, each with every cross-attention side
    assert [k.split(": ")[1] for k in maps["cross_attn_words"]] == ["a", "dog", "and", "cat"]
    dog = maps["cross_attn_words"]["'a dog and a cat': dog"]
    assert sorted(dog) == [1, 2, 4, 8] and dog[8].shape == (8, 8)
    assert result["passes"] == 2  # the method's pass + the --prompt pass


def test_show_reads_the_attention_cache_of_an_evaluation(tmp_path):
    args = TINY + ["method=diffseg", "method.anchor_grid=4", f"cache.dir={tmp_path / 'cache'}"]
    first = show("synthetic_000001", args, tmp_path / "a", n_points=1)
    again = show("synthetic_000001", args, tmp_path / "b", n_points=1)
    assert (first["passes"], again["passes"]) == (1, 0)  # the second reads the cache: no UNet pass
    assert (tmp_path / "b" / "diffseg_merges.png").is_file()


@pytest.mark.slow
def test_show_on_an_image_file_with_an_open_vocabulary_method(tmp_path):
    path = tmp_path / "cat.png"
    Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)).save(path)
    out = tmp_path / "show"
    result = show(str(path), TINY + ["method=diffsegmenter", "method.candidates=all", "dataset.num_classes=3"], out, n_points=1)
    names = {p.name for p in result["written"]}
    assert {"cross_attention.png", "score_maps.png", "prediction.png"} <= names
    maps = torch.load(out / "maps.pt")
    assert len(maps["cross_attn_words"]) == 3  # one word per candidate class
    with pytest.raises(ShowError, match="no ground truth"):
        show(str(path), TINY + ["method=diffsegmenter", "method.candidates=gt"], tmp_path / "x")
    with pytest.raises(ShowError, match="neither an image file nor an image id"):
        show("no_such_id", TINY, tmp_path / "y")


def test_show_refuses_what_a_run_refuses_before_any_pass(tmp_path):
    """benchmark.show checks the model against the method as an evaluation does: an anchor
    grid larger than the captured side (64 px: side 8) is a user error before any UNet pass."""
    from benchmark.config import is_user_error
    with pytest.raises(ValueError) as err:
        show("synthetic_000000", TINY + ["method=diffseg", "method.anchor_grid=16"], tmp_path / "show", n_points=1)
    assert is_user_error(err.value) and str(err.value).startswith("method.anchor_grid=16")
    assert not (tmp_path / "show" / "maps.pt").exists()
