"""Rebuild tables and plots from saved results, without rerunning anything.

    python -m benchmark.report RUN_OR_SWEEP_DIR [...] [--out DIR] [--no-plots]

For every run directory found (a folder holding ``metrics.json`` and
``per_image.parquet``) the metrics are recomputed from the per-image counts, its
``table.md/.csv/.tex`` rewritten and (unless ``--no-plots``) its figures and
``report.html`` redrawn: metric vs each grid axis, per-class IoU bars, one overlay figure
per kept example (``examples/figure_<id>.png``). With several runs (a multirun sweep, or
runs of several methods and datasets) one combined table has a row per (job,
configuration) and a column per parameter that differs, ``summary.*`` is the method ×
dataset table of the headline metric (:mod:`benchmark.summary`), and a sweep page
``report.html`` shows them with the metric-vs-parameter figures.
A sweep job that failed (its ``error.json``) and a run directory that cannot be read are
rows of the combined table with status ``failed`` / ``unreadable`` and the error, and are
named on stderr; reading a single such directory is an error naming it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from benchmark.records import from_frame, sum_counts
from benchmark.tables import notes_for, results_frame, to_latex, to_markdown, write_tables


FAILED_JOB_FILE = "error.json"  # written by a failed multirun job (benchmark.__main__)
HYDRA_JOB_CONFIG = ".hydra/config.yaml"  # every Hydra job folder, finished or not
RUN_MARKERS = ("metrics.json", FAILED_JOB_FILE, HYDRA_JOB_CONFIG)


def find_runs(paths: Sequence[Path]) -> List[Path]:
    """Run directories under ``paths``: folders with ``metrics.json`` or a failed job's
    ``error.json``."""
    runs = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"benchmark.report: {p} does not exist")
        if any((p / m).is_file() for m in RUN_MARKERS):
            runs.append(p)
        else:
            runs.extend(_run_dir_of(m, marker) for marker in RUN_MARKERS for m in p.rglob(marker))
    if not runs:
        raise FileNotFoundError(f"benchmark.report: no metrics.json under {', '.join(map(str, paths))}")
    return sorted(set(runs))


def _run_dir_of(path: Path, marker: str) -> Path:
    return path.parents[len(Path(marker).parts) - 1]


def failed_job(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The failure a multirun job recorded in ``run_dir``; a Hydra job folder with neither
    results nor a recorded failure is ``incomplete`` (the job died or still runs). None when
    the folder holds results of a job whose last attempt did not fail."""
    path = Path(run_dir) / FAILED_JOB_FILE
    if not path.is_file():
        if (Path(run_dir) / "metrics.json").is_file() or not (Path(run_dir) / HYDRA_JOB_CONFIG).is_file():
            return None
        from omegaconf import OmegaConf

        try:
            config = OmegaConf.to_container(OmegaConf.load(Path(run_dir) / HYDRA_JOB_CONFIG), resolve=False)
        except Exception:
            config = {}
        return {"run_dir": Path(run_dir), "status": "incomplete", "config": config, "user_error": False,
                "error": f"no metrics.json in {run_dir}: the job did not finish (see its .log file)"}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        data = {"error": f"{path} is not readable JSON: {err}"}
    return {"run_dir": Path(run_dir), "status": "failed", "error": str(data.get("error")),
            "config": data.get("config") or {}, "user_error": bool(data.get("user_error"))}


def recompute(run_dir: Path) -> Dict[str, Any]:
    """metrics.json's payload with its results recomputed from per_image.parquet."""
    from benchmark.config import json_safe, to_dataclass
    from benchmark.metrics import get_metric

    from benchmark.config import InputError

    payload = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    cls = get_metric(payload["metric"])
    params = to_dataclass(payload.get("metric_params", {}), cls.Params, "metric")
    metric = cls(len(payload["class_names"]), payload["class_names"], payload["ignore_index"], params,
                 void_value=payload.get("void_value"))
    frame = pd.read_parquet(run_dir / "per_image.parquet")
    if frame.empty or "image_id" not in frame.columns:
        raise InputError(f"{run_dir / 'per_image.parquet'} holds no per-image record (a run of no image)")
    records, points = from_frame(frame)
    totals = sum_counts(records, len(points), metric.state_shapes())
    payload["results"] = [
        {"params": p, "metrics": json_safe(metric.compute(t))} for p, t in zip(points, totals)
    ]
    return payload


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = json.dumps(d) if isinstance(d, (list, dict)) else d
    return out


