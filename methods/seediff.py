"""SeeDiff (Park, Jo, Baik, AAAI 2025): seeded mask generation from diffusion attention.

The paper generates image–mask pairs: SD denoises from noise with the prompt
"a photo of a {class}", conditional-branch attention is averaged over the 50 steps, and
one mask is grown for the prompted class (``python -m benchmark.generate``). Applying it
to real images (``segment`` mode: one pass per candidate class, masks combined by argmax
against a background score) is an EXTENSION of the paper made by this harness.

Paper preset (``method=seediff``, Eqs. 5–12), for one class with CA map C ∈ [0, 1]:

* seeds    S₁ = {p : C₁₆[p] ≥ α}                                              (Eq. 6)
* expand   M'_k = mean_{p ∈ S_k} SA_{s_k}[p, :]   (normalised to [0, 1])      (Eq. 7)
* iterate  M_{k+1} = bilinear-up(M'_k), S_{k+1} = {p : M_{k+1}[p] ≥ α},
           16 → 32 → 64; the last side only expands                          (Eqs. 8–9)
* refine   S_bg = {p : 1 − M'_K[p] ≥ α}, M'_bg = expand(S_bg),
           M'_final = (1 − M'_bg) ⊙ M'_K                                      (Eqs. 10–11)
* binarise m = M_final ⊙ 1{M_final ≥ β}, M_final = M'_final at the output size (Eq. 12)

Official-code preset (``method=seediff_code``, BAIKLAB-Admin/SeeDiff ``src/seediff_app.py``):
Otsu seeds on C² scaled to 0..255, expansion by the summed cosine similarity of SA rows,
self-attention of the first up layer of each resolution only, background inversion at
every side after the first (32 and 64) applied to the bicubically upsampled previous map,
min-max normalisation everywhere, bicubic resizes, final > 0.3, optional PAMR (5000
iterations, dilation 1) and > 0.8.

Ablations (in-run grid axes, all on one captured pass):

* ``stage`` — Table 2 rows: ``caa`` (CA aggregation only, thresholded), ``cre`` (CA seeds
  expanded once with the self-attention of every side, averaged), ``ire`` (iterative
  expansion), ``be`` (+ background refinement = full SeeDiff); Table 5 rows: CA = ``caa``
  (DiffuMask-style), CA·SA = ``ca_sa`` (Dataset-Diffusion-style SA^k · CA), SeeDiff = ``be``.
* ``ca_resolution`` — Table 4 (16 | 32 | 64): the side of the CA map the seeds come from;
  it is resized to the first expansion side, so only the CA map changes.

Choices the equations leave open (documented, not hidden):

* Eq. 5 normalises every layer's map at every step by its max before averaging; the
  capture keeps only the head-, layer- (and step-) mean, so the mean is normalised.
* Every expanded map M'_k is normalised (``normalize``) so that α applies to it; seeds of
  the next side come from the upsampled map as it is (Eqs. 8–9). An empty seed set
  expands to a zero map. Eq. 11's product is not re-normalised (paper preset).
* A class word of several sub-tokens reads the columns ``token_rule`` selects.
* Segment mode: every prompt (candidate class, or each of its synonyms) grows its own
  mask from its own cross-attention; self-attention is the image's prompt mean unless
  ``extract.self_attn_per_prompt``; classes score Eq. 12's m, background the constant
  ``bg_threshold`` (0: background where no class reaches β); datasets without a
  background class take the class of highest M_final everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from benchmark.attention.layers import LAYER_SELECTIONS
from benchmark.types import AttentionMaps, AttentionRequest, SegmentContext

from .attention_ops import OneEntryMemo, minmax, resize_maps, standard_self_resolutions
from .base import check_choice
from .open_vocab import (
    OpenVocabSettings,
    OpenVocabularyMethod,
    PromptPlan,
    check_queries,
    check_token_rule,
    max_over_prompts,
    params_key,
    word_attention,
)

STAGES = ("caa", "ca_sa", "cre", "ire", "be")
SEED_RULES = ("threshold", "otsu")
EXPANSIONS = ("mean", "cosine")
BACKGROUND_MODES = ("last", "each_step")
NORMALIZATIONS = ("max", "minmax")
RESIZE_MODES = ("bilinear", "bicubic")
#: stages that grow masks by seed expansion (the others read no expansion rule)
EXPANDING_STAGES = ("cre", "ire", "be")
#: cv2's Otsu skips split points whose class weight is below FLT_EPSILON
_FLT_EPSILON = 1.1920928955078125e-07
#: PAMR outputs spanning less than this are constant (float32 sums of softmax weights)
_CONSTANT_SPAN = 1e-4


@dataclass
class SeeDiffParams:
    """Post-processing constants of SeeDiff (paper defaults, Eqs. 5–12).

    Every field is a config key ``method.<field>`` and an in-run grid axis.
    """

    #: pipeline stage (ablation rows): caa | ca_sa | cre | ire | be (full SeeDiff)
    stage: str = "be"
    #: side of the cross-attention map the seeds come from (Table 4: 16 | 32 | 64)
    ca_resolution: int = 16
    #: self-attention sides of the expansion, ascending; None = latent/4, latent/2,
    #: latent of ``extract.image_size`` (16, 32, 64 at 512 px)
    sa_resolutions: Optional[List[int]] = None
    #: seed threshold α on maps normalised to [0, 1] (Eqs. 6, 9; seed_rule=threshold)
    alpha: float = 0.5
    #: binarisation threshold β of the final map (Eq. 12)
    beta: float = 0.3
    #: threshold (≥ α, paper) | otsu (Otsu on map² × 255, official code)
    seed_rule: str = "threshold"
    #: mean (mean of the seeds' SA rows, Eq. 7) | cosine (summed cosine similarity of SA
    #: rows to the seeds' rows, official code)
    expansion: str = "mean"
    #: last (Eqs. 10–11 once, at the last side) | each_step (official code: background
    #: inversion replaces the expansion at every side after the first)
    background: str = "last"
    #: max (A / max A, Eq. 5) | minmax (official code; also re-normalises the refined
    #: product and the final resized map, as the code does)
    normalize: str = "max"
    #: interpolation of every resize: bilinear (paper, Eq. 8) | bicubic (official code)
    resize: str = "bilinear"
    #: stage=ca_sa only: power k of SA in SA^k · CA (Dataset Diffusion uses k > 1)
    sa_power: int = 1
    #: sub-token(s) of a multi-token class name whose CA is read: first (official code:
    #: the first token of the name) | last | mean
    token_rule: str = "first"
    #: constant background score of the argmax over classes (segment mode); with 0.0 a
    #: pixel is background exactly when no class reaches β (Eq. 12 per class)
    bg_threshold: float = 0.0
    #: PAMR refinement iterations of each binarised mask (0 = off; official code: 5000)
    pamr_iterations: int = 0
    #: PAMR neighbourhood dilations (official SeeDiff code: [1])
    pamr_dilations: List[int] = field(default_factory=lambda: [1])
    #: threshold of the min-max normalised PAMR output (official code: 0.8)
    pamr_threshold: float = 0.8

    #: fields applied after the soft maps M_final (Eq. 12, PAMR, the background argmax):
    #: grid points differing only in these share the soft maps
    MASK_ONLY_KEYS: ClassVar[Tuple[str, ...]] = (
        "beta", "bg_threshold", "pamr_iterations", "pamr_dilations", "pamr_threshold"
    )

    def __post_init__(self) -> None:
        check_choice(self.stage, STAGES, "stage")
        check_choice(self.seed_rule, SEED_RULES, "seed_rule")
        check_choice(self.expansion, EXPANSIONS, "expansion")
        check_choice(self.background, BACKGROUND_MODES, "background")
        check_choice(self.normalize, NORMALIZATIONS, "normalize")
        check_choice(self.resize, RESIZE_MODES, "resize")
        check_token_rule(self.token_rule)
        for key in ("alpha", "beta", "pamr_threshold", "bg_threshold"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"method.{key}={value}: expected a value in [0, 1]")
        if self.ca_resolution < 1:
            raise ValueError(f"method.ca_resolution={self.ca_resolution}: expected a positive side length")
        if self.sa_resolutions is not None:
            sides = list(self.sa_resolutions)
            if not sides or any(s < 1 for s in sides) or sides != sorted(set(sides)):
                raise ValueError(
                    f"method.sa_resolutions={sides}: expected distinct positive side lengths in ascending order "
                    "(e.g. [16, 32, 64])"
                )
        if self.sa_power < 1:
            raise ValueError(f"method.sa_power={self.sa_power}: expected >= 1")
        if self.pamr_iterations < 0:
            raise ValueError(f"method.pamr_iterations={self.pamr_iterations}: expected >= 0 (0 = off)")
        if not self.pamr_dilations or any(d < 1 for d in self.pamr_dilations):
            raise ValueError(f"method.pamr_dilations={list(self.pamr_dilations)}: expected positive integers")


@dataclass
class SeeDiffCodeParams(SeeDiffParams):
    """The official code's choices (see the module docstring)."""

    seed_rule: str = "otsu"
    expansion: str = "cosine"
    background: str = "each_step"
    normalize: str = "minmax"
    resize: str = "bicubic"
    pamr_iterations: int = 5000


