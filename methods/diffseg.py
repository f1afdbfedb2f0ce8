"""DiffSeg (Tian et al., CVPR 2024): unsupervised segmentation by merging self-attention.

Pipeline for one image (official code: google/diffseg, ``diffseg/segmentor.py``):

1. aggregate the head- and layer-averaged self-attention of every side s into
   A (n², n²) at the largest side n (64 at 512 px), weight ∝ side
   (:func:`methods.attention_ops.aggregate_self_attention`);
2. iteration 0: for each of the 16×16 anchor pixels, average the query maps of all
   pixels whose symmetric KL to the anchor's map is below τ₀ (one GEMM for all
   anchor–pixel pairs);
3. iterations 1..N−1: walk the proposals in order, skip those already matched, group
   every proposal within τᵢ of the current one (groups may re-use proposals absorbed
   earlier, as in the official loop), replace each group by its mean;
4. optional K-Means refinement initialised with the proposals (off in the paper's
   benchmark);
5. non-maximum suppression: resize the proposals bilinearly to the output size, argmax;
   the label is the proposal index.
"""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from benchmark.types import AttentionMaps, AttentionRequest, SegmentContext

from .attention_ops import (
    UPSAMPLE_MODES,
    OneEntryMemo,
    Workspace,
    aggregate_self_attention,
    anchor_grid,
    log_terms,
    self_attention_by_side,
    standard_self_resolutions,
    symmetric_kl,
    upsample_argmax,
    weights_by_side,
)
from .base import Method, NoSettings, check_choice, user_error
from .kmeans import kmeans


@dataclass
class DiffSegParams:
    """Post-processing constants of DiffSeg (paper defaults, COCO-Stuff-27).

    Every field is a config key ``method.<field>`` and an in-run grid axis
    ``method.grid.<field>=[...]``.
    """

    #: relative weight of each self-attention side, largest side first (entry i applies to
    #: side n/2**i, n = the largest captured side); normalised over the captured sides.
    #: [64, 32, 16, 8] = proportional to side, the paper's choice at every input size.
    resolution_weights: List[float] = field(default_factory=lambda: [64.0, 32.0, 16.0, 8.0])
    #: anchors per axis of the iteration-0 sampling grid (16 → 256 anchors)
    anchor_grid: int = 16
    #: KL merge threshold τ: one float for every iteration, or a list with one value per
    #: merge iteration (1.1 for COCO-Stuff-27, 0.9 for Cityscapes)
    kl_threshold: Any = 1.1
    #: number of merge iterations (iteration 0 from anchors + merge_iterations − 1 more)
    merge_iterations: int = 3
    #: iteration 0 in fp16 as the official code does (maps, their logs and the distances
    #: rounded to fp16, τ compared in fp16); false: float32 throughout
    fp16_first_iteration: bool = True
    #: K-Means refinement of the merged proposals (official demo; off in the benchmark)
    refine: bool = False
    #: refinement K-Means limits (scikit-learn defaults, as in the official demo)
    refine_max_iter: int = 300
    refine_tol: float = 1e-4
    #: how proposals are resized to the output size before the argmax: "bilinear" (official,
    #: half-pixel centres) or "nearest"
    upsample: str = "bilinear"

    def __post_init__(self) -> None:
        self.thresholds()  # validates kl_threshold against merge_iterations
        if self.anchor_grid < 2:
            raise ValueError(f"method.anchor_grid={self.anchor_grid}: need at least 2 anchors per axis")
        if not self.resolution_weights or any(w < 0 for w in self.resolution_weights):
            raise ValueError(
                f"method.resolution_weights={list(self.resolution_weights)}: expected non-negative weights, "
                "largest side first"
            )
        check_choice(self.upsample, UPSAMPLE_MODES, "upsample")
        if self.refine_max_iter < 1:
            raise ValueError(f"method.refine_max_iter={self.refine_max_iter}: expected >= 1")

    def thresholds(self) -> List[float]:
        """τ of each merge iteration."""
        if self.merge_iterations < 1:
            raise ValueError(f"method.merge_iterations={self.merge_iterations}: expected >= 1")
        value = self.kl_threshold
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            taus = [float(value)] * self.merge_iterations
        elif isinstance(value, Sequence) and not isinstance(value, str):
            taus = [float(v) for v in value]
            if len(taus) != self.merge_iterations:
                raise ValueError(
                    f"method.kl_threshold={list(value)} has {len(taus)} values but method.merge_iterations="
                    f"{self.merge_iterations}; give one value per iteration or a single float"
                )
        else:
            raise ValueError(f"method.kl_threshold={value!r}: expected a float or a list of floats")
        if any(not tau > 0 for tau in taus):
            raise ValueError(f"method.kl_threshold={value!r}: thresholds must be > 0")
        return taus


