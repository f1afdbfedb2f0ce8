"""Tables are views of the results: Markdown, CSV and LaTeX (booktabs) from one frame."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import pandas as pd
import yaml

PAPER_NUMBERS = Path(__file__).resolve().parent.parent / "results" / "paper_numbers.yaml"

PIPELINE_CHECK = (
    "PIPELINE CHECK: these numbers come from a random-weight model (model={model}); "
    "they test the harness, they are not results."
)


def scalar_metrics(metrics: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None}


def published_numbers(reference: Optional[Mapping[str, Any]], path: Path = PAPER_NUMBERS) -> Dict[str, Any]:
    """Published metrics for ``reference = {method: ..., dataset: ...}`` (empty if none)."""
    if not reference:
        return {}
    with open(path, "r", encoding="utf-8") as fh:
        table = yaml.safe_load(fh)
    entry = (table.get(reference.get("method"), {}) or {}).get(reference.get("dataset"))
    if entry is None:
        raise KeyError(f"{path} has no published numbers for {reference.get('method')}/{reference.get('dataset')}")
    return dict(entry)


def results_frame(payload: Mapping[str, Any]) -> pd.DataFrame:
    """One row per evaluated configuration: swept params, then scalar metrics."""
    keys = list(payload.get("grid_keys", []))
    published = payload.get("published") or {}
    rows = []
    for entry in payload["results"]:
        row: Dict[str, Any] = {
            "method": payload["method"], "dataset": payload["dataset"], "model": payload["model"],
        }
        for k in keys:
            row[k] = entry["params"].get(k)
        row.update(scalar_metrics(entry["metrics"]))
        for name, value in published.items():
            if isinstance(value, (int, float)) and name in row:
                row[f"{name} (paper)"] = value
                measured = row[name]
                row[f"Δ{name}"] = None if measured is None else round(measured - value, 2)
        if published:
            row["paper status"] = published.get("status")
        row["n_images"] = payload["n_images"]
        if payload.get("skipped"):  # images left out by dataset.on_error=skip
            row["n_skipped"] = len(payload["skipped"])
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def to_markdown(frame: pd.DataFrame, notes: Sequence[str] = ()) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    body = "\n".join(lines) + "\n"
    if notes:
        body = "".join(f"> {n}\n" for n in notes) + "\n" + body
    return body


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("Δ", r"$\Delta$")):
        text = text.replace(a, b)
    return text


def to_latex(frame: pd.DataFrame, caption: str = "") -> str:
    cols = list(frame.columns)
    align = "".join("r" if pd.api.types.is_numeric_dtype(frame[c]) else "l" for c in cols)
    out = [r"\begin{table}[t]", r"\centering", rf"\begin{{tabular}}{{{align}}}", r"\toprule"]
    out.append(" & ".join(_tex_escape(str(c)) for c in cols) + r" \\")
    out.append(r"\midrule")
    for row in frame.itertuples(index=False):
        out.append(" & ".join(_tex_escape(_fmt(v)) for v in row) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        out.append(rf"\caption{{{_tex_escape(caption)}}}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def notes_for(payload: Mapping[str, Any]) -> List[str]:
    notes = []
    if payload.get("method_note"):
        notes.append(f"{payload['method']}: {payload['method_note']}")
    if payload.get("random_weights"):
        notes.append(PIPELINE_CHECK.format(model=payload["model"]))
    if payload.get("published"):
        notes.append(
            "Published numbers from results/paper_numbers.yaml (status "
            f"'{payload['published'].get('status')}': 'cited' = as quoted by later papers)."
        )
    skipped = payload.get("skipped") or []
    if skipped:
        shown = "; ".join(
            "{} ({})".format(s["image_id"], " ".join(str(s.get("reason")).split())) for s in skipped[:5]
        ) + ("; ..." if len(skipped) > 5 else "")
        notes.append(
            f"SKIPPED {len(skipped)} of {payload.get('n_expected', '?')} images (dataset.on_error=skip), not in these "
            f"numbers: {shown}. A rerun into this directory retries them."
        )
    if payload.get("oracle_keys"):
        notes.append(
            "ORACLE: the best value of " + ", ".join(payload["oracle_keys"])
            + " chosen on the evaluated split is not a fair result."
        )
    return notes


def write_tables(payload: Mapping[str, Any], out_dir: Path, stem: str = "table") -> pd.DataFrame:
    frame = results_frame(payload)
    notes = notes_for(payload)
    (out_dir / f"{stem}.md").write_text(to_markdown(frame, notes), encoding="utf-8")
    frame.to_csv(out_dir / f"{stem}.csv", index=False)
    (out_dir / f"{stem}.tex").write_text(to_latex(frame, " ".join(notes)), encoding="utf-8")
    return frame
