"""Shared machinery of the open-vocabulary attention segmenters (DiffSegmenter, CA, CA·SA).

From class names to a label map, for one image:

1. **Prompts** (:func:`plan_prompts`): one prompt per candidate class and per name of that
   class: ``"{template} {name}"`` (``template`` is the text before the name, or a string
   with a ``{name}`` placeholder). ``synonyms`` maps a class name to the names written in
   its prompts (they replace the class name; list the class name itself to keep it); a
   class then scores the max over its names. With a caption (``caption_prompt``) the
   prompt continues with the caption's text after the prompt prefix (see
   :func:`caption_continuation`).
2. **Class token(s)** (:func:`word_attention`): the cross-attention columns of the name's
   sub-tokens reduced by an explicit rule: ``first`` / ``last`` sub-token or their
   ``mean``. DiffSegmenter's VOC code reads the first token after the template; its
   Context/COCO code the last sub-token of the name.
3. **Multi-resolution fusion** (:func:`fuse_cross_attention`): per side r the class column
   -> r×r, bilinear upsampling to the largest side n, min–max normalisation, weighted sum
   (weights largest side first: DiffSegmenter's 0.3/0.5/0.1/0.1 for 8/16/32/64 is
   ``[0.1, 0.1, 0.5, 0.3]``).
4. **Self-attention refinement** (:func:`refine_with_self_attention`):
   M = SA_n^k · vec(CA) (k = 1 in DiffSegmenter; CA·SA ablations vary k).
5. **Scores at the label size** (:func:`upsample_minmax`): bilinear upsampling, min–max per
   prompt; a class takes the max over its prompts (:func:`max_over_prompts`).
6. **Background** (:func:`label_with_background`): constant score ``bg_threshold``, argmax
   over {background} ∪ candidates (ties go to background); non-candidates never win.
   Datasets without a background class (voc20, context59, cocostuff171, cityscapes19):
   argmax over the candidates only, ``bg_threshold`` unused.

Everything here is tensor code without I/O; :class:`OpenVocabularyMethod` wires it into
the ``Method`` contract, and subclasses only say how prompt maps are made
(:meth:`OpenVocabularyMethod.prompt_maps`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Collection, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from benchmark.candidates import CANDIDATE_MODES, background_index
from benchmark.registry import did_you_mean
from benchmark.schema import Checks
from benchmark.types import AttentionMaps, AttentionRequest, PromptQuery, SegmentContext

from .attention_ops import OneEntryMemo, minmax, resize_maps, standard_self_resolutions, weights_by_side
from .base import Method, check_choice

TOKEN_RULES = ("first", "last", "mean")
#: background-score protocols: official_sweep = the official evaluation's sweep of the
#: constant background score on the evaluated split, best point reported (an ORACLE, as the
#: published numbers); fixed = one given score (method.bg_threshold)
BG_PROTOCOLS = ("official_sweep", "fixed")
#: the official sweep: ``for i in range(args.start, args.end): t = i/100.0`` with start=30,
#: end=75 (open_vocabulary/voc12/evaluation_voc12.py, voc10/evaluation_voc10.py,
#: coco/evaluation_coco.py ``class Args`` and ``test()``): 0.30, 0.31, ..., 0.74
OFFICIAL_BG_SWEEP = tuple(i / 100.0 for i in range(30, 75))
#: which best point of the sweep is kept when several tie: first (VOC, Context: ``if mIoU >
#: max_mIoU``) | last (COCO: ``if mIoU >= max_mIoU``)
BG_SWEEP_TIES = ("first", "last")
CAPTIONERS = ("none", "blip")
#: how a per-prompt caption continues its prompt: text = the caption's text after the prompt
#: (VOC, ptp_stable_best.py ``prompt + "++" + out_prompt[len(prompt):]``) | words = the
#: caption's space-separated words after as many words as the prompt has (Context / COCO,
#: ptp_stable_voc10.py / ptp_stable_coco.py ``out_prompt.split(" ")`` with word 2+word_len
#: replaced by the name's last word++: "dogs running" -> "dog++ running")
CAPTION_SPLICES = ("text", "words")
CLIP_TEXT_MATCH = ("phrases", "caption")
NAME_PLACEHOLDER = "{name}"
#: a caption given per prompt name ({name: caption}) or one caption for the image
Caption = Union[str, Mapping[str, str], None]


# --------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------
@dataclass
class OpenVocabParams:
    """Post-processing constants (config keys and in-run grid axes)."""

    #: constant background score; a pixel is background unless a candidate scores above it
    #: (scores are min–max normalised to [0, 1]). The official evaluation sweeps it over
    #: 0.30..0.74 on the evaluated split and reports the best (an oracle); its chosen value
    #: is not published, 0.5 is the middle of that range.
    bg_threshold: float = 0.5
    #: which sub-token(s) of a multi-token name are read: first | last | mean
    token_rule: str = "first"
    #: cross-attention fusion weights, largest side first (entry i: side n / 2**i);
    #: normalised over the captured sides. DiffSegmenter: 0.1·CA64 + 0.1·CA32 + 0.5·CA16 + 0.3·CA8
    cross_weights: List[float] = field(default_factory=lambda: [0.1, 0.1, 0.5, 0.3])
    #: two-token read: when the word after the class name in the prompt ends in "ing", also
    #: read the column this many tokens after the (last) column ``token_rule`` reads and take
    #: the mean of the two; 0 = off. Official: VOC 1 (class token + next,
    #: ptp_stable_best.py ``[:,:,[4,5]]``), Context 1 (ptp_stable_voc10.py
    #: ``[3+embs_len, 4+embs_len]``), COCO 2 (ptp_stable_coco.py ``[3+embs_len, 5+embs_len]``)
    ing_offset: int = 0

    def __post_init__(self) -> None:
        check_token_rule(self.token_rule)
        if isinstance(self.ing_offset, bool) or not isinstance(self.ing_offset, int) or self.ing_offset < 0:
            raise ValueError(f"method.ing_offset={self.ing_offset!r}: expected an integer >= 0 (0 = off)")
        if not self.cross_weights or any(float(w) < 0 for w in self.cross_weights) or sum(self.cross_weights) <= 0:
            raise ValueError(
                f"method.cross_weights={list(self.cross_weights)}: expected non-negative weights, largest side first, "
                "not all zero"
            )


@dataclass
class CandidateFilterSettings:
    """The CLIP (+ BLIP) candidate filter and captioner (``benchmark.clip_filter``), loaded
    at start when a method's settings ask for it; shared by every open-vocabulary method."""

    #: CLIP model: local folder (save_pretrained layout with its processor) or hub id in the
    #: local Hugging Face cache
    clip_model: str = "openai/clip-vit-large-patch14"
    #: keep a class when a caption phrase's CLIP text embedding has cosine >= this with
    #: one of the class's names (official recipe: 0.8)
    clip_text_threshold: float = 0.8
    #: keep a class when its CLIP zero-shot probability (softmax over the dataset's
    #: classes) is >= this (official recipe: 0.97)
    clip_image_threshold: float = 0.97
    #: prompt of the CLIP zero-shot classifier
    clip_image_template: str = "a photo of a {name}."
    #: caption units compared with class names: phrases (words and word pairs of the
    #: caption) | caption (the whole caption)
    clip_text_match: str = "phrases"
    #: none | blip: BLIP captions for the CLIP text filter and for the method's prompts
    #: (DiffSegmenter: per-class prompt captions with caption_prompt; with candidates=file
    #: BLIP captions the file's candidates, as the official code does with its filter
    #: files, and replaces captions in the file. diffseg_semantic: blip with candidates=clip
    #: only, where the captions name the nouns)
    captioner: str = "none"
    #: BLIP captioning model: local folder or hub id in the local HF cache
    captioner_model: str = "Salesforce/blip-image-captioning-large"
    #: new tokens BLIP may generate; null = the checkpoint's generation defaults (the
    #: official ``model.generate(**inputs)``, ptp_stable_*.py)
    caption_max_tokens: Optional[int] = 30
    #: device of the filter models: auto | cpu | cuda | cuda:N
    filter_device: str = "auto"
    #: allow downloading filter models absent from the HF cache (never with HF_HUB_OFFLINE=1)
    filter_download: bool = False