IGNORED_CONFIG_KEYS = ("hydra.", "run.", "logger.", "cache.")


def differing_config_keys(payloads: Sequence[Dict[str, Any]], failed: Sequence[Dict[str, Any]] = ()) -> List[str]:
    flats = [_flatten(p["provenance"]["config"]) for p in payloads] + [_flatten(f.get("config") or {}) for f in failed]
    keys = sorted(set().union(*flats)) if flats else []
    return [
        k for k in keys
        if not k.startswith(IGNORED_CONFIG_KEYS) and len({json.dumps(f.get(k), default=str) for f in flats}) > 1
    ]


def swept_keys(payloads: Sequence[Dict[str, Any]]) -> List[str]:
    """Config keys that differ between runs of the same method, then the in-run grid axes:
    the axes of metric-vs-parameter plots (runs of several methods differ in every
    method-specific key; those are not axes)."""
    by_method: Dict[str, List[Dict[str, Any]]] = {}
    for p in payloads:
        by_method.setdefault(p["method"], []).append(p)
    keys = set()
    for group in by_method.values():
        if len(group) > 1:
            keys |= set(differing_config_keys(group))
    ordered = [k for k in differing_config_keys(payloads) if k in keys]
    return ordered + sorted({k for p in payloads for k in p.get("grid_keys", [])} - set(ordered))


def combined_frame(
    payloads: Sequence[Dict[str, Any]], run_dirs: Sequence[Path], failed: Sequence[Dict[str, Any]] = ()
) -> pd.DataFrame:
    """One row per (job, configuration); with ``failed`` (see :func:`failed_job`) one row per
    failed or unreadable job too, with ``status`` and ``error`` columns."""
    job_keys = differing_config_keys(payloads, failed)
    frames = []
    for payload, run_dir in zip(payloads, run_dirs):
        frame = results_frame(payload)
        flat = _flatten(payload["provenance"]["config"])
        for i, k in enumerate(job_keys):
            frame.insert(3 + i, k, flat.get(k))
        frame.insert(0, "run", run_dir.name)
        frame["diffusion_passes"] = payload["diffusion_passes"]
        if failed:
            frame["status"] = "ok"
            frame["error"] = None
        frames.append(frame)
    for entry in failed:
        flat = _flatten(entry.get("config") or {})
        row: Dict[str, Any] = {"run": Path(entry["run_dir"]).name}
        for k in ("method", "dataset", "model"):
            row[k] = flat.get(f"{k}.name")
        row.update({k: flat.get(k) for k in job_keys})
        row.update({"status": entry["status"], "error": entry["error"]})
        frames.append(pd.DataFrame([row]))
    frame = pd.concat(frames, ignore_index=True)
    for col in ("n_images", "diffusion_passes"):  # counts stay integers beside failed rows
        if failed and col in frame.columns:
            frame[col] = pd.Series([None if pd.isna(v) else int(v) for v in frame[col]], dtype=object)
    return frame.sort_values("run", kind="stable", key=_run_order).reset_index(drop=True) if failed else frame


def _run_order(runs: pd.Series) -> pd.Series:
    """Job folders (0, 1, ..., 10) in numeric order, other names after them."""
    return runs.map(lambda r: (0, int(r), "") if str(r).isdigit() else (1, 0, str(r)))


HEADLINE_ORDER = ("hIoU", "mIoU", "ACC", "aAcc")


def headline_metric(payload: Mapping[str, Any]) -> str:
    """The metric a run is ranked by: hIoU for zero-shot splits, else mIoU."""
    return "hIoU" if payload.get("metric") == "zeroshot" else "mIoU"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mark(fig, payloads: Sequence[Mapping[str, Any]]) -> None:
    """PIPELINE CHECK / ORACLE stamp in a figure's corner when any run warrants it."""
    marks = []
    if any(p.get("random_weights") for p in payloads):
        marks.append("PIPELINE CHECK (random weights)")
    if any(p.get("oracle_keys") for p in payloads):
        marks.append("ORACLE")
    if marks:
        fig.text(0.99, 0.01, " · ".join(marks), ha="right", va="bottom", fontsize=7, color="darkred")


def _is_numeric(values: pd.Series) -> bool:
    if values.map(lambda v: isinstance(v, bool) or isinstance(v, (list, tuple, dict))).any():
        return False
    return not pd.to_numeric(values, errors="coerce").isna().any()


