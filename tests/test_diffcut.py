"""DiffCut against the official algorithm's rules (PaulCouairon/DiffCut
diffcut/recursive_normalized_cut.py, eval_diffcut.py), recomputed here step by step
with loops on seeded synthetic features, plus end-to-end runs on the tiny models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.types import AttentionMaps, SegmentContext
from methods.diffcut import (
    DiffCut,
    DiffCutParams,
    assemble_clusters,
    best_bipartition,
    diffcut_labels,
    median_filter,
    recursive_ncut,
)


def _features(seed=0, side=8, channels=16, regions=3, noise=0.6):
    """Tokens of a side x side grid split into vertical bands, one random centre per band, plus noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(regions, channels, generator=g)
    band = (torch.arange(side * side) % side) * regions // side
    return centres[band] + noise * torch.randn(side * side, channels, generator=g)


# -- the official rules, written out with loops (reference) ------------------------------
def _ref_ncut(y, A, D):
    """get_bipartition: 100 thresholds linspace(0.99 min, 0.99 max); y=(1+x)-b(1-x); Python min / np.argmin."""
    thresholds = torch.linspace(float(y.min()) * 0.99, float(y.max()) * 0.99, 100)
    L = D - A
    d = torch.diag(D)
    values, parts = [], []
    for t in thresholds:
        x01 = (y > t).float()
        x = 2 * x01 - 1
        k = torch.sum(d * (x > 0)) / torch.sum(D)
        b = k / (1 - k)
        v = (1 + x) - b * (1 - x)
        values.append(float((v @ L @ v) / (v @ D @ v)))
        parts.append(x01)
    return parts[int(np.argmin(values))], min(values)


def _ref_recursive(affinity, tau, painting, mask, level, out):
    n = affinity.shape[0]
    painting = painting + mask
    painting[painting > 0] = 1
    both = painting[:, None] * painting[None, :]
    affinity = affinity * (1 - both)
    if level == 0:
        keep = list(range(n))
    else:
        zero_rows = set(torch.where(affinity == 0)[0].tolist())
        keep = sorted(set(range(n)) - zero_rows)
    A = affinity[keep][:, keep]
    if A.shape[0] <= 1:
        return out
    D = torch.diag(A.sum(1))
    Dm = torch.diag(1 / torch.diag(D) ** 0.5)
    _, vecs = torch.linalg.eigh(Dm @ (D - A) @ Dm)
    y = Dm @ vecs[:, 1]
    y = y * torch.sign(y[torch.argmax(y.abs())])
    part, ncut = _ref_ncut(y, A, D)
    full = torch.zeros(n)
    full[keep] = part
    if ncut < tau:
        out.append(full)
        _ref_recursive(affinity, tau, painting.clone(), 1 - full, level + 1, out)
        _ref_recursive(affinity, tau, painting.clone(), full, level + 1, out)
    return out


def _ref_labels(features, tau, alpha, mask_size):
    n, c = features.shape
    side = int(n**0.5)
    feats = F.normalize(features.reshape(1, side, side, c).permute(0, 3, 1, 2), dim=1)
    x = F.normalize(feats.reshape(c, n), p=2, dim=0)
    aff = x.T @ x
    aff = ((aff - aff.min()) / (aff.max() - aff.min())) ** alpha
    clusters = _ref_recursive(aff, tau, torch.zeros(n), torch.zeros(n), 0, [])
    if not clusters:
        clusters = [torch.zeros(n)]
    acc, value = torch.zeros(n), 1
    for m in clusters:
        acc = acc + value * m
        value = acc.max() + 1
    labels = torch.zeros(n)
    for i, v in enumerate(torch.unique(acc)):
        labels[acc == v] = i
    labels = labels.reshape(side, side)
    embeds = []
    for v in torch.unique(labels):
        m = (labels == v).float()
        embeds.append((feats[0] * m).sum((-1, -2)) / (m.sum() + 1e-8))
    embeds = torch.stack(embeds)
    up = torch.nn.Upsample(size=(mask_size, mask_size), mode="bilinear")(feats)[0]
    return torch.argmax(up.reshape(c, -1).T @ embeds.T, dim=1).reshape(mask_size, mask_size)


