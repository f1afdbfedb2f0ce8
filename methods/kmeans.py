"""K-Means baselines of the DiffSeg paper on the aggregated self-attention.

Features: the n² rows of DiffSeg's aggregated attention A (one n²-dim distribution per
pixel, n = 64 at 512 px). **K-Means-C**: a constant k (6, the average number of objects
per image in the paper). **K-Means-S**: k = the number of GT classes present in the image
(an oracle quantity, ``SegmentContext.n_gt_classes``).

:func:`kmeans` is a vectorised Lloyd K-Means with scikit-learn's semantics (greedy
k-means++ initialisation, relative tolerance, empty-cluster relocation, best of
``n_init`` runs by inertia), seeded through a ``torch.Generator``; DiffSeg's optional
refinement uses it with a given initialisation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, NamedTuple, Optional

import torch

from benchmark.types import AttentionMaps, AttentionRequest, SegmentContext

from .attention_ops import (
    UPSAMPLE_MODES,
    OneEntryMemo,
    Workspace,
    aggregate_self_attention,
    self_attention_by_side,
    standard_self_resolutions,
    upsample_argmax,
    weights_by_side,
)
from .base import Method, NoSettings, check_choice

MODES = ("constant", "gt")


class KMeansResult(NamedTuple):
    labels: torch.Tensor  # (N,) int64
    centers: torch.Tensor  # (k, d)
    inertia: float
    n_iter: int


def _squared_distances(x: torch.Tensor, x_sq: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """‖x − c‖² for all rows and centers through one GEMM, clamped at 0 (rounding)."""
    d = x_sq[:, None] - 2.0 * (x @ centers.T) + (centers * centers).sum(1)[None, :]
    return d.clamp_min_(0.0)


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator, x_sq: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Greedy k-means++ (scikit-learn's variant: 2 + ⌊ln k⌋ candidates per step, keep the
    one that lowers the potential most). Returns (k, d) initial centers."""
    n = x.shape[0]
    x_sq = (x * x).sum(1) if x_sq is None else x_sq
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    closest = _squared_distances(x, x_sq, x[first : first + 1])[:, 0]
    for _ in range(1, k):
        potential = closest.sum()
        draws = torch.rand(trials, generator=generator, dtype=torch.float64).to(x.device) * potential.double()
        cumulative = torch.cumsum(closest.double(), 0)
        candidates = torch.searchsorted(cumulative, draws).clamp_(max=n - 1)
        to_candidates = _squared_distances(x, x_sq, x[candidates])  # (n, trials)
        new_closest = torch.minimum(closest[:, None], to_candidates)
        best = int(new_closest.sum(0).argmin())
        chosen.append(int(candidates[best]))
        closest = new_closest[:, best]
    return x[torch.tensor(chosen, device=x.device)].clone()


def _lloyd(x: torch.Tensor, x_sq: torch.Tensor, centers: torch.Tensor, max_iter: int, tol_scaled: float) -> KMeansResult:
    n = x.shape[0]
    k = centers.shape[0]
    rows = torch.arange(n, device=x.device)
    labels = None
    n_iter = 0
    converged_strictly = False
    for n_iter in range(1, max_iter + 1):
        distances = _squared_distances(x, x_sq, centers)
        new_labels = distances.argmin(1)
        if labels is not None and torch.equal(new_labels, labels):
            converged_strictly = True
            break
        labels = new_labels
        membership = torch.zeros(k, n, dtype=x.dtype, device=x.device)
        membership[labels, rows] = 1.0
        sizes = membership.sum(1)
        new_centers = (membership @ x) / sizes.clamp_min(1.0)[:, None]
        empty = sizes == 0
        if empty.any():
            # relocate empty clusters to the points farthest from their centers (sklearn)
            far = distances[rows, labels].argsort(descending=True)[: int(empty.sum())]
            new_centers[empty] = x[far]
        shift = float(((new_centers - centers) ** 2).sum())
        centers = new_centers
        if shift <= tol_scaled:
            break
    if not converged_strictly:
        labels = _squared_distances(x, x_sq, centers).argmin(1)
    inertia = float(_squared_distances(x, x_sq, centers)[rows, labels].sum())
    return KMeansResult(labels, centers, inertia, n_iter)


