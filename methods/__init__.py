"""Segmentation methods: one module per method, registered by name.

Modules are imported lazily by :func:`get_method` so that importing the package stays
cheap and a broken optional dependency of one method does not break the others.
"""
from __future__ import annotations

import importlib
from typing import Dict, Type

from benchmark.registry import UnknownNameError, did_you_mean

from .base import Method

#: method name -> "module:Class"
METHODS: Dict[str, str] = {
    "predictions": "methods.predictions:Predictions",
    "diffseg": "methods.diffseg:DiffSeg",
    "kmeans": "methods.kmeans:KMeansBaseline",
    "diffsegmenter": "methods.diffsegmenter:DiffSegmenter",
    "ca": "methods.attention_baselines:CrossAttention",
    "ca_sa": "methods.attention_baselines:CrossSelfAttention",
    "seediff": "methods.seediff:SeeDiff",
    "seediff_code": "methods.seediff:SeeDiffCode",
    "diffcut": "methods.diffcut:DiffCut",
}


def get_method(name: str) -> Type[Method]:
    if name not in METHODS:
        raise UnknownNameError(
            f"Unknown method {name!r}. Valid choices: {', '.join(sorted(METHODS))}." + did_you_mean(name, METHODS)
        )
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["METHODS", "Method", "get_method"]
