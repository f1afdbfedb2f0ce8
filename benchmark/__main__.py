"""``python -m benchmark [group=option ...] [key=value ...]`` — one evaluation job (or a
Hydra multirun with ``-m``). See ``python -m benchmark --help``."""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("benchmark")
GROUPS = ("dataset", "model", "method", "metric", "logger", "experiment", "sweep")
# `method.grid.<key>=` must be able to add a key to the (empty by default) grid mapping,
# which Hydra's struct mode forbids without a `+`/`++` prefix; add it for the user.
_GRID_OVERRIDE = re.compile(r"^(method\.grid\.[A-Za-z_][\w]*=)")
_GROUP_OVERRIDE = re.compile(r"^(?:\+|\+\+|~)?(" + "|".join(GROUPS) + r")=(.*)$")


class UsageError(SystemExit):
    pass


def _search_path_args(args: List[str]) -> List[str]:
    """Config search-path entries the command line adds: ``--config-dir DIR`` / ``-cd DIR`` /
    ``--config-dir=DIR`` (Hydra's "additional config dir") and ``hydra.searchpath=[...]``."""
    extra: List[str] = []
    for i, arg in enumerate(args):
        if arg in ("--config-dir", "-cd") and i + 1 < len(args):
            extra.append("file://" + str(Path(args[i + 1]).expanduser().resolve()))
        elif arg.startswith("--config-dir="):
            extra.append("file://" + str(Path(arg.split("=", 1)[1]).expanduser().resolve()))
        elif re.match(r"^(\+\+|\+)?hydra\.searchpath=", arg):
            from hydra.core.override_parser.overrides_parser import OverridesParser

            value = OverridesParser.create().parse_overrides([arg])[0].value()
            extra.extend(str(v) for v in (value if isinstance(value, list) else [value]))
    return extra


def _config_options(group: str, search_path: Sequence[str] = ()) -> List[str]:
    """Options of config group ``group`` over Hydra's whole config search path: ``conf/``,
    every SearchPathPlugin a pip-installed package registers (``hydra_plugins``), and the
    ``search_path`` entries (``file://DIR`` or ``pkg://module``) added on the command line."""
    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.utils import create_config_search_path
    from hydra.core.object_type import ObjectType

    csp = create_config_search_path(str(CONF_DIR))
    for entry in search_path:
        csp.append("command-line", entry)
    return ConfigRepository(csp).get_group_options(group, ObjectType.CONFIG)


def group_options(group: str, search_path: Sequence[str] = ()) -> List[str]:
    """Options of ``group`` (:func:`_config_options`), with the methods of entry-point plugins."""
    options = _config_options(group, search_path)
    if group == "method":  # third-party methods (entry-point group diffattn_seg.methods)
        from benchmark.registry import discover_method_plugins
        from methods import BUILTIN_METHODS

        options = sorted(set(options) | set(discover_method_plugins(BUILTIN_METHODS)))
    return options


def register_plugin_configs() -> None:
    """Give Hydra the ``method=<name>`` config of every entry-point plugin (before composing)."""
    from benchmark.registry import discover_method_plugins
    from methods import BUILTIN_METHODS

    if discover_method_plugins(BUILTIN_METHODS):
        from methods.plugins import register_configs

        register_configs()


def check_group_choices(args: List[str]) -> None:
    """Fail fast, with "did you mean", on an unknown option of a config group (the options of
    every config folder on the search path count)."""
    from benchmark.registry import did_you_mean

    search_path = _search_path_args(args)
    for entry in search_path:  # Hydra skips a folder that is not there: its options would be "unknown"
        if entry.startswith("file://") and not Path(entry[len("file://"):]).is_dir():
            print(f"Error: config folder {entry[len('file://'):]} (from --config-dir or hydra.searchpath) "
                  "does not exist or is not a folder", file=sys.stderr)
            raise UsageError(2)
    for arg in args:
        m = _GROUP_OVERRIDE.match(arg)
        if not m:
            continue
        group, value = m.groups()
        value = re.sub(r"^(choice|range|glob)\((.*)\)$", r"\2", value)
        if value in ("null", ""):
            continue
        options = group_options(group, search_path)
        for option in (v.strip() for v in value.split(",")):
            if option not in options:
                print(
                    f"Error: unknown {group} {option!r} (from '{arg}'). Valid choices for {group}=: "
                    f"{', '.join(options)}." + did_you_mean(option, options)
                    + " (Your own configs: --config-dir DIR or hydra.searchpath=[file://DIR] with DIR/"
                    + f"{group}/{option}.yaml.)",
                    file=sys.stderr,
                )
                raise UsageError(2)


def _force_add(arg: str) -> str:
    """``a.b=v`` -> ``++a.b=v`` for every plain key override outside ``hydra.*``.

    Hydra refuses a plain override of a key its config lacks ("Key ... is not in struct")
    with no valid keys; with ``++`` the key reaches ``benchmark.config.validate``, which
    refuses it with the section's valid keys and a did-you-mean, exactly as for ``+key=v``.
    Existing keys are overridden as before; group choices (``method=x``) are left alone."""
    m = re.match(r"^([A-Za-z_][\w.\-]*)=", arg)
    if not m or "/" in m.group(1) or "@" in m.group(1):
        return arg
    key = m.group(1)
    if key in GROUPS or key == "hydra" or key.startswith("hydra."):
        return arg
    return "++" + arg