@dataclass
class OpenVocabSettings(CandidateFilterSettings):
    """Options that change the prompts (and so the diffusion pass): config keys, not grid axes
    (with the candidate filter's keys, :class:`CandidateFilterSettings`)."""

    #: candidate classes per image: all | gt (image-level GT labels: weakly supervised, an
    #: oracle) | file (method.candidates_file JSON) | clip (CLIP filter, see below)
    candidates: str = "all"
    #: JSON {image_id: [classes]} or {image_id: {"classes": [...], "caption": ...}}; a
    #: caption may be one string or {prompt name: caption} (the official per-class captions)
    candidates_file: Optional[str] = None
    #: background-score protocol: official_sweep (the official evaluation's in-run grid
    #: bg_threshold = 0.30..0.74 step 0.01, best point reported, an ORACLE like the published
    #: numbers) | fixed (method.bg_threshold; a grid you give is still labelled ORACLE)
    bg_protocol: str = "fixed"
    #: official_sweep: the best point kept on a tie: first (official VOC/Context ">") | last
    #: (official COCO ">=")
    bg_sweep_tie: str = "first"
    #: prompt prefix written before the class name ("a photograph of" -> "a photograph of
    #: cat"), or a string with a {name} placeholder. Official: "a photograph of" (VOC),
    #: "a photography of" (Context, COCO)
    template: str = "a photograph of"
    #: class name -> names written in its prompts instead of the class name (given inline;
    #: e.g. {tvmonitor: [monitor], person: [person, people]}); a class scores the max over
    #: its names. Classes not listed use their own name.
    synonyms: Optional[Dict[str, List[str]]] = None
    #: continue each prompt with the image caption (needs captions from candidates=file or
    #: captioner=blip)
    caption_prompt: bool = False
    #: emphasis of the class name in every prompt when caption_prompt=true, whether or not
    #: the caption adds words (the official prompt always carries "{name}++": Compel
    #: 1.1**2 = 1.21, z' = z_empty + w (z - z_empty)), on the tokens of the name's LAST word
    #: only ("traffic light++", ptp_stable_coco.py / ptp_stable_voc10.py); 1.0 = off
    caption_word_weight: float = 1.21
    #: how a per-prompt caption continues its prompt: text (VOC code) | words (Context/COCO
    #: code: the caption's words after the prompt's word count, so "a photography of dogs
    #: running" gives "a photography of dog running")
    caption_splice: str = "text"

    def __post_init__(self) -> None:
        # every conflicting setting is reported together (benchmark.schema.Checks)
        checks = Checks()
        checks.call(check_choice, self.candidates, CANDIDATE_MODES, "candidates")
        checks.call(check_choice, self.bg_protocol, BG_PROTOCOLS, "bg_protocol")
        checks.call(check_choice, self.bg_sweep_tie, BG_SWEEP_TIES, "bg_sweep_tie")
        checks.call(check_choice, self.caption_splice, CAPTION_SPLICES, "caption_splice")
        checks.require(
            not (self.candidates == "file" and not self.candidates_file),
            "method.candidates=file needs method.candidates_file=PATH (a JSON file)",
        )
        checks.require(
            self.template.count(NAME_PLACEHOLDER) <= 1,
            f"method.template={self.template!r}: at most one {NAME_PLACEHOLDER} placeholder",
        )
        checks.call(check_choice, self.captioner, CAPTIONERS, "captioner")
        # captions come from the CLIP filter's captioner or caption a file's candidates (the
        # official pipeline); any other combination would silently run without them
        checks.require(
            not (self.captioner != "none" and self.candidates not in ("clip", "file")),
            f"method.captioner={self.captioner} captions the candidates of the CLIP filter (method.candidates=clip) "
            "or of a file (method.candidates=file, e.g. the official filter files); "
            f"got method.candidates={self.candidates} (or set method.captioner=none)",
        )
        checks.require(
            not (self.caption_prompt and not (self.candidates == "file" or (self.candidates == "clip" and self.captioner != "none"))),
            "method.caption_prompt=true needs captions: method.candidates=clip with method.captioner=blip, "
            f"or method.candidates=file with captions in the file (got candidates={self.candidates}, "
            f"captioner={self.captioner}); or set method.caption_prompt=false",
        )
        checks.call(check_choice, self.clip_text_match, CLIP_TEXT_MATCH, "clip_text_match")
        for name, names in (self.synonyms or {}).items():
            checks.require(
                not (isinstance(names, str) or not names or not all(isinstance(n, str) and n.strip() for n in names)),
                f"method.synonyms[{name!r}]={names!r}: expected a non-empty list of names, e.g. [{name!r}, 'other name']",
            )
        checks.done()


