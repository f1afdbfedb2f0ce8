"""Evaluation geometry presets against arrays computed by each reference's own rules.

* ``diffseg``: google/diffseg ``data/coco/coco_data.py`` / ``data/cityscapes/cityscapes_data.py``
  ``process_image``: floor-divided centre crop, ``tf.image.resize`` bilinear (half-pixel
  centres, float32 output, no antialias) and nearest (half-pixel centres, float32 scale).
  The TF kernels' rules are written out here in numpy.
* ``stego``: STEGO ``get_transform`` / PiCIE: torchvision ``Resize(int)`` sizes and
  ``CenterCrop`` offsets, PIL ``Image.BILINEAR`` (image) and ``Image.NEAREST`` (label).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from benchmark.data.preprocess import Preprocess

SIZES = [(1, 4), (3, 26), (425, 640), (429, 640), (513, 515)]


def _inputs(h: int, w: int):
    rng = np.random.default_rng(h * 1000 + w)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.integers(0, 27, (h, w)).astype(np.int64)
    label[rng.random((h, w)) < 0.1] = 255
    return image, label


# ---------------------------------------------------------------- TF2 rules (diffseg)
def tf_half_pixel_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """tf.image.resize(method=bilinear, antialias=False) of (H, W, C): float32, TF's
    compute_interpolation_weights (in = (o + 0.5)·scale − 0.5, lower = max(floor, 0),
    upper = min(ceil, n − 1)) and top/bottom lerps."""
    x = x.astype(np.float32)

    def weights(n_in, n_out):
        scale = np.float32(n_in / n_out)
        src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
        lower_f = np.floor(src)
        lower = np.maximum(lower_f.astype(np.int64), 0)
        upper = np.minimum(np.ceil(src).astype(np.int64), n_in - 1)
        return lower, upper, (src - lower_f).astype(np.float32)

    yl, yu, ylerp = weights(x.shape[0], out_h)
    xl, xu, xlerp = weights(x.shape[1], out_w)
    tl, tr = x[yl][:, xl], x[yl][:, xu]
    bl, br = x[yu][:, xl], x[yu][:, xu]
    top = tl + (tr - tl) * xlerp[None, :, None]
    bottom = bl + (br - bl) * xlerp[None, :, None]
    return top + (bottom - top) * ylerp[:, None, None]


def tf_half_pixel_nearest(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """ResizeNearestNeighbor(half_pixel_centers=True): in = min(floor((o + 0.5)·scale), n − 1)."""

    def index(n_in, n_out):
        scale = np.float32(n_in / n_out)
        src = np.floor((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale).astype(np.int64)
        return np.clip(src, 0, n_in - 1)

    return x[index(x.shape[0], out_h)][:, index(x.shape[1], out_w)]


def diffseg_reference(image: np.ndarray, label: np.ndarray, resolution: int):
    h, w = label.shape
    c = min(h, w)
    top, left = (h - c) // 2, (w - c) // 2  # coco_data.py: w_start = (w - c) // 2
    image, label = image[top : top + c, left : left + c], label[top : top + c, left : left + c]
    return tf_half_pixel_bilinear(image, resolution, resolution), tf_half_pixel_nearest(label, resolution, resolution)


@pytest.mark.parametrize("h, w", SIZES)
def test_diffseg_preset_equals_the_tf_pipeline(h, w):
    image, label = _inputs(h, w)
    ref_image, ref_label = diffseg_reference(image, label, 512)
    out_image, out_label, meta = Preprocess("diffseg")(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(label))
    np.testing.assert_array_equal(out_label.numpy(), ref_label)
    vae = meta["vae_image"]
    assert vae.dtype == torch.float32  # the unrounded float image goes to the VAE
    np.testing.assert_allclose(vae.permute(1, 2, 0).numpy(), ref_image, atol=2e-3, rtol=0)
    assert torch.equal(out_image, vae.round().clamp(0, 255).to(torch.uint8))
    c = min(h, w)
    assert meta["crop_box"] == ((h - c) // 2, (w - c) // 2, c, c)


def test_diffseg_crop_floors_where_rounding_would_shift():
    # 640 x 425 (COCO): (640 - 425) / 2 = 107.5 -> DiffSeg crops at 107, round() at 108
    image, label = _inputs(640, 425)
    _, out_label, meta = Preprocess("diffseg", resolution=425)(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(label))
    assert meta["crop_box"] == (107, 0, 425, 425)
    np.testing.assert_array_equal(out_label.numpy(), label[107:532])
    assert "vae_image" not in meta  # no resize: the uint8 crop is the image


# --------------------------------------------------------------- PIL rules (stego)
def stego_reference(image: np.ndarray, label: np.ndarray, res: int):
    h, w = label.shape
    short, long = min(h, w), max(h, w)
    new_long = int(res * long / short)  # torchvision _compute_resized_output_size
    oh, ow = (res, new_long) if h <= w else (new_long, res)
    img = np.asarray(Image.fromarray(image).resize((ow, oh), Image.BILINEAR))
    lab = np.asarray(Image.fromarray(label.astype(np.int32), mode="I").resize((ow, oh), Image.NEAREST)).astype(np.int64)
    top, left = int(round((oh - res) / 2.0)), int(round((ow - res) / 2.0))  # CenterCrop
    return img[top : top + res, left : left + res], lab[top : top + res, left : left + res]


@pytest.mark.parametrize("h, w", SIZES)
def test_stego_preset_equals_the_pil_pipeline(h, w):
    image, label = _inputs(h, w)
    ref_image, ref_label = stego_reference(image, label, 320)
    out_image, out_label, _ = Preprocess("stego")(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(label))
    np.testing.assert_array_equal(out_label.numpy(), ref_label)
    np.testing.assert_array_equal(out_image.permute(1, 2, 0).numpy(), ref_image)


def test_pil_nearest_differs_from_torch_nearest_exact_on_3x26():
    # why the stego preset resizes labels with PIL: where (x + 0.5)·in/out is whole, PIL
    # takes the lower source pixel and torch's nearest-exact the upper one
    label = np.arange(3 * 26).reshape(3, 26)
    _, out_label, meta = Preprocess("stego")(torch.zeros(3, 3, 26, dtype=torch.uint8), torch.from_numpy(label))
    oh, ow = meta["resized_to"]
    exact = F.interpolate(torch.from_numpy(label)[None, None].float(), size=(oh, ow), mode="nearest-exact")[0, 0].long()
    top, left, hh, ww = meta["crop_box"]
    diff = (exact[top : top + hh, left : left + ww] != out_label).any(0).nonzero().flatten().tolist()
    assert len(diff) == 1  # one column of the evaluated label differs


@pytest.mark.slow
def test_the_runner_feeds_the_float_image_to_the_vae(tmp_path, monkeypatch):
    """preprocess=diffseg: the model encodes the unrounded float32 resize (DiffSeg feeds
    tf.image.resize's float output to the VAE), not its uint8 rounding."""
    from benchmark.compose import run_with_overrides
    from benchmark.models.diffusion import DiffusionModel

    seen = []
    original = DiffusionModel.encode_images

    def spy(self, images, extract, keys):
        seen.extend(image.dtype for image in images)
        return original(self, images, extract, keys)

    monkeypatch.setattr(DiffusionModel, "encode_images", spy)
    run_with_overrides(
        ["experiment=smoke", "dataset.n_images=1", "dataset.height=48", "dataset.width=60", "dataset.preprocess=diffseg",
         "dataset.resolution=128", "method.grid={}"],
        tmp_path / "run",
    )
    assert seen == [torch.float32]
