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

Official-code preset (``method=seediff_code``, BAIKLAB-Admin/SeeDiff ``src/seediff_app.py``
``save_cross_attention``): each 16×16 CA layer summed over heads and min-max normalised on
its own (×0.01 when its variance ≤ 1e-4), the layers summed (``ca_aggregation=per_layer``),
the class-specific token offsets (``token_offsets=official``), Otsu seeds on C² × 255 in
float32, expansion by the summed cosine similarity of SA rows, self-attention of the first
up layer of each resolution only, background inversion at every side after the first (32
and 64) applied to the bicubically upsampled previous map, min-max normalisation
everywhere, bicubic resizes, final > 0.3, PAMR (5000 iterations, dilation 1) and > 0.8
(strict comparisons: ``strict_thresholds``). Where the code divides 0 by 0 (constant maps:
NaN) this module uses zeros (an empty mask).

Ablations (in-run grid axes, all on one captured pass):

* ``stage`` — Table 2 rows: ``caa`` (CA aggregation only, thresholded), ``cre`` (CA seeds
  expanded once with the self-attention of every side, averaged), ``ire`` (iterative
  expansion), ``be`` (+ background refinement = full SeeDiff); Table 5 rows: CA = ``caa``
  (DiffuMask-style; ``caa_sides=all``: CA of every side averaged, as the supplement),
  CA·SA = ``ca_sa`` (Dataset-Diffusion-style SA^k · CA; supplement: SA32, k = τ = 4 via
  ``ca_sa_side``, ``sa_power``), SeeDiff = ``be``.
* ``ca_resolution`` — Table 4 (16 | 32 | 64): the side of the CA map the seeds come from;
  it is resized to the first expansion side, so only the CA map changes.

Choices the equations leave open (documented, not hidden):

* Eq. 5 normalises every layer's map at every step by its max before averaging; the
  paper preset normalises the head-, layer- (and step-) mean (``ca_aggregation=mean``);
  ``per_layer`` normalises each layer's step-mean as the official code does.
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
from benchmark.types import AttentionMaps, AttentionRequest, ExplicitSides, SegmentContext

from .attention_ops import OneEntryMemo, minmax, resize_maps, standard_self_resolutions
from .base import check_choice, user_error
from .open_vocab import (
    OpenVocabSettings,
    OpenVocabularyMethod,
    PromptPlan,
    check_queries,
    check_token_rule,
    max_over_prompts,
    params_key,
    word_columns,
)

