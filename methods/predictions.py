"""Score label maps produced outside the harness (``method=predictions method.dir=DIR``).

The runner loads ``DIR/<image_id>.png`` for each image (see
``benchmark.prediction_files``) into ``ctx.external``; this method only hands it on, so
every metric scores external predictions exactly like the harness' own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from benchmark.types import AttentionMaps, AttentionRequest, SegmentContext

from .base import Method, NoSettings


@dataclass
class PredictionsSettings:
    #: directory holding <image_id><suffix> label maps (single-channel 8/16-bit PNG)
    dir: Optional[str] = None
    suffix: str = ".png"
    #: "labels" (class ids, scored as they are) or "segments" (ids to be Hungarian-matched);
    #: decides what metric=auto picks (miou or hungarian_image)
    kind: str = "labels"
    #: value the files write for "no decision" (e.g. 255), or null (default, strict: every
    #: value must be a class / cluster id). A pixel holding it is scored as mmseg scores an
    #: out-of-range prediction: a miss of its label's class (FN), no class's FP; on ignored
    #: label pixels it is not scored at all. It must not be a valid class / cluster id.
    void_value: Optional[int] = None

    def __post_init__(self) -> None:
        if not self.dir:
            raise ValueError("method=predictions needs method.dir=DIR (a folder of <image_id>.png label maps)")
        if self.kind not in ("labels", "segments"):
            raise ValueError(f"method.kind={self.kind!r}: expected labels or segments")
        v = self.void_value
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"method.void_value={v!r}: expected a non-negative integer (e.g. 255) or null")


class Predictions(Method):
    name = "predictions"
    task = "labels"  # metric=auto -> miou (method.kind=segments -> hungarian_image, see config.method_task)
    needs_diffusion = False
    Params = NoSettings
    Settings = PredictionsSettings

    def attention_request(self, params) -> AttentionRequest:
        return AttentionRequest()

    def segment(self, attn: Optional[AttentionMaps], ctx: SegmentContext, params) -> torch.Tensor:
        if ctx.external is None:
            raise ValueError(f"method=predictions: no prediction was loaded for image {ctx.image_id}")
        return ctx.external
