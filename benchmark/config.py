"""Validate the composed Hydra config once, at start, against the plugins' dataclasses.

Hydra composes plain YAML; this module turns each section into the dataclass instance its
plugin declares (``DATASET_SCHEMAS``, ``ModelConfig``, a method's ``Params``/``Settings``,
a metric's ``Params``...). An unknown key, a wrong type or an unknown plugin name fails
here, before any data is read or any model is loaded, with the key's full name and the
valid choices.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Type

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from benchmark.registry import did_you_mean
from benchmark.schema import CacheConfig, ExtractionConfig, RunConfig


class ConfigError(ValueError):
    """A config value or key that cannot work; the message names the key."""


@dataclass
class LoggerConfig:
    name: str = "none"
    project: str = "diffattn-seg-benchmark"
    entity: Optional[str] = None
    mode: str = "offline"
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    dir: Optional[str] = None
    n_overlays: int = 4


LOGGERS = ("none", "wandb")
WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class MethodSpec:
    """A validated method section: the plugin class, its settings and grid points."""

    name: str
    cls: Type[Any]
    settings: Any
    extract: ExtractionConfig
    #: one Params instance per in-run grid point (the product of the grid axes)
    points: List[Any]
    #: the swept keys, in grid order
    grid_keys: List[str]


@dataclass
class MetricSpec:
    name: str
    cls: Type[Any]
    params: Any


@dataclass
class Validated:
    dataset: Any
    model: Any
    method: MethodSpec
    metric: MetricSpec
    logger: LoggerConfig
    run: RunConfig
    cache: CacheConfig
    #: optional published-numbers lookup set by experiment files
    reference: Optional[Dict[str, Any]] = None


# --------------------------------------------------------------------------------------
# generic dataclass validation
# --------------------------------------------------------------------------------------
def _plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _field_types(schema: type) -> Dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(schema)}


def _check_keys(data: Mapping[str, Any], schema: type, where: str) -> None:
    names = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(
                f"Unknown config key '{where}.{key}'. Valid keys of '{where}': {', '.join(sorted(names))}."
                + did_you_mean(key, names)
            )
        nested = names[key].type
        nested_cls = nested if isinstance(nested, type) else None
        if nested_cls is not None and dataclasses.is_dataclass(nested_cls) and isinstance(value, Mapping):
            _check_keys(value, nested_cls, f"{where}.{key}")


def to_dataclass(node: Any, schema: type, where: str) -> Any:
    """Validate ``node`` (DictConfig or dict) against dataclass ``schema``; return an instance."""
    data = _plain(node) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"Config section '{where}' must be a mapping, got {type(data).__name__}: {data!r}")
    _check_keys(data, schema, where)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), data)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        msg = str(err).splitlines()[0]
        raise ConfigError(f"Invalid value for config key '{where}.{key}': {msg}") from None
    except (ValueError, TypeError) as err:  # a plugin's own check in __post_init__
        raise ConfigError(f"Invalid config in '{where}': {err}") from None


def choice(value: str, choices: Any, key: str) -> str:
    if value not in choices:
        raise ConfigError(
            f"Invalid value {value!r} for config key '{key}'. Valid choices: {', '.join(map(str, choices))}."
            + did_you_mean(value, choices)
        )
    return value


# --------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------
def _split_method_section(data: Dict[str, Any], cls: Type[Any]) -> tuple:
    params_fields = {f.name for f in dataclasses.fields(cls.Params)}
    settings_fields = {f.name for f in dataclasses.fields(cls.Settings)}
    reserved = {"name", "extract", "grid"}
    overlap = params_fields & settings_fields
    if overlap:  # a plugin bug, not a user error
        raise TypeError(f"method {cls.name}: keys {sorted(overlap)} are both Params and Settings")
    valid = reserved | params_fields | settings_fields
    for key in data:
        if key not in valid:
            raise ConfigError(
                f"Unknown config key 'method.{key}' for method {cls.name!r}. Valid keys: {', '.join(sorted(valid))}."
                + did_you_mean(key, valid)
            )
    params = {k: v for k, v in data.items() if k in params_fields}
    settings = {k: v for k, v in data.items() if k in settings_fields}
    return params, settings


def grid_points(base: Dict[str, Any], grid: Mapping[str, Any], params_cls: type, method: str) -> tuple:
    """Expand ``method.grid`` (key -> list of values) into Params instances (product)."""
    fields = {f.name for f in dataclasses.fields(params_cls)}
    keys = list(grid)
    for key in keys:
        if key not in fields:
            raise ConfigError(
                f"Unknown grid axis 'method.grid.{key}' for method {method!r}: only post-processing keys can be "
                f"in-run grid axes. Valid axes: {', '.join(sorted(fields))}." + did_you_mean(key, fields)
                + " (Extraction keys such as method.extract.timestep cost a new diffusion pass: sweep them with -m.)"
            )
    axes = []
    for key in keys:
        values = grid[key]
        if not isinstance(values, (list, tuple)):
            values = [values]
        if len(values) == 0:
            raise ConfigError(f"Grid axis 'method.grid.{key}' is empty; give at least one value")
        axes.append(list(values))
    points = []
    for combo in itertools.product(*axes) if axes else [()]:
        values = dict(base)
        values.update(dict(zip(keys, combo)))
        where = "method" if not keys else "method.grid(" + ", ".join(f"{k}={v!r}" for k, v in zip(keys, combo)) + ")"
        points.append(to_dataclass(values, params_cls, where))
    return points, keys


def validate_method(node: Any) -> MethodSpec:
    from methods import METHODS, get_method

    data = dict(_plain(node) or {})
    name = choice(data.get("name", ""), sorted(METHODS), "method.name")
    try:
        cls = get_method(name)
    except (ImportError, TypeError) as err:  # a broken entry-point plugin
        raise ConfigError(f"method.name={name!r}: {err}") from None
    params, settings = _split_method_section(data, cls)
    extract = to_dataclass(data.get("extract", {}) or {}, ExtractionConfig, "method.extract")
    choice(extract.latent, ("mean", "sample"), "method.extract.latent")
    grid = data.get("grid", {}) or {}
    if not isinstance(grid, Mapping):
        raise ConfigError(f"'method.grid' must map keys to lists of values, got {grid!r}")
    if hasattr(cls, "implied_grid"):  # e.g. method.bg_protocol=official_sweep adds its sweep
        try:
            grid = cls.implied_grid(settings, grid)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    points, keys = grid_points(params, grid, cls.Params, name)
    return MethodSpec(
        name=name,
        cls=cls,
        settings=to_dataclass(settings, cls.Settings, "method"),
        extract=extract,
        points=points,
        grid_keys=keys,
    )


def validate_metric(node: Any, task: str) -> MetricSpec:
    """``task`` = the method's output kind: "unsupervised" (segment ids) or class labels."""
    from benchmark.metrics import METRICS, get_metric

    data = dict(_plain(node) or {})
    name = data.pop("name", "auto")
    if name == "auto":
        name = "hungarian_image" if task == "unsupervised" else "miou"
    choice(name, sorted(METRICS), "metric.name")
    cls = get_metric(name)
    return MetricSpec(name=name, cls=cls, params=to_dataclass(data, cls.Params, "metric"))