def plot_metric_vs_params(
    frame: pd.DataFrame, params: Sequence[str], out_dir: Path, payloads: Sequence[Mapping[str, Any]] = ()
) -> List[Path]:
    """One figure per swept parameter: each metric against it (numeric axes as curves,
    categorical ones as grouped bars), one series per combination of the other axes."""
    plt = _pyplot()
    written = []
    metrics = [c for c in ("mIoU", "ACC", "aAcc", "mAcc", "hIoU") if c in frame.columns]
    for param in params:
        if param not in frame.columns:
            continue
        # rows that have this parameter (a sweep over several methods: the others lack it)
        rows = frame[frame[param].map(lambda v: v is not None and not (isinstance(v, float) and v != v))]
        labels = rows[param].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else str(v))
        if labels.nunique() < 2:
            continue
        others = [p for p in params if p != param and p in rows.columns and rows[p].map(str).nunique() > 1]
        keyed = rows.assign(**{o: rows[o].map(str) for o in others})
        groups = list(keyed.groupby(others, dropna=False)) if others else [((), keyed)]
        shown = metrics if len(groups) == 1 else metrics[:1]
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        if _is_numeric(rows[param]):
            for key, sub in groups:
                xs = pd.to_numeric(sub[param])
                order = xs.argsort().to_numpy()
                for m in shown:
                    label = m + (f" ({_series_label(others, key)})" if others else "")
                    ax.plot(xs.to_numpy()[order], sub[m].to_numpy()[order], marker="o", label=label)
        else:
            cats = list(dict.fromkeys(labels))
            series = [(m, key, sub) for key, sub in groups for m in shown]
            width = 0.8 / max(len(series), 1)
            for i, (m, key, sub) in enumerate(series):
                sub_labels = labels.loc[sub.index]
                heights = [float(sub[m][sub_labels == c].iloc[0]) if (sub_labels == c).any() else 0.0 for c in cats]
                label = m + (f" ({_series_label(others, key)})" if others else "")
                ax.bar([x + (i - (len(series) - 1) / 2) * width for x in range(len(cats))], heights, width, label=label)
            ax.set_xticks(range(len(cats)))
            ax.set_xticklabels(cats, rotation=30 if max(map(len, cats)) > 6 else 0, ha="right", fontsize=7)
        ax.set_xlabel(param)
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        _mark(fig, payloads)
        fig.tight_layout()
        path = out_dir / f"plot_{param.replace('.', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _series_label(keys: Sequence[str], values: Any) -> str:
    values = values if isinstance(values, tuple) else (values,)
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, values))


def point_label(payload: Mapping[str, Any], j: int) -> str:
    """'kl_threshold=1.1, anchors=16' for grid point j ('' without a grid)."""
    params = payload["results"][j]["params"]
    return ", ".join(f"{k}={_short(params.get(k))}" for k in payload.get("grid_keys", []))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return str(value)


def plot_per_class(payload: Dict[str, Any], out_dir: Path, point: int = 0) -> Optional[Path]:
    """Per-class IoU bars of grid point ``point`` (classes in dataset order, absent = no bar)."""
    plt = _pyplot()
    if not payload["results"]:
        return None
    per_class = payload["results"][point]["metrics"].get("per_class_IoU")
    if not per_class:
        return None
    from benchmark.visualize import dataset_palette

    names = list(per_class)
    values = [per_class[n] if per_class[n] is not None else 0.0 for n in names]
    pal = dataset_palette(payload["dataset"], payload.get("class_names") or names)
    colours = [tuple(c / 255.0) for c in pal[: len(names)]] if len(pal) >= len(names) else "tab:blue"
    fig, ax = plt.subplots(figsize=(max(5, 0.3 * len(names)), 3.6))
    ax.bar(range(len(names)), values, color=colours, edgecolor="0.3", linewidth=0.5)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel("IoU %")
    label = point_label(payload, point)
    ax.set_title(f"{payload['method']} on {payload['dataset']}" + (f" ({label})" if label else ""), fontsize=9)
    _mark(fig, [payload])
    fig.tight_layout()
    path = out_dir / "plot_per_class_IoU.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def best_point(payload: Mapping[str, Any]) -> int:
    """Index of the grid point with the highest headline metric (first on ties)."""
    name = headline_metric(payload)
    scores = [r["metrics"].get(name) for r in payload["results"]]
    scores = [-1.0 if s is None else s for s in scores]
    return int(max(range(len(scores)), key=lambda j: (scores[j], -j))) if scores else 0