def check_token_rule(rule: str) -> str:
    return check_choice(rule, TOKEN_RULES, "token_rule")


# --------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------
def fill_template(template: str, name: str) -> str:
    """``"a photograph of" + "cat"`` -> ``"a photograph of cat"``; ``"a {name}."`` -> ``"a cat."``."""
    name = name.strip()
    if NAME_PLACEHOLDER in template:
        return template.replace(NAME_PLACEHOLDER, name)
    return f"{template.strip()} {name}".strip()


def template_prefix(template: str) -> str:
    """The text before the name (what an image-level caption is expected to start with)."""
    return template.split(NAME_PLACEHOLDER)[0].strip()


def caption_continuation(caption: str, prefix: str) -> str:
    """The caption's text after ``prefix`` (case- and whitespace-insensitive), or the whole
    caption when it does not start with it.

    The official code captions with BLIP conditioned on the prompt ("a photograph of cat")
    and keeps the generated text after it: "a photograph of cat sitting on a bed" ->
    "sitting on a bed".
    """
    text = " ".join(caption.split())
    head = " ".join(prefix.split())
    if head and text.lower().startswith(head.lower()):
        return text[len(head):].strip()
    return text


def prompt_text(template: str, name: str, caption: Caption = None, class_name: Optional[str] = None,
                splice: str = "text") -> str:
    """The prompt of one class name, optionally continued by a caption.

    ``caption`` is one string for the image (its text after the template prefix is
    appended) or {name: caption} with one caption per prompt name, appended after the full
    prompt (looked up by ``name``, then ``class_name``) by ``splice``: ``text`` = its text
    after the prompt (:func:`caption_continuation`), ``words`` = its space-separated words
    after the prompt's word count (the official Context/COCO rule, see ``CAPTION_SPLICES``).
    """
    base = fill_template(template, name)
    if caption is None:
        return base
    if isinstance(caption, Mapping):
        own = caption.get(name, caption.get(class_name) if class_name is not None else None)
        if own is None:
            return base
        if splice == "words":
            rest = " ".join(w for w in str(own).split(" ")[len(base.split(" ")):] if w)
        else:
            rest = caption_continuation(str(own), base)
    else:
        rest = caption_continuation(str(caption), template_prefix(template))
    return f"{base} {rest}" if rest else base