STAGES = ("caa", "ca_sa", "cre", "ire", "be")
SEED_RULES = ("threshold", "otsu")
EXPANSIONS = ("mean", "cosine")
BACKGROUND_MODES = ("last", "each_step")
NORMALIZATIONS = ("max", "minmax")
RESIZE_MODES = ("bilinear", "bicubic")
CA_AGGREGATIONS = ("mean", "per_layer")
TOKEN_OFFSET_RULES = ("none", "official")
#: src/seediff_app.py ``aggregate_attention``: class names whose CA is read at extra token
#: offsets from the first sub-token of the name (``if class_one == 'pottedplant' or ...``:
#: the first token and the one two further; ``elif class_one == 'diningtable'``: the next)
OFFICIAL_TOKEN_OFFSETS: Dict[str, Tuple[int, ...]] = {
    "pottedplant": (0, 2), "tvmonitor": (0, 2), "cell phone": (0, 2), "parking meter": (0, 2), "diningtable": (1,),
}
#: src/seediff_app.py ``aggregate_attention``: a layer's head-summed CA map whose (unbiased)
#: variance is not above this is min-max scaled and then multiplied by LOW_VARIANCE_WEIGHT
LOW_VARIANCE = 1e-4
LOW_VARIANCE_WEIGHT = 0.01
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
    #: side of the cross-attention map the seeds come from (Table 4: 16 | 32 | 64);
    #: None = latent/4 of ``extract.image_size`` (16 at 512 px, 24 at 768 px), like sa_resolutions
    ca_resolution: Optional[int] = None
    #: self-attention sides of the expansion, ascending; None = latent/4, latent/2,
    #: latent of ``extract.image_size`` (16, 32, 64 at 512 px)
    sa_resolutions: Optional[List[int]] = None
    #: seed threshold α on maps normalised to [0, 1] (Eqs. 6, 9; seed_rule=threshold)
    alpha: float = 0.5
    #: binarisation threshold β of the final map (Eq. 12)
    beta: float = 0.3
    #: threshold (≥ α, paper) | otsu (Otsu on float32 map² × 255 truncated to integers, official code)
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
    #: stage=ca_sa only: power k of SA in SA^k · CA (Dataset Diffusion uses k > 1; the
    #: SeeDiff supplement's CA·SA row: τ = 4)
    sa_power: int = 1
    #: stage=ca_sa only: side of the self-attention of SA^k · CA (and of its output); None =
    #: the largest expansion side (latent: 64 at 512 px). The supplement's row: SA32
    ca_sa_side: Optional[int] = None
    #: stage=caa only: ca (the ``ca_resolution`` map) | all (DiffuMask as the SeeDiff
    #: supplement describes it: the CA of every side, latent/8 … latent, each normalised,
    #: resized bilinearly to the largest side and averaged)
    caa_sides: str = "ca"
    #: sub-token(s) of a multi-token class name whose CA is read: first (official code:
    #: the first token of the name) | last | mean
    token_rule: str = "first"
    #: mean (the CA map is the head- and layer-mean, then normalised: Eq. 5 on the mean) |
    #: per_layer (official code: each layer's head-summed map min-max normalised, ×0.01 when
    #: its variance ≤ 1e-4, the layers summed, then normalised again)
    ca_aggregation: str = "mean"
    #: none (columns of ``token_rule``) | official (src/seediff_app.py: pottedplant, tvmonitor,
    #: cell phone, parking meter read the first token of the name and the one two further,
    #: diningtable the token after its first; other names their first token)
    token_offsets: str = "none"
    #: compare with ``>`` at β and at ``pamr_threshold`` (official code) instead of ``≥`` (Eq. 12)
    strict_thresholds: bool = False
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
        "beta", "bg_threshold", "pamr_iterations", "pamr_dilations", "pamr_threshold", "strict_thresholds"
    )

    def __post_init__(self) -> None:
        check_choice(self.stage, STAGES, "stage")
        check_choice(self.seed_rule, SEED_RULES, "seed_rule")
        check_choice(self.expansion, EXPANSIONS, "expansion")
        check_choice(self.background, BACKGROUND_MODES, "background")
        check_choice(self.normalize, NORMALIZATIONS, "normalize")
        check_choice(self.resize, RESIZE_MODES, "resize")
        check_token_rule(self.token_rule)
        check_choice(self.ca_aggregation, CA_AGGREGATIONS, "ca_aggregation")
        check_choice(self.token_offsets, TOKEN_OFFSET_RULES, "token_offsets")
        check_choice(self.caa_sides, ("ca", "all"), "caa_sides")
        if self.ca_sa_side is not None and self.ca_sa_side < 1:
            raise ValueError(f"method.ca_sa_side={self.ca_sa_side}: expected a positive side length (or null)")
        for key in ("alpha", "beta", "pamr_threshold", "bg_threshold"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"method.{key}={value}: expected a value in [0, 1]")
        if self.ca_resolution is not None and self.ca_resolution < 1:
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
    ca_aggregation: str = "per_layer"
    token_offsets: str = "official"
    strict_thresholds: bool = True


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

    Maps are (P, n). The levels are computed as src/seediff_app.py does: ``(m * m) * 255`` in
    float32, then truncated (``astype(np.uint16)``). Follows cv2's THRESH_OTSU: the split t
    maximises the between-class variance q₁q₂(μ₁ − μ₂)² over levels ≤ t vs > t, first
    maximum wins, splits with an empty class are skipped and t = 0 when none is valid.
    Non-finite values (the official code's NaN from min-max of a constant map; this
    harness's :func:`normalize_maps` gives zeros instead) are level 0.
    """
    m = maps.float()
    squared = (m * m) * 255.0  # float32, in the official order of operations
    squared = torch.nan_to_num(squared, nan=0.0, posinf=0.0, neginf=0.0)
    levels = squared.clamp(min=0).to(torch.int64)  # truncation, as astype
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


def passes(maps: torch.Tensor, threshold: float, strict: bool) -> torch.Tensor:
    """``maps > threshold`` (official code) or ``maps >= threshold`` (Eq. 12)."""
    return maps > threshold if strict else maps >= threshold


def layer_normalized_sum(maps: torch.Tensor) -> torch.Tensor:
    """src/seediff_app.py ``aggregate_attention``: Σ over maps (K, r, r) of each map min-max
    scaled, times 0.01 when its unbiased variance is ≤ 1e-4; (r, r).

    A constant map (the official code divides 0 by 0: NaN) contributes zeros here.
    """
    low = maps.var(dim=(1, 2)) <= LOW_VARIANCE  # torch.var: unbiased, as cross_maps_norm.var()
    scaled = minmax(maps)
    scaled = torch.where(low.view(-1, 1, 1), scaled * LOW_VARIANCE_WEIGHT, scaled)
    return scaled.sum(0)


def class_token_columns(positions: Sequence[int], word: Optional[str], params: SeeDiffParams, where: str) -> List[int]:
    """The text columns read for one prompt's class word (``token_rule`` / ``token_offsets``)."""
    if params.token_offsets == "official":
        if not positions:
            raise ValueError(f"no token positions for {where}: the word was not found in its prompt")
        # offsets from the first sub-token of the name (target_location in save_cross_attention)
        offsets = OFFICIAL_TOKEN_OFFSETS.get((word or "").strip().lower(), (0,))
        return [int(positions[0]) + o for o in offsets]
    return word_columns(positions, params.token_rule, where)


def class_cross_attention(attn: AttentionMaps, side: int, params: SeeDiffParams) -> torch.Tensor:
    """Raw CA map of every prompt's class word (P, side, side), before normalisation.

    ca_aggregation=mean: the mean over the chosen columns of the head- and layer-mean map.
    per_layer: :func:`layer_normalized_sum` over (column, layer) maps of the head-summed
    layers, columns outermost (the official code's loop order).
    """
    per_layer = params.ca_aggregation == "per_layer"
    source = attn.cross_attn_layers.get(side) if per_layer else attn.cross_attn.get(side)
    if source is None:
        kind = "per-layer cross-attention (AttentionMaps.cross_attn_layers)" if per_layer else "cross-attention"
        captured = sorted(attn.cross_attn_layers if per_layer else attn.cross_attn)
        raise ValueError(
            f"method.ca_resolution={side}: no {kind} of that side was captured (captured sides: {captured})"
        )
    n_prompts = len(attn.token_positions)
    expected = (4, 1, "(L, P, r*r, T)") if per_layer else (3, 0, "(P, r*r, T)")
    if source.dim() != expected[0] or source.shape[expected[1]] != n_prompts or source.shape[-2] != side * side:
        raise ValueError(
            f"{'per-layer ' if per_layer else ''}cross-attention of shape {tuple(source.shape)} at side {side} does not "
            f"fit {n_prompts} prompts: expected {expected[2]}"
        )
    maps = []
    for p, positions in enumerate(attn.token_positions):
        query = attn.queries[p] if p < len(attn.queries) else None
        where = f"prompt {p}" + (f" ({query.text!r}, word {query.word!r})" if query is not None else "")
        cols = class_token_columns(positions, None if query is None else query.word, params, where)
        n_tokens = source.shape[-1]
        if max(cols) >= n_tokens or min(cols) < 0:
            raise ValueError(f"token positions {cols} of {where} outside the {n_tokens} captured text positions")
        if per_layer:
            layers = source[:, p].float()  # (L, r², T)
            stack = torch.cat([layers[:, :, c] for c in cols]).view(-1, side, side)
            maps.append(layer_normalized_sum(stack))
        else:
            maps.append(source[p][:, cols].float().mean(-1).view(side, side))
    return torch.stack(maps)


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


def _replicate_pad_into(buffer: torch.Tensor, x: torch.Tensor, pad: int) -> None:
    """Write ``x`` (C, H, W) into ``buffer`` (C, H + 2·pad, W + 2·pad) with replicated borders
    (F.pad mode="replicate", without allocating)."""
    height, width = x.shape[-2:]
    buffer[:, pad : pad + height, pad : pad + width] = x
    buffer[:, :pad, pad : pad + width] = x[:, :1]
    buffer[:, pad + height :, pad : pad + width] = x[:, -1:]
    buffer[:, :, :pad] = buffer[:, :, pad : pad + 1]
    buffer[:, :, pad + width :] = buffer[:, :, pad + width - 1 : pad + width]


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int] = (1,), std_factor: float = 0.2) -> torch.Tensor:
    """PAMR's fixed affinity (K, H, W), K = 8 × len(dilations), of an image (3, H, W).

    softmax over the K neighbours j of mean_channels(−|x_i − x_j| / (1e-8 + f σ_i)),
    σ_i = unbiased std over the 3×3 neighbourhood (centre included) per channel; borders
    replicate-padded (src/pamr.py ``LocalAffinityAbs``, ``LocalStDev``, ``PAMR.forward``).
    ``std_factor`` f = 0.2 (SeeDiff src/pamr.py); DiffCut's tools/pamr.py ``PAMR.forward`` uses 0.1.
    """
    x = image.float()
    std = _neighbours(x, dilations, centre=True).std(1, keepdim=True)  # (3, 1, H, W)
    diff = (x.unsqueeze(1) - _neighbours(x, dilations, centre=False)).abs()  # (3, K, H, W)
    return torch.softmax((-diff / (1e-8 + std_factor * std)).mean(0), dim=0)


