"""DiffSeg on hand-built attention: segment recovery, and equality with a literal port of
the official TensorFlow code (google/diffseg, diffseg/segmentor.py) stage by stage."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from scipy.optimize import linear_sum_assignment

from benchmark.schema import ExtractionConfig
from benchmark.types import AttentionMaps, SegmentContext
from methods.attention_ops import (
    aggregate_self_attention,
    anchor_grid,
    block_attention,
    self_attention_by_side,
    standard_self_resolutions,
    symmetric_kl,
    upsample_argmax,
    weights_by_side,
)
from methods.diffseg import DiffSeg, DiffSegParams, anchor_distances, merge_proposals

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------
# synthetic data and scoring (also used by test_kmeans.py)
# --------------------------------------------------------------------------------------
def _grid(height: int, width: int):
    y = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    x = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    return torch.meshgrid(y, x, indexing="ij")


def five_regions(height: int, width: int) -> torch.Tensor:
    """Background, two rectangles, a disc and a bottom band, sampled at pixel centres."""
    y, x = _grid(height, width)
    labels = torch.zeros(height, width, dtype=torch.long)
    labels[(x < 0.3) & (y < 0.4)] = 1
    labels[(y >= 0.1) & (y < 0.45) & (x >= 0.55) & (x < 0.95)] = 2
    labels[(y - 0.68) ** 2 + (x - 0.35) ** 2 < 0.2**2] = 3
    labels[y >= 0.88] = 4
    return labels


def four_regions(height: int, width: int) -> torch.Tensor:
    """Left / right halves over a bottom band, and a disc: coarse enough for small latents."""
    y, x = _grid(height, width)
    labels = (x >= 0.5).long()
    labels[y >= 0.6] = 2
    labels[(y - 0.3) ** 2 + (x - 0.25) ** 2 < 0.15**2] = 3
    return labels


def synthetic_attention(label_fn, sides, seed: int = 0, **kwargs) -> AttentionMaps:
    n = sides[0]
    generator = torch.Generator().manual_seed(seed)
    return AttentionMaps(self_attn=block_attention(label_fn(n, n), sides, generator=generator, **kwargs))


def ground_truth(label_fn, side: int, out_size) -> torch.Tensor:
    """The segments of the attention's label map, nearest-resized to the output size."""
    labels = label_fn(side, side)[None, None].float()
    return F.interpolate(labels, size=out_size, mode="nearest-exact")[0, 0].long()