def kmeans(
    x: torch.Tensor,
    k: Optional[int] = None,
    *,
    init: Optional[torch.Tensor] = None,
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
) -> KMeansResult:
    """Lloyd K-Means of the rows of ``x`` (N, d).

    ``init`` (k, d) gives the initial centers (one run); otherwise k-means++ seeded with
    ``seed``, best of ``n_init`` runs by inertia. Stops when the labels no longer change
    or the total squared center shift is ≤ tol × mean per-feature variance (scikit-learn).
    """
    if init is None and (k is None or k < 1):
        raise ValueError(f"kmeans: k={k}: expected k >= 1 (or an init)")
    n = x.shape[0]
    k = init.shape[0] if init is not None else k
    if k > n:
        raise ValueError(f"kmeans: k={k} clusters but only {n} samples")
    x_sq = (x * x).sum(1)
    tol_scaled = tol * float(x.var(0, unbiased=False).mean())
    if init is not None:
        return _lloyd(x, x_sq, init.to(x.dtype), max_iter, tol_scaled)
    generator = torch.Generator().manual_seed(seed)
    best: Optional[KMeansResult] = None
    for _ in range(max(1, n_init)):
        result = _lloyd(x, x_sq, kmeans_plusplus(x, k, generator, x_sq), max_iter, tol_scaled)
        if best is None or result.inertia < best.inertia:
            best = result
    return best


@dataclass
class KMeansParams:
    """K-Means-C (mode=constant, k clusters) or K-Means-S (mode=gt, k = GT classes)."""

    #: "constant" (K-Means-C, k clusters) | "gt" (K-Means-S, k = the image's GT class count)
    mode: str = "constant"
    #: clusters of K-Means-C (6 in the paper); ignored by mode=gt
    k: int = 6
    #: k-means++ restarts, best inertia kept (scikit-learn >= 1.4 default for k-means++: 1)
    n_init: int = 1
    max_iter: int = 300
    tol: float = 1e-4
    #: seed of the k-means++ draws (the same for every image)
    seed: int = 0
    #: aggregation weights of the self-attention sides, largest first (as DiffSeg)
    resolution_weights: List[float] = field(default_factory=lambda: [64.0, 32.0, 16.0, 8.0])
    #: label map to output size: "bilinear" (one-hot cluster maps resized bilinearly,
    #: then argmax: smooth boundaries, like DiffSeg's NMS) | "nearest"
    upsample: str = "bilinear"

    def __post_init__(self) -> None:
        check_choice(self.mode, MODES, "mode")
        if self.k < 1:
            raise ValueError(f"method.k={self.k}: expected >= 1")
        if self.n_init < 1 or self.max_iter < 1:
            raise ValueError(f"method.n_init={self.n_init}, method.max_iter={self.max_iter}: expected >= 1")
        check_choice(self.upsample, UPSAMPLE_MODES, "upsample")


class KMeansBaseline(Method):
    name = "kmeans"
    task = "unsupervised"
    Params = KMeansParams
    Settings = NoSettings

    def __init__(self, settings: Any = None, extract: Any = None):
        super().__init__(settings, extract)
        # the grid points of one image (k, seed, ...) share the aggregated attention
        self._memo = OneEntryMemo()
        self._workspace = Workspace()

    def attention_request(self, params: KMeansParams) -> AttentionRequest:
        return AttentionRequest(self_resolutions=standard_self_resolutions(self.image_size))

    def features(self, attn: AttentionMaps, params: KMeansParams) -> torch.Tensor:
        """DiffSeg's aggregated attention A (n², n²): one feature row per pixel."""
        # largest side first, as self_attention_by_side orders them (the order of the weight sum)
        weights = weights_by_side(
            sorted(attn.self_attn, reverse=True), params.resolution_weights, "method.resolution_weights"
        )
        key = (tuple(attn.self_attn), tuple(sorted(weights.items())))

        def aggregate() -> torch.Tensor:
            maps = self_attention_by_side(attn.self_attn)
            side = max(maps)
            out = self._workspace.get("aggregated", (side * side, side * side), torch.float32, maps[side].device)
            return aggregate_self_attention(maps, weights, side, out=out)

        return self._memo.get(attn.self_attn.values(), key, aggregate)

    def segment(self, attn: AttentionMaps, ctx: SegmentContext, params: KMeansParams) -> torch.Tensor:
        if params.mode == "gt":
            if ctx.n_gt_classes is None:
                raise ValueError(
                    "method.mode='gt' (K-Means-S) needs the image's GT class count, but "
                    f"SegmentContext.n_gt_classes is None for image {ctx.image_id!r}"
                )
            # an image without valid GT pixels scores nothing; one cluster keeps it defined
            k = max(1, int(ctx.n_gt_classes))
        else:
            k = params.k
        features = self.features(attn, params)
        side = math.isqrt(features.shape[0])
        result = kmeans(features, k, n_init=params.n_init, max_iter=params.max_iter, tol=params.tol, seed=params.seed)
        one_hot = torch.zeros(k, side * side, device=features.device)
        one_hot[result.labels, torch.arange(side * side, device=features.device)] = 1.0
        return upsample_argmax(one_hot.view(k, side, side), ctx.out_size, params.upsample)