def pamr(
    image: torch.Tensor, masks: torch.Tensor, iterations: int, dilations: Sequence[int] = (1,), std_factor: float = 0.2
) -> torch.Tensor:
    """Refine masks (C, H, W) by ``iterations`` steps of local colour-affinity averaging
    (Araslanov & Roth 2020; SeeDiff's copy: src/pamr.py ``PAMR``).

    image: (3, H, W) float (any scale; the affinity is normalised by the local std).
    Each step replaces every mask value by the affinity-weighted sum of its K neighbours
    (:func:`pamr_affinity`, with ``std_factor``). All labels and pixels at once: per step one in-place border
    replication and K multiply-adds over the whole (C, H, W) stack; no temporaries are
    allocated inside the loop. Returns float32 (C, H, W).
    """
    affinity = pamr_affinity(image, dilations, std_factor)
    out = masks.float().clone()
    if iterations <= 0:
        return out
    channels, height, width = out.shape
    pad = max(dilations)
    padded = torch.empty(channels, height + 2 * pad, width + 2 * pad, dtype=out.dtype, device=out.device)
    step = torch.empty_like(out)
    windows = []  # (K views into ``padded``, in the order of ``affinity``)
    for d in dilations:
        for dy, dx in _OFFSETS:
            top, left = pad + dy * d, pad + dx * d  # replicate padding = clamped coordinates
            windows.append(padded[:, top : top + height, left : left + width])
    for _ in range(iterations):
        _replicate_pad_into(padded, out, pad)
        torch.mul(windows[0], affinity[0], out=step)
        for k in range(1, len(windows)):
            step.addcmul_(windows[k], affinity[k])
        out, step = step, out
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

    def ca_side(self, params: SeeDiffParams) -> int:
        """Side of the CA map the seeds come from: ``ca_resolution``, or latent/4 of the
        input size (16 at 512 px, 24 at 768 px, 6 at 192 px)."""
        if params.ca_resolution is not None:
            return int(params.ca_resolution)
        sides = standard_self_resolutions(self.image_size)
        return sides[min(2, len(sides) - 1)]

    def check_sides(self, params: SeeDiffParams) -> None:
        """Every side the params name exists at ``extract.image_size`` (errors name the key)."""
        available = standard_self_resolutions(self.image_size)
        if self.ca_side(params) not in available:
            raise ValueError(
                f"method.ca_resolution={params.ca_resolution}: no attention of that side at "
                f"method.extract.image_size={self.image_size} (sides: {list(available)}); "
                "set method.ca_resolution=null to follow the input size (latent/4)"
            )
        if params.stage == "ca_sa" and params.ca_sa_side is not None and params.ca_sa_side not in available:
            raise ValueError(
                f"method.ca_sa_side={params.ca_sa_side}: no attention of that side at "
                f"method.extract.image_size={self.image_size} (sides: {list(available)})"
            )
        wrong = [s for s in self.self_sides(params) if s not in available]
        if wrong:
            raise ValueError(
                f"method.sa_resolutions={params.sa_resolutions}: sides {wrong} do not exist at "
                f"method.extract.image_size={self.image_size} (sides: {list(available)}); "
                "set method.sa_resolutions=null to follow the input size"
            )

    def self_sides(self, params: SeeDiffParams) -> List[int]:
        """The self-attention sides ``params.stage`` reads."""
        sides = self.expansion_sides(params)
        if params.stage == "caa":
            return []
        if params.stage == "ca_sa":
            return [params.ca_sa_side] if params.ca_sa_side is not None else sides[-1:]
        return sides

    def cross_sides(self, params: SeeDiffParams) -> List[int]:
        """The cross-attention sides read: ``ca_side``, or every side (stage=caa, caa_sides=all)."""
        if params.stage == "caa" and params.caa_sides == "all":
            return sorted(standard_self_resolutions(self.image_size))
        return [self.ca_side(params)]

    def explicit_sides(self, params: SeeDiffParams) -> List[ExplicitSides]:
        """The sides this point reads that the user gave (``method.sa_resolutions``,
        ``ca_sa_side``, ``ca_resolution``): a model without attention at one of them is
        refused at start. The defaults (null: derived from the input size) are fitted to the
        model's grids instead (the SDXL family has none at the latent side)."""
        out = []
        if params.stage == "ca_sa" and params.ca_sa_side is not None:
            out.append(ExplicitSides("method.ca_sa_side", "self", (int(params.ca_sa_side),)))
        elif params.sa_resolutions is not None and params.stage != "caa":
            out.append(ExplicitSides("method.sa_resolutions", "self", tuple(self.self_sides(params))))
        if params.ca_resolution is not None and not (params.stage == "caa" and params.caa_sides == "all"):
            out.append(ExplicitSides("method.ca_resolution", "cross", (int(params.ca_resolution),)))
        return out

    def attention_request(self, params: SeeDiffParams) -> AttentionRequest:
        self.check_sides(params)
        cross = tuple(sorted(self.cross_sides(params), reverse=True))
        return AttentionRequest(
            self_resolutions=tuple(sorted(self.self_sides(params), reverse=True)),
            cross_resolutions=cross,
            self_layers=self.settings.self_layers,
            cross_layers=self.settings.cross_layers,
            cross_layer_resolutions=cross if params.ca_aggregation == "per_layer" else (),
        )

    # -- computing masks -------------------------------------------------------------------
    def prompt_maps(self, attn: AttentionMaps, params: SeeDiffParams) -> torch.Tensor:
        """Soft maps (P, s, s) of every prompt at attention resolution (before Eq. 12)."""
        if params.stage == "caa" and params.caa_sides == "all":
            # DiffuMask row of the supplement: every side's class CA, normalised, resized
            # bilinearly to the largest side, averaged
            sides = self.cross_sides(params)
            largest = (sides[-1], sides[-1])
            ca = torch.stack([
                resize_maps(normalize_maps(class_cross_attention(attn, s, params), params.normalize), largest, "bilinear")
                for s in sides
            ]).mean(0)
        else:
            ca = class_cross_attention(attn, self.ca_side(params), params)
        prepared = self._attention_memo.get(
            attn.self_attn.values(), tuple(attn.self_attn), lambda: _ImageSelfAttention(attn.self_attn)
        )
        sides = self.captured_sides(attn, params, self.self_sides(params))
        sa = {s: prepared.rows(s) for s in sides}
        unit = None
        if params.expansion == "cosine" and params.stage in EXPANDING_STAGES:
            unit = {s: prepared.unit_rows(s) for s in sides}
        chain = self.expansion_sides(params)
        if params.stage == "ca_sa":
            chain = sides
        elif params.stage in EXPANDING_STAGES:
            chain = self.captured_sides(attn, params, chain)
        return seediff_maps(ca, sa, chain, params, unit)

    @staticmethod
    def captured_sides(attn: AttentionMaps, params: SeeDiffParams, sides: Sequence[int]) -> List[int]:
        """``sides`` as the model captured them. The default sides (``sa_resolutions: null``)
        keep those the model has attention at (the SDXL family has none at the latent side,
        so at 1024 px the expansion runs over 32 and 64); sides given in
        ``method.sa_resolutions`` must all have been captured. ValueError names the key."""
        missing = [s for s in sides if s not in attn.self_attn]
        if missing and (params.sa_resolutions is not None or len(missing) == len(sides)):
            raise user_error(
                f"method.sa_resolutions: self-attention sides {missing} were not captured "
                f"(captured: {sorted(attn.self_attn)}): the model has no self-attention there at this image size; "
                "set method.sa_resolutions to captured sides"
            )
        return [s for s in sides if s in attn.self_attn]

    def soft_masks(self, attn: AttentionMaps, ctx: SegmentContext, params: SeeDiffParams) -> torch.Tensor:
        """M_final of every prompt at ``ctx.out_size``: (P, H, W) in [0, 1], before β.

        Shared by the calls for one attention object (do not modify it in place).
        """
        key = (tuple(ctx.out_size), tuple(self.expansion_sides(params)), self.ca_side(params),
               params_key(params, params.MASK_ONLY_KEYS))
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
        strict = params.strict_thresholds
        if params.pamr_iterations > 0:
            if ctx.image is None:
                raise ValueError(f"method.pamr_iterations={params.pamr_iterations} needs the image (SegmentContext.image)")
            image = ctx.image.float().to(soft.device)
            image = resize_maps(image, tuple(ctx.out_size), "bilinear")
            refined = pamr(image, passes(soft, params.beta, strict).float(), params.pamr_iterations, params.pamr_dilations)
            # min-max as the code; a constant result (a full or empty mask, up to the
            # rounding of the affinity sums) is kept as it is (already in [0, 1]) instead of
            # vanishing or turning rounding noise into a mask
            flat = refined.flatten(1)
            constant = (flat.amax(1) - flat.amin(1) <= _CONSTANT_SPAN).view(-1, 1, 1)
            soft = torch.where(constant, refined, normalize_maps(refined, "minmax"))
            threshold = params.pamr_threshold
        return soft * passes(soft, threshold, strict) if binarise else soft

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
