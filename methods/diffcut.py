"""DiffCut (Couairon et al., NeurIPS 2024): recursive normalized cut on diffusion features.

Official code: PaulCouairon/DiffCut ``diffcut/recursive_normalized_cut.py`` (class
``DiffCut``), ``eval_diffcut.py`` (evaluation constants) and ``tools/ldm.py`` (features).
Every rule below follows those files; ``recursive_normalized_cut.py`` is cited as RNC.

Features: the output of the self-attention of the last transformer block of the deepest
down stage with attention (``AttentionRequest.features = ("last_down_attn1",)``, see
``benchmark.attention.features``), (N, C) tokens of an h x w grid (32 x 32 at 1024 px).

1. Affinity (RNC ``recursive_ncut`` level 0): tokens L2-normalised, W = FᵀF, min-max
   scaled over the whole matrix, raised to the power α.
2. Recursive 2-way normalized cut (RNC ``recursive_ncut``): on the unexplored pixels,
   the second smallest eigenvector of D^-1/2 (D - W) D^-1/2, mapped back by D^-1/2, sign
   fixed by its largest-magnitude entry; 100 thresholds linspace(0.99 min, 0.99 max);
   the split of lowest NCut (Shi & Malik's y = (1 + x) - b (1 - x) form) is kept when
   NCut < τ, and both halves are cut again (pre-order: the "above" half first).
   From level 1 on, pixels whose affinity row holds an exact zero are left out
   (RNC ``get_affinity_matrix``: rows of ``torch.where(affinity == 0)``).
3. Clusters assembled in order (RNC ``assemble_clusters``) and relabelled 0..K-1.
4. Concept assignment (RNC ``generate_masks`` steps 2-3): each cluster's mean normalised
   feature; features bilinearly upsampled (half-pixel) to ``mask_size``; each pixel takes
   the cluster of largest dot product.
5. Optional refinement (``eval_diffcut.py`` ``Benchmark_Segmentation.pamr``): PAMR
   (10 iterations, dilations 1/2/4/8, 0.1 σ: ``tools/pamr.py``) on the one-hot labels with
   the image resized bilinearly to ``mask_size``, argmax, 3 x 3 median filter (scipy
   ``median_filter(size=3)``, reflect border = edge replication for a 3 x 3 window).

Deviation (protocol, not method): the official evaluation scores the ``mask_size`` map
against labels resized (nearest) to 128 x 128; here the map is resized (nearest) to the
label size and scored there. The official evaluation applies PAMR after merging unmatched
clusters into background (VOC/Context/COCO-Object), which needs the ground truth; here
PAMR runs on the method's own clusters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.types import AttentionMaps, AttentionRequest, SegmentContext

from .attention_ops import resize_maps
from .base import Method
from .seediff import pamr

#: RNC get_bipartition(k=100) and the 0.99 factor of its threshold range
N_THRESHOLDS = 100
THRESHOLD_RANGE = 0.99


@dataclass
class DiffCutParams:
    #: τ: a split is kept while its NCut is below τ (eval_diffcut.py --tau, default 0.5)
    tau: float = 0.5
    #: α: affinity exponent (eval_diffcut.py --alpha, default 10)
    alpha: float = 10.0
    #: PAMR + 3x3 median filter (eval_diffcut.py --refinement, default off)
    refinement: bool = False
    #: side of the concept-assignment map (generate_masks(mask_size=(128, 128)))
    mask_size: int = 128
    #: PAMR of the refinement (eval_diffcut.py: PAMR(num_iter=10, dilations=[1, 2, 4, 8]))
    pamr_iterations: int = 10
    pamr_dilations: List[int] = field(default_factory=lambda: [1, 2, 4, 8])
    #: median filter side after PAMR (eval_diffcut.py: median_filter(labels, 3))
    median_size: int = 3

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"method.tau={self.tau}: expected > 0")
        if not self.alpha > 0:
            raise ValueError(f"method.alpha={self.alpha}: expected > 0")
        if self.mask_size < 1 or self.pamr_iterations < 0 or self.median_size < 1 or self.median_size % 2 == 0:
            raise ValueError(
                f"method.mask_size={self.mask_size}, pamr_iterations={self.pamr_iterations}, median_size="
                f"{self.median_size}: expected mask_size >= 1, pamr_iterations >= 0, an odd median_size >= 1"
            )
        if not self.pamr_dilations or any(int(d) < 1 for d in self.pamr_dilations):
            raise ValueError(f"method.pamr_dilations={list(self.pamr_dilations)}: expected positive integers")


@dataclass
class DiffCutSettings:
    #: captured block output (alias or UNet module path, ``benchmark.attention.features``)
    feature: str = "last_down_attn1"


# -- the algorithm (pure tensor functions) ---------------------------------------------------
def affinity_matrix(features: torch.Tensor, alpha: float) -> torch.Tensor:
    """(N, N) affinity of (N, C) tokens: ((cos - min) / (max - min)) ** α (RNC recursive_ncut, level 0)."""
    unit = F.normalize(features.float(), p=2, dim=1)
    cosine = unit @ unit.T
    scaled = (cosine - cosine.min()) / (cosine.max() - cosine.min())
    return scaled**alpha


def second_smallest_eigenvector(affinity: torch.Tensor) -> torch.Tensor:
    """D^-1/2 u₂ with u₂ the eigenvector of the 2nd smallest eigenvalue of D^-1/2 (D - W) D^-1/2,
    sign flipped so that its largest-magnitude entry is positive (RNC second_smallest_eigenvector,
    deterministic_vector_sign_flip)."""
    degree = affinity.sum(dim=1)
    inv_sqrt = 1 / degree**0.5
    laplacian = torch.diag(degree) - affinity
    _, vectors = torch.linalg.eigh(inv_sqrt[:, None] * laplacian * inv_sqrt[None, :])
    vector = inv_sqrt * vectors[:, 1]
    return vector * torch.sign(vector[torch.argmax(vector.abs())])


def best_bipartition(vector: torch.Tensor, affinity: torch.Tensor) -> Tuple[torch.Tensor, float]:
    """(partition (N,) of 0/1, its NCut) of lowest NCut over the 100 thresholds (RNC get_bipartition).

    NCut of indicator x ∈ {-1, 1}: k = Σ_{x>0} d / Σ d, b = k / (1 - k),
    y = (1 + x) - b (1 - x), NCut = yᵀ(D - W)y / yᵀDy. Ties and NaN follow the official
    ``min`` / ``np.argmin`` of the list (a NaN first in the list wins both).
    """
    thresholds = torch.linspace(float(vector.min()) * THRESHOLD_RANGE, float(vector.max()) * THRESHOLD_RANGE, N_THRESHOLDS)
    partitions = (vector[None, :] > thresholds[:, None].to(vector)).float()  # (100, N)
    degree = affinity.sum(dim=1)
    x = 2 * partitions - 1
    k = (partitions * degree).sum(dim=1, keepdim=True) / degree.sum()
    b = k / (1 - k)
    y = (1 + x) - b * (1 - x)
    laplacian = torch.diag(degree) - affinity
    values = ((y @ laplacian) * y).sum(dim=1) / (y * y * degree).sum(dim=1)
    listed = values.tolist()
    return partitions[int(np.argmin(listed))], min(listed)


def recursive_ncut(affinity: torch.Tensor, tau: float) -> List[torch.Tensor]:
    """Masks (N,) float 0/1 of every accepted split, in the official pre-order (RNC recursive_ncut).

    Each node holds the painted (explored) pixels; its affinity is W with the entries
    between two painted pixels zeroed. The root uses every pixel; deeper nodes drop the
    pixels whose row of that affinity has an exact zero.
    """
    n = affinity.shape[0]
    masks: List[torch.Tensor] = []
    # stack of (painted pixels (N,) bool, affinity of the parent, mask to paint, level)
    stack = [(torch.zeros(n, dtype=torch.bool), affinity, torch.zeros(n), 0)]
    while stack:
        painted, parent_affinity, mask, level = stack.pop()
        painted = painted | (mask > 0)
        both = painted[:, None] & painted[None, :]
        current = parent_affinity.masked_fill(both.to(parent_affinity.device), 0.0)
        if level == 0:
            keep = torch.arange(n)
        else:
            has_zero = (current == 0).any(dim=1).cpu()
            keep = (~has_zero).nonzero().flatten()
        if keep.numel() <= 1:
            continue
        sub = current[keep][:, keep]
        partition, ncut = best_bipartition(second_smallest_eigenvector(sub), sub)
        if not ncut < tau:
            continue
        split = torch.zeros(n)
        split[keep] = partition.cpu()
        masks.append(split)
        # RNC recurses on (1 - bipartition) first, then bipartition: push in reverse
        stack.append((painted, current, split, level + 1))
        stack.append((painted, current, 1 - split, level + 1))
    return masks


def assemble_clusters(masks: List[torch.Tensor], n: int) -> torch.Tensor:
    """(N,) labels 0..K-1 from the split masks (RNC assemble_clusters: m += next_value * mask,
    next_value = max + 1, then the distinct values relabelled in increasing order)."""
    labels = torch.zeros(n)
    next_value = 1.0
    for mask in masks:
        labels = labels + next_value * mask
        next_value = float(labels.max()) + 1
    return torch.unique(labels, return_inverse=True)[1]


def concept_assignment(unit: torch.Tensor, labels: torch.Tensor, size: int) -> torch.Tensor:
    """(size, size) labels: argmax over clusters of <upsampled feature, cluster mean feature>.

    unit: (C, h, w) L2-normalised features; labels: (h, w) in 0..K-1 (RNC generate_masks
    steps 2-3: MaskPooling means, bilinear ``nn.Upsample`` without align_corners).
    """
    channels = unit.shape[0]
    one_hot = F.one_hot(labels.flatten(), int(labels.max()) + 1).float()  # (hw, K)
    means = (unit.reshape(channels, -1) @ one_hot) / (one_hot.sum(0) + 1e-8)  # (C, K)
    upsampled = F.interpolate(unit[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    scores = upsampled.reshape(channels, -1).T @ means
    return scores.argmax(dim=1).reshape(size, size)


def median_filter(labels: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W) median of each size x size window, border by edge replication (scipy's
    ``reflect`` mode for a 3 x 3 window)."""
    if size == 1:
        return labels
    pad = size // 2
    padded = F.pad(labels[None, None].float(), [pad] * 4, mode="replicate")
    windows = F.unfold(padded, size)  # (1, size², H*W)
    return windows[0].median(dim=0).values.reshape(labels.shape).to(labels.dtype)


