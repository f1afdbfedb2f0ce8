"""``ModelConfig``: the keys of ``conf/model/*.yaml`` (validated once, at start)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")

#: ``name`` of the random-weight SD built in code (``path: null``)
TINY_NAME = "tiny"
#: names of the random-weight models built in code: SD 1.x/2.x layout and SDXL layout
TINY_NAMES = (TINY_NAME, "tiny_sdxl")


@dataclass
class ModelConfig:
    """Which diffusion model to load and how to run its attention capture.

    ``path`` is a local diffusers folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``)
    or a Hugging Face Hub id resolved from the local HF cache; ``null`` builds the tiny
    random-weight SD in code (``name: tiny``).
    """

    name: str = TINY_NAME
    #: local folder or hub id ("CompVis/stable-diffusion-v1-4"); None = tiny model built in code
    path: Optional[str] = None
    #: hub revision (branch, tag or commit); None = "main"
    revision: Optional[str] = None
    #: weight file variant in the folder ("fp16" -> *.fp16.safetensors); None = the plain files
    variant: Optional[str] = None
    #: fp32 | fp16 | bf16 (attention probabilities are always computed in float32)
    dtype: str = "fp32"
    #: auto (cuda when available) | cpu | cuda | cuda:N | mps
    device: str = "auto"
    #: query rows per chunk of the capturing attention: per batch row on the CPU
    #: (chunk_size x keys x 4 bytes per scratch tensor, cache-sized), summed over the batch
    #: rows on a GPU (chunk_size x heads x keys x 4 bytes); null = 128 on the CPU, 2048 on a
    #: GPU (benchmark/attention/capture.py ``default_chunk_size``). The maps do not depend on it.
    chunk_size: Optional[int] = None
    #: UNet batch rows (prompts) per forward call; more prompts are split into several calls
    max_batch: int = 16
    #: allow downloading a hub id that is not in the local HF cache (never when HF_HUB_OFFLINE=1)
    download: bool = False
    #: tiny model only: seed of its random weights
    seed: int = 0
    #: input side in px the model was trained at (informational: the experiment or
    #: ``method.extract.image_size`` sets the side actually used)
    native_size: Optional[int] = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"Invalid value {self.dtype!r} for config key 'model.dtype'. Valid choices: {', '.join(DTYPES)}.")
        if not _DEVICE_PATTERN.match(str(self.device)):
            raise ValueError(
                f"Invalid value {self.device!r} for config key 'model.device'. Expected auto, cpu, cuda, cuda:N or mps."
            )
        for key in ("chunk_size", "max_batch"):
            if getattr(self, key) is not None and int(getattr(self, key)) < 1:
                raise ValueError(f"Invalid value {getattr(self, key)!r} for config key 'model.{key}': must be >= 1.")
        if self.path is None and self.name not in TINY_NAMES:
            raise ValueError(
                f"config key 'model.path' is null for model {self.name!r}: set model.path to a local diffusers "
                f"folder or a Hugging Face Hub id (only models {', '.join(TINY_NAMES)} are built in code)."
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)