@dataclass
class SeeDiffSettings(OpenVocabSettings):
    """Options that change what is extracted (not grid axes): the open-vocabulary prompt
    and candidate options of :class:`methods.open_vocab.OpenVocabSettings` plus the
    attention layers averaged per side."""

    #: text before the class name (paper: "a photo of a {class}"), or a {name} placeholder
    template: str = "a photo of a"
    #: self-attention layers averaged per side: all (paper) | first_up (official code) | down | up | mid
    self_layers: str = "all"
    #: cross-attention layers averaged per side
    cross_layers: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.self_layers, LAYER_SELECTIONS, "self_layers")
        check_choice(self.cross_layers, LAYER_SELECTIONS, "cross_layers")


@dataclass
class SeeDiffCodeSettings(SeeDiffSettings):
    self_layers: str = "first_up"


# ----------------------------------------------------------------------------------------
# map operations (batched over classes: maps are (P, s, s) or flattened (P, s²))
# ----------------------------------------------------------------------------------------
def normalize_maps(maps: torch.Tensor, mode: str) -> torch.Tensor:
    """Each map (leading dim) scaled to [0, 1]: by its max (Eq. 5) or min-max (code).

    A map that cannot be scaled (max 0, or constant under min-max) becomes all zeros:
    it carries no location.
    """
    return minmax(maps, tuple(range(1, maps.dim())), from_zero=mode == "max")


