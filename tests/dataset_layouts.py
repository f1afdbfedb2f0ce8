"""Writers of small fixture datasets in the official on-disk layouts.

Each ``write_<layout>(root, ids, size, ..., config=...)`` writes images and label files the
way the real release (or the usual converter) stores them under ``root`` and returns
``{image_id: expected decoded label}`` (int64, original resolution, 255 = ignored) for the
chosen config. The expectations are computed here from the protocol's rules, not with
the loader's lookup tables, so tests compare two independent implementations.

Sizes are (height, width). Everything is deterministic (seeded by the image id).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
Size = Tuple[int, int]
Expected = Dict[str, np.ndarray]

VOC_IDS = ["2007_000033", "2007_000042", "2008_000123"]
CONTEXT_IDS = ["2008_000002", "2008_000026", "2010_000038"]
ADE_IDS = ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00001999"]
CITYSCAPES_IDS = ["frankfurt_000000_000294", "frankfurt_000001_007973", "lindau_000000_000019", "munster_000010_000019"]
#: COCO-Stuff unused fine ids (COCO category ids without annotations, minus one)
COCO_UNUSED_FINE = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


def curated_coco_ids(n: int = 3) -> List[str]:
    """The first ``n`` ids of the shipped curated COCO-Stuff-27 list (cocostuff27 needs them)."""
    lines = (REPO / "datasets" / "cocostuff27_val2017_curated.txt").read_text().split()
    return lines[:n]


def _rng(image_id: str, salt: str = "") -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(f"{salt}{image_id}".encode()).hexdigest()[:12], 16))


def block_label(rng: np.random.Generator, size: Size, values: Sequence[int], n_blocks: int = 6,
                border: Optional[int] = None) -> np.ndarray:
    """A label map of random rectangles with values from ``values`` (the first fills the
    background); ``border`` draws a 1-pixel frame of that value around each rectangle, as
    VOC's 255 object outlines."""
    height, width = size
    label = np.full(size, values[0], dtype=np.int64)
    for _ in range(n_blocks):
        top, left = rng.integers(0, height - 2), rng.integers(0, width - 2)
        bottom, right = rng.integers(top + 2, height + 1), rng.integers(left + 2, width + 1)
        if border is not None:
            label[top:bottom, left:right] = border
            label[top + 1:bottom - 1, left + 1:right - 1] = rng.choice(values)
        else:
            label[top:bottom, left:right] = rng.choice(values)
    # make sure every listed value can be told apart from a constant map
    label[0, 0], label[-1, -1] = values[0], values[-1]
    return label


def write_image(path: Path, rng: np.random.Generator, size: Size) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(pixels).save(path)


