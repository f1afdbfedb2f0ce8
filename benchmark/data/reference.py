"""Reference data shipped in the repository's ``datasets/`` folder (class lists, the curated
COCO-Stuff-27 id list, the COCO-Stuff fine -> coarse table, OVSS class synonyms).

``datasets/`` is data, not a Python package (it would shadow Hugging Face ``datasets``);
it is found next to the ``benchmark`` package, or where $BENCHMARK_DATASETS_DIR points.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List

import numpy as np

from benchmark.fileio import read_lines

#: sha256 of datasets/cocostuff27_val2017_curated.txt (2175 ids, one per line). The list
#: defines which images the published COCO-Stuff-27 numbers were computed on.
CURATED_COCOSTUFF27_SHA256 = "7c629734c88f1a74bba6311e01d4d9fe976df84f07cb4fc86452ce5116e51655"
CURATED_COCOSTUFF27_COUNT = 2175
#: COCO-Stuff stuffthingmaps hold fine ids 0..181 (COCO category id - 1) and 255
COCOSTUFF_FINE_COUNT = 182
#: fine ids 0..90 are COCO's 91 thing category ids minus one; these 11 have no annotations
#: (the gaps of mmseg's ``tools/dataset_converters/coco_stuff164k.py`` clsID_to_trID table),
#: the other 80 are the things in category order
COCO_UNUSED_THING_FINE_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_THING_FINE_MAX = 90


def coco_thing_fine_ids() -> List[int]:
    """The 80 stuffthingmaps fine ids of COCO things, in category order."""
    return [f for f in range(COCO_THING_FINE_MAX + 1) if f not in COCO_UNUSED_THING_FINE_IDS]


def datasets_dir() -> Path:
    override = os.environ.get("BENCHMARK_DATASETS_DIR")
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "datasets"
    if not (path / "classes").is_dir():
        raise FileNotFoundError(
            f"reference data folder not found: {path / 'classes'} (the repository's datasets/ "
            "folder; set BENCHMARK_DATASETS_DIR when the package is installed elsewhere)"
        )
    return path


def read_class_list(path: Path, what: str = "reference file") -> List[str]:
    """The names of a class list file (one per line; blank lines and surrounding spaces
    dropped), in file order. Also reads the other one-item-per-line reference files."""
    return read_lines(path, what)


@functools.lru_cache(maxsize=None)
def class_names(list_name: str) -> List[str]:
    """Class names of ``datasets/classes/<list_name>.txt`` in train-id order."""
    return read_class_list(datasets_dir() / "classes" / f"{list_name}.txt")


@functools.lru_cache(maxsize=None)
def class_synonyms(list_name: str) -> List[List[str]]:
    """OVSS synonym lists (``ovss_synonyms_<list_name>.txt``): one comma-separated line per class."""
    lines = read_class_list(datasets_dir() / "classes" / f"ovss_synonyms_{list_name}.txt")
    return [[word.strip() for word in line.split(",") if word.strip()] for line in lines]


def curated_cocostuff27_ids() -> List[str]:
    """The 2175 curated val2017 ids, after checking the file's checksum."""
    path = datasets_dir() / "cocostuff27_val2017_curated.txt"
    if not path.is_file():
        raise FileNotFoundError(f"curated COCO-Stuff-27 id list not found: {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != CURATED_COCOSTUFF27_SHA256:
        raise ValueError(
            f"{path} has sha256 {digest}, expected {CURATED_COCOSTUFF27_SHA256}: the curated "
            "COCO-Stuff-27 list was modified; restore it from the repository (published "
            "numbers are computed on exactly these 2175 images)"
        )
    return read_lines(path)


@functools.lru_cache(maxsize=None)
def cocostuff_fine_to_coarse() -> np.ndarray:
    """int64 array of length 182: coarse (27-class) index of each fine stuffthingmaps id."""
    path = datasets_dir() / "cocostuff27_fine_to_coarse.json"
    if not path.is_file():
        raise FileNotFoundError(f"COCO-Stuff fine -> coarse table not found: {path}")
    table = json.loads(path.read_text(encoding="utf-8"))
    mapping: Dict[str, int] = table["fine_index_to_coarse_index"]
    if sorted(int(k) for k in mapping) != list(range(COCOSTUFF_FINE_COUNT)):
        raise ValueError(f"{path}: fine_index_to_coarse_index must have the keys 0..181")
    coarse = np.array([mapping[str(i)] for i in range(COCOSTUFF_FINE_COUNT)], dtype=np.int64)
    names = class_names("cocostuff27")
    if coarse.min() < 0 or coarse.max() >= len(names) or table.get("coarse_names") != names:
        raise ValueError(f"{path} does not match datasets/classes/cocostuff27.txt")
    return coarse
