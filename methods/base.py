"""The contract every segmentation method implements.

A method is pure computation on tensors (no file or network I/O):

* ``Params``   dataclass of post-processing constants. Every field is a config key
               (``method.<field>=...``) and a possible in-run grid axis
               (``method.grid.<field>=[...]``): all grid points share one diffusion pass.
* ``Settings`` dataclass of method options that change what is extracted (candidate
               classes, prompt template, ...): config keys, but not grid axes.
* ``attention_request(params)``  which attention the pass must capture.
* ``queries(ctx)``               the prompts of the pass for one image (from ``self.settings``).
* ``segment(attn, ctx, params)`` label map (H, W) int64 for one image and one grid point:
               segment ids (unsupervised) or class ids (open-vocabulary).

Methods that need no diffusion pass (``needs_diffusion = False``) receive the data the
runner loads for them in ``ctx`` instead (see ``methods.predictions``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, List, Sequence

import torch

from benchmark.registry import did_you_mean
from benchmark.types import AttentionMaps, AttentionRequest, ExplicitSides, PromptQuery, SegmentContext


#: input side in px when a method is built without an extraction config (SD 1.x/2.x-base)
DEFAULT_IMAGE_SIZE = 512


@dataclass
class NoSettings:
    pass


def user_error(message: str) -> ValueError:
    """A ValueError caused by the user's inputs (a captions file, a setting that does not fit
    the model): the CLI prints it alone with exit code 2 (``benchmark.config.is_user_error``
    reads ``user_error``) instead of a traceback."""
    err = ValueError(message)
    err.user_error = True
    return err


def check_choice(value: str, choices: Sequence[str], key: str) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming ``method.<key>``."""
    if value not in choices:
        raise ValueError(
            f"method.{key}={value!r}: expected one of {', '.join(map(str, choices))}." + did_you_mean(value, choices)
        )
    return value


class Method:
    name: ClassVar[str] = ""
    #: "unsupervised" (segment ids, scored by Hungarian matching) or "open_vocabulary"
    task: ClassVar[str] = "unsupervised"
    needs_diffusion: ClassVar[bool] = True
    Params: ClassVar[type] = NoSettings
    Settings: ClassVar[type] = NoSettings

    def __init__(self, settings: Any = None, extract: Any = None):
        self.settings = settings if settings is not None else self.Settings()
        self.extract = extract

    @property
    def image_size(self) -> int:
        """Side in px of the diffusion pass's input (``extract.image_size``)."""
        return getattr(self.extract, "image_size", DEFAULT_IMAGE_SIZE) if self.extract is not None else DEFAULT_IMAGE_SIZE

    def attention_request(self, params: Any) -> AttentionRequest:  # pragma: no cover - abstract
        raise NotImplementedError

    def explicit_sides(self, params: Any) -> Sequence[ExplicitSides]:
        """Sides of ``attention_request(params)`` that the user named in a config key: the
        run refuses at start a model that lacks one of them (default sides are fitted to
        the model silently). Default: none."""
        return ()

    def check_captured_sides(self, params: Any, self_sides: Sequence[int], cross_sides: Sequence[int]) -> None:
        """Refuse at start (``user_error``) a grid point that the attention sides the model
        will capture (``self_sides`` / ``cross_sides``: the request fitted to the model at
        ``extract.image_size``, largest first) cannot serve, instead of failing at the first
        image. Default: nothing to check."""

    def queries(self, ctx: SegmentContext) -> List[PromptQuery]:
        """Default: one pass conditioned on the configured prompt (the empty prompt)."""
        prompt = getattr(self.extract, "prompt", "") if self.extract is not None else ""
        return [PromptQuery(text=prompt or "")]

    def segment(self, attn: AttentionMaps, ctx: SegmentContext, params: Any) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