def otsu_foreground(maps: torch.Tensor) -> torch.Tensor:
    """The official code's seeds: Otsu on ``uint16(map² × 255)``; True where above the split.

    Maps are (P, n). Follows cv2's THRESH_OTSU: the split t maximises the between-class
    variance q₁q₂(μ₁ − μ₂)² over levels ≤ t vs > t, first maximum wins, splits with an
    empty class are skipped and t = 0 when none is valid.
    """
    levels = (maps.double() ** 2 * 255).clamp(min=0).to(torch.int64)  # truncation, as astype
    bins = max(256, int(levels.max()) + 1) if levels.numel() else 256
    hist = torch.zeros(maps.shape[0], bins, dtype=torch.float64, device=maps.device)
    hist.scatter_add_(1, levels, torch.ones_like(levels, dtype=torch.float64))
    prob = hist / maps.shape[1]
    level = torch.arange(bins, dtype=torch.float64, device=maps.device)
    q1 = prob.cumsum(1)
    first_moment = (prob * level).cumsum(1)
    q2 = 1.0 - q1
    mu = first_moment[:, -1:]
    valid = (torch.minimum(q1, q2) >= _FLT_EPSILON) & (torch.maximum(q1, q2) <= 1.0 - _FLT_EPSILON)
    mu1 = first_moment / q1.clamp(min=_FLT_EPSILON)
    mu2 = (mu - first_moment) / q2.clamp(min=_FLT_EPSILON)
    sigma = torch.where(valid, q1 * q2 * (mu1 - mu2) ** 2, torch.full_like(q1, -1.0))
    split = sigma.argmax(1, keepdim=True)  # first maximum, as cv2's strict '>'
    best = sigma.gather(1, split)
    split = torch.where(best > 0, split, torch.zeros_like(split))
    return levels > split


def foreground_seeds(maps: torch.Tensor, params: SeeDiffParams) -> torch.Tensor:
    """Seed mask (P, n) bool of flattened maps (Eqs. 6, 9 or the code's Otsu rule)."""
    if params.seed_rule == "otsu":
        return otsu_foreground(maps)
    return maps >= params.alpha


def background_seeds(maps: torch.Tensor, params: SeeDiffParams) -> torch.Tensor:
    """Background seeds of flattened class maps: {1 − M ≥ α} (Eq. 10 + Eq. 9), or the
    complement of the Otsu foreground (official code)."""
    if params.seed_rule == "otsu":
        return ~otsu_foreground(maps)
    return (1.0 - maps) >= params.alpha


