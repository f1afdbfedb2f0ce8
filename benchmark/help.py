"""``python -m benchmark [overrides] --help``: every config key with its value and its
one-line description, read from the config schemas (the ``#:`` comment above each field
of the dataclasses that ``benchmark.config`` validates against).

The keys shown are those of the config composed with the given overrides, so
``python -m benchmark method=seediff --help`` lists SeeDiff's keys.
"""
from __future__ import annotations

import inspect
import re
import sys
import textwrap
from typing import Any, Dict, List, Optional, Sequence

_FIELD = re.compile(r"^\s+([A-Za-z_]\w*)\s*:\s*[^=]")
_DOC = re.compile(r"^\s*#:\s?(.*)$")


def field_docs(schema: type) -> Dict[str, str]:
    """Field name -> description (the ``#:`` lines right above it, joined) of a dataclass
    and its bases; the nearest class's description wins."""
    docs: Dict[str, str] = {}
    for cls in reversed([c for c in inspect.getmro(schema) if c is not object]):
        try:
            lines = inspect.getsource(cls).splitlines()
        except (OSError, TypeError):
            continue
        pending: List[str] = []
        for line in lines[1:]:
            doc = _DOC.match(line)
            if doc:
                pending.append(doc.group(1).strip())
                continue
            field = _FIELD.match(line)
            if field and pending:
                docs[field.group(1)] = " ".join(pending)
            if line.strip():
                pending = []
    return docs


def section_schemas(cfg: Any) -> Dict[str, List[type]]:
    """Config section -> the dataclasses its keys are validated against, found from the
    composed config's names (``dataset.name``, ``method.name``, ``metric.name``) without
    validating it: ``--help`` describes a config that would be refused at run time too. A
    section whose name is unknown (or whose plugin fails to import) is left out."""
    from benchmark.config import LoggerConfig, _method_task_by_name
    from benchmark.data import DATASET_SCHEMAS
    from benchmark.metrics import METRICS, get_metric
    from benchmark.models import ModelConfig
    from benchmark.schema import CacheConfig, ExtractionConfig, RunConfig
    from methods import METHODS, get_method

    def name_of(section: str, default: str = "") -> str:
        node = cfg.get(section) if hasattr(cfg, "get") else None
        value = node.get("name", default) if hasattr(node, "get") else default
        return value if isinstance(value, str) else ""

    sections: Dict[str, List[type]] = {
        "model": [ModelConfig], "method.extract": [ExtractionConfig], "logger": [LoggerConfig],
        "run": [RunConfig], "cache": [CacheConfig],
    }
    if name_of("dataset") in DATASET_SCHEMAS:
        sections["dataset"] = [DATASET_SCHEMAS[name_of("dataset")]]
    if name_of("method") in METHODS:
        try:
            cls = get_method(name_of("method"))
            sections["method"] = [cls.Params, cls.Settings]
        except (ImportError, TypeError):  # a broken plugin: the problems list says so
            pass
    metric = name_of("metric", "auto")
    if metric == "auto":  # as benchmark.config.validate_metric resolves it
        task = _method_task_by_name(cfg.get("method"))
        metric = "hungarian_image" if task == "unsupervised" else "miou"
    if metric in METRICS:
        sections["metric"] = [get_metric(metric).Params]
    return sections


def key_docs(cfg: Any) -> Dict[str, str]:
    """Dotted config key -> description for every section of a composed config
    (:func:`section_schemas`)."""
    out: Dict[str, str] = {}
    for prefix, schemas in section_schemas(cfg).items():
        for schema in schemas:
            for name, doc in field_docs(schema).items():
                out[f"{prefix}.{name}"] = doc
    out.setdefault("method.grid", "in-run grid: key -> list of values, all scored on the same diffusion pass")
    out.setdefault("reference", "experiments: {method, dataset[, metric, model, extract, n_images]} whose published "
                   "numbers are shown beside comparable runs")
    return out


def config_problems(cfg: Any) -> List[str]:
    """What ``benchmark.config.validate`` would refuse in ``cfg`` (empty: nothing)."""
    from benchmark.config import ConfigError, validate

    try:
        validate(cfg)
    except ConfigError as err:
        return [str(p) for p in (getattr(err, "problems", None) or [err])]
    return []


def _flat(node: Any, prefix: str = "") -> List[tuple]:
    if isinstance(node, dict) and node:
        out = []
        for k, v in node.items():
            out += _flat(v, f"{prefix}{k}.")
        return out
    return [(prefix[:-1], node)]


def help_text(overrides: Sequence[str] = (), width: int = 100) -> str:
    from omegaconf import OmegaConf

    from benchmark.__main__ import CONF_DIR, GROUPS, group_options
    from benchmark.compose import compose_config

    cfg = compose_config(list(overrides))
    docs = key_docs(cfg)
    help_cfg = OmegaConf.load(CONF_DIR / "config.yaml").hydra.help
    lines = [str(help_cfg.header).rstrip(), "", "== Config groups (choose with group=option) =="]
    for group in GROUPS:
        lines.append(f"{group}: {', '.join(group_options(group))}")
    lines += ["", "== Keys (override with key=value; the values composed from the given overrides) =="]
    plain = OmegaConf.to_container(cfg, resolve=False)
    for key, value in _flat({k: v for k, v in plain.items() if k != "hydra"}):
        shown = "null" if value is None else str(value)
        lines.append(f"{key} = {shown}")
        doc = docs.get(key)
        if doc:
            lines += textwrap.wrap(doc, width=width, initial_indent="    ", subsequent_indent="    ")
    lines += ["", str(help_cfg.footer).rstrip()]
    problems = config_problems(cfg)
    if problems:  # the help above still describes every key; say what a run would refuse
        lines += ["", "== This config would be refused at run time (fix these keys to run it) =="]
        lines += [f"  - {p}" for p in problems]
    return "\n".join(lines) + "\n"


def print_help(overrides: Sequence[str] = ()) -> None:
    """Print :func:`help_text` (exit status 0), the problems a run of this config would be
    refused for listed after it. Only an override that cannot be composed (an unknown group
    option, bad override syntax) prints its error instead (exit status 2)."""
    try:
        text = help_text(overrides)
    except Exception as err:  # noqa: BLE001 - a config error of the overrides: say it, no traceback
        print(f"Error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.stdout.write(text)


def main(argv: Optional[Sequence[str]] = None) -> None:
    print_help(list(sys.argv[1:] if argv is None else argv))
