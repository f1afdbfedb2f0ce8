"""Multirun sweeps x in-run grids, the combined table, and report regeneration."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from benchmark.report import report

REPO = Path(__file__).resolve().parent.parent


def _sweep(sweep_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "benchmark", "-m", "model=tiny", "dataset=synthetic", "dataset.n_images=2",
         "method=diffseg", "method.extract.image_size=128", "run.progress=false",
         "method.extract.timestep=100,300", "method.grid.kl_threshold=[0.9,1.0,1.1]", f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )


def test_multirun_times_grid_gives_one_combined_table_and_resumes(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _sweep(sweep)
    assert proc.returncode == 0, proc.stderr[-3000:]
    combined = pd.read_csv(sweep / "combined.csv")
    assert len(combined) == 6  # 2 timesteps (jobs) x 3 thresholds (in-run grid)
    assert "method.extract.timestep" in combined.columns and "kl_threshold" in combined.columns
    assert sorted(combined["method.extract.timestep"].unique()) == [100, 300]
    payloads = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert sum(p["diffusion_passes"] for p in payloads) == 2 * 2  # jobs x images, not x thresholds
    assert "PIPELINE CHECK" in (sweep / "combined.md").read_text()

    # re-running the finished sweep does no new diffusion pass and gives the same table
    proc = _sweep(sweep)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert [p["diffusion_passes_this_run"] for p in again] == [0, 0]
    pd.testing.assert_frame_equal(pd.read_csv(sweep / "combined.csv").drop(columns=["run"]), combined.drop(columns=["run"]))

    # the report command rebuilds identical tables from the saved files alone
    tables = {p: p.read_text() for p in sweep.glob("*/table.*")}
    combined_md = (sweep / "combined.md").read_text()
    result = report([sweep], out=sweep, plots=True)
    assert {p: p.read_text() for p in sweep.glob("*/table.*")} == tables
    assert (sweep / "combined.md").read_text() == combined_md
    pngs = [p for p in result["written"] if p.suffix == ".png"]
    assert any(p.name == "plot_kl_threshold.png" for p in pngs)
    assert any(p.name == "plot_method_extract_timestep.png" for p in pngs)
    assert any(p.name.startswith("figure_synthetic_") and p.parent.name == "examples" for p in pngs)
    for p in pngs:
        assert p.stat().st_size > 5000, p  # a real figure, not an empty canvas
    # every job has its own page, the sweep a page and a method x dataset summary
    assert (sweep / "report.html").is_file() and all((d / "report.html").is_file() for d in sweep.glob("[0-9]"))
    summary = pd.read_csv(sweep / "summary.csv")
    assert list(summary.columns) == ["method", "settings", "synthetic"]
    assert sorted(summary["settings"]) == sorted(
        f"timestep={t}, kl_threshold={k}" for t in (100, 300) for k in ("0.9", "1", "1.1"))
    assert len(pd.read_csv(sweep / "summary_long.csv")) == 6
