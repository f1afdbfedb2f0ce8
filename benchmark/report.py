"""Rebuild tables and plots from saved results, without rerunning anything.

    python -m benchmark.report RUN_OR_SWEEP_DIR [...] [--out DIR] [--no-plots]

For every run directory found (a folder holding ``metrics.json`` and
``per_image.parquet``) the metrics are recomputed from the per-image counts and its
``table.md/.csv/.tex`` rewritten; with several runs (a multirun sweep) one combined table
has a row per (job, configuration) and a column per parameter that differs, and plots show
each metric against each swept parameter, per-class IoU bars and qualitative examples.
A sweep job that failed (its ``error.json``) and a run directory that cannot be read are
rows of the combined table with status ``failed`` / ``unreadable`` and the error, and are
named on stderr; reading a single such directory is an error naming it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

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
    metric = cls(len(payload["class_names"]), payload["class_names"], payload["ignore_index"], params)
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


def plot_metric_vs_params(frame: pd.DataFrame, params: Sequence[str], out_dir: Path) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    metrics = [c for c in ("mIoU", "ACC", "aAcc", "mAcc", "hIoU") if c in frame.columns]
    for param in params:
        x = pd.to_numeric(frame[param], errors="coerce")
        if x.isna().any() or x.nunique() < 2:
            continue
        others = [p for p in params if p != param]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        groups = frame.groupby(others, dropna=False) if others else [((), frame)]
        for key, sub in groups:
            xs = pd.to_numeric(sub[param])
            order = xs.argsort().to_numpy()
            for m in metrics:
                label = m + (f" ({', '.join(f'{o}={v}' for o, v in zip(others, key if isinstance(key, tuple) else (key,)))})" if others else "")
                ax.plot(xs.to_numpy()[order], sub[m].to_numpy()[order], marker="o", label=label)
        ax.set_xlabel(param)
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"plot_{param.replace('.', '_')}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def plot_per_class(payload: Dict[str, Any], out_dir: Path) -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_class = payload["results"][0]["metrics"].get("per_class_IoU") if payload["results"] else None
    if not per_class:
        return None
    names = list(per_class)
    values = [per_class[n] if per_class[n] is not None else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 0.3 * len(names)), 3.5))
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel("IoU %")
    ax.set_title(f"{payload['method']} on {payload['dataset']} (first configuration)")
    fig.tight_layout()
    path = out_dir / "plot_per_class_IoU.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_examples(run_dir: Path, out_dir: Path) -> Optional[Path]:
    """Grid of qualitative examples saved by the runner (image, GT, prediction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from benchmark.visualize import colorize

    ex_dir = run_dir / "examples"
    ids = sorted({p.name[: -len("_image.png")] for p in ex_dir.glob("*_image.png")}) if ex_dir.is_dir() else []
    if not ids:
        return None
    fig, axes = plt.subplots(len(ids), 3, figsize=(7.5, 2.5 * len(ids)), squeeze=False)
    for row, image_id in zip(axes, ids):
        image = np.array(Image.open(ex_dir / f"{image_id}_image.png"))
        label = np.array(Image.open(ex_dir / f"{image_id}_label.png"))
        pred = np.array(Image.open(ex_dir / f"{image_id}_pred.png"))
        for ax, pic, title in zip(row, (image, colorize(label), colorize(pred)), ("image", "ground truth", "prediction")):
            ax.imshow(pic)
            ax.set_title(f"{image_id}: {title}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    path = out_dir / "plot_examples.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(paths: Sequence[Path], out: Optional[Path] = None, plots: bool = True) -> Dict[str, Any]:
    """Tables (and plots) of every run under ``paths``. Returns ``runs`` (the readable ones),
    ``payloads``, ``failed`` (failed jobs and unreadable run directories, each named on
    stderr), ``combined`` (a frame, or None for one run) and ``written``. Errors:
    FileNotFoundError (no run under ``paths``), InputError (the only run found cannot be read)."""

    from benchmark.config import InputError, error_message

    found = find_runs(paths)
    runs, payloads, failed = [], [], []
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
    written: List[Path] = []
    combined = None
    if len(found) > 1:
        combined = combined_frame(payloads, runs, failed)
        notes = sorted({n for p in payloads for n in notes_for(p)})
        (out / "combined.md").write_text(to_markdown(combined, notes), encoding="utf-8")
        combined.to_csv(out / "combined.csv", index=False)
        (out / "combined.tex").write_text(to_latex(combined, " ".join(notes)), encoding="utf-8")
        written += [out / "combined.md", out / "combined.csv", out / "combined.tex"]
    if plots and payloads:
        frame = combined if combined is not None else results_frame(payloads[0])
        if failed and combined is not None:
            frame = combined[combined["status"] == "ok"].reset_index(drop=True)
        swept = list(payloads[0].get("grid_keys", []))
        if combined is not None:
            swept = differing_config_keys(payloads) + swept
        written += plot_metric_vs_params(frame, swept, out)
        for payload, run_dir in zip(payloads, runs):
            for p in (plot_per_class(payload, run_dir), plot_examples(run_dir, run_dir)):
                if p is not None:
                    written.append(p)
    return {"runs": runs, "combined": combined, "written": written, "payloads": payloads, "failed": failed}


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, default=None, help="where combined tables/plots go (default: first path)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    from benchmark.config import error_message, full_tracebacks, is_user_error

    try:
        result = report(args.paths, args.out, plots=not args.no_plots)
    except Exception as err:
        if not is_user_error(err) or full_tracebacks():
            raise
        print(f"Error: {error_message(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    if result["combined"] is not None:
        print(to_markdown(result["combined"]))
    else:
        print(to_markdown(results_frame(result["payloads"][0]), notes_for(result["payloads"][0])))
    for p in result["written"]:
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
