"""Users' own data: a folder of images, a folder of label PNGs and a class list
(``dataset=folder``); shared label rules of ``folder`` and ``hf``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .config import FolderConfig, LabelRulesMixin
from .dataset import FileDataset, FileEntry, check_count, check_entries, select_ids
from .decode import IGNORE_INDEX, LabelDecoder, indices_decoder
from .errors import DatasetNotFoundError, log, require_dir
from .io import read_split_ids
from .preprocess import Preprocess
from .reference import read_class_list

FOLDER_SECTION = "Your own data: folder"


def user_class_names(
    cfg: LabelRulesMixin, resolve: Callable[[str], Path], section: str, fallback: Optional[List[str]] = None
) -> List[str]:
    """dataset.class_names, else the lines of dataset.classes_file, else ``fallback``
    (``dataset=folder``: the lines of ``root/classes.txt`` when that file exists)."""
    if cfg.class_names is not None and cfg.classes_file is not None:
        raise ValueError("set dataset.class_names or dataset.classes_file, not both")
    if cfg.class_names is not None:
        names = [str(n) for n in cfg.class_names]
    elif cfg.classes_file is not None:
        path = resolve(cfg.classes_file)
        if not path.is_file():
            raise DatasetNotFoundError.expected("class list file (dataset.classes_file)", path, section)
        names = read_class_list(path)
    elif fallback is not None:
        names = list(fallback)
    else:
        raise ValueError(
            f"{cfg.name}: no class names; set dataset.class_names=[...] or dataset.classes_file=<file with one "
            "name per line>"
        )
    if not names:
        raise ValueError(f"{cfg.name}: the class list is empty")
    if len(names) >= IGNORE_INDEX:
        raise ValueError(f"{cfg.name}: {len(names)} classes; at most {IGNORE_INDEX - 1} fit beside the ignore value 255")
    return names


def user_decoder(cfg: LabelRulesMixin, num_classes: int) -> LabelDecoder:
    if cfg.ignore_index < 0:
        raise ValueError(f"dataset.ignore_index must be a label value >= 0, got {cfg.ignore_index}")
    return indices_decoder(num_classes, ignored=[cfg.ignore_index], reduce_zero_label=cfg.reduce_zero_label)


def configured_root(root: Optional[str]) -> Optional[Path]:
    """dataset.root with ``~`` expanded; None when unset."""
    return Path(root).expanduser() if root else None


def path_resolver(root: Optional[Path]) -> Callable[[str], Path]:
    """Resolves a configured path: ``~`` expanded, relative paths taken under ``root`` (if any)."""

    def resolve(path: str) -> Path:
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() or root is None else root / candidate

    return resolve


def build_folder(cfg: FolderConfig) -> FileDataset:
    preprocess = Preprocess(cfg.preprocess, cfg.resolution, cfg.antialias)
    root = configured_root(cfg.root)
    if root is not None:
        require_dir(root, "dataset root", FOLDER_SECTION)
    resolve = path_resolver(root)
    image_dir = require_dir(resolve(cfg.image_dir), "image folder (dataset.image_dir)", FOLDER_SECTION)
    label_dir = require_dir(resolve(cfg.label_dir), "label folder (dataset.label_dir)", FOLDER_SECTION)
    # the documented layout: root/classes.txt is the class list when none is configured
    default_list = root / "classes.txt" if root is not None else None
    fallback = read_class_list(default_list) if default_list is not None and default_list.is_file() else None
    names = user_class_names(cfg, resolve, FOLDER_SECTION, fallback)
    suffixes = {s.lower() if s.startswith(".") else "." + s.lower() for s in cfg.image_suffixes}
    same_dir = image_dir.resolve() == label_dir.resolve()

    images: Dict[str, str] = {}
    for name in sorted(os.listdir(image_dir)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in suffixes or (same_dir and name.endswith(cfg.label_suffix)):
            continue
        if stem in images:
            raise ValueError(f"two images share the id {stem!r} in {image_dir}: {Path(images[stem]).name} and {name}")
        images[stem] = str(image_dir / name)
    labels = {n[: -len(cfg.label_suffix)] for n in os.listdir(label_dir) if n.endswith(cfg.label_suffix)}

    if cfg.split_file is not None:
        split_file = resolve(cfg.split_file)
        if not split_file.is_file():
            raise DatasetNotFoundError.expected("split file (dataset.split_file)", split_file, FOLDER_SECTION)
        ids = read_split_ids(split_file)
        # an id without an image gets the path its image would have, reported as missing
        default_suffix = sorted(suffixes)[0]
        images.update({i: str(image_dir / f"{i}{default_suffix}") for i in ids if i not in images})
    else:
        ids = sorted(set(images) & labels)
        unlabeled, orphan_labels = sorted(set(images) - labels), sorted(labels - set(images))
        if unlabeled or orphan_labels:
            log.warning(
                "folder dataset: %d images have no label %s in %s (e.g. %s) and %d labels have no image (e.g. %s); "
                "evaluating the %d ids that have both",
                len(unlabeled), "<id>" + cfg.label_suffix, label_dir, unlabeled[:3], len(orphan_labels),
                orphan_labels[:3], len(ids),
            )
    where = f"folder dataset {image_dir}"
    if not ids:
        raise DatasetNotFoundError.expected(
            f"image / label pairs (<id>{{{','.join(sorted(suffixes))}}} with <id>{cfg.label_suffix})",
            f"{image_dir} + {label_dir}", FOLDER_SECTION,
        )
    check_count(where, len(ids), cfg.expected_count)
    chosen = [
        FileEntry(i, images[i], str(label_dir / f"{i}{cfg.label_suffix}"))
        for i in select_ids(ids, cfg.ids, cfg.limit, where)
    ]
    return FileDataset(
        entries=chosen,
        decoder=user_decoder(cfg, len(names)),
        name=cfg.name,
        class_names=names,
        preprocess=preprocess,
        on_error=cfg.on_error,
        root=str(root) if root is not None else None,
        split=cfg.split,
        expected_count=cfg.expected_count,
        found_count=len(ids),
        skipped=check_entries(chosen, cfg.on_error, FOLDER_SECTION),
    )
