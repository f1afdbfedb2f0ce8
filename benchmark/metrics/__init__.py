"""Metrics: integer count state per image, numbers from the summed counts.

``METRICS`` maps the config name (``metric=<name>``, ``conf/metric/<name>.yaml``) to the
class; :func:`get_metric` looks one up with a "did you mean" error.
"""
from __future__ import annotations

from typing import Dict, Type

from benchmark.registry import Registry

from .base import Metric, NoParams
from .hungarian import HungarianDataset, HungarianImage
from .miou import MeanIoU
from .zeroshot import SPLIT_PRESETS, ZeroShot

_REGISTRY: Registry[Type[Metric]] = Registry("metric")
for _cls in (MeanIoU, HungarianDataset, HungarianImage, ZeroShot):
    _REGISTRY.register(_cls.name)(_cls)

#: metric name -> Metric subclass
METRICS: Dict[str, Type[Metric]] = {name: _REGISTRY.get(name) for name in _REGISTRY.names()}


def get_metric(name: str) -> Type[Metric]:
    """The Metric class registered as ``name``; UnknownNameError (with suggestions) otherwise."""
    return _REGISTRY.get(name)


__all__ = [
    "METRICS",
    "Metric",
    "NoParams",
    "get_metric",
    "MeanIoU",
    "HungarianDataset",
    "HungarianImage",
    "ZeroShot",
    "SPLIT_PRESETS",
]
