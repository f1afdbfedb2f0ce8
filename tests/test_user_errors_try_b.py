"""User errors found by trying the harness as a new user (issue 14 items 5-7, 10): value
checks of the method, metric and model are config errors (message alone, exit 2); a data
error raised in a DataLoader worker prints its own message, not the worker's traceback;
prediction files with out-of-range values name the file; benchmark.report rebuilds the
figures of a method.void_value run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.compose import run_with_overrides
from benchmark.config import ConfigError, InputError, error_message, is_user_error

TINY = ["model=tiny", "dataset=synthetic", "dataset.n_images=1", "dataset.num_workers=0", "run.progress=false"]


class _BadLabels:
    """A dataset whose every item raises the data layer's InvalidLabelError."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        from benchmark.data.errors import InvalidLabelError

        raise InvalidLabelError("label file /data/x.png has PIL mode 'RGB'\n(a second line)", "/data/x.png", "x")


def test_error_raised_in_a_dataloader_worker_keeps_its_own_message():
    from torch.utils.data import DataLoader

    with pytest.raises(Exception) as caught:
        list(DataLoader(_BadLabels(), num_workers=1))
    err = caught.value
    assert is_user_error(err)
    assert "Caught InvalidLabelError" in str(err)  # torch's wrapper, with the worker's traceback
    assert error_message(err) == "label file /data/x.png has PIL mode 'RGB'\n(a second line)"


@pytest.mark.parametrize("overrides,expect", [
    (["method.extract.image_size=200"], "method.extract.image_size=200"),
    (["method=seediff", "method.candidates=all", "method.extract.image_size=192", "method.ca_resolution=16"],
     "method.ca_resolution=16"),
])
def test_value_checks_of_method_and_model_are_config_errors(tmp_path, overrides, expect):
    with pytest.raises(ConfigError, match=expect):
        run_with_overrides(TINY + overrides, tmp_path / "run")
    assert not list((tmp_path / "run").glob("records*"))


def _folder_with_predictions(tmp_path: Path, pred: np.ndarray) -> list:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(root / "images" / "img0.png")
    Image.fromarray(np.array([[0, 0, 1, 1], [0, 0, 1, 255]], np.uint8), mode="L").save(root / "labels" / "img0.png")
    (root / "classes.txt").write_text("left\nright\n")
    (tmp_path / "preds").mkdir()
    Image.fromarray(pred.astype(np.uint8), mode="L").save(tmp_path / "preds" / "img0.png")
    return ["dataset=folder", f"dataset.root={root}", "dataset.classes_file=classes.txt", "dataset.num_workers=0",
            "method=predictions", f"method.dir={tmp_path / 'preds'}", "metric=miou", "run.progress=false"]


def test_void_value_that_is_a_class_id_is_a_config_error(tmp_path):
    args = _folder_with_predictions(tmp_path, np.zeros((2, 4)))
    with pytest.raises(ConfigError, match=r"method.void_value=1 is one of the valid class ids"):
        run_with_overrides(args + ["method.void_value=1"], tmp_path / "run")


def test_out_of_range_prediction_file_is_an_input_error_naming_file_and_void_value(tmp_path):
    args = _folder_with_predictions(tmp_path, np.array([[0, 255, 1, 1], [0, 0, 1, 1]]))
    with pytest.raises(InputError) as err:
        run_with_overrides(args, tmp_path / "run")
    text = str(err.value)
    assert str(tmp_path / "preds" / "img0.png") in text and "[255]" in text and "method.void_value=255" in text


def test_report_rebuilds_the_figures_of_a_void_value_run(tmp_path):
    from benchmark.report import report

    args = _folder_with_predictions(tmp_path, np.array([[0, 255, 1, 1], [0, 0, 255, 255]]))
    run_with_overrides(args + ["method.void_value=255", "run.report=false"], tmp_path / "run")
    report([str(tmp_path / "run")])
    assert (tmp_path / "run" / "examples" / "figure_img0.png").is_file()
    assert (tmp_path / "run" / "report.html").is_file()


