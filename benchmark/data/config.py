"""Config schemas of the ``dataset`` group: one dataclass per ``conf/dataset/<name>.yaml``.

Every key a dataset yaml may hold is a field here; ``benchmark.config`` validates
``cfg.dataset`` against ``DATASET_SCHEMAS[cfg.dataset.name]`` at start, so an unknown key
or a wrong type fails before any image is read. Values that a type cannot express (one of
a set of words, a positive number) are checked by ``build_dataset``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

PREPROCESS_PRESETS = ("diffseg", "stego", "original")
ON_ERROR_CHOICES = ("raise", "skip")


@dataclass
class DatasetConfig:
    """Keys shared by every dataset."""

    #: dataset config name (equals the yaml file stem)
    name: str = "synthetic"
    #: dataset folder; None = $BENCHMARK_DATA_ROOT/<conventional subfolder>, else
    #: ~/data/<conventional subfolder> (see datasets/README.md)
    root: Optional[str] = None
    split: str = "val"
    #: evaluation geometry: diffseg (centre square crop, resize to 512) | stego (short
    #: side to 320, centre crop 320) | original (unchanged)
    preprocess: str = "original"
    #: crop side of the diffseg / stego presets (None = 512 / 320)
    resolution: Optional[int] = None
    #: antialiased bilinear image resize (None = preset default: diffseg False, stego True)
    antialias: Optional[bool] = None
    #: keep only the first N ids (after ``ids``)
    limit: Optional[int] = None
    #: evaluate only these image ids
    ids: Optional[List[str]] = None
    #: unreadable / missing file: raise (stop the run) | skip (listed in the results)
    on_error: str = "raise"
    #: DataLoader worker processes
    num_workers: int = 4


# ----------------------------------------------------------------- official datasets
@dataclass
class Voc21Config(DatasetConfig):
    name: str = "voc21"


@dataclass
class Voc20Config(DatasetConfig):
    name: str = "voc20"


@dataclass
class Context60Config(DatasetConfig):
    name: str = "context60"


@dataclass
class Context59Config(DatasetConfig):
    name: str = "context59"


@dataclass
class CocoStuff27Config(DatasetConfig):
    name: str = "cocostuff27"
    split: str = "val2017"
    preprocess: str = "diffseg"
    #: evaluate the curated 2175-image list shipped in datasets/ (False: every image of
    #: the split that has a stuffthingmaps label)
    curated: bool = True


@dataclass
class CocoStuff171Config(DatasetConfig):
    name: str = "cocostuff171"
    split: str = "val2017"


@dataclass
class CocoObjectConfig(DatasetConfig):
    name: str = "coco_object"
    split: str = "val2017"


@dataclass
class Cityscapes27Config(DatasetConfig):
    name: str = "cityscapes27"
    preprocess: str = "diffseg"


@dataclass
class Cityscapes19Config(DatasetConfig):
    name: str = "cityscapes19"


@dataclass
class Ade20kConfig(DatasetConfig):
    name: str = "ade20k"
    split: str = "validation"


# DiffCut's label mappings of the same files (datasets/README.md, 'DiffCut label mappings')
@dataclass
class Voc20DiffCutConfig(DatasetConfig):
    name: str = "voc20_diffcut"


@dataclass
class Context59DiffCutConfig(DatasetConfig):
    name: str = "context59_diffcut"


@dataclass
class CocoObjectDiffCutConfig(DatasetConfig):
    name: str = "coco_object_diffcut"
    split: str = "val2017"
    #: DiffCut evaluates COCO-Object on the curated 2175 COCO-Stuff-27 images (False: every
    #: image of the split that has a stuffthingmaps label)
    curated: bool = True


@dataclass
class Ade20kDiffCutConfig(DatasetConfig):
    name: str = "ade20k_diffcut"
    split: str = "validation"


# ------------------------------------------------------------------ generated / user data
@dataclass
class SyntheticConfig(DatasetConfig):
    name: str = "synthetic"
    num_workers: int = 0
    n_images: int = 4
    height: int = 64
    width: int = 64
    num_classes: int = 6
    #: classes drawn per image (each image shows between min and max distinct classes,
    #: both capped at num_classes)
    min_classes: int = 3
    max_classes: int = 5
    #: piecewise-constant regions per image (Voronoi cells, at least max_classes)
    n_regions: int = 6
    #: std of the Gaussian pixel noise added to the region colours (0..255 scale)
    noise_std: float = 8.0
    #: width in pixels of an ignored (255) band along region boundaries, as VOC's borders
    ignore_boundary: int = 0
    seed: int = 0
    #: class names (None: generic names)
    class_names: Optional[List[str]] = None


@dataclass
class LabelRulesMixin:
    """How raw label values of user data become train ids."""

    #: class names, one per train id (or use classes_file)
    class_names: Optional[List[str]] = None
    #: text file with one class name per line (relative to root)
    classes_file: Optional[str] = None
    #: raw label value meaning "not annotated" (becomes 255)
    ignore_index: int = 255
    #: raw 0 is "not annotated": 0 -> 255, every other value v -> v - 1
    reduce_zero_label: bool = False
    #: published number of images of the split (a different count logs a warning)
    expected_count: Optional[int] = None


@dataclass
class FolderConfig(LabelRulesMixin, DatasetConfig):
    name: str = "folder"
    split: str = "all"
    #: images folder (relative to root, or absolute)
    image_dir: str = "images"
    #: label PNG folder (relative to root, or absolute); label of <stem>.* is <stem><label_suffix>
    label_dir: str = "labels"
    image_suffixes: List[str] = field(default_factory=lambda: [".jpg", ".jpeg", ".png"])
    label_suffix: str = ".png"
    #: optional text file of ids (one stem per line, relative to root) defining the split
    split_file: Optional[str] = None


@dataclass
class HFConfig(LabelRulesMixin, DatasetConfig):
    name: str = "hf"
    split: str = "validation"
    num_workers: int = 2
    #: save_to_disk folder, local folder of parquet / image files, builder name
    #: ("parquet", "imagefolder") with data_files, or a hub id (relative paths: under root)
    path: Optional[str] = None
    #: files for a builder ``path`` (relative to root); they become split ``split``
    data_files: Optional[List[str]] = None
    #: extra keyword arguments for datasets.load_dataset (e.g. {name: ...})
    load_kwargs: Dict[str, Any] = field(default_factory=dict)
    revision: Optional[str] = None
    image_column: str = "image"
    label_column: str = "label"
    #: column holding image ids (None: the row index, zero-padded)
    id_column: Optional[str] = None
    #: column whose ClassLabel feature gives the class names (None: the first ClassLabel
    #: feature found, when class_names / classes_file are not set)
    class_label_column: Optional[str] = None


DATASET_SCHEMAS: Dict[str, type] = {
    "voc21": Voc21Config,
    "voc20": Voc20Config,
    "context60": Context60Config,
    "context59": Context59Config,
    "cocostuff27": CocoStuff27Config,
    "cocostuff171": CocoStuff171Config,
    "coco_object": CocoObjectConfig,
    "cityscapes27": Cityscapes27Config,
    "cityscapes19": Cityscapes19Config,
    "ade20k": Ade20kConfig,
    "voc20_diffcut": Voc20DiffCutConfig,
    "context59_diffcut": Context59DiffCutConfig,
    "coco_object_diffcut": CocoObjectDiffCutConfig,
    "ade20k_diffcut": Ade20kDiffCutConfig,
    "synthetic": SyntheticConfig,
    "folder": FolderConfig,
    "hf": HFConfig,
}