@dataclass
class _Iteration0:
    """What iteration 0 needs that does not depend on τ (shared by a τ grid)."""

    aggregated: torch.Tensor  # A (n², n²) float32
    distances: torch.Tensor  # anchors × n² symmetric KL (fp16-rounded values in fp16 mode)
    usable: torch.Tensor  # anchors × n² bool: both maps free of zeros


class DiffSeg(Method):
    name = "diffseg"
    task = "unsupervised"
    Params = DiffSegParams
    Settings = NoSettings

    def __init__(self, settings: Any = None, extract: Any = None):
        super().__init__(settings, extract)
        # the grid points of one image share aggregation and distances
        self._memo = OneEntryMemo()
        self._workspace = Workspace()

    def attention_request(self, params: DiffSegParams) -> AttentionRequest:
        # all four sides: the capture returns those that exist; zero-weight sides are skipped
        return AttentionRequest(self_resolutions=standard_self_resolutions(self.image_size))

    def proposals_by_iteration(self, attn: AttentionMaps, params: DiffSegParams) -> Tuple[int, List[torch.Tensor]]:
        """(n, proposals after each merge iteration): (M_k, n²) float64 tensors for
        iterations 0..merge_iterations−1 at attention side n; [] when no anchor map is free
        of zeros (iteration 0 yields nothing). ``benchmark.show`` draws them."""
        taus = params.thresholds()
        first = self._iteration0(attn, params)
        side = math.isqrt(first.aggregated.shape[0])
        proposals = merge_anchors(first.aggregated, first.distances, first.usable, taus[0], params.fp16_first_iteration)
        return side, ([] if proposals is None else merge_history(proposals, taus[1:]))

    def segment(self, attn: AttentionMaps, ctx: SegmentContext, params: DiffSegParams) -> torch.Tensor:
        side, history = self.proposals_by_iteration(attn, params)
        first = self._iteration0(attn, params)  # memoised: the same object as above
        if not history:
            # every anchor map has a zero entry (fp16 underflow of very peaked attention):
            # the official code crashes here; one segment keeps the image scoreable
            warnings.warn(
                f"DiffSeg: image {ctx.image_id!r}: no anchor map is free of zeros"
                + (" after fp16 rounding (try method.fp16_first_iteration=false)" if params.fp16_first_iteration else "")
                + "; returning a single segment",
                RuntimeWarning,
            )
            return torch.zeros(ctx.out_size, dtype=torch.long, device=first.aggregated.device)
        proposals = history[-1]
        if params.refine:
            proposals = refine_proposals(first.aggregated, proposals, params.refine_max_iter, params.refine_tol)
        return upsample_argmax(proposals.view(-1, side, side), ctx.out_size, params.upsample)

    def check_captured_sides(self, params: DiffSegParams, self_sides, cross_sides) -> None:
        """The anchor grid must fit the aggregation side (the largest captured self-attention
        side; ``anchor_grid``: step (side − 1) // (points − 1) >= 1, i.e. side >= points)."""
        if self_sides and params.anchor_grid > max(self_sides):
            raise user_error(
                f"method.anchor_grid={params.anchor_grid}: the largest self-attention side this model captures at "
                f"method.extract.image_size={self.image_size} is {max(self_sides)}, and the anchor grid needs at most "
                f"that many points per axis; lower method.anchor_grid (e.g. {max(self_sides)}) or raise the image size"
            )

    def _iteration0(self, attn: AttentionMaps, params: DiffSegParams) -> _Iteration0:
        weights = weights_by_side(list(attn.self_attn), params.resolution_weights, "method.resolution_weights")
        key = (tuple(attn.self_attn), tuple(sorted(weights.items())), params.anchor_grid, params.fp16_first_iteration)
        return self._memo.get(attn.self_attn.values(), key, lambda: self._compute_iteration0(attn, weights, params))

    def _compute_iteration0(self, attn: AttentionMaps, weights: Dict[int, float], params: DiffSegParams) -> _Iteration0:
        maps = self_attention_by_side(attn.self_attn)
        side = max(maps)
        device = next(iter(maps.values())).device
        out = self._workspace.get("aggregated", (side * side, side * side), torch.float32, device)
        aggregated = aggregate_self_attention(maps, weights, side, out=out)
        anchors = anchor_grid(side, params.anchor_grid).to(device)
        anchor_rows = anchors[:, 0] * side + anchors[:, 1]
        distances, usable = anchor_distances(aggregated, anchor_rows, params.fp16_first_iteration, self._workspace)
        return _Iteration0(aggregated, distances, usable)


