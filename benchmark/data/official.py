"""The published benchmarks, read in the layouts their releases (and the usual converters)
produce: Pascal VOC 2012, Pascal Context, COCO-Stuff (27 / 171), COCO-Object, Cityscapes,
ADE20K; and DiffCut's label mappings of the same files (``*_diffcut`` configs).
Trees and sources: datasets/README.md (one section per dataset).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set

from .config import DatasetConfig
from .dataset import FileDataset, FileEntry, check_count, check_entries, select_ids
from .decode import IGNORE_INDEX, decoder_for
from .errors import DatasetNotFoundError, require_dir
from .io import read_split_ids
from .preprocess import Preprocess
from .reference import CURATED_COCOSTUFF27_COUNT, class_names, curated_cocostuff27_ids

#: environment variable holding the folder that contains every dataset's conventional subfolder
DATA_ROOT_ENV = "BENCHMARK_DATA_ROOT"


def resolve_root(configured: Optional[str], subdir: str, section: str) -> Path:
    """dataset.root, else $BENCHMARK_DATA_ROOT/<subdir>, else ~/data/<subdir>; must exist."""
    if configured:
        path, origin = Path(configured).expanduser(), "dataset.root"
    elif os.environ.get(DATA_ROOT_ENV):
        path, origin = Path(os.environ[DATA_ROOT_ENV]).expanduser() / subdir, f"${DATA_ROOT_ENV}/{subdir}"
    else:
        path = Path.home() / "data" / subdir
        origin = f"the default ~/data/{subdir} (set dataset.root or ${DATA_ROOT_ENV})"
    if not path.is_dir():
        raise DatasetNotFoundError.expected("dataset root", path, section, f"The path comes from {origin}.")
    return path


# ------------------------------------------------------------------------------ layouts
Layout = Callable[[Path, DatasetConfig, str], Dict[str, FileEntry]]


def _split_file_layout(list_dir: str, label_dir: str) -> Layout:
    """VOC-style: ImageSets/<list_dir>/<split>.txt, JPEGImages/<id>.jpg, <label_dir>/<id>.png."""

    def layout(root: Path, cfg: DatasetConfig, section: str) -> Dict[str, FileEntry]:
        list_file = root / "ImageSets" / list_dir / f"{cfg.split}.txt"
        if not list_file.is_file():
            raise DatasetNotFoundError.expected(f"split file of split {cfg.split!r}", list_file, section)
        ids = read_split_ids(list_file)
        images = require_dir(root / "JPEGImages", "image folder", section)
        labels = require_dir(root / label_dir, "label folder", section)
        return {i: FileEntry(i, str(images / f"{i}.jpg"), str(labels / f"{i}.png")) for i in ids}

    return layout


def _coco_layout(label_suffix: str, curated: Optional[Callable[[], List[str]]] = None) -> Layout:
    """images/<split>/<12-digit id>.jpg and annotations/<split>/<id><label_suffix>; ids are the
    split's images, or a shipped list (the curated COCO-Stuff-27 subset)."""

    def layout(root: Path, cfg: DatasetConfig, section: str) -> Dict[str, FileEntry]:
        images = require_dir(root / "images" / cfg.split, "image folder", section)
        labels = require_dir(root / "annotations" / cfg.split, "annotation folder", section)
        if curated is not None and getattr(cfg, "curated", True):
            ids = curated()
        else:
            # an id with only one of its two files is kept, so the missing one is reported
            ids = sorted(_ids_by_suffix(images, ".jpg", True) | _ids_by_suffix(labels, label_suffix, True))
        return {i: FileEntry(i, str(images / f"{i}.jpg"), str(labels / f"{i}{label_suffix}")) for i in ids}

    return layout


def _paired_folders_layout(image_dir: str, label_dir: str, image_suffix: str, label_suffix: str) -> Layout:
    """<image_dir>/<split>/<id><image_suffix> and <label_dir>/<split>/<id><label_suffix>; the
    ids are the stems found in either folder (ADEChallengeData2016: images/validation/*.jpg,
    annotations/validation/*.png, as mmseg's ``ADE20KDataset`` reads them)."""

    def layout(root: Path, cfg: DatasetConfig, section: str) -> Dict[str, FileEntry]:
        images = require_dir(root / image_dir / cfg.split, "image folder", section)
        labels = require_dir(root / label_dir / cfg.split, "annotation folder", section)
        # an id with only one of its two files is kept, so the missing one is reported
        ids = sorted(_ids_by_suffix(images, image_suffix) | _ids_by_suffix(labels, label_suffix))
        return {i: FileEntry(i, str(images / f"{i}{image_suffix}"), str(labels / f"{i}{label_suffix}")) for i in ids}

    return layout


