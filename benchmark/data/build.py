"""``build_dataset``: a validated ``dataset`` config section -> a ``SegmentationDataset``."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from benchmark.registry import Registry

from .config import DATASET_SCHEMAS, ON_ERROR_CHOICES, DatasetConfig
from .dataset import SegmentationDataset
from .folder import build_folder
from .hf import build_hf
from .official import OFFICIAL, build_official
from .synthetic import SyntheticDataset

DATASETS: Registry[Callable[[Any], SegmentationDataset]] = Registry("dataset")
for _name in OFFICIAL:
    DATASETS.register(_name)(build_official)
DATASETS.register("synthetic")(SyntheticDataset)
DATASETS.register("folder")(build_folder)
DATASETS.register("hf")(build_hf)
assert set(DATASETS.names()) == set(DATASET_SCHEMAS), "every dataset schema needs a builder"


def dataset_config(cfg: Any) -> DatasetConfig:
    """The schema dataclass of ``cfg`` (a DictConfig, a mapping or a dataclass), with
    unknown keys and wrong types rejected naming the key."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        schema = DATASET_SCHEMAS.get(getattr(cfg, "name", None))
        if schema is not None and type(cfg) is schema:
            return cfg
        cfg = OmegaConf.structured(cfg)
    if isinstance(cfg, DictConfig):
        values = OmegaConf.to_container(cfg, resolve=True)
    elif isinstance(cfg, Mapping):
        values = dict(cfg)
    else:
        raise TypeError(f"dataset config must be a DictConfig, a mapping or a dataclass, got {type(cfg).__name__}")
    name = values.get("name")
    if name is None:
        raise ValueError(f"dataset config has no 'name'; choose one of {', '.join(DATASETS.names())}")
    DATASETS.get(name)  # unknown name: error listing the valid ones, with "did you mean"
    try:
        merged = OmegaConf.merge(OmegaConf.structured(DATASET_SCHEMAS[name]), values)
    except OmegaConfBaseException as err:
        raise ValueError(f"invalid dataset config for {name!r}: {err}") from err
    return OmegaConf.to_object(merged)


def build_dataset(cfg: Any) -> SegmentationDataset:
    config = dataset_config(cfg)
    if config.on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"dataset.on_error={config.on_error!r}; choose one of {', '.join(ON_ERROR_CHOICES)}")
    if config.num_workers < 0:
        raise ValueError(f"dataset.num_workers must be >= 0, got {config.num_workers}")
    return DATASETS.get(config.name)(config)
