"""Tables are views of the results: Markdown, CSV and LaTeX (booktabs) from one frame."""
from __future__ import annotations

import dataclasses
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


#: run properties a published entry's ``protocol`` may require, and how to say a mismatch
PROTOCOL_KEYS = ("candidates", "bg_protocol")

#: a run whose evaluated image count is within this fraction of the published count (rounded
#: down: 7 images of VOC's 1449, 25 of Context's 5105, 10 of COCO-Stuff-27's 2175) has the
#: full split: the usual Pascal Context conversion yields 5104 of the published 5105 images
FULL_SPLIT_TOLERANCE = 0.005


def full_split_tolerance(published_count: int) -> int:
    """Images a run may lack (or have extra) and still count as the published split."""
    return int(published_count * FULL_SPLIT_TOLERANCE)


def run_protocol(v: Any, method_cls: Any, n_images: int, n_expected: int,
                 published_count: Optional[int] = None) -> Dict[str, Any]:
    """The properties of a run that decide whether published numbers are comparable:
    method, dataset, metric, model, the extraction settings (``method.extract``, diffusion
    methods only), the method's own protocol (candidate mode, background protocol:
    ``method_cls.protocol(settings)``) and whether the full split was evaluated:
    ``n_images`` evaluated of the ``n_expected`` selected, ``published_count`` the split's
    published image count (``dataset.expected_count`` of the built dataset; None: unknown)."""
    out: Dict[str, Any] = {"method": v.method.name, "dataset": v.dataset.name, "metric": v.metric.name,
                           "model": getattr(v.model, "name", None)}
    if getattr(method_cls, "needs_diffusion", True):
        out["extract"] = dataclasses.asdict(v.method.extract)
    out["n_images"], out["published_count"] = n_images, published_count
    protocol = getattr(method_cls, "protocol", None)
    if protocol is not None:
        out.update(protocol(v.method.settings))
    # the published numbers are on the dataset config's evaluation split (its default)
    split_field = next((f for f in dataclasses.fields(type(v.dataset)) if f.name == "split"), None) \
        if dataclasses.is_dataclass(v.dataset) else None
    if split_field is not None and split_field.default is not dataclasses.MISSING:
        out["split"], out["published_split"] = getattr(v.dataset, "split", None), split_field.default
    subset = []
    if getattr(v.dataset, "ids", None):
        subset.append(f"dataset.ids ({len(v.dataset.ids)} ids)")
    if getattr(v.dataset, "limit", None) is not None:
        subset.append(f"dataset.limit={v.dataset.limit}")
    if n_images != n_expected:
        subset.append(f"{n_images} of {n_expected} images evaluated")
    out["subset"] = "; ".join(subset) or None
    return out


