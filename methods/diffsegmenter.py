"""DiffSegmenter (Wang et al., "Diffusion Model is Secretly a Training-free Open Vocabulary
Semantic Segmenter"; official code VCG-team/DiffSegmenter).

For one image and each candidate class (all prompts of the image in one batched UNet
pass, sharing the VAE latent sample and the noise):

1. prompt ``"{template} {name}"`` ("a photograph of" for VOC, "a photography of" for
   Context / COCO), optionally continued by a caption (``caption_prompt``);
2. cross-attention of the class token (``token_rule``: VOC's code reads the first token
   after the template, Context/COCO's the last sub-token of the name) per side
   r ∈ {8, 16, 32, 64}: r×r, bilinear to 64×64, min–max, fused with
   0.3·CA₈ + 0.5·CA₁₆ + 0.1·CA₃₂ + 0.1·CA₆₄ (``cross_weights``, largest side first);
3. refinement M = SA₆₄ · vec(CA) with the 64-side self-attention of the same pass;
4. bilinear upsampling to the label size, min–max per class, argmax against the constant
   background score ``bg_threshold``.

Self-attention: the method default averages the self-attention of the image's prompts
(``extract.self_attn_per_prompt=false``: one 4096×4096 map per image); the
``experiment=diffsegmenter_*`` presets set ``true``: each class refined with the SA of its
own prompt, as the official code (one pass per class, ``self_attention_maps[3]`` of that pass).

Caption prompts (``caption_prompt``) carry the official ``{name}++`` emphasis on every prompt,
whether or not the caption adds words, on the tokens of the name's last word only
(``caption_word_weight`` = 1.21, Compel's z' = z_empty + w (z - z_empty), applied by the
model when it encodes the prompt; ptp_stable_best.py ``prompt + "++" + ...``,
ptp_stable_voc10.py / ptp_stable_coco.py ``out_prompt[2+word_len] = f"{last_word}++"``).
Two-token read (``ing_offset``): when the word after the class name ends in "ing", the mean
of the class column and the column ``ing_offset`` tokens later (VOC / Context 1, COCO 2).
Background protocols (``bg_protocol``): ``official_sweep`` (the official evaluation's
0.30..0.74 sweep, best point reported, an oracle) or ``fixed``.
"""
from __future__ import annotations

from typing import Any

import torch

from benchmark.types import AttentionMaps

from .open_vocab import OpenVocabParams, OpenVocabSettings, OpenVocabularyMethod, refine_with_self_attention


class DiffSegmenter(OpenVocabularyMethod):
    name = "diffsegmenter"
    Params = OpenVocabParams
    Settings = OpenVocabSettings
    uses_self_attention = True

    def prompt_maps(self, attn: AttentionMaps, params: Any) -> torch.Tensor:
        fused = self.fused_cross_attention(attn, params)
        return refine_with_self_attention(fused, self.self_attention_at(attn, fused.shape[-1]), power=1)
