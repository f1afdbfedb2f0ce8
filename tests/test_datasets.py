"""Dataset layer: every config read from fixture trees in the official layouts."""
from __future__ import annotations

import dataclasses
import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

import dataset_layouts as layouts
from benchmark.data import (
    DATASET_SCHEMAS,
    DatasetFileError,
    DatasetNotFoundError,
    InvalidLabelError,
    MissingFileError,
    SegmentationDataset,
    SkippedSample,
    build_dataset,
    dataset_config,
    label_to_train_ids,
    make_loader,
)
from benchmark.data.preprocess import Preprocess, resize_image, resize_label
from benchmark.data.reference import CURATED_COCOSTUFF27_SHA256, class_names, curated_cocostuff27_ids
from benchmark.types import Sample

REPO = Path(__file__).resolve().parents[1]

# config -> (fixture writer returning the expected labels, README section, number of classes)
OFFICIAL = {
    "voc21": (lambda root: layouts.write_voc(root, config="voc21"), "Pascal VOC 2012", 21),
    "voc20": (lambda root: layouts.write_voc(root, config="voc20"), "Pascal VOC 2012", 20),
    "context60": (lambda root: layouts.write_context(root, config="context60"), "Pascal Context", 60),
    "context59": (lambda root: layouts.write_context(root, config="context59"), "Pascal Context", 59),
    "cocostuff27": (lambda root: layouts.write_cocostuff(root, config="cocostuff27"), "COCO-Stuff", 27),
    "cocostuff171": (lambda root: layouts.write_cocostuff(root, config="cocostuff171"), "COCO-Stuff", 171),
    "coco_object": (lambda root: layouts.write_coco_object(root), "COCO-Object", 81),
    "cityscapes27": (lambda root: layouts.write_cityscapes(root, config="cityscapes27"), "Cityscapes", 27),
    "cityscapes19": (lambda root: layouts.write_cityscapes(root, config="cityscapes19"), "Cityscapes", 19),
    "ade20k": (lambda root: layouts.write_ade20k(root, config="ade20k"), "ADE20K", 150),
    "voc20_diffcut": (lambda root: layouts.write_voc(root, config="voc20_diffcut"), "Pascal VOC 2012", 21),
    "context59_diffcut": (lambda root: layouts.write_context(root, config="context59_diffcut"), "Pascal Context", 60),
    "coco_object_diffcut": (lambda root: layouts.write_coco_object(root, config="coco_object_diffcut"),
                            "COCO-Object", 81),
    "ade20k_diffcut": (lambda root: layouts.write_ade20k(root, config="ade20k_diffcut"), "ADE20K", 150),
}
#: configs whose ids come from the shipped curated list (2175 ids; the fixtures hold a few)
CURATED = {"cocostuff27", "coco_object_diffcut"}
# labels where the protocol ignores pixels the fixtures contain (context60 / coco_object ignore nothing)
HAS_IGNORED = {"voc21", "voc20", "context59", "cocostuff27", "cocostuff171", "cityscapes27", "cityscapes19", "ade20k",
               "ade20k_diffcut"}


def official_config(name: str, root: Path, expected: dict, **overrides) -> dict:
    cfg = {"name": name, "root": str(root), "preprocess": "original"}
    if name in CURATED:  # the curated list names 2175 images; the fixture has a few
        cfg["ids"] = sorted(expected)
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def official_trees(tmp_path_factory):
    """One fixture tree per official config: name -> (root, expected labels)."""
    trees = {}
    for name, (writer, _, _) in OFFICIAL.items():
        root = tmp_path_factory.mktemp(name)
        trees[name] = (root, writer(root))
    return trees


