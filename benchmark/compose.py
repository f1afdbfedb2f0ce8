"""Compose the harness config from Python (tests, notebooks, scripts) exactly as the CLI does."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig


def compose_config(overrides: Iterable[str] = (), config_name: str = "config") -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from benchmark.__main__ import CONF_DIR, prepare_argv, register_plugin_configs

    args = prepare_argv(list(overrides))
    register_plugin_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=args)


def run_with_overrides(overrides: Iterable[str], run_dir: Path, config_name: str = "config"):
    """Compose and run one job into ``run_dir``; returns the runner's RunOutcome."""
    from benchmark.runner import run_benchmark

    return run_benchmark(compose_config(overrides, config_name), Path(run_dir))
