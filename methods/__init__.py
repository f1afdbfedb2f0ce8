"""Segmentation methods: one module per method, registered by name.

Modules are imported lazily by :func:`get_method` so that importing the package stays
cheap and a broken optional dependency of one method does not break the others.
Third-party methods join through the ``diffattn_seg.methods`` entry-point group
(:mod:`methods.plugins`): they are in :data:`METHODS` like the built-ins.
"""
from __future__ import annotations

import importlib
from typing import Dict, Type

from benchmark.registry import MethodPlugin, UnknownNameError, did_you_mean, discover_method_plugins, forget_entry_points

from .base import Method

#: built-in method name -> "module:Class"
BUILTIN_METHODS: Dict[str, str] = {
    "predictions": "methods.predictions:Predictions",
    "diffseg": "methods.diffseg:DiffSeg",
    "diffseg_semantic": "methods.diffseg_semantic:DiffSegSemantic",
    "kmeans": "methods.kmeans:KMeansBaseline",
    "diffsegmenter": "methods.diffsegmenter:DiffSegmenter",
    "ca": "methods.attention_baselines:CrossAttention",
    "ca_sa": "methods.attention_baselines:CrossSelfAttention",
    "seediff": "methods.seediff:SeeDiff",
    "seediff_code": "methods.seediff:SeeDiffCode",
    "diffcut": "methods.diffcut:DiffCut",
}

#: entry-point plugins by name (``methods.plugins.MethodPlugin``)
PLUGINS: Dict[str, MethodPlugin] = {}
#: every method name -> "module:Class": the built-ins and the entry-point plugins
METHODS: Dict[str, str] = {}


def reload_plugins() -> Dict[str, str]:
    """Read the ``diffattn_seg.methods`` entry points again (after installing a package)
    and rebuild :data:`METHODS` and :data:`PLUGINS` in place."""
    forget_entry_points()
    return sync_plugins()


def sync_plugins() -> Dict[str, str]:
    """Rebuild :data:`METHODS` and :data:`PLUGINS` in place from the entry points of the
    current ``sys.path`` (scanned once per ``sys.path``)."""
    PLUGINS.clear()
    PLUGINS.update(discover_method_plugins(BUILTIN_METHODS))
    METHODS.clear()
    METHODS.update(BUILTIN_METHODS)
    METHODS.update({name: plugin.target for name, plugin in PLUGINS.items()})
    return METHODS


def get_method(name: str) -> Type[Method]:
    if name not in METHODS:
        raise UnknownNameError(
            f"Unknown method {name!r}. Valid choices: {', '.join(sorted(METHODS))}." + did_you_mean(name, METHODS)
        )
    module, attr = METHODS[name].split(":")
    if name not in PLUGINS:
        return getattr(importlib.import_module(module), attr)
    where = f"method {name!r} (entry point {METHODS[name]!r} of {PLUGINS[name].dist})"
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ImportError(f"{where} cannot be loaded: {type(err).__name__}: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{where} is {cls!r}, not a subclass of methods.base.Method")
    return cls


reload_plugins()

__all__ = ["BUILTIN_METHODS", "METHODS", "Method", "PLUGINS", "get_method", "reload_plugins", "sync_plugins"]
