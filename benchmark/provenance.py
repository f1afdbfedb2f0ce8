"""What produced a result: config, package versions, git commit, times, device."""
from __future__ import annotations

import datetime as _dt
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional

PACKAGES = (
    "diffattn-seg-benchmark", "torch", "diffusers", "transformers", "hydra-core", "omegaconf",
    "numpy", "scipy", "pandas", "pyarrow", "datasets", "wandb", "cityscapesscripts",
)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(path: Optional[Path] = None) -> Dict[str, Any]:
    """Commit of the harness checkout and whether it had uncommitted changes."""
    where = str(path or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        ).stdout.strip() or None
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                capture_output=True, text=True, timeout=10,
            ).stdout.strip()
        ) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


def provenance(resolved_config: Dict[str, Any], started: str, device: Optional[str], dtype: Optional[str]) -> Dict[str, Any]:
    return {
        "config": resolved_config,
        "versions": package_versions(),
        "git": git_state(),
        "started": started,
        "finished": now_iso(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "device": device,
        "dtype": dtype,
    }
