"""Semantic DiffSeg: DiffSeg's segments labelled by the nouns of a caption through
cross-attention (the DiffSeg paper's semantic extension; official code google/diffseg:
``diffseg/segmentor.py`` ``aggregate_x_weights`` and ``get_semantics``, driven by
``diffseg.ipynb`` cell "3. Generate Segmentation Masks").

For one image:

1. the diffusion pass is conditioned on the image caption (from ``method.candidates=file``
   captions or the BLIP captioner of ``method.candidates=clip``), as the notebook passes
   the BLIP caption to ``text_to_image``; DiffSeg segments it unchanged
   (:class:`methods.diffseg.DiffSeg`);
2. the caption's nouns that name a dataset class (:mod:`methods.caption_nouns`; the
   notebook tags nouns with NLTK, which needs a model download);
3. per noun, its cross-attention column at every captured side, resized bilinearly
   (half-pixel centres, as TF's ``UpSampling2D``) to the output size and summed with
   ``cross_weights`` (the notebook's ``weight_ratio=[1.0, 1.0, 1.0, 1.0]``). The official
   per-pixel renormalisation over the 77 tokens is left out: bilinear weights are
   convex, so each pixel's 77 values already sum to 1;
4. each noun map divided by its L2 norm over the image (``get_semantics``:
   ``x_weight / np.linalg.norm(x_weight, axis=0)``);
5. each segment takes the noun of ``voting``: ``mean`` (the notebook's choice: argmax of
   the mean normalised map over the segment's pixels) or ``majority`` (the official
   rule: the per-pixel argmax indices' median, ``int(np.median(index))``); segments with
   the same noun class merge (the label map holds class ids).

Deliberate differences, documented: a noun's column is read at its real CLIP token
positions (``token_rule`` for multi-token nouns) where the official code takes word
index + 1, which is wrong once a word splits into several tokens or punctuation shifts
the words; a caption without a class noun labels the image ``unmatched_class`` (default:
the dataset's background class), as no noun can vote.

Cost: one UNet row per noun (every row has the same caption text; rows do not
interact, so the captured attention equals one pass on the caption).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from benchmark.types import AttentionMaps, AttentionRequest, PromptQuery, SegmentContext

from .attention_ops import OneEntryMemo, resize_maps, standard_self_resolutions, weights_by_side
from .base import check_choice, user_error
from .caption_nouns import CaptionNoun, class_vocabulary, match_caption_nouns
from .diffseg import DiffSeg, DiffSegParams
from .open_vocab import CandidateFilterSettings, check_token_rule, word_attention

VOTING_RULES = ("mean", "majority")
MATCH_CLASSES = ("all", "candidates")


@dataclass
class DiffSegSemanticParams(DiffSegParams):
    """DiffSeg's constants plus the labelling ones (all in-run grid axes)."""

    #: segment label rule: mean (diffseg.ipynb: voting="mean") | majority (the official
    #: "majority" branch: median of the per-pixel argmax noun indices)
    voting: str = "mean"
    #: weights of the cross-attention sides, largest first; the notebook sums the four
    #: sides with weight 1 (maps are L2-normalised afterwards, so only ratios matter)
    cross_weights: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    #: sub-token(s) of a multi-token noun read: first | last | mean
    token_rule: str = "first"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.voting, VOTING_RULES, "voting")
        check_token_rule(self.token_rule)
        if not self.cross_weights or any(float(w) < 0 for w in self.cross_weights) or sum(self.cross_weights) <= 0:
            raise ValueError(f"method.cross_weights={list(self.cross_weights)}: expected non-negative weights, not all 0")


