"""Config schemas shared by several stages (the per-plugin schemas live with the plugins).

Validation against these dataclasses happens once, at start (``benchmark.config``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


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
