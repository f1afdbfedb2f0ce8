"""Rebuild tables and plots from saved results, without rerunning anything.

    python -m benchmark.report RUN_OR_SWEEP_DIR [...] [--out DIR] [--no-plots]

For every run directory found (a folder holding ``metrics.json`` and
``per_image.parquet``) the metrics are recomputed from the per-image counts and its
``table.md/.csv/.tex`` rewritten; with several runs (a multirun sweep) one combined table
has a row per (job, configuration) and a column per parameter that differs, and plots show
each metric against each swept parameter, per-class IoU bars and qualitative examples.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd

from benchmark.records import from_frame, sum_counts
from benchmark.tables import notes_for, results_frame, to_latex, to_markdown, write_tables


def find_runs(paths: Sequence[Path]) -> List[Path]:
    runs = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"benchmark.report: {p} does not exist")
        if (p / "metrics.json").is_file():
            runs.append(p)
        else:
            runs.extend(sorted(m.parent for m in p.rglob("metrics.json")))
    if not runs:
        raise FileNotFoundError(f"benchmark.report: no metrics.json under {', '.join(map(str, paths))}")
    return sorted(set(runs))


def recompute(run_dir: Path) -> Dict[str, Any]:
    """metrics.json's payload with its results recomputed from per_image.parquet."""
    from benchmark.config import json_safe, to_dataclass
    from benchmark.metrics import get_metric

    payload = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    cls = get_metric(payload["metric"])
    params = to_dataclass(payload.get("metric_params", {}), cls.Params, "metric")
    metric = cls(len(payload["class_names"]), payload["class_names"], payload["ignore_index"], params,
                 void_value=payload.get("void_value"))
    records, points = from_frame(pd.read_parquet(run_dir / "per_image.parquet"))
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


def differing_config_keys(payloads: Sequence[Dict[str, Any]]) -> List[str]:
    flats = [_flatten(p["provenance"]["config"]) for p in payloads]
    keys = sorted(set().union(*flats)) if flats else []
    return [
        k for k in keys
        if not k.startswith(IGNORED_CONFIG_KEYS) and len({json.dumps(f.get(k), default=str) for f in flats}) > 1
    ]


def combined_frame(payloads: Sequence[Dict[str, Any]], run_dirs: Sequence[Path]) -> pd.DataFrame:
    job_keys = differing_config_keys(payloads)
    frames = []
    for payload, run_dir in zip(payloads, run_dirs):
        frame = results_frame(payload)
        flat = _flatten(payload["provenance"]["config"])
        for i, k in enumerate(job_keys):
            frame.insert(3 + i, k, flat.get(k))
        frame.insert(0, "run", run_dir.name)
        frame["diffusion_passes"] = payload["diffusion_passes"]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


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
    runs = find_runs(paths)
    payloads = []
    for run_dir in runs:
        payload = recompute(run_dir)
        write_tables(payload, run_dir)
        payloads.append(payload)
    out = Path(out) if out else (runs[0] if len(runs) == 1 else Path(paths[0]))
    out.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    combined = None
    if len(runs) > 1:
        combined = combined_frame(payloads, runs)
        notes = sorted({n for p in payloads for n in notes_for(p)})
        (out / "combined.md").write_text(to_markdown(combined, notes), encoding="utf-8")
        combined.to_csv(out / "combined.csv", index=False)
        (out / "combined.tex").write_text(to_latex(combined, " ".join(notes)), encoding="utf-8")
        written += [out / "combined.md", out / "combined.csv", out / "combined.tex"]
    if plots:
        frame = combined if combined is not None else results_frame(payloads[0])
        swept = list(payloads[0].get("grid_keys", []))
        if combined is not None:
            swept = differing_config_keys(payloads) + swept
        written += plot_metric_vs_params(frame, swept, out)
        for payload, run_dir in zip(payloads, runs):
            for p in (plot_per_class(payload, run_dir), plot_examples(run_dir, run_dir)):
                if p is not None:
                    written.append(p)
    return {"runs": runs, "combined": combined, "written": written, "payloads": payloads}


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, default=None, help="where combined tables/plots go (default: first path)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    result = report(args.paths, args.out, plots=not args.no_plots)
    if result["combined"] is not None:
        print(to_markdown(result["combined"]))
    else:
        print(to_markdown(results_frame(result["payloads"][0]), notes_for(result["payloads"][0])))
    for p in result["written"]:
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
