"""``report.html``: one self-contained page per run and per sweep (Jinja2 template, images
embedded as base64 PNG data URIs, no script, no network).

A run page has, top to bottom: the PIPELINE CHECK / ORACLE marks when they apply, the
results table (published numbers and differences beside measured ones for ``experiment=``
runs), metric-vs-parameter figures for every grid axis, per-class IoU bars, the example
figures and the provenance (versions, git commit, times, device, resolved config). A sweep
page has the summary (method × dataset), the combined table, the sweep figures and the
example figures of every run.
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import pandas as pd

from benchmark.tables import PIPELINE_CHECK, _fmt, notes_for

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
.mark { padding: .6em 1em; margin: .4em 0; border-radius: 4px; font-weight: bold; }
.pipeline { background: #fde2e1; color: #8a1c15; border: 2px solid #c0392b; }
.oracle { background: #fff3cd; color: #7a5a00; border: 2px solid #d4a017; }
.note { background: #eef3f8; padding: .4em 1em; margin: .3em 0; border-radius: 4px; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
figure { margin: .8em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .8em; color: #555; }
.side-by-side figure { display: inline-block; vertical-align: top; max-width: 49%; margin-right: .5%; }
pre { background: #f7f7f7; padding: .6em; font-size: .75em; overflow-x: auto; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
{% for m in marks %}<div class="mark {{ m.kind }}">{{ m.text }}</div>
{% endfor %}
{% for n in notes %}<div class="note">{{ n }}</div>
{% endfor %}
{% for section in sections %}
<section class="{{ section.cls or '' }}">
<h2>{{ section.heading }}</h2>
{% if section.text %}<p>{{ section.text }}</p>{% endif %}
{% for t in section.tables %}{{ t | safe }}{% endfor %}
{% for fig in section.figures %}
<figure><img src="data:image/png;base64,{{ fig.data }}" alt="{{ fig.caption }}"><figcaption>{{ fig.caption }}</figcaption></figure>
{% endfor %}
{% if section.pre %}<details><summary>{{ section.pre_title }}</summary><pre>{{ section.pre }}</pre></details>{% endif %}
</section>
{% endfor %}
</body>
</html>
"""


def _environment():
    from jinja2 import Environment

    return Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)


def embed_png(path: Path) -> Dict[str, str]:
    """{data: base64 PNG, caption: file name} for the template."""
    path = Path(path)
    return {"data": base64.b64encode(path.read_bytes()).decode("ascii"), "caption": path.name}


def frame_html(frame: pd.DataFrame) -> str:
    """A results frame as an HTML table (pandas' writer; values formatted as in table.md)."""
    shown = frame.copy()
    for c in shown.columns:
        shown[c] = shown[c].map(_fmt)
    return shown.to_html(index=False, escape=True, border=0)


def marks_for(payloads: Sequence[Mapping[str, Any]]) -> List[Dict[str, str]]:
    """The banners at the top of a page: PIPELINE CHECK and ORACLE when they apply."""
    marks = []
    random = sorted({p["model"] for p in payloads if p.get("random_weights")})
    if random:
        marks.append({"kind": "pipeline", "text": PIPELINE_CHECK.format(model=", ".join(random))})
    oracle = sorted({k for p in payloads for k in p.get("oracle_keys", [])})
    if oracle:
        marks.append({"kind": "oracle", "text": "ORACLE: the best value of " + ", ".join(oracle)
                      + " chosen on the evaluated split is not a fair result."})
    return marks


def _provenance_section(payload: Mapping[str, Any]) -> Dict[str, Any]:
    import yaml

    prov = payload.get("provenance") or {}
    git = prov.get("git") or {}
    rows = [
        ("method / dataset / model / metric", f"{payload['method']} / {payload['dataset']} / {payload['model']} / {payload['metric']}"),
        ("images scored / expected", f"{payload['n_images']} / {payload.get('n_expected', '–')}"),
        ("diffusion passes (this invocation)", f"{payload['diffusion_passes']} ({payload.get('diffusion_passes_this_run', '–')})"),
        ("skipped images", str(len(payload.get("skipped") or []))),
        ("git commit", f"{git.get('commit')}" + (" (uncommitted changes)" if git.get("dirty") else "")),
        ("started / finished", f"{prov.get('started')} / {prov.get('finished')}"),
        ("device / dtype", f"{prov.get('device')} / {prov.get('dtype')}"),
        ("host / platform", f"{prov.get('host')} / {prov.get('platform')}"),
    ]
    rows += [(f"version: {k}", str(v)) for k, v in (prov.get("versions") or {}).items()]
    table = pd.DataFrame(rows, columns=["what", "value"]).to_html(index=False, escape=True, border=0)
    config = yaml.safe_dump(prov.get("config") or {}, sort_keys=False)
    return {"heading": "Provenance", "tables": [table], "figures": [], "pre": config, "pre_title": "resolved config"}