@pytest.mark.parametrize("seed, tau, alpha", [(0, 0.5, 10.0), (1, 0.3, 10.0), (2, 0.6, 5.0), (3, 0.9, 1.0)])
def test_diffcut_equals_official_rules_on_seeded_features(seed, tau, alpha):
    features = _features(seed)
    params = DiffCutParams(tau=tau, alpha=alpha, mask_size=32)
    ours = diffcut_labels(features, params)
    expected = _ref_labels(features, tau, alpha, 32)
    assert torch.equal(ours, expected)
    assert ours.unique().numel() >= 2  # the recursion did split


def test_recursive_ncut_order_and_tau_stop():
    features = _features(0)
    unit = F.normalize(features, dim=1)
    aff = ((unit @ unit.T - (unit @ unit.T).min()) / ((unit @ unit.T).max() - (unit @ unit.T).min())) ** 10
    ours = recursive_ncut(aff, 0.5)
    ref = _ref_recursive(aff, 0.5, torch.zeros(64), torch.zeros(64), 0, [])
    assert len(ours) == len(ref) >= 2
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
    assert recursive_ncut(aff, 1e-6) == []  # no split is below a tiny tau


def test_assemble_clusters_by_hand():
    # masks over 4 pixels: [1,1,0,0] then [1,0,0,0]: values 1,1,0,0 -> +2*[1,0,0,0] = 3,1,0,0 -> 2,1,0,0
    labels = assemble_clusters([torch.tensor([1.0, 1, 0, 0]), torch.tensor([1.0, 0, 0, 0])], 4)
    assert labels.tolist() == [2, 1, 0, 0]
    assert assemble_clusters([], 3).tolist() == [0, 0, 0]


def test_best_bipartition_matches_loop():
    g = torch.Generator().manual_seed(5)
    a = torch.rand(12, 12, generator=g)
    a = (a + a.T) / 2
    y = torch.randn(12, generator=g)
    part, ncut = best_bipartition(y, a)
    ref_part, ref_ncut = _ref_ncut(y, a, torch.diag(a.sum(1)))
    assert torch.equal(part, ref_part) and ncut == pytest.approx(ref_ncut, rel=1e-5)


def test_median_filter_equals_scipy_reflect():
    from scipy.ndimage import median_filter as scipy_median

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (9, 11), generator=g)
    expected = scipy_median(labels.numpy()[None], 3)[0]  # eval_diffcut.py: (1, H, W) input, size 3
    assert np.array_equal(median_filter(labels, 3).numpy(), expected)


def test_refinement_uses_pamr_and_keeps_shape():
    features = _features(0)
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 40, 40), generator=g, dtype=torch.uint8)
    ctx = SegmentContext("x", (40, 40), image=image)
    maps = AttentionMaps(features={"last_down_attn1": features[None]})
    plain = DiffCut().segment(maps, ctx, DiffCutParams(mask_size=16))
    refined = DiffCut().segment(maps, ctx, DiffCutParams(mask_size=16, refinement=True))
    assert plain.shape == refined.shape == (40, 40) and plain.dtype == torch.int64
    assert not torch.equal(plain, refined) or plain.unique().numel() == 1
    with pytest.raises(ValueError, match="feature 'last_down_attn1'"):
        DiffCut().segment(AttentionMaps(), ctx, DiffCutParams())
    with pytest.raises(ValueError, match="method.tau"):
        DiffCutParams(tau=0)


@pytest.mark.slow
def test_speed_script_prints_diffcut_beside_diffseg(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "diffcut_speed.py"
    spec = importlib.util.spec_from_file_location("diffcut_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--repeats", "1", "--out", "48", "--side", "8", "--channels", "16", "--attn-side", "16",
                        "--mask-size", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("  ")[0].strip(): line for line in lines[2:]}
    assert any(k.startswith("diffcut (tau 0.5, alpha 10)") for k in rows)
    assert any("PAMR + median" in k for k in rows) and any(k.startswith("diffseg") for k in rows)
    for line in lines[2:]:
        assert float(line[42:52]) > 0  # seconds per image