def _per_prompt(sa: torch.Tensor, n_prompts: int) -> torch.Tensor:
    """Self-attention (G, n, n) with G = 1 (the image's prompts averaged) or G = P (each
    prompt its own, ``extract.self_attn_per_prompt=true``)."""
    if sa.dim() != 3 or sa.shape[0] not in (1, n_prompts):
        raise ValueError(
            f"self-attention of shape {tuple(sa.shape)} does not fit {n_prompts} prompts: expected (1 or {n_prompts}, n, n)"
        )
    return sa


def _apply_rows(weights: torch.Tensor, sa: torch.Tensor) -> torch.Tensor:
    """weights (P, n) @ sa (G, n, n) with G ∈ {1, P}: (P, n)."""
    if sa.shape[0] == 1:
        return weights @ sa[0]
    return torch.bmm(weights.unsqueeze(1), sa).squeeze(1)


def _apply_rows_transposed(weights: torch.Tensor, sa: torch.Tensor) -> torch.Tensor:
    """weights (P, n) @ sa(G, n, n)ᵀ: (P, n)."""
    if sa.shape[0] == 1:
        return weights @ sa[0].T
    return torch.bmm(weights.unsqueeze(1), sa.transpose(1, 2)).squeeze(1)


def unit_rows(sa: torch.Tensor) -> torch.Tensor:
    """Self-attention (G, n, n) with every row scaled to unit L2 norm (cosine expansion)."""
    return sa / sa.norm(dim=2, keepdim=True).clamp(min=1e-8)