def class_prompt_names(class_names: Sequence[str], synonyms: Optional[Mapping[str, Sequence[str]]]) -> List[List[str]]:
    """The names written in the prompts of each class (its synonyms, else its own name)."""
    synonyms = synonyms or {}
    unknown = [k for k in synonyms if k not in class_names]
    if unknown:
        raise ValueError(
            f"method.synonyms has entries for {unknown}, which are not classes of this dataset "
            f"({', '.join(map(str, class_names))})." + did_you_mean(unknown[0], class_names)
        )
    out = []
    for name in class_names:
        names = synonyms.get(name) or [name]
        out.append(list(dict.fromkeys(n.strip() for n in names)))
    return out


@dataclass(frozen=True)
class PromptPlan:
    """The prompts of one image and what they score.

    queries[p] is a prompt of class prompt_class[p]; classes are the scored candidates
    (sorted); background is the dataset's background index (None: no background class).
    With no candidate, queries hold one bare-template prompt (the pass needs a prompt) and
    the image is all background.
    """

    queries: Tuple[PromptQuery, ...]
    prompt_class: Tuple[int, ...]
    classes: Tuple[int, ...]
    background: Optional[int]


def scored_classes(ctx: SegmentContext) -> Tuple[List[int], Optional[int]]:
    """(candidate classes without background, background index) of one image.

    ``ctx.candidates`` None = every class. An empty candidate list means "all background"
    when the dataset has a background class; without one the method must still label
    every pixel, so it falls back to every class.
    """
    names = list(ctx.class_names)
    if not names:
        raise ValueError(f"image {ctx.image_id}: open-vocabulary methods need the dataset's class names (ctx.class_names)")
    background = background_index(names)
    everything = [c for c in range(len(names)) if c != background]
    if ctx.candidates is None:
        return everything, background
    bad = [c for c in ctx.candidates if not 0 <= int(c) < len(names)]
    if bad:
        raise ValueError(f"image {ctx.image_id}: candidate class indices {bad} outside [0, {len(names)})")
    chosen = sorted({int(c) for c in ctx.candidates} - {background})
    if not chosen and background is None:
        return everything, background
    return chosen, background