def anchor_distances(
    aggregated: torch.Tensor, anchor_rows: torch.Tensor, fp16: bool, workspace: Optional[Workspace] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric KL of every anchor's map to every pixel's map (anchors × n²).

    fp16 mode emulates the official fp16 computation: maps and their logs are rounded to
    fp16 and the distances too, with float32 accumulation (the official code also rounds
    every elementwise product, which a GEMM cannot). Returns (distances, usable) where
    ``usable`` marks pairs whose maps have no zero entry (after fp16 rounding): the
    official elementwise formula gives NaN/inf for the others.
    """
    workspace = workspace or Workspace()
    count = aggregated.shape[0]
    # X = [A | log A] so that [log P | P] · Xᵀ = P·log Aᵀ + log P·Aᵀ in one GEMM
    stacked = workspace.get("stacked", (count, 2 * count), aggregated.dtype, aggregated.device)
    maps, logs = stacked[:, :count], stacked[:, count:]
    if fp16:
        rounded = workspace.get("fp16", (count, count), torch.float16, aggregated.device)
        maps.copy_(rounded.copy_(aggregated))
        torch.log(maps, out=logs)
        logs.copy_(rounded.copy_(logs))
    else:
        maps.copy_(aggregated)
        torch.log(maps, out=logs)
    h = torch.bmm(maps.unsqueeze(1), logs.unsqueeze(2)).view(-1)
    valid = torch.isfinite(h)
    anchor_side = torch.cat((logs[anchor_rows], maps[anchor_rows]), 1)
    distances = 0.5 * (h[anchor_rows, None] + h[None, :] - anchor_side @ stacked.T)
    if fp16:
        distances = distances.half().float()
    usable = valid[anchor_rows, None] & valid[None, :]
    return distances, usable


def merge_anchors(
    aggregated: torch.Tensor, distances: torch.Tensor, usable: torch.Tensor, tau: float, fp16: bool
) -> Optional[torch.Tensor]:
    """Iteration 0: proposal of anchor a = mean of the pixel maps within τ of a's map.

    Returns float64 proposals (M, n²). An anchor whose map has a zero entry matches
    nothing (its official distance is NaN) and yields no proposal; None if no anchor
    yields one.
    """
    if fp16:
        tau = float(torch.tensor(tau, dtype=torch.float16))  # the official comparison is in fp16
    mask = (distances < tau) & usable
    counts = mask.sum(1)
    mask = mask[counts > 0]
    if mask.shape[0] == 0:
        return None
    proposals = (mask.to(aggregated.dtype) @ aggregated).double()
    return proposals / counts[counts > 0, None].double()


def proposal_distances(proposals: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric KL between all proposals (M × M, in the proposals' dtype) and usability."""
    logs, h, valid = log_terms(proposals)
    distances = symmetric_kl(proposals, proposals, logs, logs, h, h)
    return distances, valid[:, None] & valid[None, :]


def sequential_groups(close: np.ndarray) -> List[np.ndarray]:
    """The grouping walk of the official loop on a precomputed M × M "close" matrix.

    Proposals are visited in order; a visited or absorbed proposal starts no group; the
    group of proposal i is every j close to i, including proposals already absorbed by an
    earlier group (the official behaviour); empty groups are dropped.
    """
    matched = np.zeros(close.shape[0], dtype=bool)
    groups = []
    for i in range(close.shape[0]):
        if matched[i]:
            continue
        matched[i] = True
        group = close[i]
        if group.any():
            matched |= group
            groups.append(group)
    return groups


def merge_proposals(proposals: torch.Tensor, tau: float) -> torch.Tensor:
    """One later merge iteration (float64, like the official loop): groups → their means."""
    distances, usable = proposal_distances(proposals)
    close = ((distances < tau) & usable).cpu().numpy()
    groups = sequential_groups(close)
    if not groups:  # proposals are means of zero-free maps, so this cannot happen
        raise RuntimeError("DiffSeg: every proposal has a zero entry; nothing left to merge")
    membership = torch.from_numpy(np.stack(groups)).to(device=proposals.device, dtype=proposals.dtype)
    return (membership @ proposals) / membership.sum(1, keepdim=True)


def merge_history(proposals: torch.Tensor, taus: Sequence[float]) -> List[torch.Tensor]:
    """The proposals after iteration 0 (``proposals``) and after each later merge
    iteration with threshold ``taus[i]``: a list of len(taus) + 1 tensors (M_k, n²)."""
    history = [proposals]
    for tau in taus:
        history.append(merge_proposals(history[-1], tau))
    return history


def refine_proposals(aggregated: torch.Tensor, proposals: torch.Tensor, max_iter: int, tol: float) -> torch.Tensor:
    """K-Means on the n² pixel maps initialised with the proposals (one run); the refined
    proposals are the means of the non-empty clusters, in cluster order."""
    result = kmeans(
        aggregated.double(), init=proposals.to(aggregated.device, torch.float64), max_iter=max_iter, tol=tol
    )
    labels = result.labels
    k = proposals.shape[0]
    membership = torch.zeros(k, labels.numel(), dtype=torch.float64, device=labels.device)
    membership[labels, torch.arange(labels.numel(), device=labels.device)] = 1.0
    sizes = membership.sum(1)
    membership = membership[sizes > 0]
    return (membership @ aggregated.double()) / sizes[sizes > 0, None]
