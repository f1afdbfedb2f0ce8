"""K-Means-C / K-Means-S baselines and the vectorised K-Means they (and DiffSeg's
refinement) use."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from benchmark.types import SegmentContext
from methods.kmeans import KMeansBaseline, KMeansParams, kmeans, kmeans_plusplus

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_diffseg import (  # noqa: E402  (shared synthetic data and scoring)
    five_regions,
    four_regions,
    ground_truth,
    hungarian_accuracy,
    synthetic_attention,
)

REPO = Path(__file__).resolve().parent.parent


def blobs(seed: int, k: int = 4, per: int = 50, dim: int = 8, spread: float = 0.1):
    generator = torch.Generator().manual_seed(seed)
    centres = 5 * torch.randn(k, dim, generator=generator, dtype=torch.float64)
    truth = torch.arange(k).repeat_interleave(per)
    x = centres[truth] + spread * torch.randn(k * per, dim, generator=generator, dtype=torch.float64)
    return x, truth


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def reference_lloyd(x: np.ndarray, centers: np.ndarray, max_iter: int, tol: float):
    """Plain Lloyd iterations with scikit-learn's stopping rules (no empty clusters here)."""
    tol_scaled = tol * x.var(0).mean()
    labels = None
    for _ in range(max_iter):
        new_labels = ((x[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1)
        if labels is not None and (new_labels == labels).all():
            return labels
        labels = new_labels
        new_centers = np.stack([x[labels == c].mean(0) for c in range(len(centers))])
        shift = ((new_centers - centers) ** 2).sum()
        centers = new_centers
        if shift <= tol_scaled:
            break
    return ((x[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1)


def test_kmeans_with_init_equals_reference_lloyd():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=generator, dtype=torch.float64)
    init = x[:5].clone()
    for max_iter in (1, 3, 300):
        ours = kmeans(x, init=init, max_iter=max_iter, tol=1e-4)
        expected = reference_lloyd(x.numpy(), init.numpy(), max_iter, 1e-4)
        assert np.array_equal(ours.labels.numpy(), expected), max_iter


def test_kmeans_plusplus_finds_separated_blobs_and_is_seeded():
    for seed in range(3):
        x, truth = blobs(seed)
        result = kmeans(x, 4, seed=seed)
        assert same_partition(result.labels, truth)
        assert torch.equal(result.labels, kmeans(x, 4, seed=seed).labels)
    # k-means++ spreads the initial centres over the blobs
    x, truth = blobs(7)
    centres = kmeans_plusplus(x, 4, torch.Generator().manual_seed(0))
    nearest_blob = torch.cdist(centres, x).argmin(1)
    assert len(set(truth[nearest_blob].tolist())) == 4


def test_kmeans_keeps_k_clusters_and_rejects_bad_k():
    x, _ = blobs(1, k=3)
    assert len(kmeans(x, 5, seed=0).labels.unique()) == 5  # empty clusters are relocated
    with pytest.raises(ValueError, match="k=0"):
        kmeans(x, 0)
    with pytest.raises(ValueError, match="only 150 samples"):
        kmeans(x, 151)


def test_kmeans_s_uses_the_images_gt_class_count():
    attn = synthetic_attention(five_regions, (64, 32, 16, 8))
    method = KMeansBaseline()
    params = KMeansParams(mode="gt")
    for n_gt in (5, 3):
        pred = method.segment(attn, SegmentContext("img", (128, 128), n_gt_classes=n_gt), params)
        assert pred.shape == (128, 128)
        assert len(pred.unique()) == n_gt
    pred = method.segment(attn, SegmentContext("img", (512, 512), n_gt_classes=5), params)
    assert hungarian_accuracy(pred, ground_truth(five_regions, 64, (512, 512))) >= 0.95
    with pytest.raises(ValueError, match="n_gt_classes"):
        method.segment(attn, SegmentContext("img", (64, 64)), params)


def test_kmeans_c_uses_constant_k_and_both_upsamplings():
    attn = synthetic_attention(four_regions, (32, 16, 8, 4))
    method = KMeansBaseline()
    ctx = SegmentContext("img", (100, 140), n_gt_classes=2)  # ignored by mode=constant
    for upsample in ("bilinear", "nearest"):
        pred = method.segment(attn, ctx, KMeansParams(k=6, upsample=upsample))
        assert pred.shape == (100, 140) and len(pred.unique()) == 6
    pred = method.segment(attn, ctx, KMeansParams(k=4))
    assert hungarian_accuracy(pred, ground_truth(four_regions, 32, (100, 140))) >= 0.95


def test_params_validation():
    with pytest.raises(ValueError, match="method.mode"):
        KMeansParams(mode="oracle")
    with pytest.raises(ValueError, match="method.upsample"):
        KMeansParams(upsample="cubic")
    assert KMeansBaseline().attention_request(KMeansParams()).self_resolutions == (64, 32, 16, 8)


def test_config_lists_every_param_with_its_default():
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "method" / "kmeans.yaml"))
    defaults = KMeansParams()
    params = set(vars(defaults))
    assert set(cfg) == {"name", "extract", "grid"} | params
    assert cfg["name"] == "kmeans" and cfg["grid"] == {}
    for name in params:
        assert cfg[name] == getattr(defaults, name), name
