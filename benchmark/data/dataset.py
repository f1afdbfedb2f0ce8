"""The dataset object the runner iterates, and its DataLoader.

A ``SegmentationDataset`` knows its sorted image ids and turns index i into a ``Sample``
(image uint8 (3, H, W), label int64 (H, W) train ids or 255, in the evaluation geometry
of its preprocessing preset) or, with ``on_error=skip``, into a ``SkippedSample``.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from benchmark.types import Sample

from .config import ON_ERROR_CHOICES
from .decode import IGNORE_INDEX, LabelDecoder
from .errors import DatasetFileError, MissingFileError, log, readme_hint
from .io import read_image, read_label
from .preprocess import Preprocess
from .reference import class_synonyms


@dataclass
class SkippedSample:
    """Stands for an image that could not be read when ``dataset.on_error=skip``."""

    image_id: str
    reason: str


@dataclass(frozen=True)
class FileEntry:
    image_id: str
    image_path: str
    label_path: str


class SegmentationDataset(Dataset):
    """Base class: subclasses implement ``load(index)``; everything else is shared."""

    def __init__(
        self,
        *,
        name: str,
        class_names: Sequence[str],
        ids: Sequence[str],
        preprocess: Preprocess,
        on_error: str = "raise",
        root: Optional[str] = None,
        split: Optional[str] = None,
        expected_count: Optional[int] = None,
        found_count: Optional[int] = None,
        synonyms_list: Optional[str] = None,
        skipped: Iterable[Tuple[str, str]] = (),
        background_class: Optional[int] = None,
    ):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"dataset.on_error={on_error!r}; choose one of {', '.join(ON_ERROR_CHOICES)}")
        if list(ids) != sorted(ids):
            raise ValueError("dataset ids must be sorted")  # a programming error of a subclass
        self.name = name
        self.class_names: List[str] = list(class_names)
        self.ids: List[str] = list(ids)
        self.preprocess = preprocess
        self.on_error = on_error
        self.root = root
        self.split = split
        self.expected_count = expected_count
        #: images in the whole split, before ``ids`` / ``limit``
        self.found_count = len(self.ids) if found_count is None else found_count
        #: name of the shipped OVSS synonym list (datasets/classes/ovss_synonyms_<name>.txt)
        self.synonyms_list = synonyms_list
        self.ignore_index = IGNORE_INDEX
        #: train id of a "background" class that DiffCut's evaluation matches many-to-one
        #: (eval_diffcut.py, VOC20 / Context / COCO-Object); None where there is none
        self.background_class = background_class
        #: (image_id, reason) of images skipped so far in this process: those found missing
        #: when the dataset was built, and those that failed in ``__getitem__`` here. Worker
        #: processes report theirs as ``SkippedSample`` items of the loader.
        self.skipped: List[Tuple[str, str]] = list(skipped)
        self._known_skips: Dict[str, str] = dict(self.skipped)

    @property
    def class_synonyms(self) -> Optional[List[List[str]]]:
        """OVSS synonym lists per class (open-vocabulary prompts), where the project ships
        them; read on first use, as no part of an evaluation needs them."""
        if self.synonyms_list is None:
            return None
        synonyms = class_synonyms(self.synonyms_list)
        if len(synonyms) != len(self.class_names):
            raise ValueError(
                f"{self.name}: ovss_synonyms_{self.synonyms_list}.txt has {len(synonyms)} synonym lists for "
                f"{len(self.class_names)} classes"
            )
        return synonyms

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
        """(image uint8 (H, W, 3), decoded label int64 (H, W), meta with file names)."""
        raise NotImplementedError

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        if image_id in self._known_skips:
            return SkippedSample(image_id, self._known_skips[image_id])
        try:
            image, label, meta = self.load(index)
            if image.shape[:2] != label.shape:
                raise DatasetFileError(
                    f"image {meta.get('image_path')} is {image.shape[1]}x{image.shape[0]} but its label "
                    f"{meta.get('label_path')} is {label.shape[1]}x{label.shape[0]} (width x height)",
                    meta.get("label_path"), image_id,
                )
        except DatasetFileError as err:
            if self.on_error != "skip":
                raise
            reason = str(err)
            self.skipped.append((image_id, reason))
            return SkippedSample(image_id, reason)
        meta["orig_size"] = tuple(int(s) for s in label.shape)
        meta["preprocess"] = self.preprocess.preset
        image_t, label_t, geometry = self.preprocess(
            torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(label)
        )
        vae_image = geometry.pop("vae_image", None)
        meta.update(geometry)
        return Sample(image_id=image_id, image=image_t, label=label_t, meta=meta, vae_image=vae_image)


class FileDataset(SegmentationDataset):
    """Images and label files on disk, decoded with a lookup table."""

    def __init__(self, *, entries: Sequence[FileEntry], decoder: LabelDecoder, **kwargs: Any):
        super().__init__(ids=[e.image_id for e in entries], **kwargs)
        self.entries = list(entries)
        self.decoder = decoder

    def load(self, index: int):
        entry = self.entries[index]
        image = read_image(entry.image_path, entry.image_path, entry.image_id)
        raw = read_label(entry.label_path, entry.label_path, entry.image_id)
        try:
            label = self.decoder(raw, entry.label_path)
        except DatasetFileError as err:
            err.image_id = entry.image_id
            raise
        return image, label, {"image_path": entry.image_path, "label_path": entry.label_path}


# ----------------------------------------------------------------------------- helpers
def _id_key(image_id: str) -> str:
    # YAML and Hydra read unquoted 2007_000033 as the int 2007000033 and 000000000139 as
    # 139; this key matches such a number back to the id it was written as
    return image_id.replace("_", "").lstrip("0") or "0"


def select_ids(all_ids: Sequence[str], wanted: Optional[Sequence[Any]], limit: Optional[int], where: str) -> List[str]:
    """``dataset.ids`` then ``dataset.limit`` applied to the sorted ids of a split."""
    selected = sorted(all_ids)
    if wanted is not None:
        by_id = set(selected)
        by_key: Dict[str, List[str]] = defaultdict(list)
        for image_id in selected:
            by_key[_id_key(image_id)].append(image_id)
        chosen: Set[str] = set()
        unknown = []
        for value in wanted:
            text = str(value)
            if text in by_id:
                chosen.add(text)
            elif len(by_key.get(_id_key(text), ())) == 1:
                chosen.add(by_key[_id_key(text)][0])
            else:
                unknown.append(text)
        if unknown:
            raise KeyError(
                f"dataset.ids: {len(unknown)} of {len(wanted)} ids are not in {where}: "
                f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} "
                f"(ids look like {selected[0] if selected else '<none found>'}; quote them in YAML)"
            )
        selected = sorted(chosen)
    if limit is not None:
        if limit < 0:
            raise ValueError(f"dataset.limit must be >= 0 (or null), got {limit}")
        selected = selected[:limit]
    return selected


def check_count(where: str, found: int, expected: Optional[int], note: str = "") -> None:
    """Warn (logger ``benchmark.data``) when a split's image count is not the published one."""
    if expected is not None and found != expected:
        log.warning(
            "%s: found %d images, the published count is %d%s", where, found, expected, f" ({note})" if note else ""
        )


