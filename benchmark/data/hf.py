"""A Hugging Face ``datasets`` dataset with an image column and a label column
(``dataset=hf``): a ``save_to_disk`` folder, local parquet / image files, or a hub id."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from .config import HFConfig
from .dataset import SegmentationDataset, check_count, select_ids
from .decode import LabelDecoder
from .errors import DatasetFileError, DatasetNotFoundError, InvalidLabelError
from .folder import configured_root, path_resolver, user_class_names, user_decoder
from .io import read_image, read_label
from .preprocess import Preprocess

HF_SECTION = "Your own data: Hugging Face datasets"


def _is_saved_to_disk(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~"))


def load_hf_table(cfg: HFConfig):
    """The ``datasets.Dataset`` of split ``cfg.split`` described by the config."""
    import datasets

    if not cfg.path:
        raise ValueError("dataset.path is required for dataset=hf (a save_to_disk folder, a data folder, "
                         "a builder name such as parquet with dataset.data_files, or a hub id)")
    root = configured_root(cfg.root)
    resolve = path_resolver(root)
    local = resolve(cfg.path)
    if _is_saved_to_disk(local):
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            if cfg.split not in loaded:
                raise KeyError(f"split {cfg.split!r} not in {local}; it has {', '.join(loaded)} (set dataset.split)")
            return loaded[cfg.split]
        return loaded  # a single saved Dataset is the split
    kwargs: dict = dict(cfg.load_kwargs or {})
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    if cfg.data_files:
        files = [str(resolve(f)) for f in cfg.data_files]
        missing = [f for f in files if not any(ch in f for ch in "*?[") and not Path(f).exists()]
        if missing:
            raise DatasetNotFoundError.expected("data file (dataset.data_files)", missing[0], HF_SECTION)
        kwargs["data_files"] = {cfg.split: files}
        source = cfg.path
    elif local.exists():
        source = str(local)
    elif root is not None or _looks_local(cfg.path):
        raise DatasetNotFoundError.expected("Hugging Face dataset folder (dataset.path)", local, HF_SECTION)
    else:
        source = cfg.path  # a hub id
    try:
        return datasets.load_dataset(source, split=cfg.split, **kwargs)
    except Exception as err:  # datasets raises many types (connection, missing split, ...)
        raise RuntimeError(
            f"could not load Hugging Face dataset {source!r} split {cfg.split!r}: {type(err).__name__}: {err}. "
            f"A hub id needs network access and permission; see {HF_SECTION!r} in datasets/README.md"
        ) from err


def _class_label_names(table: Any, column: Optional[str]) -> Optional[List[str]]:
    """Names of a ClassLabel feature (also inside a Sequence / List feature)."""
    import datasets

    def names_of(feature: Any) -> Optional[List[str]]:
        if isinstance(feature, datasets.ClassLabel):
            return list(feature.names)
        inner = getattr(feature, "feature", None)
        return names_of(inner) if inner is not None else None

    if column is not None:
        if column not in table.features:
            raise KeyError(f"dataset.class_label_column={column!r} is not a column ({', '.join(table.column_names)})")
        names = names_of(table.features[column])
        if names is None:
            raise TypeError(f"column {column!r} has feature {table.features[column]}, not a ClassLabel")
        return names
    for feature in table.features.values():
        names = names_of(feature)
        if names is not None:
            return names
    return None


class HFDataset(SegmentationDataset):
    def __init__(self, cfg: HFConfig, table: Any = None):
        import datasets

        table = load_hf_table(cfg) if table is None else table
        for key in ("image_column", "label_column") + (("id_column",) if cfg.id_column else ()):
            column = getattr(cfg, key)
            if column not in table.column_names:
                raise KeyError(f"dataset.{key}={column!r} is not a column of {cfg.path}; columns: {', '.join(table.column_names)}")
        resolve = path_resolver(configured_root(cfg.root))
        names = user_class_names(cfg, resolve, HF_SECTION, fallback=_class_label_names(table, cfg.class_label_column))
        # read the files ourselves (bytes / paths): palette PNGs stay indices, errors name the row
        for column in (cfg.image_column, cfg.label_column):
            if isinstance(table.features[column], datasets.Image):
                table = table.cast_column(column, datasets.Image(decode=False))
        n_rows = len(table)
        if cfg.id_column:
            raw_ids = [str(v) for v in table[cfg.id_column]]
        else:
            width = max(6, len(str(max(n_rows - 1, 0))))
            raw_ids = [f"{row:0{width}d}" for row in range(n_rows)]
        if len(set(raw_ids)) != len(raw_ids):
            raise ValueError(f"dataset.id_column={cfg.id_column!r} has repeated values; ids must be unique")
        table = table.select_columns([cfg.image_column, cfg.label_column])
        row_of = {image_id: row for row, image_id in enumerate(raw_ids)}
        where = f"hf dataset {cfg.path} split {cfg.split!r}"
        check_count(where, n_rows, cfg.expected_count)
        ids = select_ids(raw_ids, cfg.ids, cfg.limit, where)
        super().__init__(
            name=cfg.name,
            class_names=names,
            ids=ids,
            preprocess=Preprocess(cfg.preprocess, cfg.resolution, cfg.antialias),
            on_error=cfg.on_error,
            root=cfg.root,
            split=cfg.split,
            expected_count=cfg.expected_count,
            found_count=n_rows,
        )
        self.table = table
        self.rows = [row_of[i] for i in ids]
        self.decoder: LabelDecoder = user_decoder(cfg, len(names))
        self.image_column, self.label_column = cfg.image_column, cfg.label_column
        self.source = str(cfg.path)

    def load(self, index: int):
        image_id, row = self.ids[index], self.rows[index]
        record = self.table[row]
        image_value, label_value = record[self.image_column], record[self.label_column]
        image_name = self._describe(image_value, row, self.image_column)
        label_name = self._describe(label_value, row, self.label_column)
        image = read_image(self._source_of(image_value, image_name, image_id), image_name, image_id)
        if isinstance(label_value, dict):  # an Image feature
            raw = read_label(self._source_of(label_value, label_name, image_id), label_name, image_id)
        else:  # an array feature (Array2D, nested lists)
            raw = np.asarray(label_value)
            if raw.ndim != 2:
                raise InvalidLabelError(f"{label_name} has shape {raw.shape}; expected a 2-D label map", label_name, image_id)
        try:
            label = self.decoder(raw, label_name)
        except DatasetFileError as err:
            err.image_id = image_id
            raise
        return image, label, {"image_path": image_name, "label_path": label_name, "row": row}

    def _describe(self, value: Any, row: int, column: str) -> str:
        path = value.get("path") if isinstance(value, dict) else None
        return f"{self.source} row {row} column {column!r}" + (f" ({path})" if path else "")

    @staticmethod
    def _source_of(value: Any, name: str, image_id: str):
        if not isinstance(value, dict):
            raise DatasetFileError(f"{name} is {type(value).__name__}; expected an Image feature", name, image_id)
        if value.get("bytes") is not None:
            return value["bytes"]
        if value.get("path"):
            return value["path"]
        raise DatasetFileError(f"{name} is empty (no bytes, no path)", name, image_id)


def build_hf(cfg: HFConfig) -> HFDataset:
    return HFDataset(cfg)
