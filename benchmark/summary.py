"""A leaderboard-style summary across runs: method × dataset, one headline number per cell.

``benchmark.report A B C`` (or a sweep folder) writes

* ``summary.md/.csv/.tex``: one row per (method, distinguishing settings), one column per
  dataset, the headline metric (mIoU; hIoU for zero-shot splits) in each cell; a run of
  DiffSegmenter's official background protocol (``bg_protocol=official_sweep``) contributes
  its reported (best) point only, as its table does. The row
  label shows only the settings that tell rows of a method apart on the same dataset (a
  key that varies only with the dataset, such as a per-dataset KL threshold, is a property
  of the cell and is not shown);
* ``summary_long.csv``: the long form, one row per (run, grid point) with every setting
  that differs between any two rows and every scalar metric.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import pandas as pd

from benchmark.tables import scalar_metrics, selected_point, to_latex, to_markdown

#: config sections that never distinguish results (paths, logging, resume, published numbers)
IGNORED_PREFIXES = ("hydra.", "run.", "logger.", "cache.", "reference.", "dataset.", "method.grid.", "method.name")


def _flat(d: Any, prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if isinstance(d, Mapping):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = json.dumps(d) if isinstance(d, (list, tuple)) else d
    return out


def point_settings(payload: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Per grid point: the run's flattened config with the point's parameters in place
    (``method.<key>``), the metric's resolved name, without ignored sections."""
    base = _flat((payload.get("provenance") or {}).get("config") or {})
    base = {k: v for k, v in base.items() if not k.startswith(IGNORED_PREFIXES)}
    base["metric.name"] = payload.get("metric")
    base["model.name"] = payload.get("model")
    out = []
    for entry in payload["results"]:
        settings = dict(base)
        for k, v in _flat(entry["params"]).items():
            settings[f"method.{k}"] = v
        out.append(settings)
    return out


def _short_names(keys: Sequence[str]) -> Dict[str, str]:
    """Last dotted component, or more of the key where the last one is ambiguous."""
    names = {}
    for k in keys:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            short = ".".join(parts[-n:])
            if sum(1 for other in keys if other == short or other.endswith("." + short)) == 1:
                break
        names[k] = short
    return names


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return "–" if v is None else str(v)


def summary_frames(payloads: Sequence[Mapping[str, Any]], run_dirs: Sequence[Path]) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(wide method × dataset table of the headline metric, long form)."""
    from benchmark.report import headline_metric

    rows: List[Dict[str, Any]] = []
    for payload, run_dir in zip(payloads, run_dirs):
        points = list(zip(payload["results"], point_settings(payload)))
        chosen = selected_point(payload)
        if chosen is not None:  # an official_sweep run reports its best point only (its protocol)
            points = [points[chosen]]
        for entry, settings in points:
            rows.append({
                "run": str(run_dir), "method": payload["method"], "dataset": payload["dataset"],
                "headline": headline_metric(payload), "settings": settings,
                "metrics": scalar_metrics(entry["metrics"]), "n_images": payload["n_images"],
            })
    # keys that tell rows of one method apart on one dataset
    distinguishing: Dict[str, List[str]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        keys = set()
        mine = [r for r in rows if r["method"] == method]
        for dataset in {r["dataset"] for r in mine}:
            cell = [r["settings"] for r in mine if r["dataset"] == dataset]
            for k in set().union(*cell):
                if len({json.dumps(s.get(k), default=str) for s in cell}) > 1:
                    keys.add(k)
        distinguishing[method] = sorted(keys)
    short = _short_names(sorted({k for ks in distinguishing.values() for k in ks}))
    every = sorted({k for r in rows for k in r["settings"]
                    if len({json.dumps(x["settings"].get(k), default=str) for x in rows}) > 1})
    long_rows, wide_rows = [], []
    for r in rows:
        label = ", ".join(f"{short[k]}={_value(r['settings'].get(k))}" for k in distinguishing[r["method"]])
        value = r["metrics"].get(r["headline"])
        wide_rows.append({"method": r["method"], "settings": label, "dataset": r["dataset"], "value": value})
        long_row = {"run": r["run"], "method": r["method"], "settings": label, "dataset": r["dataset"]}
        long_row.update({k: r["settings"].get(k) for k in every})
        long_row.update(r["metrics"])
        long_row["headline"] = r["headline"]
        long_row["n_images"] = r["n_images"]
        long_rows.append(long_row)
    datasets = list(dict.fromkeys(r["dataset"] for r in wide_rows))
    table: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for r in wide_rows:  # first value of a (row, dataset) cell wins: identical settings give identical numbers
        cells = table.setdefault((r["method"], r["settings"]), {})
        cells.setdefault(r["dataset"], r["value"])
    wide = pd.DataFrame(
        [{"method": m, "settings": label, **{d: cells.get(d) for d in datasets}} for (m, label), cells in table.items()],
        columns=["method", "settings"] + datasets,
    )
    return wide, pd.DataFrame(long_rows)


def write_summary(
    payloads: Sequence[Mapping[str, Any]], run_dirs: Sequence[Path], out: Path, notes: Sequence[str] = ()
) -> Tuple[pd.DataFrame, List[Path]]:
    """Write summary.md/.csv/.tex and summary_long.csv into ``out``; returns (wide, paths)."""
    from benchmark.report import headline_metric

    wide, long = summary_frames(payloads, run_dirs)
    heads = sorted({headline_metric(p) for p in payloads})
    caption = f"Headline metric per dataset: {', '.join(heads)} (%)."
    all_notes = [caption] + list(notes)
    paths = [out / "summary.md", out / "summary.csv", out / "summary.tex", out / "summary_long.csv"]
    paths[0].write_text(to_markdown(wide, all_notes), encoding="utf-8")
    wide.to_csv(paths[1], index=False)
    paths[2].write_text(to_latex(wide, " ".join(all_notes)), encoding="utf-8")
    long.to_csv(paths[3], index=False)
    return wide, paths
