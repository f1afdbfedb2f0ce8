"""Config schemas shared by several stages (the per-plugin schemas live with the plugins).

Validation against these dataclasses happens once, at start (``benchmark.config``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional


@dataclass
class ExtractionConfig:
    """How the diffusion pass is run. Changing any of these costs a new pass, so they are
    Hydra sweep axes (``-m method.extract.timestep=100,300``), never in-run grid axes."""

    #: model input side in pixels; the evaluated image is resized (bilinear, no aspect
    #: ratio kept) to image_size x image_size before VAE encoding.
    image_size: int = 512
    #: VAE posterior "mean" or "sample" (sample uses the seeded generator)
    latent: str = "mean"
    #: UNet timestep of the single pass
    timestep: int = 300
    #: add scheduler noise to the latent at ``timestep`` (seeded, one draw per image shared
    #: by all its prompts)
    noise: bool = False
    seed: int = 0
    #: prompt of methods that condition on one fixed text ("" = the empty prompt)
    prompt: str = ""
    #: classifier-free guidance scale of generation (steps > 1, `benchmark.generate`); a
    #: single pass on a real image always reads the conditional branch only
    guidance_scale: float = 1.0
    #: number of denoising steps averaged (1 = one pass on the encoded image;
    #: >1 = generation from noise, attention averaged over steps; SeeDiff generate mode)
    steps: int = 1
    #: average self-attention over the prompts of one image (True) or keep one per prompt
    self_attn_per_prompt: bool = False


@dataclass
class CacheConfig:
    #: directory of the on-disk attention cache (None = no cache)
    dir: Optional[str] = None
    #: storage dtype of cached attention: float16 | bfloat16 | float32 (runs score the
    #: maps as stored, so a warm and a cold cache give the same numbers)
    dtype: str = "float16"


@dataclass
class RunConfig:
    #: images per diffusion pass
    batch_size: int = 1
    #: resume from records already in the run directory
    resume: bool = True
    #: show a progress bar (images done, images/s, ETA)
    progress: bool = True
    #: global seed (torch / numpy) for anything not seeded by a more specific key
    seed: int = 0
    #: number of qualitative examples kept for loggers / reports
    n_examples: int = 4
    #: at the end of the run write its figures (metric vs grid axes, per-class IoU, one
    #: overlay figure per example) and a self-contained report.html into the run directory
    report: bool = True


class SettingConflicts(ValueError):
    """Every problem of one config section, found together (``problems``: one message each).

    Raised by :meth:`Checks.done` from a plugin's ``__post_init__``; ``benchmark.config``
    lists each problem in the one start-up error, so a user fixes every conflicting key in
    one go instead of one per run."""

    def __init__(self, problems: List[str]):
        self.problems = [str(p) for p in problems]
        super().__init__("; ".join(self.problems))

    def __reduce__(self):
        return (type(self), (self.problems,))


class Checks:
    """Collects the problems of a section's cross-key checks instead of stopping at the first.

        checks = Checks()
        checks.require(self.a > 0, f"method.a={self.a}: expected > 0")
        checks.call(check_choice, self.b, CHOICES, "b")   # any check that raises ValueError
        checks.done()                                     # SettingConflicts listing all of them
    """

    def __init__(self) -> None:
        self.problems: List[str] = []

    def require(self, ok: bool, message: str) -> bool:
        if not ok:
            self.problems.append(message)
        return bool(ok)

    def call(self, check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return check(*args, **kwargs)
        except SettingConflicts as err:
            self.problems.extend(err.problems)
        except ValueError as err:
            self.problems.append(str(err))
        return None

    def done(self) -> None:
        if self.problems:
            raise SettingConflicts(self.problems)