# ----------------------------------------------------------------- official configs
@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_ids_classes_and_decoded_labels(name, official_trees):
    root, expected = official_trees[name]
    ds = build_dataset(official_config(name, root, expected))
    assert ds.ids == sorted(expected)
    assert ds.num_classes == OFFICIAL[name][2] == len(ds.class_names)
    assert ds.ignore_index == 255 and ds.root == str(root) and ds.skipped == []
    saw_ignored = False
    for index, image_id in enumerate(ds.ids):
        sample = ds[index]
        assert isinstance(sample, Sample) and sample.image_id == image_id
        assert sample.image.dtype == torch.uint8 and sample.image.shape == (3, *expected[image_id].shape)
        assert sample.label.dtype == torch.int64
        np.testing.assert_array_equal(sample.label.numpy(), expected[image_id])
        values = set(np.unique(sample.label.numpy()).tolist())
        assert values <= set(range(ds.num_classes)) | {255}
        saw_ignored |= 255 in values
        assert sample.meta["orig_size"] == expected[image_id].shape
        assert Path(sample.meta["image_path"]).is_file() and Path(sample.meta["label_path"]).is_file()
    assert saw_ignored == (name in HAS_IGNORED)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_count_warning_names_both_numbers(name, official_trees, caplog):
    root, expected = official_trees[name]
    with caplog.at_level(logging.WARNING, logger="benchmark.data"):
        ds = build_dataset(official_config(name, root, expected))
    published = {"voc21": 1449, "voc20": 1449, "context60": 5105, "context59": 5105, "cocostuff27": 2175,
                 "cocostuff171": 5000, "coco_object": 5000, "cityscapes27": 500, "cityscapes19": 500,
                 "ade20k": 2000, "ade20k_diffcut": 2000, "voc20_diffcut": 1449, "context59_diffcut": 5105,
                 "coco_object_diffcut": 2175}[name]
    assert ds.expected_count == published
    warnings = [r for r in caplog.records if r.name == "benchmark.data" and r.levelno == logging.WARNING]
    if name in CURATED:  # the split is the shipped list itself: 2175 = 2175
        assert ds.found_count == 2175 and not warnings
    else:
        assert len(warnings) == 1
        assert f"found {len(expected)} images" in warnings[0].getMessage()
        assert str(published) in warnings[0].getMessage()


@pytest.mark.parametrize("name", sorted(OFFICIAL))
@pytest.mark.parametrize("preset,side", [("diffseg", 40), ("stego", 20), ("original", None)])
def test_preprocessing_shapes(name, preset, side, official_trees):
    root, expected = official_trees[name]
    ds = build_dataset(official_config(name, root, expected, preprocess=preset, resolution=side))
    for index, image_id in enumerate(ds.ids):
        sample = ds[index]
        shape = expected[image_id].shape if preset == "original" else (side, side)
        assert tuple(sample.image.shape) == (3, *shape) and tuple(sample.label.shape) == shape
        assert sample.image.dtype == torch.uint8 and sample.label.dtype == torch.int64
        assert set(np.unique(sample.label.numpy())) <= set(np.unique(expected[image_id]))


def test_preset_default_sides_and_yaml_defaults(official_trees):
    root, expected = official_trees["cocostuff27"]
    cfg = OmegaConf.load(REPO / "conf/dataset/cocostuff27.yaml")
    cfg.root, cfg.ids = str(root), sorted(expected)
    sample = build_dataset(cfg)[0]
    assert cfg.preprocess == "diffseg" and tuple(sample.label.shape) == (512, 512)
    assert tuple(build_dataset(dict(cfg, preprocess="stego"))[0].image.shape) == (3, 320, 320)


def test_diffseg_crop_without_resize_is_the_centre_square(official_trees):
    root, expected = official_trees["voc21"]  # fixtures are 24 x 32
    ds = build_dataset(official_config("voc21", root, expected, preprocess="diffseg", resolution=24))
    sample = ds[0]
    np.testing.assert_array_equal(sample.label.numpy(), expected[ds.ids[0]][:, 4:28])
    assert sample.meta["crop_box"] == (0, 4, 24, 24)
    image = np.array(Image.open(sample.meta["image_path"]).convert("RGB"))
    np.testing.assert_array_equal(sample.image.permute(1, 2, 0).numpy(), image[:, 4:28])


def test_stego_resizes_short_side_then_crops(official_trees):
    root, expected = official_trees["voc21"]
    ds = build_dataset(official_config("voc21", root, expected, preprocess="stego", resolution=48))
    sample = ds[0]
    # 24 x 32 -> 48 x 64 (exact factor 2: nearest repeats pixels), then the centre 48 x 48
    doubled = expected[ds.ids[0]].repeat(2, axis=0).repeat(2, axis=1)
    np.testing.assert_array_equal(sample.label.numpy(), doubled[:, 8:56])
    assert sample.meta["resized_to"] == (48, 64) and sample.meta["crop_box"] == (0, 8, 48, 48)