def existing_files(paths: Iterable[str]) -> Set[str]:
    """The subset of ``paths`` that exist, with one directory listing per folder
    (thousands of stat calls are slow on network file systems)."""
    by_dir: Dict[str, List[str]] = defaultdict(list)
    for path in paths:
        by_dir[os.path.dirname(path)].append(path)
    found: Set[str] = set()
    for folder, members in by_dir.items():
        try:
            names = set(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        found.update(p for p in members if os.path.basename(p) in names)
    return found


def check_entries(entries: Sequence[FileEntry], on_error: str, section: str) -> List[Tuple[str, str]]:
    """Missing image / label files of the selected entries: an error naming the first
    one (``on_error=raise``) or the (image_id, reason) list to skip."""
    present = existing_files([p for e in entries for p in (e.image_path, e.label_path)])
    missing: List[Tuple[str, str, str]] = []  # (image_id, kind, path)
    for entry in entries:
        for kind, path in (("image", entry.image_path), ("label", entry.label_path)):
            if path not in present:
                missing.append((entry.image_id, kind, path))
                break
    if missing and on_error != "skip":
        image_id, kind, path = missing[0]
        raise MissingFileError(
            f"{kind} file not found: {path} (image id {image_id}; {len(missing)} of {len(entries)} selected "
            "images have a missing file; dataset.on_error=skip evaluates the others and lists these). "
            + readme_hint(section),
            path, image_id,
        )
    skipped = [(image_id, f"{kind} file not found: {path}") for image_id, kind, path in missing]
    return skipped


# ------------------------------------------------------------------------------ loader
def collate_as_list(batch: List[Any]) -> List[Any]:
    """Keep samples as a list: images of one batch may differ in size."""
    return list(batch)


def make_loader(
    dataset: SegmentationDataset,
    indices: Sequence[int],
    batch_size: int,
    num_workers: int,
    multiprocessing_context: Optional[str] = None,
) -> DataLoader:
    """DataLoader over ``dataset[indices]`` in the given order, yielding lists of
    ``Sample`` / ``SkippedSample``. Workers decode in parallel; everything handed to them
    (dataset, collate function) is picklable, so any start method works."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    # more decoding processes than cores only adds contention (and a torch warning)
    num_workers = min(num_workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    indices = [int(i) for i in indices]
    bad = [i for i in indices if not 0 <= i < len(dataset)]
    if bad:
        raise IndexError(f"indices {bad[:5]} out of range for {dataset.name} ({len(dataset)} images)")
    return DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_as_list,
        multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
        prefetch_factor=4 if num_workers > 0 else None,
    )
