"""The capture benchmark script runs and ends with its machine-readable lines."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_perf_capture_prints_ratio_and_peak_rss_last():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark.perf", "capture", "--arch", "sd14", "--size", "8", "--repeats", "1",
         "--threads", "1", "--batch", "2"],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"capture_overhead_ratio=\d+\.\d+", lines[-2]), lines[-2]
    assert re.fullmatch(r"peak_rss_mb=\d+", lines[-1]), lines[-1]
    assert float(lines[-2].split("=")[1]) > 0
    assert any(line.startswith("images_per_s_self16=") for line in lines)
    # captured passes equal the plain pass (last column: max |output difference|)
    diffs = [float(line.split()[-1]) for line in lines if line.startswith(("self16 ", "cross "))]
    assert len(diffs) == 2 and max(diffs) < 1e-4


def test_perf_refuses_cuda_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this check is about machines without CUDA")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark.perf", "capture", "--device", "cuda"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2 and "CUDA is not available" in proc.stderr