def test_resize_helpers():
    label = torch.arange(12).reshape(3, 4)
    assert torch.equal(resize_label(label, (6, 8)), label.repeat_interleave(2, 0).repeat_interleave(2, 1))
    # downscale by 2 with pixel-centre nearest (PIL / TF2) picks the second pixel of each pair
    assert resize_label(torch.arange(8).reshape(1, 8), (1, 4)).tolist() == [[1, 3, 5, 7]]
    flat = torch.full((3, 10, 14), 77, dtype=torch.uint8)
    for antialias in (False, True):
        out = resize_image(flat, (5, 7), antialias)
        assert out.dtype == torch.uint8 and torch.all(out == 77)
    ramp = torch.arange(0, 256, 16, dtype=torch.uint8).repeat(3, 4, 1)  # (3, 4, 16)
    half = resize_image(ramp, (4, 8), antialias=False)  # bilinear without antialias: mean of pairs
    assert torch.equal(half[0, 0], (ramp[0, 0, 0::2].float() / 2 + ramp[0, 0, 1::2].float() / 2).round().to(torch.uint8))
    with pytest.raises(ValueError, match="preset"):
        Preprocess("pad")


# ----------------------------------------------------------------------- decoders
def test_label_decoders_hand_checked_values():
    raw = np.array([[0, 1, 20, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(label_to_train_ids(raw, "voc21"), [[0, 1, 20, 255]])
    np.testing.assert_array_equal(label_to_train_ids(raw, "voc20"), [[255, 0, 19, 255]])
    np.testing.assert_array_equal(label_to_train_ids(np.array([[0, 59]]), "context59"), [[255, 58]])
    # Cityscapes: road 7 -> 0, car 26 -> trainId 13, tunnel 16 -> ignored in 19, kept in 27
    city = np.array([[0, 6, 7, 16, 26, 33, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(label_to_train_ids(city, "cityscapes27"), [[255, 255, 0, 9, 19, 26, 255]])
    np.testing.assert_array_equal(label_to_train_ids(city, "cityscapes19"), [[255, 255, 0, 255, 13, 18, 255]])
    # COCO-Stuff fine 0 (person) -> person-things; fine 156 (sky-other) -> sky-stuff
    coarse = label_to_train_ids(np.array([[0, 156, 255]], dtype=np.uint16), "cocostuff27")
    names = class_names("cocostuff27")
    assert [names[c] for c in coarse[0, :2]] == ["person-things", "sky-stuff"] and coarse[0, 2] == 255
    assert label_to_train_ids(np.array([[0, 80]]), "coco_object").tolist() == [[0, 80]]


def test_ade20k_and_diffcut_mappings_hand_checked_values():
    # mmseg reduce_zero_label: 0 -> 255, 1 (wall) -> 0, 150 (flag) -> 149
    ade = np.array([[0, 1, 8, 150, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(label_to_train_ids(ade, "ade20k"), [[255, 0, 7, 149, 255]])
    assert class_names("ade20k")[0] == "wall" and class_names("ade20k")[7] == "bed" and len(class_names("ade20k")) == 150
    # DiffCut keeps raw values; 150 lies outside its 150-class histogram
    np.testing.assert_array_equal(label_to_train_ids(ade, "ade20k_diffcut"), [[0, 1, 8, 255, 255]])
    # VOC20+bg: background and the 255 borders are class 20; aeroplane 1 -> 0, tvmonitor 20 -> 19
    voc = np.array([[0, 1, 20, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(label_to_train_ids(voc, "voc20_diffcut"), [[20, 0, 19, 20]])
    np.testing.assert_array_equal(label_to_train_ids(np.array([[0, 1, 59]]), "context59_diffcut"), [[59, 0, 58]])
    # COCO fine ids: person 0 -> 0, toothbrush 89 -> 79, sky-other 156 and unlabeled 255 -> background 80
    coco = label_to_train_ids(np.array([[0, 12, 89, 156, 255]], dtype=np.uint8), "coco_object_diffcut")
    np.testing.assert_array_equal(coco, [[0, 11, 79, 80, 80]])
    with pytest.raises(InvalidLabelError, match="11"):  # no COCO category has fine id 11
        label_to_train_ids(np.array([[11]], dtype=np.uint8), "coco_object_diffcut")


@pytest.mark.parametrize("name,bad", [("voc21", 21), ("context60", 60), ("cocostuff27", 200), ("cocostuff171", 171),
                                      ("coco_object", 81), ("cityscapes19", 34), ("ade20k", 151),
                                      ("ade20k_diffcut", 151), ("voc20_diffcut", 21), ("context59_diffcut", 60)])
def test_undefined_label_values_are_errors(name, bad):
    with pytest.raises(InvalidLabelError, match=str(bad)):
        label_to_train_ids(np.array([[0, bad]], dtype=np.uint8), name)
    with pytest.raises(InvalidLabelError):
        label_to_train_ids(np.array([[0, 300]], dtype=np.uint16), name)


# ------------------------------------------------------------------- reference data
def test_reference_class_lists_and_synonyms(official_trees):
    from cityscapesscripts.helpers.labels import labels

    assert class_names("cityscapes27") == [l.name for l in labels if 7 <= l.id <= 33]
    assert class_names("voc20") == class_names("voc21")[1:] and class_names("context59") == class_names("context60")[1:]
    assert class_names("coco_object") == ["background"] + class_names("cocostuff171")[:80]
    ade = layouts.REPO / "datasets" / "classes" / "ovss_synonyms_ade20k.txt"
    assert [n.replace(" ", "") for n in class_names("ade20k")] == [l.split(",")[0] for l in ade.read_text().split()]
    for name, background in (("voc20_diffcut", 20), ("context59_diffcut", 59), ("coco_object_diffcut", 80)):
        root, expected = official_trees[name]
        ds = build_dataset(official_config(name, root, expected, limit=1))
        assert ds.background_class == background and ds.class_names[background] == "background"
        assert ds.class_names[:background] == class_names({"voc20_diffcut": "voc20", "context59_diffcut": "context59",
                                                           "coco_object_diffcut": "coco_object"}[name])[-background:]
    synonyms = layouts.REPO / "datasets" / "classes" / "ovss_synonyms_coco_stuff.txt"
    assert [n.replace(" ", "") for n in class_names("cocostuff171")] == synonyms.read_text().split()
    for name in ("voc21", "voc20", "context60", "context59", "cocostuff171", "coco_object", "cityscapes19", "ade20k"):
        root, expected = official_trees[name]
        ds = build_dataset(official_config(name, root, expected, limit=1))
        assert len(ds.class_synonyms) == ds.num_classes and all(ds.class_synonyms)
    assert not (REPO / "datasets" / "__init__.py").exists()


def test_curated_list_checksum(tmp_path, monkeypatch):
    ids = curated_cocostuff27_ids()
    assert len(ids) == 2175 == len(set(ids)) and all(len(i) == 12 and i.isdigit() for i in ids)
    copy = tmp_path / "datasets"
    shutil.copytree(REPO / "datasets", copy)
    listing = copy / "cocostuff27_val2017_curated.txt"
    listing.write_text(listing.read_text().replace(ids[5], "000000999999"))
    monkeypatch.setenv("BENCHMARK_DATASETS_DIR", str(copy))
    with pytest.raises(ValueError, match=CURATED_COCOSTUFF27_SHA256):
        curated_cocostuff27_ids()


# ------------------------------------------------------------------ missing pieces
@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_missing_root_names_path_and_readme_section(name, tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset({"name": name, "root": str(tmp_path / "nowhere")})
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message and "dataset.root" in message
    assert f"datasets/README.md, section '{OFFICIAL[name][1]}'" in message


def test_missing_default_roots_say_where_the_path_came_from(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCHMARK_DATA_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="BENCHMARK_DATA_ROOT") as err:
        build_dataset({"name": "context60"})
    assert str(tmp_path / "VOCdevkit" / "VOC2010") in str(err.value)
    monkeypatch.delenv("BENCHMARK_DATA_ROOT")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="~/data/cocostuff") as err:
        build_dataset({"name": "coco_object"})
    assert str(tmp_path / "data" / "cocostuff") in str(err.value)


def test_root_from_environment_and_home(tmp_path, monkeypatch):
    expected = layouts.write_voc(tmp_path / "env" / "VOCdevkit" / "VOC2012")
    monkeypatch.setenv("BENCHMARK_DATA_ROOT", str(tmp_path / "env"))
    assert build_dataset({"name": "voc21"}).ids == sorted(expected)
    monkeypatch.delenv("BENCHMARK_DATA_ROOT")
    layouts.write_cityscapes(tmp_path / "home" / "data" / "cityscapes")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert build_dataset({"name": "cityscapes27"}).root == str(tmp_path / "home" / "data" / "cityscapes")


@pytest.mark.parametrize("name,relative,what", [
    ("voc21", "ImageSets/Segmentation/val.txt", "split file"),
    ("context59", "SegmentationClassContext", "label folder"),
    ("cocostuff171", "annotations/val2017", "annotation folder"),
    ("cityscapes19", "leftImg8bit/val", "image folder"),
    ("ade20k", "annotations/validation", "annotation folder"),
    ("ade20k_diffcut", "images/validation", "image folder"),
])
def test_missing_split_file_or_folder(name, relative, what, tmp_path):
    OFFICIAL[name][0](tmp_path)
    target = tmp_path / relative
    target.unlink() if target.is_file() else shutil.rmtree(target)
    with pytest.raises(DatasetNotFoundError, match=what) as err:
        build_dataset({"name": name, "root": str(tmp_path)})
    assert str(target) in str(err.value) and f"'{OFFICIAL[name][1]}'" in str(err.value)


def _file_of(name: str, kind: str, root: Path, image_id: str) -> Path:
    """Where the official layout of ``name`` stores the image / label of ``image_id``."""
    if name.startswith(("voc", "context")):
        folder = {"image": "JPEGImages", "label": "SegmentationClass" + ("Context" if name.startswith("context") else "")}
        return root / folder[kind] / f"{image_id}{'.jpg' if kind == 'image' else '.png'}"
    if name.startswith("ade20k"):
        return root / ("images" if kind == "image" else "annotations") / "validation" / \
            f"{image_id}{'.jpg' if kind == 'image' else '.png'}"
    if name.startswith("coco"):
        suffix = {"cocostuff27": ".png", "cocostuff171": "_labelTrainIds.png", "coco_object": "_instanceTrainIds.png",
                  "coco_object_diffcut": ".png"}
        return root / "images" / "val2017" / f"{image_id}.jpg" if kind == "image" else \
            root / "annotations" / "val2017" / f"{image_id}{suffix[name]}"
    city = image_id.split("_")[0]
    return root / "leftImg8bit" / "val" / city / f"{image_id}_leftImg8bit.png" if kind == "image" else \
        root / "gtFine" / "val" / city / f"{image_id}_gtFine_labelIds.png"


@pytest.mark.parametrize("kind", ["image", "label"])
@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_missing_image_or_label_raises_or_skips(name, kind, tmp_path):
    expected = OFFICIAL[name][0](tmp_path)
    victim = sorted(expected)[1]
    missing = _file_of(name, kind, tmp_path, victim)
    missing.unlink()
    cfg = official_config(name, tmp_path, expected)
    with pytest.raises(MissingFileError, match=f"{kind} file not found") as err:
        build_dataset(cfg)
    assert str(missing) in str(err.value) and f"datasets/README.md, section '{OFFICIAL[name][1]}'" in str(err.value)
    ds = build_dataset(dict(cfg, on_error="skip"))
    assert ds.ids == sorted(expected)  # the count stays honest: the id is listed as skipped
    assert [s[0] for s in ds.skipped] == [victim]
    items = [ds[i] for i in range(len(ds))]
    assert isinstance(items[1], SkippedSample) and items[1].image_id == victim and kind in items[1].reason
    assert all(isinstance(items[i], Sample) for i in (0, 2))


def test_cocostuff27_without_ids_requires_the_whole_curated_list(official_trees):
    root, expected = official_trees["cocostuff27"]
    with pytest.raises(MissingFileError, match=f"{2175 - len(expected)} of 2175"):
        build_dataset({"name": "cocostuff27", "root": str(root)})
    ds = build_dataset({"name": "cocostuff27", "root": str(root), "curated": False})
    assert ds.ids == sorted(expected) and ds.expected_count == 5000


# --------------------------------------------------------------- corrupt / invalid files
def _voc_tree(tmp_path):
    expected = layouts.write_voc(tmp_path)
    return expected, sorted(expected)


def test_corrupt_image_is_named_or_skipped(tmp_path):
    expected, ids = _voc_tree(tmp_path)
    broken = tmp_path / "JPEGImages" / f"{ids[0]}.jpg"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated JPEG
    ds = build_dataset({"name": "voc21", "root": str(tmp_path)})
    with pytest.raises(DatasetFileError, match=str(broken)):
        ds[0]
    skipping = build_dataset({"name": "voc21", "root": str(tmp_path), "on_error": "skip"})
    item = skipping[0]
    assert isinstance(item, SkippedSample) and str(broken) in item.reason
    assert skipping.skipped == [(ids[0], item.reason)]
    assert isinstance(skipping[1], Sample)


def test_rgb_label_invalid_values_and_size_mismatch(tmp_path):
    expected, ids = _voc_tree(tmp_path)
    labels = tmp_path / "SegmentationClass"
    Image.open(labels / f"{ids[0]}.png").convert("RGB").save(labels / f"{ids[0]}.png")
    bad_values = np.array(Image.open(labels / f"{ids[1]}.png"))
    bad_values[0, :3] = 100
    layouts.write_label(labels / f"{ids[1]}.png", bad_values, palette=True)
    layouts.write_label(labels / f"{ids[2]}.png", expected[ids[2]][:-1])
    ds = build_dataset({"name": "voc21", "root": str(tmp_path)})
    with pytest.raises(InvalidLabelError, match="mode 'RGB'"):
        ds[0]
    with pytest.raises(InvalidLabelError, match=r"values \[100\]") as err:
        ds[1]
    assert str(labels / f"{ids[1]}.png") in str(err.value) and err.value.image_id == ids[1]
    with pytest.raises(DatasetFileError, match="32x24 but its label .* is 32x23"):
        ds[2]


# ----------------------------------------------------------------- ids and limit
def test_ids_limit_and_numbers_written_as_yaml_ints(official_trees):
    root, expected = official_trees["voc21"]
    ids = sorted(expected)
    ds = build_dataset({"name": "voc21", "root": str(root), "ids": [ids[2], ids[0]]})
    assert ds.ids == [ids[0], ids[2]] and ds.found_count == 3
    assert build_dataset({"name": "voc21", "root": str(root), "limit": 2}).ids == ids[:2]
    assert build_dataset({"name": "voc21", "root": str(root), "ids": ids[1:], "limit": 1}).ids == [ids[1]]
    unquoted = yaml.safe_load(f"[{ids[0]}]")[0]  # YAML reads 2007_000033 as the int 2007000033
    assert isinstance(unquoted, int)
    assert build_dataset({"name": "voc21", "root": str(root), "ids": [unquoted]}).ids == [ids[0]]
    coco_root, coco_expected = official_trees["coco_object"]
    first = sorted(coco_expected)[0]
    assert build_dataset({"name": "coco_object", "root": str(coco_root), "ids": [int(first)]}).ids == [first]
    with pytest.raises(KeyError, match="2099_000001"):
        build_dataset({"name": "voc21", "root": str(root), "ids": ["2099_000001"]})
    with pytest.raises(ValueError, match="limit"):
        build_dataset({"name": "voc21", "root": str(root), "limit": -1})


# ------------------------------------------------------------------------ loader
def test_loader_lists_same_samples_with_and_without_workers(official_trees):
    root, expected = official_trees["cityscapes19"]
    ds = build_dataset(official_config("cityscapes19", root, expected))
    order = [3, 0, 2]
    serial = [item for batch in make_loader(ds, order, batch_size=2, num_workers=0) for item in batch]
    batches = list(make_loader(ds, order, batch_size=2, num_workers=2))
    assert [len(b) for b in batches] == [2, 1] and all(isinstance(b, list) for b in batches)
    parallel = [item for batch in batches for item in batch]
    assert [s.image_id for s in parallel] == [ds.ids[i] for i in order] == [s.image_id for s in serial]
    for a, b in zip(serial, parallel):
        assert torch.equal(a.image, b.image) and torch.equal(a.label, b.label)
    with pytest.raises(IndexError):
        make_loader(ds, [len(ds)], 1, 0)


def test_loader_carries_skips_and_errors_from_workers(tmp_path):
    expected, ids = _voc_tree(tmp_path)
    (tmp_path / "JPEGImages" / f"{ids[1]}.jpg").write_bytes(b"not a jpeg")
    skipping = build_dataset({"name": "voc21", "root": str(tmp_path), "on_error": "skip"})
    items = [i for b in make_loader(skipping, range(3), 3, num_workers=1) for i in b]
    assert [type(i).__name__ for i in items] == ["Sample", "SkippedSample", "Sample"]
    strict = build_dataset({"name": "voc21", "root": str(tmp_path)})
    with pytest.raises(DatasetFileError, match=f"{ids[1]}.jpg"):
        list(make_loader(strict, range(3), 1, num_workers=1))


def test_datasets_pickle_for_spawned_workers(official_trees, tmp_path):
    root, expected = official_trees["cocostuff27"]
    table, _ = layouts.make_hf_dataset()
    table.save_to_disk(str(tmp_path / "hf"))
    for ds in (
        build_dataset(official_config("cocostuff27", root, expected)),
        build_dataset({"name": "synthetic"}),
        build_dataset({"name": "hf", "path": str(tmp_path / "hf"), "id_column": "name"}),
    ):
        clone = pickle.loads(pickle.dumps(ds))
        assert clone.ids == ds.ids and torch.equal(clone[0].label, ds[0].label)


@pytest.mark.slow
def test_loader_with_spawn_context(official_trees):
    root, expected = official_trees["voc20"]
    ds = build_dataset(official_config("voc20", root, expected))
    items = [s for b in make_loader(ds, range(len(ds)), 2, 2, multiprocessing_context="spawn") for s in b]
    assert [s.image_id for s in items] == ds.ids


# --------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_needs_no_files(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    ds = build_dataset(OmegaConf.load(REPO / "conf/dataset/synthetic.yaml"))
    assert len(ds) == 4 and ds.num_classes == 6 and ds.root is None and list(tmp_path.iterdir()) == []
    again = build_dataset({"name": "synthetic"})
    other = build_dataset({"name": "synthetic", "seed": 1})
    for i in range(len(ds)):
        a, b, c = ds[i], again[i], other[i]
        assert a.image.shape == (3, 64, 64) and a.image.dtype == torch.uint8 and a.label.dtype == torch.int64
        assert torch.equal(a.image, b.image) and torch.equal(a.label, b.label)
        assert not torch.equal(a.label, c.label)
        present = a.label.unique()
        assert 3 <= len(present) <= 5 and present.max() < 6
        # piecewise constant: each class's pixels share one colour up to the noise
        for cls in present:
            colours = a.image[:, a.label == cls].float()
            assert colours.std(dim=1).max() < 20
    bordered = build_dataset({"name": "synthetic", "ignore_boundary": 2, "height": 32, "width": 48, "n_images": 2})
    label = bordered[1].label
    assert label.shape == (32, 48) and 0 < (label == 255).float().mean() < 0.6
    with pytest.raises(ValueError, match="class_names"):
        build_dataset({"name": "synthetic", "class_names": ["a", "b"]})


# -------------------------------------------------------------------- folder / hf
def test_folder_dataset(tmp_path, caplog):
    expected = layouts.write_folder(tmp_path, reduce_zero_label=True)
    layouts.write_image(tmp_path / "images" / "orphan.jpg", np.random.default_rng(0), (20, 24))
    cfg = {"name": "folder", "root": str(tmp_path), "classes_file": "classes.txt", "reduce_zero_label": True}
    with caplog.at_level(logging.WARNING, logger="benchmark.data"):
        ds = build_dataset(cfg)
    assert "1 images have no label" in caplog.text
    assert ds.ids == sorted(expected) and ds.class_names == ["thing0", "thing1", "thing2", "thing3"]
    for index, image_id in enumerate(ds.ids):
        np.testing.assert_array_equal(ds[index].label.numpy(), expected[image_id])
        assert (ds[index].label == 255).any()
    # without reduce_zero_label, raw 4 is out of a 4-class range: an error naming the file
    with pytest.raises(InvalidLabelError, match=r"labels/a\.png"):
        build_dataset(dict(cfg, reduce_zero_label=False))[0]
    split = tmp_path / "split.txt"
    split.write_text("b\nzzz\n")
    with pytest.raises(MissingFileError, match="zzz"):
        build_dataset(dict(cfg, split_file="split.txt"))
    # root/classes.txt is the class list when none is configured; without it, an error
    assert build_dataset({"name": "folder", "root": str(tmp_path)}).class_names == ds.class_names
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(ValueError, match="class_names"):
        build_dataset({"name": "folder", "root": str(tmp_path)})


def test_folder_ignore_index_and_inline_class_names(tmp_path):
    expected = layouts.write_folder(tmp_path, num_classes=3, ignore_value=9)
    ds = build_dataset({"name": "folder", "root": str(tmp_path), "class_names": ["x", "y", "z"], "ignore_index": 9,
                        "expected_count": 3})
    for index, image_id in enumerate(ds.ids):
        np.testing.assert_array_equal(ds[index].label.numpy(), expected[image_id])
    assert ds.num_classes == 3


def test_hf_save_to_disk_dict_and_parquet(tmp_path):
    import datasets

    table, expected = layouts.make_hf_dataset(n=3)
    table.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"validation": table}).save_to_disk(str(tmp_path / "dict"))
    table.to_parquet(str(tmp_path / "val.parquet"))
    (tmp_path / "folder").mkdir()
    table.to_parquet(str(tmp_path / "folder" / "validation-00000-of-00001.parquet"))
    configs = [
        # load_dataset(<folder>): split from the file names; cache_dir keeps ~/.cache clean
        {"path": "folder", "root": str(tmp_path), "load_kwargs": {"cache_dir": str(tmp_path / "cache")}},
        {"path": str(tmp_path / "single")},
        {"path": "dict", "root": str(tmp_path)},
        {"path": "parquet", "data_files": [str(tmp_path / "val.parquet")], "class_names": [f"cls{i}" for i in range(4)],
         "load_kwargs": {"cache_dir": str(tmp_path / "cache")}},
    ]
    for extra in configs:
        ds = build_dataset({"name": "hf", "id_column": "name", **extra})
        assert ds.ids == sorted(expected) and ds.class_names == ["cls0", "cls1", "cls2", "cls3"]
        for index, image_id in enumerate(ds.ids):
            sample = ds[index]
            np.testing.assert_array_equal(sample.label.numpy(), expected[image_id])
            assert sample.image.shape == (3, 20, 24)
    by_row = build_dataset({"name": "hf", "path": str(tmp_path / "single"), "preprocess": "diffseg", "resolution": 16})
    assert by_row.ids == ["000000", "000001", "000002"] and by_row[2].label.shape == (16, 16)
    with pytest.raises(KeyError, match="'test' not in"):
        build_dataset({"name": "hf", "path": str(tmp_path / "dict"), "split": "test"})
    with pytest.raises(KeyError, match="mask"):
        build_dataset({"name": "hf", "path": str(tmp_path / "single"), "label_column": "mask"})
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        build_dataset({"name": "hf", "path": "./nothing_here"})


# ----------------------------------------------------------------------- configs
def test_every_dataset_yaml_matches_its_schema():
    files = sorted((REPO / "conf" / "dataset").glob("*.yaml"))
    assert sorted(p.stem for p in files) == sorted(DATASET_SCHEMAS)
    for path in files:
        data = yaml.safe_load(path.read_text())
        schema = DATASET_SCHEMAS[path.stem]
        assert data["name"] == path.stem
        assert list(data) == [f.name for f in dataclasses.fields(schema)], path.name
        assert isinstance(dataset_config(OmegaConf.load(path)), schema)
    assert yaml.safe_load((REPO / "conf/dataset/cityscapes27.yaml").read_text())["preprocess"] == "diffseg"
    assert yaml.safe_load((REPO / "conf/dataset/voc21.yaml").read_text())["preprocess"] == "original"


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="bogus"):
        build_dataset({"name": "voc21", "bogus": 1})
    with pytest.raises(ValueError, match="limit"):
        build_dataset({"name": "voc21", "limit": "many"})
    with pytest.raises(KeyError, match="Did you mean 'voc21'"):
        build_dataset({"name": "voc12"})
    with pytest.raises(ValueError, match="on_error"):
        build_dataset({"name": "synthetic", "on_error": "ignore"})
    with pytest.raises(ValueError, match="preprocess"):
        build_dataset({"name": "synthetic", "preprocess": "crop"})
    schema_instance = DATASET_SCHEMAS["synthetic"](n_images=2)
    assert isinstance(build_dataset(schema_instance), SegmentationDataset)


def test_diffseg_sample_carries_the_float_image_for_the_vae(official_trees):
    root, expected = official_trees["voc21"]  # 24 x 32 -> crop 24 x 24 -> 16 x 16
    sample = build_dataset(official_config("voc21", root, expected, preprocess="diffseg", resolution=16))[0]
    assert sample.vae_image is not None and sample.vae_image.dtype == torch.float32
    assert sample.model_image is sample.vae_image and "vae_image" not in sample.meta
    assert torch.equal(sample.image, sample.vae_image.round().clamp(0, 255).to(torch.uint8))
    assert not torch.equal(sample.vae_image, sample.image.float())  # not rounded before the VAE
    stego = build_dataset(official_config("voc21", root, expected, preprocess="stego", resolution=16))[0]
    assert stego.vae_image is None and stego.model_image is stego.image
