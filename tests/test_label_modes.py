"""Label PNGs in every single-channel encoding are read as the stored values (issue 14.6)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchmark.data.errors import InvalidLabelError
from benchmark.data.io import read_label
from tests.png_encodings import png_bytes, write_png

# 3 x 5 maps: odd width so that sub-byte rows end in a partly used byte
BASE = np.array([[0, 1, 2, 3, 0], [3, 2, 1, 0, 1], [1, 1, 0, 0, 2]])


@pytest.mark.parametrize("depth", [1, 2, 4, 8, 16])
def test_grey_png_of_every_bit_depth_reads_the_stored_values(tmp_path, depth):
    values = BASE % 2 if depth == 1 else (BASE * (2**depth - 1)) // 3
    path = write_png(tmp_path / "label.png", values, depth, colour_type=0)
    got = read_label(path, str(path))
    assert np.issubdtype(got.dtype, np.integer)
    np.testing.assert_array_equal(got, values)
    # the same file handed over as bytes (HF datasets) reads the same
    np.testing.assert_array_equal(read_label(path.read_bytes(), "label.png"), values)


@pytest.mark.parametrize("depth", [1, 2, 4, 8])
def test_palette_png_reads_indices_not_colours(tmp_path, depth):
    n = 2**depth
    palette = np.array([[200 - i % 200, 7 * i % 256, 99] for i in range(n)])  # colours unrelated to indices
    values = (BASE * (n - 1)) // 3
    path = write_png(tmp_path / "label.png", values, depth, colour_type=3, palette=palette)
    np.testing.assert_array_equal(read_label(path, str(path)), values)


def test_grey_alpha_with_opaque_alpha_reads_the_grey_values(tmp_path):
    grey8 = BASE * 60
    path = write_png(tmp_path / "la8.png", np.stack([grey8, np.full_like(grey8, 255)], -1), 8, colour_type=4)
    np.testing.assert_array_equal(read_label(path, str(path)), grey8)
    # 16-bit: values above 255 whose low bytes Pillow's own decoding would drop
    grey16 = BASE * 1000 + 7
    path = write_png(tmp_path / "la16.png", np.stack([grey16, np.full_like(grey16, 65535)], -1), 16, colour_type=4)
    got = read_label(path, str(path))
    np.testing.assert_array_equal(got, grey16)


def test_grey_alpha_with_transparent_pixels_is_refused_naming_the_mode(tmp_path):
    alpha = np.full_like(BASE, 255)
    alpha[0, 0] = 0
    path = write_png(tmp_path / "la.png", np.stack([BASE, alpha], -1), 8, colour_type=4)
    with pytest.raises(InvalidLabelError, match=r"la\.png.*mode 'LA'.*grey\+alpha.*1 of 15 pixels not fully opaque"):
        read_label(path, str(path))
    alpha16 = np.full_like(BASE, 65535)
    alpha16[1, 1] = 65534
    path = write_png(tmp_path / "la16.png", np.stack([BASE, alpha16], -1), 16, colour_type=4)
    with pytest.raises(InvalidLabelError, match=r"la16\.png.*colour type 4.*16 bits.*1 of 15 pixels"):
        read_label(path, str(path))


@pytest.mark.parametrize(
    "samples, depth, colour_type, mode",
    [
        (np.stack([BASE] * 3, -1), 8, 2, "RGB"),
        (np.stack([BASE] * 4, -1), 8, 6, "RGBA"),
        (np.stack([BASE] * 3, -1), 16, 2, "RGB"),
    ],
)
def test_colour_pngs_are_refused_naming_their_actual_mode(tmp_path, samples, depth, colour_type, mode):
    path = write_png(tmp_path / "colour.png", samples, depth, colour_type)
    with pytest.raises(InvalidLabelError, match=rf"colour\.png has PIL mode '{mode}' \(PNG colour type {colour_type}.*{depth} bits"):
        read_label(path, str(path))


def test_float_tiff_is_refused_naming_mode_f(tmp_path):
    path = tmp_path / "label.tiff"
    Image.fromarray(BASE.astype(np.float32), mode="F").save(path)
    with pytest.raises(InvalidLabelError, match=r"label\.tiff has PIL mode 'F'"):
        read_label(path, str(path))


def test_pillow_written_1_bit_and_16_bit_pngs_read_as_values(tmp_path):
    one_bit = tmp_path / "one.png"
    Image.fromarray((BASE % 2).astype(bool)).save(one_bit)  # Pillow writes mode "1" as a 1-bit PNG
    assert Image.open(one_bit).mode == "1"
    np.testing.assert_array_equal(read_label(one_bit, str(one_bit)), BASE % 2)
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray((BASE * 20000).astype(np.uint16)).save(sixteen)
    np.testing.assert_array_equal(read_label(sixteen, str(sixteen)), BASE * 20000)


def test_one_bit_labels_and_predictions_are_scored_from_the_cli(tmp_path):
    """The issue's smallest input: a 1-bit label PNG (and a 1-bit prediction) in a run."""
    from benchmark.compose import run_with_overrides

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / "img0.png")
    label = np.zeros((4, 4), bool)
    label[:, 2:] = True
    Image.fromarray(label).save(root / "labels" / "img0.png")  # mode "1"
    (root / "classes.txt").write_text("left\nright\n")
    pred = label.copy()
    pred[:, 2] = False  # 4 "right" pixels predicted "left"
    (tmp_path / "preds").mkdir()
    Image.fromarray(pred).save(tmp_path / "preds" / "img0.png")
    out = run_with_overrides(
        ["dataset=folder", f"dataset.root={root}", "dataset.classes_file=classes.txt", "method=predictions",
         f"method.dir={tmp_path / 'preds'}", "metric=miou", "run.progress=false"],
        tmp_path / "run",
    )
    m = out.payload["results"][0]["metrics"]
    assert m["per_class_IoU"]["left"] == pytest.approx(200 / 3) and m["per_class_IoU"]["right"] == pytest.approx(50.0)


def test_colour_prediction_is_refused_naming_file_and_mode(tmp_path):
    from benchmark.prediction_files import load_prediction

    (tmp_path / "img0.png").write_bytes(png_bytes(np.stack([BASE] * 3, -1), 8, 2))
    with pytest.raises(ValueError, match=r"img0.*img0\.png has PIL mode 'RGB'"):
        load_prediction(str(tmp_path), "img0", (3, 5))