def prepare_argv(args: List[str]) -> List[str]:
    check_group_choices(args)
    return [_force_add(_GRID_OVERRIDE.sub(r"++\1", a)) for a in args]


def _remove_stray_dir(path: Path) -> None:
    """A non-zero rank's own Hydra directory (another timestamp) holds nothing of value."""
    import shutil

    if path.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in path.iterdir()):
        shutil.rmtree(path, ignore_errors=True)


FAILED_JOB_FILE = "error.json"
#: set when Hydra has composed a job's config and entered the job function
JOB_STARTED: List[bool] = []


def _job_config(cfg: Any) -> Dict[str, Any]:
    """The job's config as plain data (unresolved where it does not resolve)."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        return OmegaConf.to_container(cfg, resolve=False)


def record_failed_job(run_dir: Path, err: BaseException, cfg: Any, overrides: Sequence[str]) -> Path:
    """A multirun job that failed leaves ``error.json`` in its directory (the error, whether
    it is a user error, the job's overrides and config) so the sweep's combined table and
    ``benchmark.report`` list it; the next successful run of the job removes it."""
    import json

    from benchmark.config import error_message, is_user_error, json_safe
    from benchmark.fileio import atomic_write_text

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / FAILED_JOB_FILE
    atomic_write_text(path, json.dumps(json_safe({
        "error": error_message(err),
        "error_type": type(err).__name__,
        "user_error": is_user_error(err),
        "overrides": list(overrides),
        "config": _job_config(cfg),
    }), indent=2, default=str))
    return path


def _hydra_entry() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig

    import benchmark.config  # noqa: F401  (registers the config resolvers before composition)

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def job(cfg: DictConfig) -> Optional[float]:
        from benchmark import distributed
        from benchmark.config import error_message, full_tracebacks, is_user_error
        from benchmark.runner import print_summary, run_benchmark

        JOB_STARTED.append(True)
        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        rank, _, _ = distributed.init()
        # under torchrun every rank composes its own config; all must use rank 0's directory
        own_dir = Path(hc.runtime.output_dir)
        run_dir = Path(distributed.broadcast_object(str(own_dir)))
        if own_dir != run_dir:
            _remove_stray_dir(own_dir)
        try:
            outcome = run_benchmark(cfg, run_dir)
        except Exception as err:
            user = is_user_error(err)
            if multirun and rank == 0:
                # the sweep goes on; the failure is listed in the combined table and the
                # multirun ends with a non-zero exit code (see main)
                path = record_failed_job(run_dir, err, cfg, list(hc.overrides.task))
                if user and not full_tracebacks():
                    log.error("job %s failed: %s (%s)", hc.job.num, error_message(err), path)
                else:
                    log.exception("job %s failed (%s)", hc.job.num, path)
                return None
            if user and not full_tracebacks():
                print(f"Error: {error_message(err)}", file=sys.stderr)
                raise UsageError(2) from None
            raise
        finally:
            distributed.shutdown()
        stale = run_dir / FAILED_JOB_FILE
        if rank == 0 and stale.exists():
            stale.unlink()  # this job has now succeeded
        if rank == 0:
            print_summary(outcome)
        first = outcome.payload["results"][0]["metrics"] if outcome.payload["results"] else {}
        return first.get("mIoU")  # what Hydra sweepers optimise

    job()


def main(argv: Optional[List[str]] = None) -> None:
    from benchmark import callbacks

    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:  # every key with its schema description (benchmark/help.py)
        from benchmark.help import print_help

        print_help([a for a in args if a not in ("--help", "-h", "-m", "--multirun")])
        return
    sys.argv = [sys.argv[0]] + prepare_argv(args)
    logging.getLogger("benchmark").setLevel(logging.INFO)
    callbacks.LAST_SWEEP.clear()
    JOB_STARTED.clear()
    register_plugin_configs()
    try:
        _hydra_entry()
    except SystemExit as exit_:
        # Hydra prints a composition error (bad override syntax, a missing config of a
        # group, ...) as a compact message and exits 1 before any job starts: a user error
        if exit_.code == 1 and not JOB_STARTED:
            raise SystemExit(2) from None
        raise
    failed = callbacks.LAST_SWEEP.get("failed") or []
    if failed:
        print(
            f"Error: {len(failed)} of {callbacks.LAST_SWEEP['jobs']} sweep jobs failed (listed in "
            f"{callbacks.LAST_SWEEP['table']}):\n" + "\n".join(f"  - {name}: {msg}" for name, msg, _ in failed),
            file=sys.stderr,
        )
        raise SystemExit(2 if all(user for _, _, user in failed) else 1)


if __name__ == "__main__":
    main()
