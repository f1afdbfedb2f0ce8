"""``python -m benchmark [group=option ...] [key=value ...]`` — one evaluation job (or a
Hydra multirun with ``-m``). See ``python -m benchmark --help``."""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import List, Optional

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("dataset", "model", "method", "metric", "logger", "experiment", "sweep")
# `method.grid.<key>=` must be able to add a key to the (empty by default) grid mapping,
# which Hydra's struct mode forbids without a `+`/`++` prefix; add it for the user.
_GRID_OVERRIDE = re.compile(r"^(method\.grid\.[A-Za-z_][\w]*=)")
_GROUP_OVERRIDE = re.compile(r"^(?:\+|\+\+|~)?(" + "|".join(GROUPS) + r")=(.*)$")


class UsageError(SystemExit):
    pass


def _yaml_options(group: str) -> List[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def group_options(group: str) -> List[str]:
    options = _yaml_options(group)
    if group == "method":  # third-party methods (entry-point group diffattn_seg.methods)
        from benchmark.registry import discover_method_plugins

        options = sorted(set(options) | set(discover_method_plugins(dict.fromkeys(options))))
    return options


def register_plugin_configs() -> None:
    """Give Hydra the ``method=<name>`` config of every entry-point plugin (before composing)."""
    from benchmark.registry import discover_method_plugins

    if discover_method_plugins(dict.fromkeys(_yaml_options("method"))):
        from methods.plugins import register_configs

        register_configs()



def check_group_choices(args: List[str]) -> None:
    """Fail fast, with "did you mean", on an unknown option of a config group."""
    from benchmark.registry import did_you_mean

    for arg in args:
        m = _GROUP_OVERRIDE.match(arg)
        if not m:
            continue
        group, value = m.groups()
        value = re.sub(r"^(choice|range|glob)\((.*)\)$", r"\2", value)
        if value in ("null", ""):
            continue
        options = group_options(group)
        for option in (v.strip() for v in value.split(",")):
            if option not in options:
                print(
                    f"Error: unknown {group} {option!r} (from '{arg}'). Valid choices for {group}=: "
                    f"{', '.join(options)}." + did_you_mean(option, options),
                    file=sys.stderr,
                )
                raise UsageError(2)


def prepare_argv(args: List[str]) -> List[str]:
    check_group_choices(args)
    return [_GRID_OVERRIDE.sub(r"++\1", a) for a in args]


def _remove_stray_dir(path: Path) -> None:
    """A non-zero rank's own Hydra directory (another timestamp) holds nothing of value."""
    import shutil

    if path.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in path.iterdir()):
        shutil.rmtree(path, ignore_errors=True)


def _hydra_entry() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def job(cfg: DictConfig) -> Optional[float]:
        from benchmark import distributed
        from benchmark.runner import print_summary, run_benchmark

        rank, _, _ = distributed.init()
        # under torchrun every rank composes its own config; all must use rank 0's directory
        own_dir = Path(HydraConfig.get().runtime.output_dir)
        run_dir = Path(distributed.broadcast_object(str(own_dir)))
        if own_dir != run_dir:
            _remove_stray_dir(own_dir)
        try:
            outcome = run_benchmark(cfg, run_dir)
        finally:
            distributed.shutdown()
        if rank == 0:
            print_summary(outcome)
        first = outcome.payload["results"][0]["metrics"] if outcome.payload["results"] else {}
        return first.get("mIoU")  # what Hydra sweepers optimise

    job()


def main(argv: Optional[List[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:  # every key with its schema description (benchmark/help.py)
        from benchmark.help import print_help

        print_help([a for a in args if a not in ("--help", "-h", "-m", "--multirun")])
        return
    sys.argv = [sys.argv[0]] + prepare_argv(args)
    logging.getLogger("benchmark").setLevel(logging.INFO)
    register_plugin_configs()
    _hydra_entry()


if __name__ == "__main__":
    main()
