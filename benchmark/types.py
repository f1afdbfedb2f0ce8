"""The data that flows between the harness' stages.

dataset -> ``Sample`` ; method -> ``AttentionRequest`` + ``PromptQuery`` list ;
capture -> ``AttentionMaps`` ; method -> label map (LongTensor H x W) ; metric -> counts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch


@dataclass
class Sample:
    """One evaluated image, already in the evaluation geometry of its preprocessing preset.

    image: uint8 tensor (3, H, W), RGB.
    label: int64 tensor (H, W): train ids in [0, C) or ``ignore_index``.
    meta: free-form (original size, file paths, ...). Must be collatable as a list.
    vae_image: float32 (3, H, W) in [0, 255] when the reference pipeline feeds the model an
        unrounded image (``preprocess=diffseg``: TF's float resize); None = ``image``.
    """

    image_id: str
    image: torch.Tensor
    label: torch.Tensor
    meta: Dict[str, Any] = field(default_factory=dict)
    vae_image: Optional[torch.Tensor] = None

    @property
    def model_image(self) -> torch.Tensor:
        """What the diffusion model encodes: ``vae_image`` if set, else ``image``."""
        return self.image if self.vae_image is None else self.vae_image


@dataclass(frozen=True)
class ExplicitSides:
    """Attention sides a user named in a config key (``method.sa_resolutions=[32,16]``).

    Unlike the sides a method derives from the input size (fitted to the model's grids by
    ``benchmark.models.diffusion.fit_request``), these must exist as asked: a model without
    attention at one of them is refused at start (``check_explicit_sides``), naming ``key``.
    ``kind``: "self" or "cross"; ``sides``: side lengths as the user gave them."""

    key: str
    kind: str
    sides: Tuple[int, ...]


@dataclass(frozen=True)
class AttentionRequest:
    """What a method needs captured during the diffusion pass.

    Resolutions are attention-grid side lengths (64, 32, 16, 8 for a 64x64 latent).
    ``layers`` selects the transformer blocks of each requested resolution:
      "all"       every block at that resolution (head- and layer-mean),
      "first_up"  only the first up-block layer at that resolution (SeeDiff's code),
      "down" / "up" / "mid" only blocks of that UNet part.
    Layers not requested keep the fused SDPA kernel.
    """

    self_resolutions: Tuple[int, ...] = ()
    cross_resolutions: Tuple[int, ...] = ()
    self_layers: str = "all"
    cross_layers: str = "all"
    #: cross-attention sides (a subset of ``cross_resolutions``) whose selected layers are
    #: ALSO kept one by one, summed over heads (``AttentionMaps.cross_attn_layers``):
    #: SeeDiff's official code normalises each 16x16 layer before summing them
    cross_layer_resolutions: Tuple[int, ...] = ()
    #: block outputs to capture in the same pass (``benchmark.attention.features``: an
    #: alias such as "last_down_attn1" or a UNet module path)
    features: Tuple[str, ...] = ()

    def union(self, other: "AttentionRequest") -> "AttentionRequest":
        if (self.self_layers, self.cross_layers) != (other.self_layers, other.cross_layers):
            raise ValueError(
                "grid points request different layer selections "
                f"({self.self_layers}/{self.cross_layers} vs {other.self_layers}/{other.cross_layers}); "
                "layer selection is an extraction parameter: sweep it with Hydra multirun instead"
            )
        return AttentionRequest(
            tuple(sorted(set(self.self_resolutions) | set(other.self_resolutions), reverse=True)),
            tuple(sorted(set(self.cross_resolutions) | set(other.cross_resolutions), reverse=True)),
            self.self_layers,
            self.cross_layers,
            tuple(sorted(set(self.cross_layer_resolutions) | set(other.cross_layer_resolutions), reverse=True)),
            tuple(dict.fromkeys(tuple(self.features) + tuple(other.features))),
        )

    @property
    def empty(self) -> bool:
        return not self.self_resolutions and not self.cross_resolutions and not self.features


@dataclass(frozen=True)
class PromptQuery:
    """One text conditioning for the pass of one image.

    text: the prompt ("" = the empty prompt).
    word: the substring whose tokens' cross-attention the method reads (None: no word).
    word_weight: emphasis of ``word``'s token embeddings, Compel's convention
        z' = z_empty + w * (z - z_empty) at the word's positions (``word++`` = 1.1**2 = 1.21);
        1.0 = the plain text embedding.
    weight_word: the trailing part of ``word`` whose tokens carry ``word_weight`` (None: all
        of ``word``); Compel's "traffic light++" weights "light" only.
    """

    text: str = ""
    word: Optional[str] = None
    word_weight: float = 1.0
    weight_word: Optional[str] = None


@dataclass
class AttentionMaps:
    """Captured attention of ONE image (all prompts of that image).

    self_attn[r]:  float32 (G, r*r, r*r)  rows = queries (sum to 1), head- and layer-mean;
                   G = 1 when the prompts of the image are averaged (the default), else P.
    cross_attn[r]: float32 (P, r*r, T)    T = 77 text positions (or the requested columns);
                   rows sum to 1 over all 77 positions before any column selection.
    token_positions[p]: indices (into the 77 positions) of ``queries[p].word``'s sub-tokens.
    cross_attn_layers[r]: float32 (L, P, r*r, T), only for ``AttentionRequest.cross_layer_resolutions``:
                   each of the L layers at side r on its own, SUMMED over heads (rows sum to
                   the number of heads), in SeeDiff's order (up layers, then down, then mid).
    features[name]: float32 (G, N, C) output of a requested block (``AttentionRequest.features``),
                   N tokens (side² of its grid) x C channels, same groups G as self_attn.
    """

    self_attn: Dict[int, torch.Tensor] = field(default_factory=dict)
    cross_attn: Dict[int, torch.Tensor] = field(default_factory=dict)
    queries: List[PromptQuery] = field(default_factory=list)
    token_positions: List[List[int]] = field(default_factory=list)
    cross_attn_layers: Dict[int, torch.Tensor] = field(default_factory=dict)
    features: Dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "AttentionMaps":
        return AttentionMaps(
            {r: a.to(device) for r, a in self.self_attn.items()},
            {r: a.to(device) for r, a in self.cross_attn.items()},
            list(self.queries),
            [list(p) for p in self.token_positions],
            {r: a.to(device) for r, a in self.cross_attn_layers.items()},
            {n: f.to(device) for n, f in self.features.items()},
        )


@dataclass
class SegmentContext:
    """What a method may know about the image besides its attention (no pixels of GT).

    out_size: (H, W) of the label map to produce.
    class_names: the dataset's classes (open-vocabulary methods).
    candidates: class indices considered for this image (open-vocabulary), or None = all.
    n_gt_classes: number of GT classes present (K-Means-S only; an oracle quantity).
    image: the evaluated uint8 image (3, H, W) for refinements that need colours (PAMR).
    external: a label map loaded from outside the harness (``method=predictions``).
    caption: a caption of the image, or {prompt name: caption} (captioner or candidates file),
             for prompt augmentation.
    class_synonyms: the dataset's OVSS synonym lists, one list of names per class, where the
             project ships them (datasets/classes/ovss_synonyms_*.txt), else None.
    """

    image_id: str
    out_size: Tuple[int, int]
    class_names: Sequence[str] = ()
    candidates: Optional[List[int]] = None
    n_gt_classes: Optional[int] = None
    image: Optional[torch.Tensor] = None
    external: Optional[torch.Tensor] = None
    caption: Optional[Union[str, Dict[str, str]]] = None
    class_synonyms: Optional[List[List[str]]] = None
