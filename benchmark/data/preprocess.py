"""Evaluation geometry presets (PROTOCOLS.md): the image and its label are cropped and
resized together, so the label is what the method is scored against.

- ``diffseg``: centre-crop the largest square, resize to ``resolution`` (512) x same;
  image bilinear without antialias (DiffSeg's TF resize), label nearest.
- ``stego``: short side to ``resolution`` (320), centre crop ``resolution`` squared;
  image bilinear with antialias (STEGO / PiCIE resize PIL images, whose bilinear filter
  is antialiased), label nearest.
- ``original``: unchanged.

Nearest uses pixel centres (``nearest-exact``), as PIL's NEAREST and TF2's resize do;
torch's legacy ``nearest`` shifts labels by up to one source pixel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .config import PREPROCESS_PRESETS

DEFAULT_RESOLUTION: Dict[str, int] = {"diffseg": 512, "stego": 320}
DEFAULT_ANTIALIAS: Dict[str, bool] = {"diffseg": False, "stego": True}


@dataclass(frozen=True)
class Preprocess:
    preset: str = "original"
    resolution: Optional[int] = None
    antialias: Optional[bool] = None

    def __post_init__(self) -> None:
        if self.preset not in PREPROCESS_PRESETS:
            raise ValueError(
                f"dataset.preprocess={self.preset!r} is not a preset; choose one of {', '.join(PREPROCESS_PRESETS)}"
            )
        if self.resolution is not None and self.resolution <= 0:
            raise ValueError(f"dataset.resolution must be a positive side length, got {self.resolution}")

    @property
    def side(self) -> Optional[int]:
        if self.preset == "original":
            return None
        return self.resolution or DEFAULT_RESOLUTION[self.preset]

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, dict]:
        """image uint8 (3, H, W), label int64 (H, W) -> both in the evaluation geometry,
        plus what was done (for the sample's meta)."""
        if self.preset == "original":
            return image, label, {}
        side = self.side
        antialias = DEFAULT_ANTIALIAS[self.preset] if self.antialias is None else self.antialias
        height, width = label.shape
        if self.preset == "diffseg":
            crop = center_crop_box(height, width, min(height, width), min(height, width))
            image, label = _crop(image, crop), _crop(label, crop)
            image, label = resize_image(image, (side, side), antialias), resize_label(label, (side, side))
            return image, label, {"crop_box": crop, "resized_to": (side, side)}
        short, long = min(height, width), max(height, width)
        scaled_long = int(side * long / short)  # torchvision's Resize(int) rounding
        scaled = (side, scaled_long) if height <= width else (scaled_long, side)
        image, label = resize_image(image, scaled, antialias), resize_label(label, scaled)
        crop = center_crop_box(scaled[0], scaled[1], side, side)
        return _crop(image, crop), _crop(label, crop), {"resized_to": scaled, "crop_box": crop}


def center_crop_box(height: int, width: int, crop_h: int, crop_w: int) -> Tuple[int, int, int, int]:
    """(top, left, h, w) of a centred crop, offsets rounded as torchvision's CenterCrop."""
    return int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0)), crop_h, crop_w


def _crop(tensor: torch.Tensor, box: Tuple[int, int, int, int]) -> torch.Tensor:
    top, left, h, w = box
    return tensor[..., top:top + h, left:left + w].contiguous()


def resize_image(image: torch.Tensor, size: Tuple[int, int], antialias: bool) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, *size), bilinear (half-pixel centres), rounded."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=antialias)
    return resized[0].round_().clamp_(0, 255).to(torch.uint8)


def resize_label(label: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """int64 (H, W) -> int64 size, nearest (exact in float32: labels are < 2**24)."""
    if tuple(label.shape) == tuple(size):
        return label
    resized = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")
    return resized[0, 0].long()