def default_point(payload: Mapping[str, Any]) -> int:
    """Index of the grid point whose swept values equal the method's configured values
    (the config's ``method.<key>``), else 0."""
    keys = payload.get("grid_keys", [])
    base = ((payload.get("provenance") or {}).get("config") or {}).get("method") or {}
    for j, r in enumerate(payload["results"]):
        if keys and all(k in base and r["params"].get(k) == base[k] for k in keys):
            return j
    return 0


def example_points(payload: Mapping[str, Any], max_points: int = 4) -> List[Tuple[int, str]]:
    """(grid point, role) shown in example figures: every point of a small grid, else the
    default and the best."""
    n = len(payload["results"])
    if n <= max_points:
        return [(j, "") for j in range(n)]
    default, best = default_point(payload), best_point(payload)
    return [(default, "default")] + ([(best, "best")] if best != default else [])


def per_image_scores(
    run_dir: Path, payload: Mapping[str, Any], ids: Optional[Sequence[str]] = None
) -> Dict[str, List[Optional[float]]]:
    """image id -> headline metric of each grid point on that image alone (from the counts
    in per_image.parquet); only ``ids`` when given."""
    from benchmark.config import to_dataclass
    from benchmark.metrics import get_metric

    cls = get_metric(payload["metric"])
    params = to_dataclass(payload.get("metric_params", {}), cls.Params, "metric")
    metric = cls(len(payload["class_names"]), payload["class_names"], payload["ignore_index"], params,
                 void_value=payload.get("void_value"))  # its counts hold "undecided" (method.void_value)
    frame = pd.read_parquet(run_dir / "per_image.parquet")
    if ids is not None:
        frame = frame[frame["image_id"].isin(list(ids))]
    records, points = from_frame(frame)
    name = headline_metric(payload)
    out: Dict[str, List[Optional[float]]] = {}
    for rec in records:
        if rec.status == "ok":
            out[rec.image_id] = [metric.compute(t).get(name) for t in sum_counts([rec], len(points), metric.state_shapes())]
    return out


def example_ids(run_dir: Path) -> List[str]:
    ex_dir = run_dir / "examples"
    return sorted(p.name[: -len("_image.png")] for p in ex_dir.glob("*_image.png")) if ex_dir.is_dir() else []


def plot_examples(run_dir: Path, out_dir: Path, payload: Optional[Dict[str, Any]] = None) -> List[Path]:
    """One figure per kept example (``examples/figure_<id>.png``): image | GT | prediction
    of each shown grid point (:func:`example_points`) as overlays in the dataset's palette,
    unsupervised segments coloured by their Hungarian-matched class, titles with the
    parameters and the per-image score."""
    import numpy as np
    from PIL import Image

    from benchmark.visualize import Panel, dataset_palette, example_figure, matched_classes

    payload = payload if payload is not None else recompute(run_dir)
    ids = example_ids(run_dir)
    if not ids or not payload["results"]:
        return []
    ex_dir = run_dir / "examples"
    names = payload["class_names"]
    pal = dataset_palette(payload["dataset"], names)
    ignore = int(payload["ignore_index"])
    scores = per_image_scores(run_dir, payload, ids)
    metric_name = headline_metric(payload)
    written = []
    for image_id in ids:
        image = np.array(Image.open(ex_dir / f"{image_id}_image.png").convert("RGB"))
        label = np.array(Image.open(ex_dir / f"{image_id}_label.png")).astype(np.int64)
        panels = []
        for j, role in example_points(payload):
            path = ex_dir / f"{image_id}_pred_{j}.png"
            if not path.is_file():
                continue
            pred = np.array(Image.open(path)).astype(np.int64)
            mapping = matched_classes(
                pred, label, payload["metric"], len(names), ignore,
                assignment=payload["results"][j]["metrics"].get("assignment"),
            )
            score = (scores.get(image_id) or [None] * (j + 1))[j]
            title = "\n".join(t for t in (
                (role + ": " if role else "") + (point_label(payload, j) or "prediction"),
                f"{metric_name} {score:.1f} (this image)" if score is not None else "",
            ) if t)
            panels.append(Panel(pred, mapping, title))
        if not panels:
            continue
        heading = f"{payload['method']} on {payload['dataset']}, model {payload['model']}: {image_id}"
        written.append(example_figure(
            image, label, panels, names, pal, out_dir / f"figure_{image_id}.png", ignore,
            title=heading, pipeline_check=bool(payload.get("random_weights")),
        ))
    return written