def expand_seeds(seeds: torch.Tensor, sa: torch.Tensor, rule: str, unit: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Region expansion of seed masks (P, n) with self-attention (G, n, n): (P, n).

    mean   (Eq. 7): M'[j] = 1/|S| Σ_{i∈S} SA[i, j]
    cosine (code):  M'[j] = Σ_{i∈S} cos(SA[i, :], SA[j, :]) = ((1_S Â) Âᵀ)[j], Â = SA with
                    unit rows (two matrix products instead of |S| row comparisons);
                    ``unit`` = :func:`unit_rows` of ``sa`` when the caller already has it
    An empty seed set expands to a zero map.
    """
    sa = _per_prompt(sa, seeds.shape[0])
    weights = seeds.to(sa.dtype)
    if rule == "mean":
        count = weights.sum(1, keepdim=True)
        return _apply_rows(weights, sa) / count.clamp(min=1)
    unit = unit_rows(sa) if unit is None else unit
    return _apply_rows_transposed(_apply_rows(weights, unit), unit)


def background_refinement(
    maps: torch.Tensor,
    upsampled: torch.Tensor,
    sa: torch.Tensor,
    params: SeeDiffParams,
    unit: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """(1 − M'_bg) ⊙ M (Eqs. 10–11) for flattened class maps (P, n).

    ``maps`` give the background seeds, ``upsampled`` is the map that is refined (the same
    map in the paper; the code seeds from the raw upsampled map and multiplies its min-max
    normalised copy). In minmax mode the product is re-normalised, as the code does.
    ``unit``: :func:`unit_rows` of ``sa`` if already computed (cosine expansion).
    """
    bg = normalize_maps(expand_seeds(background_seeds(maps, params), sa, params.expansion, unit), params.normalize)
    refined = (1.0 - bg) * upsampled
    return normalize_maps(refined, "minmax") if params.normalize == "minmax" else refined


def seediff_maps(
    ca: torch.Tensor,
    self_attn: Mapping[int, torch.Tensor],
    sides: Sequence[int],
    params: SeeDiffParams,
    unit_attn: Optional[Mapping[int, torch.Tensor]] = None,
) -> torch.Tensor:
    """Soft class maps (P, s, s) in [0, 1] of one ``stage`` before the output resize.

    ca: raw class CA maps (P, r, r) at ``params.ca_resolution``; self_attn: {side: (G, s², s²)};
    sides: the expansion sides, ascending (the last one is the output side of SA stages);
    unit_attn: :func:`unit_rows` of ``self_attn`` per side where the caller has them
    (expansion=cosine; the others are computed here, once per side).
    """
    n_prompts = ca.shape[0]
    norm = params.normalize
    if params.stage == "caa":
        return normalize_maps(ca, norm)
    first, last = sides[0], sides[-1]
    units: Dict[int, torch.Tensor] = dict(unit_attn or {})

    def unit_at(side: int) -> Optional[torch.Tensor]:
        if params.expansion != "cosine":
            return None
        if side not in units:
            units[side] = unit_rows(_per_prompt(self_attn[side], n_prompts))
        return units[side]

    def expand(seeds: torch.Tensor, side: int) -> torch.Tensor:
        return expand_seeds(seeds, self_attn[side], params.expansion, unit_at(side))

    def refine(maps: torch.Tensor, upsampled: torch.Tensor, side: int) -> torch.Tensor:
        return background_refinement(maps, upsampled, self_attn[side], params, unit_at(side))

    def at(maps: torch.Tensor, side: int) -> torch.Tensor:
        return resize_maps(maps, (side, side), params.resize)

    def flat(maps: torch.Tensor) -> torch.Tensor:
        return maps.reshape(n_prompts, -1)

    def square(maps: torch.Tensor, side: int) -> torch.Tensor:
        return maps.reshape(n_prompts, side, side)

    if params.stage == "ca_sa":
        weights = flat(normalize_maps(at(ca, last), norm))
        for _ in range(params.sa_power):
            # (SA · vec CA)[i] = Σ_j SA[i, j] CA[j]: each query takes the CA of what it attends to
            weights = _apply_rows_transposed(weights, _per_prompt(self_attn[last], n_prompts))
        return square(normalize_maps(weights, norm), last)

    if params.stage == "cre":
        # one expansion per side from the CA seeds themselves (no chaining), averaged at the last side
        total = torch.zeros(n_prompts, last, last, dtype=ca.dtype, device=ca.device)
        for side in sides:
            seeds = foreground_seeds(flat(normalize_maps(at(ca, side), norm)), params)
            expanded = normalize_maps(expand(seeds, side), norm)
            total += at(square(expanded, side), last)
        return normalize_maps(total / len(sides), norm)

    # ire / be: iterative expansion 16 → 32 → 64 (Eqs. 6–9)
    seeds = foreground_seeds(flat(normalize_maps(at(ca, first), norm)), params)
    current = square(normalize_maps(expand(seeds, first), norm), first)
    step_background = params.stage == "be" and params.background == "each_step"
    for side in sides[1:]:
        upsampled = flat(at(current, side))
        if step_background:
            # official code: the upsampled map, gated by the inverse of its background expansion
            current = square(refine(upsampled, normalize_maps(upsampled, norm), side), side)
        else:
            expanded = expand(foreground_seeds(upsampled, params), side)
            current = square(normalize_maps(expanded, norm), side)
    if params.stage == "be" and params.background == "last":
        current = square(refine(flat(current), flat(current), last), last)
    return current


# ----------------------------------------------------------------------------------------
# PAMR (Araslanov & Roth, CVPR 2020): pixel-adaptive mask refinement
# ----------------------------------------------------------------------------------------
_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _neighbours(x: torch.Tensor, dilations: Sequence[int], centre: bool) -> torch.Tensor:
    """(N, H, W) → (N, K, H, W): values at the 8 (or 9 with ``centre``) offsets × each
    dilation, replicate-padded at the border (PAMR's LocalAffinity order)."""
    height, width = x.shape[-2:]
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)] if centre else _OFFSETS
    out = []
    for d in dilations:
        padded = F.pad(x.unsqueeze(1), [d] * 4, mode="replicate")[:, 0]
        for dy, dx in offsets:
            out.append(padded[:, d + dy * d : d + dy * d + height, d + dx * d : d + dx * d + width])
    return torch.stack(out, 1)


def pamr(
    image: torch.Tensor, masks: torch.Tensor, iterations: int, dilations: Sequence[int] = (1,), std_factor: float = 0.2
) -> torch.Tensor:
    """Refine masks (C, H, W) by ``iterations`` steps of local colour-affinity averaging.

    image: (3, H, W) float (any scale; the affinity is normalised by the local std).
    Affinity to each neighbour j of pixel i: softmax_j(mean_channels(−|x_i − x_j| /
    (1e-8 + 0.2 σ_i))), σ_i = std of the 3×3 neighbourhood per channel (as the reference
    implementation); each step replaces a mask value by the affinity-weighted mean of its
    neighbours. ``std_factor`` replaces the 0.2 (DiffCut tools/pamr.py PAMR.forward: 0.1).
    """
    x = image.float()
    std = _neighbours(x, dilations, centre=True).std(1, keepdim=True)  # (3, 1, H, W)
    diff = (x.unsqueeze(1) - _neighbours(x, dilations, centre=False)).abs()  # (3, K, H, W)
    affinity = torch.softmax((-diff / (1e-8 + std_factor * std)).mean(0), dim=0)  # (K, H, W)
    out = masks.float()
    height, width = out.shape[-2:]
    shifts = [(d, dy, dx) for d in dilations for dy, dx in _OFFSETS]  # the order of ``affinity``
    pad = max(dilations)
    for _ in range(iterations):
        # one padded copy and one multiply-add per neighbour: no (C, K, H, W) temporary
        padded = F.pad(out.unsqueeze(1), [pad] * 4, mode="replicate")[:, 0]
        step = torch.zeros_like(out)
        for k, (d, dy, dx) in enumerate(shifts):
            top, left = pad + dy * d, pad + dx * d  # replicate padding = clamped coordinates
            step.addcmul_(padded[:, top : top + height, left : left + width], affinity[k])
        out = step
    return out


# ----------------------------------------------------------------------------------------
# the plugin
# ----------------------------------------------------------------------------------------
class _ImageSelfAttention:
    """One image's captured self-attention in the forms the expansion reads (float32 rows,
    unit rows for the cosine rule), each built on first use and then shared by the grid
    points of the image."""

    def __init__(self, captured: Mapping[int, torch.Tensor]):
        self.captured = captured
        self._rows: Dict[int, torch.Tensor] = {}
        self._unit: Dict[int, torch.Tensor] = {}

    def rows(self, side: int) -> torch.Tensor:
        if side not in self._rows:
            self._rows[side] = self.captured[side].float()
        return self._rows[side]

    def unit_rows(self, side: int) -> torch.Tensor:
        if side not in self._unit:
            self._unit[side] = unit_rows(self.rows(side))
        return self._unit[side]


class SeeDiff(OpenVocabularyMethod):
    """SeeDiff, paper preset (see the module docstring). One prompt per candidate class (and
    per synonym); every prompt grows its own mask; a class takes the max over its prompts;
    argmax against the constant ``bg_threshold``. Segment mode is an extension of the paper.
    """

    name = "seediff"
    Params = SeeDiffParams
    Settings = SeeDiffSettings
    oracle_keys = ("bg_threshold",)
    #: printed with results: real-image segmentation is not in the paper
    note = "segment mode (real images, argmax over candidate classes) is an extension of the SeeDiff paper"

    def __init__(self, settings: Any = None, extract: Any = None):
        super().__init__(settings, extract)
        # per image: the self-attention prepared for the expansion (any grid point), and the
        # soft maps (grid points differing only in SeeDiffParams.MASK_ONLY_KEYS)
        self._attention_memo = OneEntryMemo()
        self._soft_memo = OneEntryMemo()

    # -- what to capture -----------------------------------------------------------------
    def expansion_sides(self, params: SeeDiffParams) -> List[int]:
        """The self-attention sides of the expansion, ascending (16, 32, 64 at 512 px)."""
        if params.sa_resolutions is not None:
            return list(params.sa_resolutions)
        # latent/4, latent/2, latent: the three largest standard sides
        return sorted(standard_self_resolutions(self.image_size)[:3])

    def self_sides(self, params: SeeDiffParams) -> List[int]:
        """The self-attention sides ``params.stage`` reads."""
        sides = self.expansion_sides(params)
        return [] if params.stage == "caa" else sides[-1:] if params.stage == "ca_sa" else sides

    def attention_request(self, params: SeeDiffParams) -> AttentionRequest:
        return AttentionRequest(
            self_resolutions=tuple(sorted(self.self_sides(params), reverse=True)),
            cross_resolutions=(params.ca_resolution,),
            self_layers=self.settings.self_layers,
            cross_layers=self.settings.cross_layers,
        )

    # -- computing masks -------------------------------------------------------------------
    def prompt_maps(self, attn: AttentionMaps, params: SeeDiffParams) -> torch.Tensor:
        """Soft maps (P, s, s) of every prompt at attention resolution (before Eq. 12)."""
        if params.ca_resolution not in attn.cross_attn:
            raise ValueError(
                f"method.ca_resolution={params.ca_resolution}: no cross-attention of that side was captured "
                f"(captured sides: {sorted(attn.cross_attn)})"
            )
        missing = [s for s in self.self_sides(params) if s not in attn.self_attn]
        if missing:
            raise ValueError(
                f"method.sa_resolutions: self-attention sides {missing} were not captured "
                f"(captured: {sorted(attn.self_attn)}); give sides that exist at this image size"
            )
        cross = attn.cross_attn[params.ca_resolution]
        side = params.ca_resolution
        ca = word_attention(cross, attn.token_positions, params.token_rule, attn.queries).view(-1, side, side)
        prepared = self._attention_memo.get(
            attn.self_attn.values(), tuple(attn.self_attn), lambda: _ImageSelfAttention(attn.self_attn)
        )
        sides = self.self_sides(params)
        sa = {s: prepared.rows(s) for s in sides}
        unit = None
        if params.expansion == "cosine" and params.stage in EXPANDING_STAGES:
            unit = {s: prepared.unit_rows(s) for s in sides}
        return seediff_maps(ca, sa, self.expansion_sides(params), params, unit)

    def soft_masks(self, attn: AttentionMaps, ctx: SegmentContext, params: SeeDiffParams) -> torch.Tensor:
        """M_final of every prompt at ``ctx.out_size``: (P, H, W) in [0, 1], before β.

        Shared by the calls for one attention object (do not modify it in place).
        """
        key = (tuple(ctx.out_size), tuple(self.expansion_sides(params)), params_key(params, params.MASK_ONLY_KEYS))
        return self._soft_memo.get((attn,), key, lambda: self._soft_masks(attn, ctx, params))

    def _soft_masks(self, attn: AttentionMaps, ctx: SegmentContext, params: SeeDiffParams) -> torch.Tensor:
        soft = resize_maps(self.prompt_maps(attn, params), tuple(ctx.out_size), params.resize)
        if params.normalize == "minmax":
            soft = normalize_maps(soft, "minmax")  # the code re-normalises after its resize
        return soft

    def prompt_scores(self, attn: AttentionMaps, ctx: SegmentContext, params: SeeDiffParams, binarise: bool = True) -> torch.Tensor:
        """(P, H, W): Eq. 12's m = M ⊙ 1{M ≥ β} (or, with PAMR, the refinement of 1{M ≥ β}
        normalised and thresholded at ``pamr_threshold``). ``binarise=False`` keeps the
        soft values (no background class to fall back to)."""
        soft = self.soft_masks(attn, ctx, params)
        threshold = params.beta
        if params.pamr_iterations > 0:
            if ctx.image is None:
                raise ValueError(f"method.pamr_iterations={params.pamr_iterations} needs the image (SegmentContext.image)")
            image = ctx.image.float().to(soft.device)
            image = resize_maps(image, tuple(ctx.out_size), "bilinear")
            refined = pamr(image, (soft >= params.beta).float(), params.pamr_iterations, params.pamr_dilations)
            # min-max as the code; a constant result (a full or empty mask, up to the
            # rounding of the affinity sums) is kept as it is (already in [0, 1]) instead of
            # vanishing or turning rounding noise into a mask
            flat = refined.flatten(1)
            constant = (flat.amax(1) - flat.amin(1) <= _CONSTANT_SPAN).view(-1, 1, 1)
            soft = torch.where(constant, refined, normalize_maps(refined, "minmax"))
            threshold = params.pamr_threshold
        return soft * (soft >= threshold) if binarise else soft

    def class_scores(self, attn: AttentionMaps, ctx: SegmentContext, plan: PromptPlan, params: SeeDiffParams) -> torch.Tensor:
        """(K, H, W) scores of the candidate classes (max over each class's prompts).

        With a background class: the binarised masks (Eq. 12) against ``bg_threshold``.
        Without one (e.g. context59) every pixel takes the candidate of highest M_final.
        """
        check_queries(attn, plan, ctx.image_id)
        scores = self.prompt_scores(attn, ctx, params, binarise=plan.background is not None)
        return max_over_prompts(scores, plan.prompt_class, plan.classes)


class SeeDiffCode(SeeDiff):
    """SeeDiff, official-code preset (Otsu seeds, cosine expansion, first-up self-attention,
    background inversion at every side after the first, bicubic resizes, PAMR)."""

    name = "seediff_code"
    Params = SeeDiffCodeParams
    Settings = SeeDiffCodeSettings