def validate_dataset(node: Any) -> Any:
    from benchmark.data import DATASET_SCHEMAS

    data = _plain(node) or {}
    name = choice(data.get("name", ""), sorted(DATASET_SCHEMAS), "dataset.name")
    return to_dataclass(data, DATASET_SCHEMAS[name], "dataset")


def validate_model(node: Any) -> Any:
    from benchmark.models import ModelConfig

    return to_dataclass(node, ModelConfig, "model")


def method_task(method: MethodSpec) -> str:
    # method=predictions method.kind=segments: external segment ids, matched like DiffSeg's
    if getattr(method.settings, "kind", None) == "segments":
        return "unsupervised"
    return getattr(method.cls, "task", "")


def validate(cfg: DictConfig) -> Validated:
    top = {"dataset", "model", "method", "metric", "logger", "run", "cache", "reference"}
    for key in cfg.keys():
        if key not in top and key != "hydra":
            raise ConfigError(
                f"Unknown top-level config key '{key}'. Valid keys: {', '.join(sorted(top))}." + did_you_mean(key, top)
            )
    method = validate_method(cfg.method)
    if method.extract.steps != 1:
        raise ConfigError(
            f"method.extract.steps={method.extract.steps}: evaluation runs one pass on each real image (steps=1); "
            "generation from noise over several steps is `python -m benchmark.generate`"
        )
    logger = to_dataclass(cfg.get("logger", {}), LoggerConfig, "logger")
    choice(logger.name, LOGGERS, "logger.name")
    choice(logger.mode, WANDB_MODES, "logger.mode")
    cache = to_dataclass(cfg.get("cache", {}), CacheConfig, "cache")
    choice(cache.dtype, ("float16", "bfloat16", "float32"), "cache.dtype")
    run = to_dataclass(cfg.get("run", {}), RunConfig, "run")
    if run.batch_size < 1:
        raise ConfigError(f"run.batch_size must be >= 1, got {run.batch_size}")
    reference = _plain(cfg.get("reference", None))
    if reference:
        from benchmark.tables import published_numbers

        if not isinstance(reference, Mapping) or set(reference) - {"method", "dataset", "metric"}:
            raise ConfigError(f"'reference' must be {{method: ..., dataset: ..., metric: (optional)}}, got {reference!r}")
        try:
            published_numbers(reference)  # a missing entry fails now, not after the last image
        except KeyError as err:
            raise ConfigError(f"reference: {err.args[0]}") from None
    return Validated(
        dataset=validate_dataset(cfg.dataset),
        model=validate_model(cfg.model),
        method=method,
        metric=validate_metric(cfg.get("metric", {"name": "auto"}), method_task(method)),
        logger=logger,
        run=run,
        cache=cache,
        reference=reference,
    )


def params_dict(params: Any) -> Dict[str, Any]:
    """A JSON-friendly dict of a Params instance."""
    return json_safe(dataclasses.asdict(params)) if dataclasses.is_dataclass(params) else {}


def json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value
