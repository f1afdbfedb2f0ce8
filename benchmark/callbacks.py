"""Hydra callbacks: one combined table over all jobs when a multirun ends."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("benchmark")


class CombinedTable(Callback):
    def __init__(self, plots: bool = True):
        self.plots = plots

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from benchmark.report import report

        sweep_dir = Path(config.hydra.sweep.dir)
        if not any(sweep_dir.rglob("metrics.json")):
            log.warning("multirun finished without any metrics.json under %s: no combined table", sweep_dir)
            return
        result = report([sweep_dir], out=sweep_dir, plots=self.plots)
        log.info("combined table of %d runs: %s", len(result["runs"]), sweep_dir / "combined.md")