def _figures(paths: Sequence[Path], pattern: str) -> List[Dict[str, str]]:
    return [embed_png(p) for p in paths if Path(p).match(pattern)]


def render(title: str, marks: List[Dict[str, str]], notes: Sequence[str], sections: List[Dict[str, Any]]) -> str:
    return _environment().from_string(_TEMPLATE).render(title=title, marks=marks, notes=list(notes), sections=sections)


def write_run_page(run_dir: Path, payload: Mapping[str, Any], figures: Sequence[Path]) -> Path:
    """``run_dir/report.html`` of one run; ``figures`` are the run's PNGs (report.run_plots)."""
    from benchmark.tables import results_frame

    notes = [n for n in notes_for(payload) if not n.startswith(("PIPELINE CHECK", "ORACLE"))]
    sections = [
        {"heading": "Results", "tables": [frame_html(results_frame(payload))], "figures": [],
         "text": f"{len(payload['results'])} configuration(s) on {payload['n_images']} images; percentages."},
        {"heading": "Metric vs parameter", "tables": [], "figures": _figures(figures, "plot_*.png"), "cls": "side-by-side",
         "text": "" if payload.get("grid_keys") else "No in-run grid: one configuration."},
        {"heading": "Examples", "tables": [], "figures": _figures(figures, "figure_*.png"),
         "text": "Overlays in the dataset's palette; unsupervised segments coloured by their Hungarian-matched "
                 "class (unmatched segments grey); scores are this image's alone."},
        _provenance_section(payload),
    ]
    # per-class bars belong with the results, curves with their own heading
    per_class = [f for f in sections[1]["figures"] if f["caption"] == "plot_per_class_IoU.png"]
    sections[1]["figures"] = [f for f in sections[1]["figures"] if f["caption"] != "plot_per_class_IoU.png"]
    sections[0]["figures"] = per_class
    if not sections[1]["figures"] and payload.get("grid_keys"):
        sections[1]["text"] = "The grid axes have a single value each."
    title = f"{payload['method']} on {payload['dataset']} ({payload['model']}): {Path(run_dir).name}"
    path = Path(run_dir) / "report.html"
    path.write_text(render(title, marks_for([payload]), notes, sections), encoding="utf-8")
    return path


def write_sweep_page(
    out: Path, payloads: Sequence[Mapping[str, Any]], runs: Sequence[Path], combined: pd.DataFrame,
    summary: pd.DataFrame, figures: Sequence[Path],
) -> Path:
    """``out/report.html`` of several runs: summary, combined table, sweep figures, examples."""
    notes = sorted({n for p in payloads for n in notes_for(p) if not n.startswith(("PIPELINE CHECK", "ORACLE"))})
    examples = []
    for run_dir in runs:
        examples += [embed_png(p) for p in sorted((Path(run_dir) / "examples").glob("figure_*.png"))]
    sections = [
        {"heading": "Summary (headline metric, method × dataset)", "tables": [frame_html(summary)], "figures": []},
        {"heading": "All runs and configurations", "tables": [frame_html(combined)], "figures": []},
        {"heading": "Metric vs parameter", "tables": [], "figures": [embed_png(p) for p in figures], "cls": "side-by-side"},
        {"heading": "Examples", "tables": [], "figures": examples},
    ]
    title = f"{len(runs)} runs: {Path(out).name}"
    path = Path(out) / "report.html"
    path.write_text(render(title, marks_for(payloads), notes, sections), encoding="utf-8")
    return path
