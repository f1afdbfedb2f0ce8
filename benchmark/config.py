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
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from benchmark.registry import did_you_mean
from benchmark.schema import CacheConfig, ExtractionConfig, RunConfig, SettingConflicts


class ConfigError(ValueError):
    """A config value or key that cannot work; the message names the key.

    ``ConfigError(p1, p2, ...)``: every problem found at start, listed in one message
    (``problems`` keeps them apart)."""

    def __init__(self, *problems: str):
        self.problems = [str(p) for p in problems] or ["invalid configuration"]
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} problems in the configuration (fix them all before rerunning):\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(text)

    def __reduce__(self):
        return (type(self), tuple(self.problems))


class InputError(ValueError):
    """A file the user pointed the run at (predictions, candidates, records) cannot be used;
    the message names the file and what was expected."""


def is_user_error(err: BaseException) -> bool:
    """True for errors of the user's config, data or run directory (printed as a message
    alone, exit code 2); False for bugs (kept with their traceback)."""
    from benchmark.records import RunMismatchError
    from benchmark.registry import UnknownNameError

    user = (ConfigError, InputError, SettingConflicts, RunMismatchError, UnknownNameError,
            FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
    try:
        from benchmark.data.errors import DatasetFileError

        user += (DatasetFileError,)
    except ImportError:  # pragma: no cover
        pass
    return isinstance(err, user) or bool(getattr(err, "user_error", False))


def full_tracebacks() -> bool:
    """``HYDRA_FULL_ERROR=1`` (Hydra's switch) shows tracebacks of user errors too."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


#: torch's DataLoader re-raises a worker's exception as ``type(msg)`` where ``msg`` is
#: "Caught <Type> in DataLoader worker process <n>.\nOriginal Traceback ...\n<module.Type>: <text>"
_WORKER_WRAPPER = re.compile(r"\ACaught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def error_message(err: BaseException) -> str:
    """The text of an exception (KeyError's own repr quotes it: unquote). An exception a
    DataLoader worker raised gives its own message, without the worker's traceback."""
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    else:
        text = str(err) or type(err).__name__
    m = _WORKER_WRAPPER.match(text)
    if m:
        # the last "<module.>Type: " line starts the original message (it may span lines)
        starts = list(re.finditer(r"^(?:[\w.]+\.)?" + re.escape(m.group(1)) + r": ", text, re.MULTILINE))
        if starts:
            return text[starts[-1].end():].rstrip()
    return text


def register_resolvers() -> None:
    """OmegaConf resolvers the config files may use (registered once, at import).

    ``${if_in:VALUE,OPTIONS,THEN,ELSE}``: THEN when VALUE is OPTIONS (or one of the list
    OPTIONS), else ELSE. Experiment presets use it to keep settings that only make sense
    with one value of a documented switch coherent when the user flips that switch, e.g.
    ``captioner: ${if_in:${.candidates},clip,blip,none}``."""

    def if_in(value: Any, options: Any, then: Any, otherwise: Any) -> Any:
        opts = list(options) if isinstance(options, (list, tuple, ListConfig)) else [options]
        return then if value in opts else otherwise

    if not OmegaConf.has_resolver("if_in"):
        OmegaConf.register_new_resolver("if_in", if_in)


register_resolvers()


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


def _type_hints(schema: type) -> Dict[str, Any]:
    """Field types of a dataclass with string annotations resolved (``from __future__ import
    annotations``); fields whose annotation cannot be resolved are left out."""
    try:
        return typing.get_type_hints(schema)
    except Exception:  # an unresolvable forward reference: keep the resolvable ones
        return {f.name: f.type for f in dataclasses.fields(schema) if not isinstance(f.type, str)}


def _key_problems(data: Mapping[str, Any], schema: type, where: str) -> List[str]:
    """Every unknown key of ``data`` (nested dataclass sections included), one message each."""
    names = {f.name: f for f in dataclasses.fields(schema)}
    hints = _type_hints(schema)
    problems = []
    for key, value in data.items():
        if key not in names:
            problems.append(
                f"Unknown config key '{where}.{key}'. Valid keys of '{where}': {', '.join(sorted(names))}."
                + did_you_mean(key, names)
            )
            continue
        nested = hints.get(key, names[key].type)
        if isinstance(nested, type) and dataclasses.is_dataclass(nested) and isinstance(value, Mapping):
            problems += _key_problems(value, nested, f"{where}.{key}")
    return problems


def _check_keys(data: Mapping[str, Any], schema: type, where: str) -> None:
    problems = _key_problems(data, schema, where)
    if problems:
        raise ConfigError(*problems)


_NUMBER = (bool, int, float)


def _numbers_where_text(value: Any, hint: Any, key: str) -> List[Tuple[str, Any]]:
    """(key, value) of every number (int, float, bool) that sits where ``hint`` wants text.

    YAML and Hydra turn unquoted digits into numbers before any schema is applied (YAML
    reads a leading 0 as octal: ``000000165713`` -> 60363); OmegaConf would then write
    the number back as other text, so such a value never reaches the run unnoticed."""
    if value is None:
        return []
    if hint is str:
        return [(key, value)] if isinstance(value, _NUMBER) else []
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        inner = [a for a in args if a is not type(None)]
        return _numbers_where_text(value, inner[0], key) if len(inner) == 1 else []
    if origin in (list, tuple, typing.Sequence) and isinstance(value, (list, tuple)) and args:
        return [hit for i, v in enumerate(value) for hit in _numbers_where_text(v, args[0], f"{key}[{i}]")]
    if origin in (dict, typing.Mapping) and isinstance(value, Mapping) and len(args) == 2:
        return [hit for k, v in value.items() for hit in _numbers_where_text(v, args[1], f"{key}.{k}")]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return _text_problems_raw(value, hint, key)
    return []


def _text_problems_raw(data: Mapping[str, Any], schema: type, where: str) -> List[Tuple[str, Any]]:
    hints = _type_hints(schema)
    return [hit for k, v in data.items() if k in hints for hit in _numbers_where_text(v, hints[k], f"{where}.{k}")]


def _quote_hint(path: str, value: Any) -> str:
    shown = repr(value)
    if path.split("[")[0].rsplit(".", 1)[-1] in ("ids", "id") or path.endswith("_id"):
        return (
            f"'{path}' was read as the number {shown} ({type(value).__name__}); ids are strings and a number is "
            "never matched to an image. YAML and Hydra read unquoted digits as numbers (YAML reads a leading 0 "
            "as octal: 000000165713 becomes 60363). Quote each id: in YAML ids: ['000000165713'], on the "
            "command line 'dataset.ids=[\"000000165713\"]'"
        )
    return (
        f"'{path}' expects text but was read as the number {shown} ({type(value).__name__}). YAML and Hydra read "
        f"unquoted numbers, yes/no/on/off and leading-0 digits as values, not text: quote it ({path.split('[')[0]}: "
        f"'{value}')"
    )


def _text_problems(data: Mapping[str, Any], schema: type, where: str) -> List[str]:
    return [_quote_hint(path, value) for path, value in _text_problems_raw(data, schema, where)]


def to_dataclass(node: Any, schema: type, where: str) -> Any:
    """Validate ``node`` (DictConfig or dict) against dataclass ``schema``; return an instance."""
    data = _plain(node) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"Config section '{where}' must be a mapping, got {type(data).__name__}: {data!r}")
    problems = _key_problems(data, schema, where) + _text_problems(data, schema, where)
    if problems:
        raise ConfigError(*problems)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), data)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        msg = str(err).splitlines()[0]
        raise ConfigError(f"Invalid value for config key '{where}.{key}': {msg}") from None
    except SettingConflicts as err:  # a plugin's cross-key checks (benchmark.schema.Checks)
        raise ConfigError(*(f"Invalid config in '{where}': {p}" for p in err.problems)) from None
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
    unknown = [
        f"Unknown config key 'method.{key}' for method {cls.name!r}. Valid keys: {', '.join(sorted(valid))}."
        + did_you_mean(key, valid)
        for key in data if key not in valid
    ]
    params = {k: v for k, v in data.items() if k in params_fields}
    settings = {k: v for k, v in data.items() if k in settings_fields}
    return params, settings, unknown


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
    if keys:  # a bad value outside the grid is named as the user wrote it: method.<key>
        to_dataclass({k: v for k, v in base.items() if k not in keys}, params_cls, "method")
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
    params, settings, unknown = _split_method_section(data, cls)
    check = _Collector()
    check.problems.extend(unknown)
    extract = check(to_dataclass, data.get("extract", {}) or {}, ExtractionConfig, "method.extract")
    if extract is not None:
        check(choice, extract.latent, ("mean", "sample"), "method.extract.latent")
    grid = data.get("grid", {}) or {}
    if not isinstance(grid, Mapping):
        check.add(f"'method.grid' must map keys to lists of values, got {grid!r}")
        grid = {}
    if hasattr(cls, "implied_grid"):  # e.g. method.bg_protocol=official_sweep adds its sweep
        try:
            grid = cls.implied_grid(settings, grid)
        except ValueError as err:
            check.add(str(err))
    points_keys = check(grid_points, params, grid, cls.Params, name)
    settings_obj = check(to_dataclass, settings, cls.Settings, "method")
    check.raise_if_any()
    points, keys = points_keys
    return MethodSpec(
        name=name,
        cls=cls,
        settings=settings_obj,
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


def _single_id_as_list(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """``dataset.ids=2008_000002`` (one id, not a list) as the one-element list ``[2008_000002]``.

    The number check then applies to it as to any list element (Hydra reads unquoted digits,
    underscores between them included, as an int: ``2008_000002`` -> 2008000002)."""
    if isinstance(data, Mapping) and "ids" in data and isinstance(data["ids"], (str, *_NUMBER)):
        return {**data, "ids": [data["ids"]]}
    return data


def validate_dataset(node: Any) -> Any:
    from benchmark.data import DATASET_SCHEMAS

    data = _plain(node) or {}
    name = choice(data.get("name", ""), sorted(DATASET_SCHEMAS), "dataset.name")
    data = _single_id_as_list(data)
    config = to_dataclass(data, DATASET_SCHEMAS[name], "dataset")
    empty = []
    if getattr(config, "ids", None) is not None and len(config.ids) == 0:
        empty.append("dataset.ids=[] selects no image (dataset.ids=null evaluates every image of the split)")
    if getattr(config, "limit", None) == 0:
        empty.append("dataset.limit=0 selects no image (dataset.limit=null evaluates every selected image)")
    if empty:
        raise ConfigError(*empty)
    return config


def validate_model(node: Any) -> Any:
    from benchmark.models import ModelConfig

    return to_dataclass(node, ModelConfig, "model")


def method_task(method: MethodSpec) -> str:
    # method=predictions method.kind=segments: external segment ids, matched like DiffSeg's
    if getattr(method.settings, "kind", None) == "segments":
        return "unsupervised"
    return getattr(method.cls, "task", "")


class _Collector:
    """Runs section validators, keeping every ConfigError's problems instead of the first."""

    def __init__(self) -> None:
        self.problems: List[str] = []

    def __call__(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except ConfigError as err:
            self.problems.extend(err.problems)
        except OmegaConfBaseException as err:  # e.g. an interpolation that does not resolve
            key = getattr(err, "full_key", None) or "?"
            self.problems.append(f"config key '{key}': {str(err).splitlines()[0]}")
        return None

    def add(self, message: str) -> None:
        self.problems.append(message)

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(*dict.fromkeys(self.problems))  # each problem once, in order


def _validate_logger(node: Any) -> LoggerConfig:
    logger = to_dataclass(node, LoggerConfig, "logger")
    choice(logger.name, LOGGERS, "logger.name")
    choice(logger.mode, WANDB_MODES, "logger.mode")
    return logger


def _validate_cache(node: Any) -> CacheConfig:
    cache = to_dataclass(node, CacheConfig, "cache")
    choice(cache.dtype, ("float16", "bfloat16", "float32"), "cache.dtype")
    return cache


def _validate_run(node: Any) -> RunConfig:
    run = to_dataclass(node, RunConfig, "run")
    if run.batch_size < 1:
        raise ConfigError(f"run.batch_size must be >= 1, got {run.batch_size}")
    return run


def _validate_reference(node: Any) -> Optional[Dict[str, Any]]:
    reference = _plain(node)
    if reference:
        from benchmark.tables import published_numbers

        if not isinstance(reference, Mapping) or set(reference) - {"method", "dataset", "metric", "model", "extract", "n_images"}:
            raise ConfigError(
                f"'reference' must be {{method: ..., dataset: ..., metric: (optional), model: (optional), "
                f"extract: (optional), n_images: (optional)}}, got {reference!r}"
            )
        extract, keys = reference.get("extract"), [f.name for f in dataclasses.fields(ExtractionConfig)]
        if extract is not None and (not isinstance(extract, Mapping) or set(extract) - set(keys)):
            raise ConfigError(
                f"reference.extract must map method.extract keys ({', '.join(keys)}) to the values the "
                f"published numbers used, got {extract!r}"
            )
        n_images = reference.get("n_images")
        if n_images is not None and (isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1):
            raise ConfigError(f"reference.n_images must be a positive image count (or absent), got {n_images!r}")
        try:
            published_numbers(reference)  # a missing entry fails now, not after the last image
        except KeyError as err:
            raise ConfigError(f"reference: {err.args[0]}") from None
    return reference


def _validate_steps(method: MethodSpec) -> None:
    if method.extract.steps != 1:
        raise ConfigError(
            f"method.extract.steps={method.extract.steps}: evaluation runs one pass on each real image (steps=1); "
            "generation from noise over several steps is `python -m benchmark.generate`"
        )


def _method_task_by_name(node: Any) -> Optional[str]:
    """The output kind of the configured method when its section did not validate (so the
    metric section can still be checked): None when the method name itself is unknown."""
    from methods import METHODS, get_method

    name = (_plain(node) or {}).get("name", "") if isinstance(_plain(node), Mapping) else ""
    if name not in METHODS:
        return None
    try:
        return getattr(get_method(name), "task", "")
    except (ImportError, TypeError):  # a broken plugin: validate_method has reported it
        return None


def validate(cfg: DictConfig) -> Validated:
    """Every section checked; every problem found is reported in one ConfigError."""
    top = {"dataset", "model", "method", "metric", "logger", "run", "cache", "reference"}
    check = _Collector()
    for key in cfg.keys():
        if key not in top and key != "hydra":
            check.add(
                f"Unknown top-level config key '{key}'. Valid keys: {', '.join(sorted(top))}." + did_you_mean(key, top)
            )
    method = check(validate_method, cfg.method)
    if method is not None:
        check(_validate_steps, method)
    logger = check(_validate_logger, cfg.get("logger", {}))
    cache = check(_validate_cache, cfg.get("cache", {}))
    run = check(_validate_run, cfg.get("run", {}))
    reference = check(_validate_reference, cfg.get("reference", None))
    dataset = check(validate_dataset, cfg.dataset)
    model = check(validate_model, cfg.model)
    task = method_task(method) if method is not None else check(_method_task_by_name, cfg.method)
    metric = check(validate_metric, cfg.get("metric", {"name": "auto"}), task) if task is not None else None
    check.raise_if_any()
    return Validated(
        dataset=dataset,
        model=model,
        method=method,
        metric=metric,
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