def withheld_reasons(reference: Mapping[str, Any], entry: Mapping[str, Any], run: Mapping[str, Any]) -> List[str]:
    """Why the published ``entry`` (of ``reference = {method, dataset, metric, model, extract,
    n_images}``) is not comparable with a run (``run_protocol``); empty = comparable.
    Compared: method, dataset, metric, model (the checkpoint the experiment names), the
    extraction settings of the experiment's preset (every key of ``reference.extract``, the
    experiment file's own ``method.extract`` block: image size, timestep, noise, ...), the entry's
    ``protocol`` keys (candidate mode: ``gt`` is an oracle of another setting; background
    protocol), the split (the dataset config's default, its evaluation split:
    ``dataset.split=train`` is not comparable) and the full split (a ``dataset.ids``/``limit``
    subset or skipped images are not the published split, nor a split whose image count is
    off the published one, ``reference.n_images`` or the dataset's, by more than
    ``FULL_SPLIT_TOLERANCE``)."""
    reasons = []
    for key in ("method", "dataset", "metric", "model"):
        if reference.get(key) is not None and run.get(key) is not None and reference[key] != run[key]:
            reasons.append(f"published for {key}={reference[key]}, this run has {key}={run[key]}")
    ran = run.get("extract") or {}
    for key, preset in (reference.get("extract") or {}).items():
        if key in ran and ran[key] != preset:
            reasons.append(
                f"published with method.extract.{key}={preset!r} (the experiment's preset), "
                f"this run has method.extract.{key}={ran[key]!r}"
            )
    wanted = entry.get("protocol") or {}
    for key in PROTOCOL_KEYS:
        if key in wanted:
            allowed = wanted[key] if isinstance(wanted[key], list) else [wanted[key]]
            if run.get(key) not in allowed:
                reasons.append(
                    f"published with method.{key}={'|'.join(map(str, allowed))}, this run has method.{key}={run.get(key)}"
                    + (" (image-level ground-truth labels: an oracle of another setting)" if run.get(key) == "gt" else "")
                )
    if run.get("published_split") and run.get("split") != run["published_split"]:
        reasons.append(f"published on the {run['published_split']} split, this run has dataset.split={run.get('split')}")
    if run.get("subset"):
        reasons.append(f"published on the full split, this run is a subset: {run['subset']}")
    else:
        published = reference.get("n_images") or run.get("published_count")
        n = run.get("n_images")
        if published and n is not None and abs(n - published) > full_split_tolerance(published):
            tol = full_split_tolerance(published)
            reasons.append(
                f"published on the {published} images of the full split, this run evaluated {n} (the split as found "
                f"holds {n}; within {FULL_SPLIT_TOLERANCE:.1%} = {tol} image{'' if tol == 1 else 's'} of the "
                "published count is the full split)"
            )
    return reasons


def best_index(results: Sequence[Mapping[str, Any]], metric: str, tie: str = "first") -> Optional[int]:
    """Index of the best grid point by ``metric`` (None when no point has it). ``tie``:
    first (the official VOC/Context ``if mIoU > max_mIoU``) or last (COCO ``>=``)."""
    best, best_value = None, None
    for i, entry in enumerate(results):
        value = (entry.get("metrics") or {}).get(metric)
        if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
            continue
        if best is None or value > best_value or (tie == "last" and value == best_value):
            best, best_value = i, value
    return best


def selected_point(payload: Mapping[str, Any]) -> Optional[int]:
    """The reported point of an ``official_sweep`` run: the best of the sweep by mIoU."""
    protocol = payload.get("protocol") or {}
    if protocol.get("bg_protocol") != "official_sweep" or not payload.get("results"):
        return None
    return best_index(payload["results"], protocol.get("select_by", "mIoU"), protocol.get("bg_sweep_tie") or "first")


def results_frame(payload: Mapping[str, Any]) -> pd.DataFrame:
    """One row per evaluated configuration: swept params, then scalar metrics.

    An ``official_sweep`` run marks its best point "ORACLE best" (the official protocol);
    published numbers and their Δ then sit on that row only."""
    keys = list(payload.get("grid_keys", []))
    published = payload.get("published") or {}
    selected = selected_point(payload)
    rows = []
    for i, entry in enumerate(payload["results"]):
        row: Dict[str, Any] = {
            "method": payload["method"], "dataset": payload["dataset"], "model": payload["model"],
        }
        for k in keys:
            row[k] = entry["params"].get(k)
        row.update(scalar_metrics(entry["metrics"]))
        if selected is not None:
            row["selected"] = "ORACLE best (official sweep)" if i == selected else ""
        for name, value in published.items():
            if selected is not None and i != selected:
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name in row:
                row[f"{name} (paper)"] = value
                measured = row[name]
                row[f"Δ{name}"] = None if measured is None else round(measured - value, 2)
        if published:
            row["paper status"] = published.get("status") if selected is None or i == selected else None
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
    if payload.get("published_withheld"):
        notes.append(
            "Published numbers not shown: this run is not comparable with them: "
            + "; ".join(payload["published_withheld"]) + "."
        )
    if selected_point(payload) is not None:
        notes.append(
            "Official background protocol: bg_threshold swept 0.30..0.74 on the evaluated split, the best point "
            "(by mIoU) reported, as the published numbers: an ORACLE, not a fair result."
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