@dataclass
class DiffSegSemanticSettings(CandidateFilterSettings):
    """Where captions come from and which names the nouns are matched to (the captioner:
    ``captioner=blip`` with ``candidates=clip``; ``none`` with ``candidates=file``, whose
    file holds the captions)."""

    #: caption source: file (captions in method.candidates_file: {id: {"caption": ...}})
    #: | clip (the CLIP filter with method.captioner=blip; needs local weights)
    candidates: str = "file"
    #: JSON {image_id: {"caption": ...}} of the captions (needed with candidates=file)
    candidates_file: Optional[str] = None
    #: nouns may name: all (every dataset class, as the official labelling uses every
    #: caption noun) | candidates (only the image's candidate classes of the file / filter)
    match_classes: str = "all"
    #: extra names per class {class name: [names]}, added to the class name and the
    #: dataset's OVSS synonyms (datasets/classes/ovss_synonyms_*.txt)
    synonyms: Optional[Dict[str, List[str]]] = None
    #: class of every pixel when the caption names no class (null: the dataset's class
    #: named "background"; a dataset without one then needs this set)
    unmatched_class: Optional[str] = None

    def __post_init__(self) -> None:
        check_choice(self.candidates, ("file", "clip"), "candidates")
        if self.candidates == "file" and not self.candidates_file:
            raise ValueError(
                "method=diffseg_semantic needs captions: method.candidates_file=PATH (JSON {image_id: {\"caption\": ...}}) "
                "or method.candidates=clip with method.captioner=blip"
            )
        if self.candidates == "clip" and self.captioner != "blip":
            raise ValueError("method=diffseg_semantic with method.candidates=clip needs method.captioner=blip (captions)")
        if self.candidates == "file" and self.captioner != "none":
            raise ValueError(
                f"method=diffseg_semantic with method.candidates=file reads its captions from the file: "
                f"method.captioner={self.captioner} would caption again; set method.captioner=none"
            )
        check_choice(self.match_classes, MATCH_CLASSES, "match_classes")
        for name, names in (self.synonyms or {}).items():
            if isinstance(names, str) or not names or not all(isinstance(n, str) and n.strip() for n in names):
                raise ValueError(f"method.synonyms[{name!r}]={names!r}: expected a non-empty list of names")


def noun_maps(
    cross_attn: Mapping[int, torch.Tensor],
    token_positions: Sequence[Sequence[int]],
    rule: str,
    weights: Sequence[float],
    size: Sequence[int],
    queries: Sequence[PromptQuery] = (),
) -> torch.Tensor:
    """(N, H, W) noun maps at ``size``: each side's noun column -> r×r, bilinear resize to
    ``size``, weighted sum (``weights`` largest side first, normalised over the captured
    sides), then each map divided by its L2 norm over the image (diffseg/segmentor.py
    ``aggregate_x_weights`` then ``get_semantics``)."""
    if not cross_attn:
        raise ValueError("no cross-attention was captured (AttentionMaps.cross_attn is empty)")
    by_side = weights_by_side(list(cross_attn), [float(w) for w in weights], "method.cross_weights")
    total = None
    for side, weight in sorted(by_side.items(), reverse=True):
        maps = word_attention(cross_attn[side], token_positions, rule, queries).view(-1, side, side)
        term = weight * resize_maps(maps, (int(size[0]), int(size[1])), "bilinear")
        total = term if total is None else total + term
    norm = total.flatten(1).norm(dim=1).clamp_min(torch.finfo(total.dtype).tiny)
    return total / norm.view(-1, 1, 1)


def vote_segments(segments: torch.Tensor, maps: torch.Tensor, voting: str) -> torch.Tensor:
    """Index of the winning noun of every pixel's segment, int64 (H, W).

    segments: int64 (H, W) segment ids; maps: (N, H, W) normalised noun maps.
    ``mean``: argmax over nouns of the segment's mean map value (first index on ties, as
    ``np.argmax``). ``majority``: per pixel the argmax noun, then the segment's
    ``int(np.median(indices))`` (an even count averages the two middle values, floored).
    """
    check_choice(voting, VOTING_RULES, "voting")
    ids, inverse = torch.unique(segments.flatten(), return_inverse=True)
    values = maps.flatten(1).T  # (H*W, N)
    if voting == "mean":
        sums = torch.zeros(len(ids), values.shape[1], dtype=values.dtype, device=values.device)
        sums.index_add_(0, inverse, values)
        counts = torch.bincount(inverse, minlength=len(ids)).clamp_min(1).to(values.dtype)
        winner = (sums / counts[:, None]).argmax(dim=1)
    else:
        pixel_best = values.argmax(dim=1)
        winner = torch.empty(len(ids), dtype=torch.long, device=values.device)
        for s in range(len(ids)):
            ordered = pixel_best[inverse == s].sort().values
            n = ordered.numel()
            winner[s] = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) // 2
    return winner[inverse].view(segments.shape)


