"""torchrun data parallelism (gloo on CPU) and the Hydra launcher configs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmark.compose import compose_config, run_with_overrides

REPO = Path(__file__).resolve().parent.parent
ARGS = ["model=tiny", "dataset=synthetic", "dataset.n_images=5", "method=diffseg",
        "method.extract.image_size=128", "run.progress=false", "method.grid.kl_threshold=[0.9,1.1]"]


def _torchrun(run_dir: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
         "-m", "benchmark", *ARGS, f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )


@pytest.mark.slow
def test_two_gloo_ranks_equal_single_process_and_resume(tmp_path):
    single = run_with_overrides(ARGS, tmp_path / "single")
    proc = _torchrun(tmp_path / "dist")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((tmp_path / "single" / "metrics.json").read_text())
    b = json.loads((tmp_path / "dist" / "metrics.json").read_text())
    assert a["results"] == b["results"] and a["diffusion_passes"] == b["diffusion_passes"] == 5
    assert a["image_ids"] == b["image_ids"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "single" / "per_image.parquet"), pd.read_parquet(tmp_path / "dist" / "per_image.parquet")
    )
    shards = sorted((tmp_path / "dist").glob("records.rank*.jsonl"))
    assert [p.name for p in shards] == ["records.rank0.jsonl", "records.rank1.jsonl"]
    # rank 1 was killed before finishing: its work is redone on resume, nothing else
    lines = shards[1].read_text().splitlines()
    shards[1].write_text("\n".join(lines[:2]) + "\n")  # header + 1 of its 2 images
    (tmp_path / "dist" / "metrics.json").unlink()
    proc = _torchrun(tmp_path / "dist")
    assert proc.returncode == 0, proc.stderr[-3000:]
    c = json.loads((tmp_path / "dist" / "metrics.json").read_text())
    assert c["results"] == a["results"] and c["diffusion_passes"] == 5
    assert single.payload["n_images"] == 5


def test_sharding_is_disjoint_and_complete(monkeypatch, tmp_path):
    """The shard rule of the runner, checked without processes: ranks cover every id once."""
    from benchmark.runner import Runner

    cfg = compose_config(ARGS)
    covered = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        r = Runner(cfg, tmp_path)
        assert (r.rank, r.world_size) == (rank, 3)
        covered += [i for i in range(5) if i % r.world_size == r.rank]
    assert sorted(covered) == list(range(5))


@pytest.mark.parametrize("launcher", ["local_parallel", "slurm"])
def test_launcher_configs_compose(launcher):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert ("Joblib" in target) if launcher == "local_parallel" else ("Slurm" in target)


@pytest.mark.slow
def test_joblib_launcher_runs_a_two_job_sweep(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark", "-m", "hydra/launcher=local_parallel", "model=tiny", "dataset=synthetic",
         "dataset.n_images=1", "method.extract.image_size=128", "run.progress=false",
         "method.extract.timestep=100,300", f"hydra.sweep.dir={tmp_path}"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(tmp_path.glob("*/metrics.json"))) == 2
    assert (tmp_path / "combined.md").exists()
