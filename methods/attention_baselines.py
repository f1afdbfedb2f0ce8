"""Attention baselines of the SeeDiff paper (Table 5) and ablations, open-vocabulary:

* **CA** (DiffuMask-style): the fused cross-attention of the class token
  (:func:`methods.open_vocab.fuse_cross_attention`, DiffSegmenter's fusion), min–max per
  class at the label size, argmax against the constant background score.
* **CA·SA** (Dataset-Diffusion-style): the same cross-attention refined by the largest-side
  self-attention, SA^k · vec(CA) (``sa_power`` = k, default 1), then the same.

Prompts, candidate classes, token rule and background rule are those of
:mod:`methods.open_vocab`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from benchmark.types import AttentionMaps

from .open_vocab import OpenVocabParams, OpenVocabSettings, OpenVocabularyMethod, refine_with_self_attention


class CrossAttention(OpenVocabularyMethod):
    name = "ca"
    Params = OpenVocabParams
    Settings = OpenVocabSettings
    uses_self_attention = False

    def prompt_maps(self, attn: AttentionMaps, params: Any) -> torch.Tensor:
        return self.fused_cross_attention(attn, params)


@dataclass
class CrossSelfAttentionParams(OpenVocabParams):
    #: k in SA^k · vec(CA): how many times the self-attention propagates the scores
    sa_power: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sa_power < 1:
            raise ValueError(f"method.sa_power={self.sa_power}: expected >= 1 (0 is method=ca)")


class CrossSelfAttention(OpenVocabularyMethod):
    name = "ca_sa"
    Params = CrossSelfAttentionParams
    Settings = OpenVocabSettings
    uses_self_attention = True

    def prompt_maps(self, attn: AttentionMaps, params: CrossSelfAttentionParams) -> torch.Tensor:
        fused = self.fused_cross_attention(attn, params)
        return refine_with_self_attention(fused, self.self_attention_at(attn, fused.shape[-1]), power=params.sa_power)