def plan_prompts(ctx: SegmentContext, settings: Any) -> PromptPlan:
    """Prompts of one image: every name of every candidate class, classes in index order."""
    classes, background = scored_classes(ctx)
    names = class_prompt_names(ctx.class_names, getattr(settings, "synonyms", None))
    caption = ctx.caption if getattr(settings, "caption_prompt", False) else None
    template = getattr(settings, "template", "")
    queries: List[PromptQuery] = []
    prompt_class: List[int] = []
    # the official caption prompts carry "{name}++" whether or not the caption adds words
    # (ptp_stable_best.py: prompt + "++" + out_prompt[len(prompt):]; ptp_stable_voc10.py /
    # ptp_stable_coco.py: out_prompt[2+word_len] = f"{last_word}++"): on the last word only
    weight = float(getattr(settings, "caption_word_weight", 1.0)) if getattr(settings, "caption_prompt", False) else 1.0
    for c in classes:
        class_name = str(ctx.class_names[c]).strip()
        for name in names[c]:
            text = prompt_text(template, name, caption, class_name, getattr(settings, "caption_splice", "text"))
            last_word = name.split()[-1]
            queries.append(PromptQuery(
                text=text, word=name, word_weight=weight,
                weight_word=last_word if weight != 1.0 and last_word != name else None,
            ))
            prompt_class.append(c)
    if not queries:  # no candidate: nothing to score, but the pass needs one prompt
        queries.append(PromptQuery(text=template_prefix(template)))
    return PromptPlan(tuple(queries), tuple(prompt_class), tuple(classes), background)


# --------------------------------------------------------------------------------------
# cross-attention
# --------------------------------------------------------------------------------------
def word_columns(positions: Sequence[int], rule: str, where: str = "", extra_offset: int = 0) -> List[int]:
    """The token columns a rule reads from a word's sub-token positions; ``extra_offset`` > 0
    adds the column that many tokens after the last column read (the official two-token read)."""
    check_token_rule(rule)
    positions = [int(p) for p in positions]
    if not positions:
        raise ValueError(f"no token positions for {where or 'a prompt word'}: the word was not found in its prompt")
    if rule == "first":
        cols = positions[:1]
    elif rule == "last":
        cols = positions[-1:]
    else:
        cols = positions
    if extra_offset:
        cols = cols + [cols[-1] + int(extra_offset)]
    return cols


def word_after(text: str, word: str) -> Optional[str]:
    """The space-separated word that follows ``word`` (its first occurrence as whole words)
    in ``text``, or None. The official rule splits the prompt on single spaces and looks at
    the word after the class name (ptp_stable_best.py ``prompt[0].split(" ")[4]``;
    ptp_stable_voc10.py / ptp_stable_coco.py ``prompt[0].split(" ")[3+word_len]``)."""
    words, name = text.split(" "), word.split(" ")
    n = len(name)
    for i in range(len(words) - n + 1):
        if [w.lower() for w in words[i:i + n]] == [w.lower() for w in name]:
            return words[i + n] if i + n < len(words) else None
    return None


def reads_two_tokens(query: PromptQuery) -> bool:
    """Whether the official two-token read applies: the word after the class name ends in "ing"."""
    following = word_after(query.text, query.word) if query.word else None
    return bool(following) and following.endswith("ing")


def token_weights(
    token_positions: Sequence[Sequence[int]], rule: str, n_tokens: int, queries: Sequence[PromptQuery] = (),
    ing_offset: int = 0,
) -> torch.Tensor:
    """(P, T) float32 weights: 1/k on the k columns each prompt's rule reads, 0 elsewhere.

    ``ing_offset`` > 0: prompts whose class name is followed by a word ending in "ing"
    (:func:`reads_two_tokens`, needs ``queries``) also read the column ``ing_offset`` tokens
    after the rule's (last) column, each of the two columns weighted 1/2 (the official
    ``[:,:,[i, i+offset]].mean(2)``).
    """
    if ing_offset and len(queries) != len(token_positions):
        raise ValueError(f"method.ing_offset={ing_offset} needs the prompts' texts ({len(queries)} queries "
                         f"for {len(token_positions)} prompts)")
    weights = torch.zeros(len(token_positions), n_tokens)
    for p, positions in enumerate(token_positions):
        where = f"prompt {p}" + (f" ({queries[p].text!r}, word {queries[p].word!r})" if p < len(queries) else "")
        extra = int(ing_offset) if ing_offset and reads_two_tokens(queries[p]) else 0
        cols = word_columns(positions, rule, where, extra)
        if max(cols) >= n_tokens or min(cols) < 0:
            raise ValueError(f"token positions {cols} of {where} outside the {n_tokens} captured text positions")
        weights[p, cols] = 1.0 / len(cols)
    return weights