def _cityscapes_layout(root: Path, cfg: DatasetConfig, section: str) -> Dict[str, FileEntry]:
    """leftImg8bit/<split>/<city>/<id>_leftImg8bit.png, gtFine/<split>/<city>/<id>_gtFine_labelIds.png;
    the id is the file name without the suffix (frankfurt_000000_000294)."""
    images = require_dir(root / "leftImg8bit" / cfg.split, "image folder", section)
    labels = require_dir(root / "gtFine" / cfg.split, "annotation folder", section)
    image_suffix, label_suffix = "_leftImg8bit.png", "_gtFine_labelIds.png"
    entries = {}
    for city in sorted({c for folder in (images, labels) for c in os.listdir(folder) if (folder / c).is_dir()}):
        # an id with only one of its two files is kept, so the missing one is reported
        for image_id in _ids_by_suffix(images / city, image_suffix) | _ids_by_suffix(labels / city, label_suffix):
            entries[image_id] = FileEntry(
                image_id, str(images / city / f"{image_id}{image_suffix}"), str(labels / city / f"{image_id}{label_suffix}")
            )
    return entries


def _ids_by_suffix(folder: Path, suffix: str, digits_only: bool = False) -> Set[str]:
    """Ids of the files ``<id><suffix>`` in ``folder``. COCO ids are digits only, which keeps
    ``<id>_labelTrainIds.png`` out of the ids of the stuffthingmaps ``<id>.png``."""
    if not folder.is_dir():
        return set()
    stems = {name[: -len(suffix)] for name in os.listdir(folder) if name.endswith(suffix)}
    return {s for s in stems if s.isdigit()} if digits_only else stems


# -------------------------------------------------------------------------- class names
def _cityscapes27_names() -> List[str]:
    from cityscapesscripts.helpers.labels import labels

    return [label.name for label in sorted(labels, key=lambda l: l.id) if 7 <= label.id <= 33]


def _cityscapes19_names() -> List[str]:
    from cityscapesscripts.helpers.labels import labels

    train = sorted((l for l in labels if 0 <= l.trainId < IGNORE_INDEX), key=lambda l: l.trainId)
    return [label.name for label in train]


def _with_background_last(names: List[str]) -> List[str]:
    """DiffCut's "+bg" class lists: the dataset's classes, then ``background`` as the last
    class (eval_diffcut.py: ``N_CLASS = C + 1``, unlabelled -1 -> ``N_CLASS - 1``)."""
    return [*names, "background"]


def _ade20k_diffcut_names() -> List[str]:
    # DiffCut reads the raw ADE20K annotations without reduce_zero_label: raw 0 ("other",
    # unlabelled) is class 0 and raw 1..149 keep their value; raw 150 falls outside its
    # 150-class histogram (tools/utils.py _fast_hist: label < n_class) and is not scored
    return ["other", *class_names("ade20k")[:-1]]


# ------------------------------------------------------------------------- definitions
@dataclass(frozen=True)
class OfficialSpec:
    section: str  #: datasets/README.md section
    subdir: str  #: conventional folder under $BENCHMARK_DATA_ROOT (and ~/data)
    layout: Layout
    classes: Callable[[], List[str]]
    #: published image count per split
    counts: Dict[str, int] = field(default_factory=dict)
    count_note: str = ""
    #: OVSS synonym list shipped for the classes (datasets/classes/ovss_synonyms_<x>.txt)
    synonyms: Optional[str] = None
    #: train id of the "background" class that DiffCut-style metrics may match many-to-one
    #: (None: the dataset has no such class, or it is class 0 of an mmseg-style list)
    background_class: Optional[int] = None
    #: the ids are a shipped list (the curated COCO-Stuff-27 images) unless ``curated: false``
    curated: bool = False


VOC = dict(section="Pascal VOC 2012", subdir="VOCdevkit/VOC2012",
           layout=_split_file_layout("Segmentation", "SegmentationClass"),
           counts={"val": 1449, "train": 1464, "trainval": 2913})
CONTEXT = dict(section="Pascal Context", subdir="VOCdevkit/VOC2010",
               layout=_split_file_layout("SegmentationContext", "SegmentationClassContext"),
               counts={"val": 5105, "train": 4998},
               count_note="the official val split has 5105 images; the usual conversion yields 5104")
COCO_COUNTS = {"val2017": 5000, "train2017": 118287}
CITYSCAPES = dict(section="Cityscapes", subdir="cityscapes", layout=_cityscapes_layout,
                  counts={"val": 500, "train": 2975, "test": 1525})