def hungarian_accuracy(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Per-image Hungarian-matched pixel accuracy (PROTOCOLS.md, DiffSeg's evaluation)."""
    classes = int(gt.max()) + 1
    columns = max(classes, int(pred.max()) + 1)
    hist = torch.bincount(gt.reshape(-1) * columns + pred.reshape(-1), minlength=classes * columns)
    hist = hist.view(classes, columns).numpy()
    rows, cols = linear_sum_assignment(hist, maximize=True)
    return float(hist[rows, cols].sum() / hist.sum())


# --------------------------------------------------------------------------------------
# literal port of the official code (numpy/torch, float64; TF ops replaced one to one)
# --------------------------------------------------------------------------------------
def official_aggregate(weight_list, weight_ratio, side):
    """``aggregate_weights``: upsample keys, normalise, repeat queries, weighted sum."""
    aggregated = torch.zeros(side, side, side, side, dtype=torch.float64)
    for index, weights in enumerate(weight_list):
        size = int(np.sqrt(weights.shape[-1]))
        ratio = side // size
        weights = weights.mean(0).reshape(-1, size, size).double()
        # UpSampling2D(bilinear) = tf.image.resize, half-pixel centres
        weights = F.interpolate(weights[:, None], scale_factor=ratio, mode="bilinear", align_corners=False)
        weights = weights.reshape(size, size, side, side)
        weights = weights / weights.sum((2, 3), keepdim=True)
        weights = weights.repeat_interleave(ratio, 0).repeat_interleave(ratio, 1)
        aggregated += weights * weight_ratio[index]
    return aggregated


def official_kl(x, Y, half: bool = False):
    if half:
        x, Y = x.half(), Y.half()
    quotient = torch.log(x) - torch.log(Y)
    kl_1 = (x * quotient).sum((-2, -1)) / 2
    kl_2 = -(Y * quotient).sum((-2, -1)) / 2
    return kl_1 + kl_2


def official_mask_merge(iteration, attns, kl_threshold, grid=None, half=False):
    side = attns.shape[-1]
    if iteration == 0:
        anchors = attns[grid[:, 0], grid[:, 1]][:, None]  # A x 1 x n x n
        flat = attns.reshape(1, side * side, side, side)
        threshold = torch.tensor(kl_threshold[iteration], dtype=torch.float16).item() if half else kl_threshold[iteration]
        kl_bin = (official_kl(anchors, flat, half) < threshold).double()
        merged = (kl_bin @ flat.reshape(-1, side * side)) / kl_bin.sum(1, keepdim=True)
        return merged.reshape(-1, side, side)
    matched = set()
    new_attns = []
    for i, point in enumerate(attns):
        if i in matched:
            continue
        matched.add(i)
        kl_bin = (official_kl(point, attns) < kl_threshold[iteration]).numpy()
        if kl_bin.sum() > 0:
            for idx in np.arange(len(attns))[kl_bin.reshape(-1)]:
                matched.add(int(idx))
            new_attns.append(attns[torch.from_numpy(kl_bin)].mean(0))
    return torch.stack(new_attns)


def official_grid(num_points, side):
    segment_len = (side - 1) // (num_points - 1)
    total_len = segment_len * (num_points - 1)
    start_point = (side - 1 - total_len) // 2
    x_new = np.linspace(start_point, total_len + start_point, num_points)
    x_new, y_new = np.meshgrid(x_new, x_new, indexing="ij")
    return torch.from_numpy(np.concatenate([x_new.reshape(-1, 1), y_new.reshape(-1, 1)], axis=-1).astype(int))


def official_segment(weight_list, kl_threshold, num_points, out_size, half):
    side = int(np.sqrt(weight_list[0].shape[-1]))
    sizes = np.array([np.sqrt(w.shape[-2]) for w in weight_list])
    attns = official_aggregate(weight_list, sizes / sizes.sum(), side)
    grid = official_grid(num_points, side)
    merged = attns
    for i in range(len(kl_threshold)):
        merged = official_mask_merge(i, attns if i == 0 else merged, kl_threshold, grid=grid, half=half)
    upsampled = F.interpolate(merged[None].float(), size=out_size, mode="bilinear", align_corners=False)[0]
    return upsampled.argmax(0)


# --------------------------------------------------------------------------------------
# segment recovery
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fp16", [True, False])
@pytest.mark.parametrize("out_size", [(512, 512), (96, 128)])
def test_recovers_known_segments(fp16, out_size):
    attn = synthetic_attention(five_regions, (64, 32, 16, 8))
    pred = DiffSeg().segment(attn, SegmentContext("img", out_size), DiffSegParams(fp16_first_iteration=fp16))
    assert pred.shape == out_size and pred.dtype == torch.long
    assert hungarian_accuracy(pred, ground_truth(five_regions, 64, out_size)) >= 0.95
    assert len(pred.unique()) == 5


@pytest.mark.parametrize(
    "sides,kl_threshold",
    [
        ((32, 16, 8, 4), 1.1),
        # at 16 the 2×2 attention mixes the small disc into its surroundings (KL 1.4 apart),
        # so a threshold below that is needed, as for any image this coarse
        ((16, 8, 4, 2), 0.9),
    ],
)
def test_smaller_latents(sides, kl_threshold):
    attn = synthetic_attention(four_regions, sides)
    out_size = (8 * sides[0], 8 * sides[0])
    pred = DiffSeg().segment(attn, SegmentContext("img", out_size), DiffSegParams(kl_threshold=kl_threshold))
    assert pred.shape == out_size
    assert hungarian_accuracy(pred, ground_truth(four_regions, sides[0], out_size)) >= 0.95


@pytest.mark.parametrize("half", [False, True])
def test_whole_pipeline_equals_official_port(half):
    """Small latent (n = 16, every pixel an anchor) so the literal port stays cheap."""
    sides = (16, 8, 4, 2)
    attn = synthetic_attention(five_regions, sides, seed=3, sharpness=6.0, noise=1.0)
    taus = [1.1, 1.0, 0.9]
    ours = DiffSeg().segment(
        attn, SegmentContext("img", (128, 96)), DiffSegParams(kl_threshold=taus, fp16_first_iteration=half)
    )
    official = official_segment([attn.self_attn[s] for s in sides], taus, 16, (128, 96), half)
    assert len(official.unique()) > 2  # a non-trivial segmentation
    if not half:
        assert torch.equal(ours, official)
    else:
        # the official code rounds every elementwise product to fp16 (a GEMM cannot):
        # distances within an fp16 ulp of τ may flip (2 of 65536 anchor-pixel pairs here)
        assert hungarian_accuracy(ours, official) >= 0.99


# --------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------
def test_anchor_grid():
    anchors = anchor_grid(64, 16)
    coords = list(range(1, 62, 4))
    assert coords[-1] == 61 and len(coords) == 16
    expected = [(y, x) for y in coords for x in coords]  # row-major, (y, x)
    assert [tuple(a) for a in anchors.tolist()] == expected
    assert torch.equal(anchor_grid(64, 16), official_grid(16, 64))
    # the general formula: 768 px input (96 latent), 512 px with a 32 latent, 16 latent
    for side, points in [(96, 16), (32, 16), (16, 16), (64, 8)]:
        assert torch.equal(anchor_grid(side, points), official_grid(points, side))
    assert anchor_grid(96, 16)[:2, 1].tolist() == [2, 8]  # step 95 // 15 = 6, start (95 − 90) // 2 = 2
    with pytest.raises(ValueError, match="anchor_grid=16"):
        anchor_grid(8, 16)


def test_aggregation_equals_official_and_rows_sum_to_one():
    sides = (16, 8, 4, 2)
    attn = synthetic_attention(four_regions, sides, noise=2.0)
    maps = self_attention_by_side(attn.self_attn)
    weights = weights_by_side(list(maps), [64, 32, 16, 8])
    assert weights == pytest.approx({16: 8 / 15, 8: 4 / 15, 4: 2 / 15, 2: 1 / 15})
    ours = aggregate_self_attention(maps, weights)
    official = official_aggregate([attn.self_attn[s] for s in sides], [8 / 15, 4 / 15, 2 / 15, 1 / 15], 16)
    torch.testing.assert_close(ours.double(), official.reshape(256, 256), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(ours.sum(1), torch.ones(256), rtol=0, atol=1e-5)


def test_aggregation_at_64_rows_sum_to_one_and_skips_zero_weights():
    attn = synthetic_attention(five_regions, (64, 32, 16, 8))
    maps = self_attention_by_side(attn.self_attn)
    full = aggregate_self_attention(maps, weights_by_side(list(maps), [64, 32, 16, 8]))
    torch.testing.assert_close(full.sum(1), torch.ones(4096), rtol=0, atol=1e-5)
    # only the 32 map (the largest has weight 0): still aggregated at 64, rows are repeated
    only_32 = aggregate_self_attention(maps, weights_by_side(list(maps), [0, 1, 0, 0]), side=64)
    torch.testing.assert_close(only_32.sum(1), torch.ones(4096), rtol=0, atol=1e-5)
    rows = only_32.view(32, 2, 32, 2, 4096)
    assert torch.equal(rows[:, 0], rows[:, 1]) and torch.equal(rows[:, :, :, 0], rows[:, :, :, 1])
    with pytest.raises(ValueError, match="resolution_weights"):
        weights_by_side([64, 32, 16, 8], [1, 1])


def direct_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The elementwise formula of the official ``KL``, all pairs, float64."""
    x, y = p[:, None, :], q[None, :, :]
    quotient = torch.log(x) - torch.log(y)
    return (x * quotient).sum(-1) / 2 - (y * quotient).sum(-1) / 2


def test_gemm_kl_equals_direct_kl():
    generator = torch.Generator().manual_seed(0)
    p = torch.softmax(2 * torch.randn(20, 300, generator=generator, dtype=torch.float64), 1)
    q = torch.softmax(2 * torch.randn(30, 300, generator=generator, dtype=torch.float64), 1)
    torch.testing.assert_close(symmetric_kl(p, q), direct_kl(p, q), rtol=1e-10, atol=1e-12)
    # the anchor-vs-pixel path of iteration 0 (float32 GEMM) on a row-stochastic matrix
    rows = torch.tensor([0, 7, 129])
    maps = torch.softmax(3 * torch.randn(300, 300, generator=generator), 1)
    distances, usable = anchor_distances(maps, rows, fp16=False)
    torch.testing.assert_close(distances.double(), direct_kl(maps[rows].double(), maps.double()), rtol=1e-4, atol=1e-4)
    assert usable.all()


def test_maps_with_zeros_never_match():
    """A zero entry makes the official KL NaN/inf (no epsilon): never below τ, not even
    against itself."""
    generator = torch.Generator().manual_seed(1)
    maps = torch.softmax(torch.randn(50, 50, generator=generator), 1)
    maps[3, 10] = 0.0
    distances, usable = anchor_distances(maps, torch.tensor([0, 3]), fp16=False)
    assert not usable[1].any() and not usable[:, 3].any() and usable[0, 0]
    assert not torch.isfinite(distances[1]).any()
    assert torch.isnan(direct_kl(maps[3:4].double(), maps[3:4].double())).all()


def test_fp16_first_iteration_matches_official_fp16_kl():
    generator = torch.Generator().manual_seed(2)
    maps = torch.softmax(2 * torch.randn(256, 256, generator=generator), 1)
    rows = torch.arange(0, 256, 5)
    ours, usable = anchor_distances(maps, rows, fp16=True)
    official = official_kl(maps[rows].view(-1, 1, 16, 16), maps.view(1, 256, 16, 16), half=True).float()
    assert usable.all()
    # the official code also rounds every elementwise product to fp16, a GEMM cannot;
    # what remains is a few fp16 ulps of the result
    torch.testing.assert_close(ours, official, rtol=4e-3, atol=4e-3)
    # and the fp16 distances differ from the float32 ones by more than that tolerance
    exact, _ = anchor_distances(maps, rows, fp16=False)
    assert (ours - exact).abs().max() > 0 and torch.equal(ours, ours.half().float())


def random_proposals(seed: int, count: int = 60, dim: int = 400) -> torch.Tensor:
    """Proposals around a few centres, with distances straddling the thresholds."""
    generator = torch.Generator().manual_seed(seed)
    centres = 1.5 * torch.randn(5, dim, generator=generator, dtype=torch.float64)
    which = torch.randint(5, (count,), generator=generator)
    logits = centres[which] + 0.8 * torch.randn(count, dim, generator=generator, dtype=torch.float64)
    return torch.softmax(logits, 1)


def official_absorbs_twice(attns: torch.Tensor, tau: float) -> bool:
    """Whether the official walk puts some proposal into two groups (the quirk)."""
    matched, seen = set(), set()
    for i, point in enumerate(attns):
        if i in matched:
            continue
        matched.add(i)
        group = set(np.nonzero((official_kl(point, attns) < tau).numpy())[0].tolist())
        if group & seen:
            return True
        seen |= group
        matched |= group
    return False


def test_later_iterations_equal_official_loop():
    quirk_seen = False
    for seed in range(6):
        proposals = random_proposals(seed)
        side_maps = proposals.view(-1, 20, 20)
        for tau in (0.6, 1.1, 1.6):
            ours = merge_proposals(proposals, tau)
            official = official_mask_merge(1, side_maps, [None, tau])
            assert ours.shape[0] == official.shape[0], (seed, tau)
            torch.testing.assert_close(ours, official.reshape(-1, 400), rtol=1e-12, atol=1e-15)
            # and a second iteration on the result
            torch.testing.assert_close(
                merge_proposals(ours, tau), official_mask_merge(2, official, [None, None, tau]).reshape(-1, 400)
            )
            quirk_seen |= official_absorbs_twice(side_maps, tau)
    assert quirk_seen, "the inputs never exercised groups re-using absorbed proposals"


def test_upsample_argmax_equals_interpolate_then_argmax():
    generator = torch.Generator().manual_seed(4)
    for count, (h, w), size in [(40, (64, 64), (128, 128)), (7, (32, 48), (100, 75)), (5, (64, 64), (30, 20))]:
        maps = torch.rand(count, h, w, generator=generator)
        maps[count - 1] = maps[1]  # a tie: the first index wins
        resized = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
        nearest = F.interpolate(maps[None], size=size, mode="nearest-exact")[0].argmax(0)
        assert torch.equal(upsample_argmax(maps, size), resized.argmax(0))
        assert torch.equal(upsample_argmax(maps, size, "nearest"), nearest)
        assert not (resized.argmax(0) == count - 1).any()
        # in chunks of three maps (running maximum): torch's resize kernel rounds
        # differently for other channel counts, so only float-level near-ties may differ
        chunked = upsample_argmax(maps, size, chunk_elements=size[0] * size[1] * 3)
        top2 = resized.topk(2, dim=0).values
        differ = chunked != resized.argmax(0)
        assert ((top2[0] - top2[1])[differ] < 1e-6).all()


# --------------------------------------------------------------------------------------
# params, config, request
# --------------------------------------------------------------------------------------
def test_kl_threshold_scalar_and_list():
    assert DiffSegParams(kl_threshold=1.1).thresholds() == [1.1, 1.1, 1.1]
    assert DiffSegParams(kl_threshold=[1.2, 1.0, 0.8]).thresholds() == [1.2, 1.0, 0.8]
    assert DiffSegParams(kl_threshold=0.9, merge_iterations=1).thresholds() == [0.9]
    with pytest.raises(ValueError, match="merge_iterations"):
        DiffSegParams(kl_threshold=[1.1, 1.0])
    with pytest.raises(ValueError, match="kl_threshold"):
        DiffSegParams(kl_threshold="high")
    with pytest.raises(ValueError, match="kl_threshold"):
        DiffSegParams(kl_threshold=-1.0)

    attn = synthetic_attention(five_regions, (64, 32, 16, 8))
    ctx = SegmentContext("img", (64, 64))
    method = DiffSeg()
    scalar = method.segment(attn, ctx, DiffSegParams(kl_threshold=1.1))
    assert torch.equal(scalar, method.segment(attn, ctx, DiffSegParams(kl_threshold=[1.1, 1.1, 1.1])))
    # the per-iteration values are used: a huge τ in the later iterations merges everything
    merged = method.segment(attn, ctx, DiffSegParams(kl_threshold=[1.1, 100.0, 100.0]))
    assert len(scalar.unique()) == 5 and len(merged.unique()) == 1


def test_grid_points_share_work_but_not_results():
    """The memo of iteration 0 is keyed on the attention tensors: a new image recomputes."""
    first = synthetic_attention(five_regions, (32, 16, 8, 4), seed=0)
    second = synthetic_attention(four_regions, (32, 16, 8, 4), seed=1)
    ctx = SegmentContext("img", (64, 64))
    method = DiffSeg()
    for attn in (first, second, first):
        for tau in (0.8, 1.1):
            params = DiffSegParams(kl_threshold=tau)
            assert torch.equal(method.segment(attn, ctx, params), DiffSeg().segment(attn, ctx, params))


def test_refinement_runs_and_keeps_segments():
    attn = synthetic_attention(four_regions, (32, 16, 8, 4))
    pred = DiffSeg().segment(attn, SegmentContext("img", (256, 256)), DiffSegParams(refine=True))
    assert hungarian_accuracy(pred, ground_truth(four_regions, 32, (256, 256))) >= 0.95


def test_attention_request_follows_image_size():
    assert DiffSeg().attention_request(DiffSegParams()).self_resolutions == (64, 32, 16, 8)
    method = DiffSeg(extract=ExtractionConfig(image_size=768))
    assert method.attention_request(DiffSegParams()).self_resolutions == (96, 48, 24, 12)
    assert standard_self_resolutions(256) == (32, 16, 8, 4)


def test_config_lists_every_param_with_its_default():
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "method" / "diffseg.yaml"))
    defaults = DiffSegParams()
    params = {name for name in vars(defaults)}
    assert set(cfg) == {"name", "extract", "grid"} | params
    assert cfg["name"] == "diffseg" and cfg["grid"] == {}
    for name in params:
        assert cfg[name] == getattr(defaults, name), name
    extract = ExtractionConfig(**cfg["extract"])
    assert (extract.timestep, extract.latent, extract.noise, extract.prompt, extract.image_size) == (
        300,
        "mean",
        False,
        "",
        512,
    )


def test_fp16_underflow_of_every_anchor_warns_and_returns_one_segment():
    """Very peaked attention underflows to 0 in fp16 everywhere: the official code would
    crash (every proposal NaN); the harness scores one segment and says why."""
    attn = synthetic_attention(four_regions, (16, 8, 4, 2), sharpness=25.0)
    ctx = SegmentContext("peaked", (32, 32))
    with pytest.warns(RuntimeWarning, match="fp16_first_iteration=false"):
        pred = DiffSeg().segment(attn, ctx, DiffSegParams(kl_threshold=0.9))
    assert torch.equal(pred, torch.zeros(32, 32, dtype=torch.long))
    pred = DiffSeg().segment(attn, ctx, DiffSegParams(kl_threshold=0.9, fp16_first_iteration=False))
    assert hungarian_accuracy(pred, ground_truth(four_regions, 16, (32, 32))) >= 0.95