def word_attention(cross: torch.Tensor, token_positions: Sequence[Sequence[int]], rule: str,
                   queries: Sequence[PromptQuery] = (), ing_offset: int = 0) -> torch.Tensor:
    """(P, q, T) cross-attention -> (P, q): each prompt's word columns reduced by ``rule``
    (and the two-token read of :func:`token_weights` when ``ing_offset`` > 0)."""
    if cross.dim() != 3 or cross.shape[0] != len(token_positions):
        raise ValueError(
            f"cross-attention of shape {tuple(cross.shape)} does not fit {len(token_positions)} prompts: expected (P, r*r, T)"
        )
    weights = token_weights(token_positions, rule, cross.shape[-1], queries, ing_offset).to(cross.device)
    return torch.einsum("pqt,pt->pq", cross.float(), weights)


def fuse_cross_attention(
    cross_attn: Mapping[int, torch.Tensor],
    token_positions: Sequence[Sequence[int]],
    rule: str,
    weights: Sequence[float],
    queries: Sequence[PromptQuery] = (),
    ing_offset: int = 0,
) -> torch.Tensor:
    """DiffSegmenter's fused cross-attention (P, n, n) at the largest captured side n.

    For each side r: the prompt's word column -> r×r, bilinear upsampling to n×n,
    min–max normalisation, times the side's weight (``weights`` largest side first,
    normalised over the captured sides by :func:`weights_by_side`).
    """
    if not cross_attn:
        raise ValueError("no cross-attention was captured (AttentionMaps.cross_attn is empty)")
    sides = sorted(cross_attn, reverse=True)
    n = sides[0]
    by_side = weights_by_side(sides, [float(w) for w in weights], "method.cross_weights")
    fused = None
    for side, weight in sorted(by_side.items(), reverse=True):
        cross = cross_attn[side]
        if cross.dim() != 3 or cross.shape[1] != side * side:
            raise ValueError(f"cross_attn[{side}] has shape {tuple(cross.shape)}; expected (P, {side * side}, T)")
        maps = word_attention(cross, token_positions, rule, queries, ing_offset).view(-1, side, side)
        term = weight * minmax(resize_maps(maps, (n, n), "bilinear"))
        fused = term if fused is None else fused + term
    return fused


def refine_with_self_attention(maps: torch.Tensor, self_attn: torch.Tensor, power: int = 1) -> torch.Tensor:
    """M = SA^power · vec(maps) for (P, n, n) maps and (G, n², n²) row-stochastic SA.

    Row i of SA is query pixel i's attention over keys, so M_i = Σ_j SA_ij CA_j (the
    official ``torch.matmul(self_att, cross_att_map)``). G = 1: one SA for every prompt
    (the image's prompts averaged); G = P: each prompt its own SA.
    """
    if power < 0:
        raise ValueError(f"method.sa_power={power}: expected >= 0")
    p, n, _ = maps.shape
    if self_attn.dim() == 2:
        self_attn = self_attn.unsqueeze(0)
    groups = self_attn.shape[0]
    if self_attn.shape[1:] != (n * n, n * n) or groups not in (1, p):
        raise ValueError(
            f"self-attention of shape {tuple(self_attn.shape)} does not fit {p} prompt maps of side {n}: "
            f"expected (1 or {p}, {n * n}, {n * n})"
        )
    flat = maps.reshape(p, n * n).float()
    sa = self_attn.to(flat.device).float()
    for _ in range(power):
        if groups == 1:
            flat = flat @ sa[0].T
        else:
            flat = torch.bmm(sa, flat.unsqueeze(2)).squeeze(2)
    return flat.view(p, n, n)