class DiffSegSemantic(DiffSeg):
    """``method=diffseg_semantic``: DiffSeg segments named by caption nouns (module doc)."""

    name = "diffseg_semantic"
    task = "open_vocabulary"
    Params = DiffSegSemanticParams
    Settings = DiffSegSemanticSettings
    #: the runner hands over the dataset's synonym lists (SegmentContext.class_synonyms)
    uses_class_synonyms = True

    def __init__(self, settings: Any = None, extract: Any = None):
        super().__init__(settings, extract)
        self._nouns_memo = OneEntryMemo()

    def attention_request(self, params: DiffSegSemanticParams) -> AttentionRequest:
        sides = standard_self_resolutions(self.image_size)
        return AttentionRequest(self_resolutions=sides, cross_resolutions=sides)

    def caption(self, ctx: SegmentContext) -> str:
        caption = ctx.caption
        if not isinstance(caption, str) or not caption.strip():
            source = (f"method.candidates_file {self.settings.candidates_file}" if self.settings.candidates == "file"
                      else "the captioner")
            raise user_error(
                f"image {ctx.image_id!r}: method=diffseg_semantic needs a caption and {source} gave "
                f"{caption!r} (a file entry needs a \"caption\" string)"
            )
        return caption.strip()

    def nouns(self, ctx: SegmentContext) -> List[CaptionNoun]:
        """The caption's class nouns of one image (shared by queries() and segment())."""
        key = (ctx.image_id, ctx.caption if isinstance(ctx.caption, str) else None, tuple(ctx.class_names),
               None if ctx.candidates is None else tuple(ctx.candidates))

        def compute() -> List[CaptionNoun]:
            vocab = class_vocabulary(ctx.class_names, ctx.class_synonyms, self.settings.synonyms)
            allowed = None
            if self.settings.match_classes == "candidates" and ctx.candidates is not None:
                allowed = set(int(c) for c in ctx.candidates) | set(self._background(ctx, required=False) or ())
            return match_caption_nouns(self.caption(ctx), vocab, allowed)

        return self._nouns_memo.get((self.settings,), key, compute)

    def queries(self, ctx: SegmentContext) -> List[PromptQuery]:
        caption = self.caption(ctx)
        nouns = self.nouns(ctx)
        if not nouns:
            return [PromptQuery(text=caption)]
        return [PromptQuery(text=caption, word=noun.text) for noun in nouns]

    def _background(self, ctx: SegmentContext, required: bool = True) -> Optional[List[int]]:
        names = [str(n).strip() for n in ctx.class_names]
        wanted = self.settings.unmatched_class
        if wanted is not None:
            if wanted not in names:
                raise user_error(f"method.unmatched_class={wanted!r} is not a class of the dataset")
            return [names.index(wanted)]
        if "background" in names:
            return [names.index("background")]
        if required:
            raise user_error(
                f"image {ctx.image_id!r}: the caption {ctx.caption!r} names no class and the dataset has no "
                "'background' class: set method.unmatched_class=<class name>"
            )
        return None

    def segment(self, attn: AttentionMaps, ctx: SegmentContext, params: DiffSegSemanticParams) -> torch.Tensor:
        nouns = self.nouns(ctx)
        if not nouns:
            return torch.full(tuple(ctx.out_size), self._background(ctx)[0], dtype=torch.long)
        if [q.word for q in attn.queries] != [n.text for n in nouns]:
            raise ValueError(
                f"image {ctx.image_id!r}: captured prompts {[q.word for q in attn.queries]} are not the caption nouns "
                f"{[n.text for n in nouns]}"
            )
        segments = super().segment(attn, ctx, params)
        maps = noun_maps(attn.cross_attn, attn.token_positions, params.token_rule, params.cross_weights,
                         ctx.out_size, attn.queries)
        winner = vote_segments(segments.to(maps.device), maps, params.voting)
        classes = torch.tensor([n.class_index for n in nouns], dtype=torch.long, device=winner.device)
        return classes[winner].cpu()