ADE20K = dict(section="ADE20K", subdir="ADEChallengeData2016",
              layout=_paired_folders_layout("images", "annotations", ".jpg", ".png"),
              counts={"validation": 2000, "training": 20210})

OFFICIAL: Dict[str, OfficialSpec] = {
    "voc21": OfficialSpec(**VOC, classes=lambda: class_names("voc21"), synonyms="voc21"),
    "voc20": OfficialSpec(**VOC, classes=lambda: class_names("voc20"), synonyms="voc20"),
    "context60": OfficialSpec(**CONTEXT, classes=lambda: class_names("context60"), synonyms="context60"),
    "context59": OfficialSpec(**CONTEXT, classes=lambda: class_names("context59"), synonyms="context59"),
    "cocostuff27": OfficialSpec(
        section="COCO-Stuff", subdir="cocostuff", layout=_coco_layout(".png", curated=curated_cocostuff27_ids),
        classes=lambda: class_names("cocostuff27"), counts=COCO_COUNTS, curated=True,
    ),
    "cocostuff171": OfficialSpec(
        section="COCO-Stuff", subdir="cocostuff", layout=_coco_layout("_labelTrainIds.png"),
        classes=lambda: class_names("cocostuff171"), counts=COCO_COUNTS, synonyms="coco_stuff",
    ),
    "coco_object": OfficialSpec(
        section="COCO-Object", subdir="cocostuff", layout=_coco_layout("_instanceTrainIds.png"),
        classes=lambda: class_names("coco_object"), counts=COCO_COUNTS, synonyms="coco_object",
    ),
    "cityscapes27": OfficialSpec(**CITYSCAPES, classes=_cityscapes27_names),
    "cityscapes19": OfficialSpec(**CITYSCAPES, classes=_cityscapes19_names, synonyms="city_scapes"),
    # mmseg ADE20KDataset (mmseg/datasets/ade.py): 150 classes, reduce_zero_label=True
    "ade20k": OfficialSpec(**ADE20K, classes=lambda: class_names("ade20k"), synonyms="ade20k"),
    # DiffCut's label mappings (PaulCouairon/DiffCut dataloader/iterator.py, eval_diffcut.py):
    # same files, other class indices; see datasets/README.md, section 'DiffCut label mappings'
    "voc20_diffcut": OfficialSpec(**VOC, classes=lambda: _with_background_last(class_names("voc20")),
                                  background_class=20),
    "context59_diffcut": OfficialSpec(**CONTEXT, classes=lambda: _with_background_last(class_names("context59")),
                                      background_class=59),
    "coco_object_diffcut": OfficialSpec(
        section="COCO-Object", subdir="cocostuff", layout=_coco_layout(".png", curated=curated_cocostuff27_ids),
        classes=lambda: _with_background_last(class_names("coco_object")[1:]), counts=COCO_COUNTS,
        background_class=80, curated=True,
    ),
    "ade20k_diffcut": OfficialSpec(**ADE20K, classes=_ade20k_diffcut_names),
}


def _expected_count(name: str, spec: OfficialSpec, cfg: DatasetConfig) -> Optional[int]:
    if spec.curated and getattr(cfg, "curated", True):
        return CURATED_COCOSTUFF27_COUNT
    return spec.counts.get(cfg.split)


def build_official(cfg: DatasetConfig) -> FileDataset:
    spec = OFFICIAL[cfg.name]
    preprocess = Preprocess(cfg.preprocess, cfg.resolution, cfg.antialias)
    root = resolve_root(cfg.root, spec.subdir, spec.section)
    entries = spec.layout(root, cfg, spec.section)
    where = f"{cfg.name} split {cfg.split!r} under {root}"
    if not entries:
        raise DatasetNotFoundError.expected(f"images of {where}", root, spec.section, "The split lists no image.")
    expected = _expected_count(cfg.name, spec, cfg)
    check_count(where, len(entries), expected, spec.count_note)
    chosen = [entries[i] for i in select_ids(list(entries), cfg.ids, cfg.limit, where)]
    skipped = check_entries(chosen, cfg.on_error, spec.section)
    return FileDataset(
        entries=chosen,
        decoder=decoder_for(cfg.name),
        name=cfg.name,
        class_names=spec.classes(),
        preprocess=preprocess,
        on_error=cfg.on_error,
        root=str(root),
        split=cfg.split,
        expected_count=expected,
        found_count=len(entries),
        synonyms_list=spec.synonyms,
        skipped=skipped,
        background_class=spec.background_class,
    )
