"""Evaluation geometry presets (PROTOCOLS.md): the image and its label are cropped and
resized together, so the label is what the method is scored against.

- ``diffseg`` (google/diffseg ``data/coco/coco_data.py`` and
  ``data/cityscapes/cityscapes_data.py``, ``process_image``): centre-crop the largest
  square with offsets ``(side − c) // 2`` (floor division), resize to ``resolution``
  (512) squared; image bilinear with half-pixel centres and no antialias
  (``tf.image.resize``), label nearest with half-pixel centres
  (``ResizeMethod.NEAREST_NEIGHBOR``: source ``floor((x + 0.5) · in/out)`` in float32, which
  torch's ``nearest-exact`` computes the same way). TF's resize returns float32: that
  unrounded image is what the official code rescales and feeds to the VAE, so the sample
  carries it as ``Sample.vae_image``; ``Sample.image`` is its rounded uint8 copy (display,
  CLIP, PAMR, cache keys).
- ``stego`` (STEGO ``src/data.py`` ``get_transform``, PiCIE ``data/cocostuff.py``): short
  side to ``resolution`` (320) with torchvision's ``Resize(int)`` sizes, centre crop
  ``resolution`` squared with torchvision's rounded offsets; both resizes are PIL's own
  (``Image.BILINEAR`` on the uint8 image, antialiased with PIL's fixed-point rounding, and
  ``Image.NEAREST`` on the label, which picks the lower source pixel where
  ``(x + 0.5) · in/out`` is whole; torch's ``nearest-exact`` picks the upper one). With
  ``dataset.antialias=false`` the image is resized by torch (bilinear, no antialias).
- ``original``: unchanged.

What cannot be matched: TensorFlow decodes JPEGs with its fast integer DCT (pixels differ
from PIL/libjpeg's by up to about 6 levels), and DiffSeg's keras_cv Stable Diffusion port is
not the diffusers UNet (same weights, other kernels).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
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
            side_c = min(height, width)
            crop = floor_crop_box(height, width, side_c, side_c)
            image, label = _crop(image, crop), _crop(label, crop)
            meta = {"crop_box": crop, "resized_to": (side, side)}
            if tuple(image.shape[-2:]) != (side, side):
                # the float32 resize is what DiffSeg feeds to the VAE (coco_data.py process_image)
                meta["vae_image"] = resize_image_float(image, (side, side), antialias)
                image = to_uint8(meta["vae_image"])
            return image, resize_label(label, (side, side)), meta
        short, long = min(height, width), max(height, width)
        scaled_long = int(side * long / short)  # torchvision's Resize(int) rounding
        scaled = (side, scaled_long) if height <= width else (scaled_long, side)
        if antialias:
            image = resize_image_pil(image, scaled)
        else:
            image = resize_image(image, scaled, antialias)
        label = resize_label_pil(label, scaled)
        crop = center_crop_box(scaled[0], scaled[1], side, side)
        return _crop(image, crop), _crop(label, crop), {"resized_to": scaled, "crop_box": crop}


def center_crop_box(height: int, width: int, crop_h: int, crop_w: int) -> Tuple[int, int, int, int]:
    """(top, left, h, w) of a centred crop, offsets rounded as torchvision's CenterCrop."""
    return int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0)), crop_h, crop_w


def floor_crop_box(height: int, width: int, crop_h: int, crop_w: int) -> Tuple[int, int, int, int]:
    """(top, left, h, w) of a centred crop with floor-divided offsets, as DiffSeg's
    ``process_image`` (``w_start = (w - c) // 2``; data/coco/coco_data.py)."""
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def _crop(tensor: torch.Tensor, box: Tuple[int, int, int, int]) -> torch.Tensor:
    top, left, h, w = box
    return tensor[..., top:top + h, left:left + w].contiguous()


def resize_image_float(image: torch.Tensor, size: Tuple[int, int], antialias: bool) -> torch.Tensor:
    """uint8 (3, H, W) -> float32 (3, *size) in [0, 255], bilinear with half-pixel centres,
    unrounded (``tf.image.resize`` returns float32)."""
    return F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=antialias)[0]


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """float (3, H, W) in [0, 255] -> uint8, rounded to nearest."""
    return image.round().clamp_(0, 255).to(torch.uint8)


def resize_image(image: torch.Tensor, size: Tuple[int, int], antialias: bool) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, *size), bilinear (half-pixel centres), rounded."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return to_uint8(resize_image_float(image, size, antialias))


def resize_image_pil(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, *size) by PIL's ``Image.BILINEAR`` (antialiased; what
    torchvision's ``Resize`` does to a PIL image in STEGO and PiCIE)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    from PIL import Image

    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    out = np.asarray(pil.resize((size[1], size[0]), Image.BILINEAR))
    return torch.from_numpy(out.copy()).permute(2, 0, 1).contiguous()


def resize_label_pil(label: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """int64 (H, W) -> int64 size by PIL's ``Image.NEAREST`` on a 32-bit integer image
    (STEGO ``get_transform(is_label=True)``: ``T.Resize(res, Image.NEAREST)``).

    Raises ValueError for label values outside the int32 range (PIL's "I" mode).
    """
    if tuple(label.shape) == tuple(size):
        return label
    from PIL import Image

    if label.numel() and (int(label.min()) < -(2**31) or int(label.max()) >= 2**31):
        raise ValueError(f"label values {int(label.min())}..{int(label.max())} do not fit PIL's 32-bit label image")
    pil = Image.fromarray(label.numpy().astype(np.int32), mode="I")
    out = np.asarray(pil.resize((size[1], size[0]), Image.NEAREST))
    return torch.from_numpy(out.astype(np.int64))


def resize_label(label: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """int64 (H, W) -> int64 size, nearest (exact in float32: labels are < 2**24)."""
    if tuple(label.shape) == tuple(size):
        return label
    resized = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")
    return resized[0, 0].long()