def test_full_disk_is_a_user_error_and_a_bug_in_writing_is_not(tmp_path):
    import errno

    from benchmark.fileio import FileWriteError, naming_path

    with pytest.raises(FileWriteError) as full:
        with naming_path(tmp_path / "records.rank0.jsonl", "records"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert is_user_error(full.value) and str(tmp_path / "records.rank0.jsonl") in error_message(full.value)
    assert not is_user_error(FileWriteError("cannot write x at /p: [Errno 5] I/O error", "/p", errno.EIO))


@pytest.mark.parametrize("n_cols", [1, 2, 5])
def test_show_figures_keep_title_and_pipeline_mark_inside_the_figure(tmp_path, n_cols):
    """benchmark.show's narrow figures (score_maps.png has 2 columns) cut their title and the
    PIPELINE CHECK mark at both edges before (issue 15: every picture carries the mark)."""
    import torch

    from benchmark.show import heat_grid

    captured = []
    import matplotlib.pyplot as plt

    real_close = plt.close
    title = "fused cross-attention before and after self-attention — diffsegmenter, model tiny, image 2007_000033"
    try:
        plt.close = lambda fig=None: captured.append(fig)
        heat_grid(np.zeros((32, 48, 3), np.uint8), [("w", [(f"c{i}", torch.rand(4, 4)) for i in range(n_cols)])],
                  tmp_path / "grid.png", title, pipeline_check=True)
    finally:
        plt.close = real_close
    fig = captured[0]
    fig.canvas.draw()
    text = fig._suptitle
    assert "PIPELINE CHECK" in text.get_text() and "2007_000033" in text.get_text()
    box, page = text.get_window_extent(), fig.bbox
    assert box.x0 >= page.x0 and box.x1 <= page.x1, (n_cols, box, page)
    real_close(fig)


@pytest.mark.parametrize("way", ["--config-dir", "--config-dir=", "hydra.searchpath=[file://"])
def test_a_config_folder_that_does_not_exist_is_named(tmp_path, capsys, way):
    from benchmark.__main__ import UsageError, check_group_choices

    missing = tmp_path / "my_conf"
    args = {"--config-dir": ["--config-dir", str(missing)], "--config-dir=": [f"--config-dir={missing}"],
            "hydra.searchpath=[file://": [f"hydra.searchpath=[file://{missing}]"]}[way]
    with pytest.raises(UsageError):
        check_group_choices(args + ["experiment=mine"])
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err
    missing.mkdir()
    (missing / "experiment").mkdir()
    (missing / "experiment" / "mine.yaml").write_text("# @package _global_\n")
    check_group_choices(args + ["experiment=mine"])


def test_folder_reads_classes_txt_under_the_root_as_its_layout_shows(tmp_path):
    """datasets/README.md's tree for dataset=folder puts classes.txt under the root; without
    dataset.classes_file it failed with 'no class names'."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from dataset_layouts import write_folder

    from benchmark.data import build_dataset, dataset_config

    write_folder(tmp_path / "mine", num_classes=3)
    ds = build_dataset(dataset_config({"name": "folder", "root": str(tmp_path / "mine"), "num_workers": 0}))
    assert list(ds.class_names) == ["thing0", "thing1", "thing2"]
    # an explicit setting still wins
    ds = build_dataset(dataset_config({"name": "folder", "root": str(tmp_path / "mine"), "num_workers": 0,
                                       "class_names": ["a", "b", "c"]}))
    assert list(ds.class_names) == ["a", "b", "c"]
    # and without the file the error still says what to set
    (tmp_path / "mine" / "classes.txt").unlink()
    with pytest.raises(ValueError, match="dataset.classes_file"):
        build_dataset(dataset_config({"name": "folder", "root": str(tmp_path / "mine"), "num_workers": 0}))


def test_a_16_bit_grey_image_is_read_as_its_picture_not_clipped_to_white(tmp_path):
    from benchmark.data.io import read_image

    grey = np.arange(0, 65536, 256, dtype=np.uint16).reshape(16, 16)  # 0, 256, ..., 65280
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    rgb = read_image(tmp_path / "g16.png", str(tmp_path / "g16.png"), "g16")
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], (grey >> 8).astype(np.uint8))
    assert (rgb[..., 0] == rgb[..., 2]).all()


@pytest.mark.parametrize("args,expect", [
    (["2007_000033", "dataset=voc21", "dataset.root=/nowhere/voc"], "dataset root not found: /nowhere/voc"),
    (["img.png", "--points", "0"], "--points 0"),
])
def test_show_prints_user_errors_without_traceback(tmp_path, capsys, monkeypatch, args, expect):
    from benchmark.show import main

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(args + ["--out", str(tmp_path / "show")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err