def run_plots(run_dir: Path, payload: Dict[str, Any]) -> List[Path]:
    """Every figure of one run: metric vs each grid axis, per-class IoU, example figures."""
    written = plot_metric_vs_params(results_frame(payload), payload.get("grid_keys", []), run_dir, [payload])
    per_class = plot_per_class(payload, run_dir, best_point(payload))
    written += [per_class] if per_class else []
    written += plot_examples(run_dir, run_dir / "examples", payload)
    return written


def report(paths: Sequence[Path], out: Optional[Path] = None, plots: bool = True) -> Dict[str, Any]:
    """Recompute, re-table and re-plot every run under ``paths``; with several runs add the
    combined table, the summary table and a sweep page. Returns ``runs`` (the readable
    ones), ``payloads``, ``failed`` (failed jobs and unreadable run directories, each named
    on stderr), ``combined`` (a frame, or None for one run), ``summary``, ``written`` and
    ``out``. Errors: FileNotFoundError (no run under ``paths``), InputError (the only run
    found cannot be read)."""
    from benchmark.config import InputError, error_message
    from benchmark.html_report import write_run_page, write_sweep_page
    from benchmark.summary import write_summary

    found = find_runs(paths)
    runs, payloads, failed = [], [], []
    written: List[Path] = []
    for run_dir in found:
        entry = failed_job(run_dir)
        if entry is None:
            try:
                payload = recompute(run_dir)
            except Exception as err:  # a run directory that cannot be read: named, not fatal
                entry = {"run_dir": run_dir, "status": "unreadable", "config": {},
                         "error": f"{type(err).__name__}: {error_message(err)}"}
            else:
                write_tables(payload, run_dir)
                runs.append(run_dir)
                payloads.append(payload)
                if plots:
                    figures = run_plots(run_dir, payload)
                    written += figures
                    written.append(write_run_page(run_dir, payload, figures))
                continue
        failed.append(entry)
        print(f"benchmark.report: {entry['status']} run {run_dir}: {entry['error']}", file=sys.stderr)
    if not runs and len(found) == 1:
        raise InputError(
            "benchmark.report: no readable run under " + ", ".join(map(str, paths)) + ": "
            + "; ".join(f"{e['run_dir']} ({e['status']}: {e['error']})" for e in failed)
        )
    out = Path(out) if out else (found[0] if len(found) == 1 else Path(paths[0]))
    out.mkdir(parents=True, exist_ok=True)
    combined = summary = None
    if len(found) > 1:
        combined = combined_frame(payloads, runs, failed)
        notes = sorted({n for p in payloads for n in notes_for(p)})
        (out / "combined.md").write_text(to_markdown(combined, notes), encoding="utf-8")
        combined.to_csv(out / "combined.csv", index=False)
        (out / "combined.tex").write_text(to_latex(combined, " ".join(notes)), encoding="utf-8")
        written += [out / "combined.md", out / "combined.csv", out / "combined.tex"]
        if payloads:
            summary, summary_files = write_summary(payloads, runs, out, notes)
            written += summary_files
        if plots and payloads:
            ok = combined[combined["status"] == "ok"].reset_index(drop=True) if "status" in combined else combined
            figures = plot_metric_vs_params(ok, swept_keys(payloads), out, payloads)
            written += figures
            written.append(write_sweep_page(out, payloads, runs, combined, summary, figures))
    return {"runs": runs, "combined": combined, "summary": summary, "written": written, "payloads": payloads,
            "failed": failed, "out": out}


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, default=None, help="where combined tables/plots go (default: first path)")
    parser.add_argument("--no-plots", action="store_true", help="tables only: no figures, no report.html")
    args = parser.parse_args(argv)
    from benchmark.config import error_message, full_tracebacks, is_user_error

    try:
        result = report(args.paths, args.out, plots=not args.no_plots)
    except Exception as err:
        if not is_user_error(err) or full_tracebacks():
            raise
        print(f"Error: {error_message(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    if result["summary"] is not None:
        print((result["out"] / "summary.md").read_text(encoding="utf-8"))
    elif result["combined"] is not None:
        print(to_markdown(result["combined"]))
    else:
        print(to_markdown(results_frame(result["payloads"][0]), notes_for(result["payloads"][0])))
    for p in result["written"]:
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