def write_label(path: Path, label: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = label.shape
    image = Image.frombytes("P" if palette else "L", (width, height), label.astype(np.uint8).tobytes())
    if palette:  # VOC's colour map (index i -> colour bits of i); the stored values stay indices
        image.putpalette(_voc_palette())
    image.save(path)


def _voc_palette() -> List[int]:
    from benchmark.visualize import palette

    return palette(256).reshape(-1).tolist()


def _split_file(root: Path, list_dir: str, split: str, ids: Iterable[str]) -> None:
    path = root / "ImageSets" / list_dir / f"{split}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def _reduce_zero(raw: np.ndarray) -> np.ndarray:
    return np.where((raw == 0) | (raw == 255), 255, raw - 1)


# ------------------------------------------------------------------------------ VOC
def write_voc(root: Path, ids: Sequence[str] = VOC_IDS, size: Size = (24, 32), split: str = "val",
              config: str = "voc21") -> Expected:
    """VOCdevkit/VOC2012 tree: JPEGs, palette-PNG labels 0..20 with 255 object borders."""
    root = Path(root)
    _split_file(root, "Segmentation", split, ids)
    expected = {}
    for image_id in ids:
        rng = _rng(image_id, "voc")
        write_image(root / "JPEGImages" / f"{image_id}.jpg", rng, size)
        raw = block_label(rng, size, list(range(21)), border=255)
        write_label(root / "SegmentationClass" / f"{image_id}.png", raw, palette=True)
        # DiffCut (FC-CLIP's convert_pas20 then 255 -> background 20): borders are background
        diffcut = np.where((raw == 0) | (raw == 255), 20, raw - 1)
        expected[image_id] = {"voc21": raw, "voc20": _reduce_zero(raw), "voc20_diffcut": diffcut}[config]
    return expected


# -------------------------------------------------------------------------- Context
def write_context(root: Path, ids: Sequence[str] = CONTEXT_IDS, size: Size = (24, 32), split: str = "val",
                  config: str = "context60") -> Expected:
    """VOCdevkit/VOC2010 tree as mmseg's converter writes it: uint8 masks 0..59."""
    root = Path(root)
    _split_file(root, "SegmentationContext", split, ids)
    expected = {}
    for image_id in ids:
        rng = _rng(image_id, "context")
        write_image(root / "JPEGImages" / f"{image_id}.jpg", rng, size)
        raw = block_label(rng, size, list(range(60)))
        write_label(root / "SegmentationClassContext" / f"{image_id}.png", raw)
        diffcut = np.where(raw == 0, 59, raw - 1)  # background last
        expected[image_id] = {"context60": raw, "context59": _reduce_zero(raw), "context59_diffcut": diffcut}[config]
    return expected


# ----------------------------------------------------------------------------- COCO
def _coco_tables() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fine -> coarse (27), fine -> 171 train id (mmseg), fine -> object id (GroupViT),
    each over raw values 0..255 with 255 for unlabeled."""
    table = json.loads((REPO / "datasets" / "cocostuff27_fine_to_coarse.json").read_text())
    coarse = np.full(256, 255, dtype=np.int64)
    for fine, value in table["fine_index_to_coarse_index"].items():
        coarse[int(fine)] = value
    used = [f for f in range(182) if f not in COCO_UNUSED_FINE]
    train171 = np.full(256, 255, dtype=np.int64)
    train171[used] = np.arange(171)
    objects = np.zeros(256, dtype=np.int64)  # GroupViT: stuff and unlabeled -> 0
    things = [f for f in used if f <= 90]
    objects[things] = np.arange(1, 81)
    return coarse, train171, objects


def _write_coco_tree(root: Path, ids: Sequence[str], size: Size, split: str) -> Dict[str, np.ndarray]:
    """images/<split>/<id>.jpg and annotations/<split>/<id>.png (stuffthingmaps) plus the
    converters' <id>_labelTrainIds.png and <id>_instanceTrainIds.png; returns the fine maps."""
    root = Path(root)
    _, train171, objects = _coco_tables()
    used = [f for f in range(182) if f not in COCO_UNUSED_FINE]
    fine_maps = {}
    for image_id in ids:
        rng = _rng(image_id, "coco")
        write_image(root / "images" / split / f"{image_id}.jpg", rng, size)
        things = rng.choice([f for f in used if f <= 90], size=4, replace=False)
        stuff = rng.choice([f for f in used if f > 90], size=4, replace=False)
        fine = block_label(rng, size, [255, *things, *stuff], n_blocks=8)
        annotations = root / "annotations" / split
        write_label(annotations / f"{image_id}.png", fine)
        write_label(annotations / f"{image_id}_labelTrainIds.png", train171[fine])
        write_label(annotations / f"{image_id}_instanceTrainIds.png", objects[fine])
        fine_maps[image_id] = fine
    return fine_maps


def write_cocostuff(root: Path, ids: Optional[Sequence[str]] = None, size: Size = (24, 32), split: str = "val2017",
                    config: str = "cocostuff27") -> Expected:
    """cocostuff/ tree (mmseg's coco_stuff164k layout). Default ids are curated ones, so
    ``cocostuff27`` finds them; build it with ``ids=list(expected)`` (or ``curated=False``)."""
    ids = curated_coco_ids() if ids is None else ids
    coarse, train171, _ = _coco_tables()
    table = {"cocostuff27": coarse, "cocostuff171": train171}[config]
    return {i: table[fine] for i, fine in _write_coco_tree(root, ids, size, split).items()}


def write_coco_object(root: Path, ids: Optional[Sequence[str]] = None, size: Size = (24, 32),
                      split: str = "val2017", config: str = "coco_object") -> Expected:
    """Same tree; expected labels are the instanceTrainIds (0 background, things 1..80), or
    for ``coco_object_diffcut`` the things 0..79 with background (stuff, unlabeled) as 80."""
    ids = curated_coco_ids() if ids is None else ids
    _, _, objects = _coco_tables()
    diffcut = np.where(objects == 0, 80, objects - 1)
    table = {"coco_object": objects, "coco_object_diffcut": diffcut}[config]
    return {i: table[fine] for i, fine in _write_coco_tree(root, ids, size, split).items()}


# ------------------------------------------------------------------------ Cityscapes
def write_cityscapes(root: Path, ids: Sequence[str] = CITYSCAPES_IDS, size: Size = (16, 32), split: str = "val",
                     config: str = "cityscapes27") -> Expected:
    """leftImg8bit/<split>/<city>/<id>_leftImg8bit.png + gtFine/..._gtFine_labelIds.png (ids 0..33)."""
    from cityscapesscripts.helpers.labels import id2label

    root = Path(root)
    train_ids = np.full(256, 255, dtype=np.int64)
    for label_id, label in id2label.items():
        if label_id >= 0 and 0 <= label.trainId < 255:
            train_ids[label_id] = label.trainId
    expected = {}
    for image_id in ids:
        city = image_id.split("_")[0]
        rng = _rng(image_id, "cityscapes")
        write_image(root / "leftImg8bit" / split / city / f"{image_id}_leftImg8bit.png", rng, size)
        raw = block_label(rng, size, list(range(34)), n_blocks=10)
        write_label(root / "gtFine" / split / city / f"{image_id}_gtFine_labelIds.png", raw)
        expected[image_id] = {"cityscapes27": np.where(raw >= 7, raw - 7, 255), "cityscapes19": train_ids[raw]}[config]
    return expected


# --------------------------------------------------------------------------- ADE20K
def write_ade20k(root: Path, ids: Sequence[str] = ADE_IDS, size: Size = (24, 32), split: str = "validation",
                 config: str = "ade20k") -> Expected:
    """ADEChallengeData2016 tree: images/<split>/<id>.jpg, annotations/<split>/<id>.png
    (uint8 0..150, 0 = "other"). ``ade20k``: mmseg's reduce_zero_label (0 -> 255, v -> v - 1);
    ``ade20k_diffcut``: values kept, 150 not scored."""
    root = Path(root)
    expected = {}
    for image_id in ids:
        rng = _rng(image_id, "ade")
        write_image(root / "images" / split / f"{image_id}.jpg", rng, size)
        raw = block_label(rng, size, [0, 1, 7, 75, 149, 150], n_blocks=8)
        write_label(root / "annotations" / split / f"{image_id}.png", raw)
        expected[image_id] = {"ade20k": _reduce_zero(raw), "ade20k_diffcut": np.where(raw == 150, 255, raw)}[config]
    return expected


# ------------------------------------------------------------------------ user data
def write_folder(root: Path, ids: Sequence[str] = ("a", "b", "c"), size: Size = (20, 24), num_classes: int = 4,
                 reduce_zero_label: bool = False, ignore_value: int = 255) -> Expected:
    """images/<id>.png, labels/<id>.png, classes.txt for ``dataset=folder``."""
    root = Path(root)
    names = [f"thing{i}" for i in range(num_classes)]
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    offset = 1 if reduce_zero_label else 0
    expected = {}
    for image_id in ids:
        rng = _rng(image_id, "folder")
        write_image(root / "images" / f"{image_id}.png", rng, size)
        raw = block_label(rng, size, [ignore_value] + list(range(offset, num_classes + offset)))
        if reduce_zero_label:
            raw[1, 1] = 0
        write_label(root / "labels" / f"{image_id}.png", raw)
        decoded = np.where(raw == ignore_value, 255, raw - offset)
        if reduce_zero_label:
            decoded[raw == 0] = 255
        expected[image_id] = decoded
    return expected


def make_hf_dataset(n: int = 3, size: Size = (20, 24), num_classes: int = 4, with_ids: bool = True):
    """An in-memory ``datasets.Dataset`` (image, label PNG, name, ClassLabel column) and
    its expected decoded labels keyed by the ``name`` column (or the row index)."""
    import datasets

    names = [f"cls{i}" for i in range(num_classes)]
    images, labels, ids, expected = [], [], [], {}
    for row in range(n):
        image_id = f"img{n - row:03d}" if with_ids else f"{row:06d}"
        rng = _rng(image_id, "hf")
        images.append(Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)))
        raw = block_label(rng, size, [255] + list(range(num_classes)))
        labels.append(Image.fromarray(raw.astype(np.uint8)))
        ids.append(image_id)
        expected[image_id] = raw
    features = datasets.Features({
        "image": datasets.Image(), "label": datasets.Image(), "name": datasets.Value("string"),
        "scene": datasets.ClassLabel(names=names),
    })
    table = datasets.Dataset.from_dict(
        {"image": images, "label": labels, "name": ids, "scene": [0] * n}, features=features
    )
    return table, expected