def refine(labels: torch.Tensor, image: torch.Tensor, params: DiffCutParams) -> torch.Tensor:
    """PAMR of the one-hot labels on the image resized to the labels' size, argmax, median filter
    (eval_diffcut.py Benchmark_Segmentation.pamr)."""
    size = tuple(labels.shape)
    small = F.interpolate(image.float()[None] / 255.0, size=size, mode="bilinear", align_corners=False)[0]
    values = torch.unique(labels)
    one_hot = (labels[None] == values[:, None, None]).float()
    refined = pamr(small, one_hot, params.pamr_iterations, params.pamr_dilations, std_factor=0.1)
    return median_filter(refined.argmax(dim=0), params.median_size)


def diffcut_labels(features: torch.Tensor, params: DiffCutParams) -> torch.Tensor:
    """(mask_size, mask_size) int64 cluster ids of one image's (N, C) features (steps 1-4)."""
    n, channels = features.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"DiffCut features have {n} tokens; expected a square grid")
    unit = F.normalize(features.float().reshape(side, side, channels).permute(2, 0, 1), dim=0)
    masks = recursive_ncut(affinity_matrix(unit.reshape(channels, n).T, params.alpha), params.tau)
    labels = assemble_clusters(masks, n).reshape(side, side)
    return concept_assignment(unit, labels, params.mask_size)


class DiffCut(Method):
    name = "diffcut"
    Params = DiffCutParams
    Settings = DiffCutSettings

    def attention_request(self, params: DiffCutParams) -> AttentionRequest:
        return AttentionRequest(features=(self.settings.feature,))

    def segment(self, attn: AttentionMaps, ctx: SegmentContext, params: DiffCutParams) -> torch.Tensor:
        if self.settings.feature not in attn.features:
            raise ValueError(
                f"DiffCut needs feature {self.settings.feature!r} but the capture holds {sorted(attn.features)}"
            )
        captured = attn.features[self.settings.feature]
        features = captured[0] if captured.shape[0] == 1 else captured.float().mean(0)
        labels = diffcut_labels(features, params)
        if params.refinement:
            if ctx.image is None:
                raise ValueError("method.refinement=true needs the image (SegmentContext.image) for PAMR")
            labels = refine(labels, ctx.image, params)
        out = resize_maps(labels[None].float(), tuple(ctx.out_size), mode="nearest")[0]
        return out.round().long()