# --------------------------------------------------------------------------------------
# scores -> labels
# --------------------------------------------------------------------------------------
def upsample_minmax(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(P, h, w) -> (P, H, W): bilinear upsampling to the label size, then min–max per map."""
    return minmax(resize_maps(maps.float(), size, "bilinear"))


def max_over_prompts(scores: torch.Tensor, prompt_class: Sequence[int], classes: Sequence[int]) -> torch.Tensor:
    """(P, H, W) prompt scores -> (K, H, W) class scores, K = len(classes): max over each
    class's prompts (its synonyms)."""
    row = {c: k for k, c in enumerate(classes)}
    if len(prompt_class) != scores.shape[0] or any(c not in row for c in prompt_class):
        raise ValueError(f"prompt classes {list(prompt_class)} do not match {scores.shape[0]} maps and classes {list(classes)}")
    if list(prompt_class) == list(classes):  # one prompt per class: nothing to reduce
        return scores
    index = torch.tensor([row[c] for c in prompt_class], device=scores.device).view(-1, 1, 1).expand_as(scores)
    out = torch.zeros((len(classes),) + tuple(scores.shape[1:]), dtype=scores.dtype, device=scores.device)
    return out.scatter_reduce_(0, index, scores, reduce="amax", include_self=False)


def best_class(class_scores: torch.Tensor, classes: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(best score, its class id) per pixel of (K, H, W) class scores."""
    value, which = class_scores.max(0)
    ids = torch.tensor(list(classes), dtype=torch.long, device=class_scores.device)
    return value, ids[which]


def label_with_background(best_score: torch.Tensor, best_id: torch.Tensor, background: Optional[int],
                          bg_threshold: float) -> torch.Tensor:
    """Argmax over {background: bg_threshold} ∪ candidates; ties go to background (the
    official argmax with background at index 0). No background class: the best candidate."""
    if background is None:
        return best_id
    return torch.where(best_score > float(bg_threshold), best_id, torch.full_like(best_id, int(background)))


# --------------------------------------------------------------------------------------
# the method skeleton
# --------------------------------------------------------------------------------------
def check_queries(attn: AttentionMaps, plan: PromptPlan, image_id: str) -> None:
    """The captured attention must belong to this image's prompts (cache / runner bugs)."""
    got = [(q.text, q.word) for q in attn.queries]
    want = [(q.text, q.word) for q in plan.queries]
    if got != want:
        raise ValueError(
            f"image {image_id}: the attention was captured for prompts {got[:3]}{'...' if len(got) > 3 else ''} "
            f"but the method's prompts are {want[:3]}{'...' if len(want) > 3 else ''}"
        )
    if len(attn.token_positions) != len(plan.queries):
        raise ValueError(f"image {image_id}: {len(attn.token_positions)} token position lists for {len(plan.queries)} prompts")


def params_key(params: Any, leave_out: Collection[str] = ()) -> Tuple:
    """The fields of a params dataclass except ``leave_out``, hashable (lists as tuples):
    what a memo of a result that does not depend on ``leave_out`` is keyed on."""
    return tuple(
        sorted(
            (k, tuple(v) if isinstance(v, list) else v)
            for k, v in dataclasses.asdict(params).items()
            if k not in leave_out
        )
    )


def _hashable_caption(caption: Caption) -> Hashable:
    return tuple(sorted(caption.items())) if isinstance(caption, Mapping) else caption


class OpenVocabularyMethod(Method):
    """Open-vocabulary segmenter skeleton: prompts per candidate class, per-prompt score
    maps (:meth:`prompt_maps`, by subclasses), label size scores, background argmax.

    ``oracle_keys``: a grid sweeping ``bg_threshold`` on the evaluated split picks its
    best value with the labels: tables mark it as an oracle.
    """

    task = "open_vocabulary"
    Params: ClassVar[type] = OpenVocabParams
    Settings: ClassVar[type] = OpenVocabSettings
    oracle_keys: ClassVar[Tuple[str, ...]] = ("bg_threshold",)
    #: whether prompt_maps needs self-attention at the largest side
    uses_self_attention: ClassVar[bool] = False

    def __init__(self, settings: Any = None, extract: Any = None):
        super().__init__(settings, extract)
        # queries() and every grid point of an image share its prompt plan
        self._plan_memo = OneEntryMemo()
        # grid points of one image that differ only in bg_threshold share the best class per pixel
        self._best_memo = OneEntryMemo()

    # -- protocol -------------------------------------------------------------------------------
    @classmethod
    def implied_grid(cls, settings: Mapping[str, Any], grid: Mapping[str, Any]) -> Dict[str, Any]:
        """The in-run grid with what ``settings`` imply: ``bg_protocol=official_sweep`` adds the
        official sweep as the ``bg_threshold`` axis. ValueError when the user's grid also
        sweeps it (the protocol fixes the range)."""
        if settings.get("bg_protocol", "fixed") != "official_sweep":
            return dict(grid)
        if "bg_threshold" in grid:
            raise ValueError(
                "method.bg_protocol=official_sweep sweeps bg_threshold over the official 0.30..0.74 itself; "
                f"remove method.grid.bg_threshold={list(grid['bg_threshold'])!r} or set method.bg_protocol=fixed"
            )
        return {**grid, "bg_threshold": list(OFFICIAL_BG_SWEEP)}

    @classmethod
    def protocol(cls, settings: Any) -> Dict[str, Any]:
        """What makes a run comparable with published numbers (tables compare it)."""
        return {
            "candidates": getattr(settings, "candidates", None),
            "bg_protocol": getattr(settings, "bg_protocol", None),
            "bg_sweep_tie": getattr(settings, "bg_sweep_tie", None),
        }

    # -- contract ---------------------------------------------------------------------------
    def attention_request(self, params: Any) -> AttentionRequest:
        sides = standard_self_resolutions(self.image_size)
        return AttentionRequest(
            self_resolutions=sides[:1] if self.uses_self_attention else (),
            cross_resolutions=sides,
        )

    def plan(self, ctx: SegmentContext) -> PromptPlan:
        # keyed on what plan_prompts reads of ctx (the runner may hand over a new ctx object)
        key = (
            ctx.image_id,
            tuple(ctx.class_names),
            None if ctx.candidates is None else tuple(ctx.candidates),
            _hashable_caption(ctx.caption),
        )
        return self._plan_memo.get((self.settings,), key, lambda: plan_prompts(ctx, self.settings))

    def queries(self, ctx: SegmentContext) -> List[PromptQuery]:
        return list(self.plan(ctx).queries)

    def prompt_maps(self, attn: AttentionMaps, params: Any) -> torch.Tensor:  # pragma: no cover - abstract
        """(P, n, n) score maps of the prompts at attention resolution."""
        raise NotImplementedError

    def segment(self, attn: AttentionMaps, ctx: SegmentContext, params: Any) -> torch.Tensor:
        plan = self.plan(ctx)
        if not plan.classes:  # no candidate (dataset with background): all background
            return torch.full(tuple(ctx.out_size), int(plan.background), dtype=torch.long)
        score, class_id = self.best_class(attn, ctx, plan, params)
        return label_with_background(score, class_id, plan.background, params.bg_threshold).cpu()

    # -- shared steps -------------------------------------------------------------------------
    def class_scores(self, attn: AttentionMaps, ctx: SegmentContext, plan: PromptPlan, params: Any) -> torch.Tensor:
        """(K, H, W) scores of the candidate classes at the label size, each in [0, 1]."""
        check_queries(attn, plan, ctx.image_id)
        maps = self.prompt_maps(attn, params)
        return max_over_prompts(upsample_minmax(maps, tuple(ctx.out_size)), plan.prompt_class, plan.classes)

    def best_class(self, attn: AttentionMaps, ctx: SegmentContext, plan: PromptPlan, params: Any):
        key = (ctx.image_id, tuple(ctx.out_size), plan, params_key(params, leave_out=("bg_threshold",)))
        return self._best_memo.get(
            (attn,), key, lambda: best_class(self.class_scores(attn, ctx, plan, params), plan.classes)
        )

    def fused_cross_attention(self, attn: AttentionMaps, params: Any) -> torch.Tensor:
        return fuse_cross_attention(attn.cross_attn, attn.token_positions, params.token_rule, params.cross_weights,
                                    attn.queries, getattr(params, "ing_offset", 0))

    def self_attention_at(self, attn: AttentionMaps, side: int) -> torch.Tensor:
        if side not in attn.self_attn:
            raise ValueError(
                f"method {self.name}: self-attention of side {side} (the largest cross-attention side) was not captured; "
                f"captured sides: {sorted(attn.self_attn)}"
            )
        return attn.self_attn[side]
