"""Third-party methods registered by Python entry point (group ``diffattn_seg.methods``).

A package declares, in its ``pyproject.toml``::

    [project.entry-points."diffattn_seg.methods"]
    my_method = "my_package.module:MyMethod"

``MyMethod`` subclasses :class:`methods.base.Method`. After ``pip install`` of that package,
``method=my_method`` works like a built-in one: it is listed by ``--help`` and in the
"Valid choices" / "did you mean" errors, its keys are validated against its ``Params`` and
``Settings`` dataclasses, and grids and sweeps apply. Its config group entry
(``method=my_method``) is built from those dataclasses' defaults plus the default
extraction keys (``method.extract.*``); a class attribute ``default_config`` (a mapping)
overrides any of them (e.g. ``{"extract": {"image_size": 768}}``).

The entry points are read when :mod:`methods` is imported and again when ``sys.path``
changes (``methods.reload_plugins()`` forces a new scan, e.g. after ``pip install``).
A plugin whose name clashes with a built-in or whose entry point is not ``module:Class``
is left out, and one whose class cannot be imported (or is not a ``Method``) fails at
start when chosen; each is reported once with its distribution and the reason (logger
``benchmark.plugins``): one broken package never breaks the harness.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Dict, List, Mapping

from benchmark.registry import ENTRY_POINT_GROUP, MethodPlugin, discover_method_plugins, warn_once  # noqa: F401


def _defaults(schema: type) -> Dict[str, Any]:
    if not dataclasses.is_dataclass(schema):
        return {}
    return dataclasses.asdict(schema())


def _deep_update(base: Dict[str, Any], extra: Mapping[str, Any]) -> Dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def default_config(name: str, cls: type) -> Dict[str, Any]:
    """The ``method`` config section of a plugin: ``name``, ``extract`` (the extraction
    defaults), ``grid: {}``, then every ``Params`` and ``Settings`` field with its default,
    updated by ``cls.default_config``."""
    from benchmark.schema import ExtractionConfig

    config: Dict[str, Any] = {"name": name, "extract": dataclasses.asdict(ExtractionConfig()), "grid": {}}
    config.update(_defaults(getattr(cls, "Params", None)))
    config.update(_defaults(getattr(cls, "Settings", None)))
    extra = getattr(cls, "default_config", None) or {}
    if not isinstance(extra, Mapping):
        raise TypeError(f"{cls.__module__}.{cls.__qualname__}.default_config must be a mapping, got {extra!r}")
    config = _deep_update(config, extra)
    config["name"] = name
    return config


def register_configs() -> List[str]:
    """Put each plugin's default config into Hydra's ConfigStore as ``method=<name>`` (so
    the CLI, ``--help`` and ``benchmark.compose`` find it); returns the names stored.
    A plugin whose class cannot be imported is stored with the shared keys only, with a warning:
    choosing it fails at validation with the reason."""
    from hydra.core.config_store import ConfigStore

    from methods import PLUGINS, get_method, sync_plugins

    sync_plugins()  # METHODS in step with the entry points of the current sys.path

    store = ConfigStore.instance()
    stored = []
    for name in PLUGINS:
        try:
            node = default_config(name, get_method(name))
        except Exception as err:  # a broken third-party package: keep the harness usable
            warn_once(f"method plugin {name!r} ({PLUGINS[name].dist}) not loaded: {err}")
            # choosing it still composes, and validation then names the reason
            node = default_config(name, object)
        store.store(group="method", name=name, node=node, provider=PLUGINS[name].dist)
        stored.append(name)
    return stored
