"""Hydra callbacks: one combined table over all jobs when a multirun ends."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("benchmark")

#: the last multirun of this process: {"jobs": n, "failed": [(job, error, user_error)],
#: "table": path}; ``benchmark.__main__`` turns failed jobs into a non-zero exit code
LAST_SWEEP: Dict[str, Any] = {}


class CombinedTable(Callback):
    def __init__(self, plots: bool = True):
        self.plots = plots

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Combined table of every job of the sweep: finished jobs with their numbers, failed
        jobs (their ``error.json``) with their error."""
        from benchmark.config import InputError
        from benchmark.report import RUN_MARKERS, report

        sweep_dir = Path(config.hydra.sweep.dir)
        if not any(any(sweep_dir.rglob(m)) for m in RUN_MARKERS):
            log.warning("multirun finished without any metrics.json under %s: no combined table", sweep_dir)
            return
        try:
            result = report([sweep_dir], out=sweep_dir, plots=self.plots)
        except InputError:  # a one-job sweep whose job failed: nothing to tabulate
            from benchmark.report import failed_job, find_runs

            entries = [e for e in (failed_job(r) for r in find_runs([sweep_dir])) if e]
            result = {"runs": [], "failed": entries}
        failed = [(Path(e["run_dir"]).name, e["error"], bool(e.get("user_error"))) for e in result["failed"]]
        LAST_SWEEP.update(jobs=len(result["runs"]) + len(failed), failed=failed, table=sweep_dir / "combined.md")
        log.info("combined table of %d runs: %s", len(result["runs"]) + len(failed), sweep_dir / "combined.md")
