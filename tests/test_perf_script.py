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
         "--threads", "2", "--batch", "2"],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"capture_overhead_ratio=\d+\.\d+", lines[-2]), lines[-2]
    assert re.fullmatch(r"peak_rss_mb=\d+", lines[-1]), lines[-1]
    assert float(lines[-2].split("=")[1]) > 0
    assert any(line.startswith("images_per_s_self16=") for line in lines)
    # 2 threads: the capture's worker threads are compared with the loop on one thread
    assert any(re.fullmatch(r"capture_overhead_ratio_one_worker=\d+\.\d+", line) for line in lines), lines
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


@pytest.mark.slow  # ~8 s of CPU: builds the tiny SD, starts a loader worker, runs 4 images
def test_perf_e2e_runs_the_harness_pipeline_on_cpu(capsys):
    """End-to-end mode (GPU-ready; here device=cpu, tiny SD, a loader worker): every stage
    is timed, images/s and the peak-memory line come last."""
    from benchmark.perf import E2E_STAGES, main

    main(["e2e", "--arch", "tiny", "--images", "2", "--batch", "2", "--workers", "1", "--size", "16", "--threads", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "2 images timed after a warm-up batch" in lines[0], lines[0]
    rows = {line[:14].strip(): line[14:].split() for line in lines[2:8]}
    assert list(rows) == [*E2E_STAGES, "overall"], lines
    assert all(float(seconds) >= 0 for seconds, _ in rows.values())
    assert float(rows["capture"][0]) > 0 and float(rows["overall"][0]) >= float(rows["capture"][0])
    assert re.fullmatch(r"images_per_s_end_to_end=\d+\.\d+", lines[-2]) and float(lines[-2].split("=")[1]) > 0
    assert lines[-1] == "peak_gpu_memory_mb=nan"  # CUDA's max_memory_allocated on a GPU


def test_stack_collate_batches_pinnable_tensors():
    import torch

    from benchmark.perf import stack_collate
    from benchmark.types import Sample

    samples = [Sample(f"id{i}", torch.full((3, 4, 4), i, dtype=torch.uint8), torch.full((4, 4), i), {"k": i}) for i in range(3)]
    batch = stack_collate(samples)
    assert batch["ids"] == ["id0", "id1", "id2"] and batch["meta"][2] == {"k": 2}
    assert batch["images"].shape == (3, 3, 4, 4) and batch["images"].dtype == torch.uint8
    assert torch.equal(batch["labels"][1], samples[1].label)


def test_perf_kernel_profiles_each_capture_step(capsys):
    from benchmark.perf import main

    main(["kernel", "--size", "16", "--heads", "2", "--chunk-size", "48", "--repeats", "1", "--threads", "1"])
    out = capsys.readouterr().out
    for order in ("per_head", "batched"):
        match = re.search(rf"^steps {order}\s+QK\^T (\S+)  softmax (\S+)  P\.V (\S+)  head-sum\+add (\S+)", out, re.M)
        assert match and all(float(x) >= 0 for x in match.groups()), out
        assert re.search(rf"^kernel_ratio_{order}=\d+\.\d+$", out, re.M), out


@pytest.mark.parametrize("argv, says", [
    (["kernel", "--size", "0"], "--size 0: must be >= 1"),
    (["kernel", "--size", "16", "--chunk-size", "0"], "--chunk-size 0: must be >= 1"),
    (["kernel", "--size", "16", "--heads", "0"], "--heads 0"),
    (["kernel", "--size", "16", "--threads", "-1"], "--threads -1"),
    (["kernel", "--size", "16", "--repeats", "0"], "--repeats 0"),
    (["capture", "--size", "0"], "--size 0"),
    (["capture", "--size", "8", "--chunk-size", "-2"], "--chunk-size -2: must be >= 0"),
    (["e2e", "--arch", "tiny", "--size", "16", "--batch", "0"], "--batch 0"),
    (["e2e", "--arch", "tiny", "--size", "16", "--images", "1", "--set", "method.kl_treshold=1"], "kl_treshold"),
])
def test_perf_bad_arguments_are_usage_errors(argv, says, capsys):
    """Before: tracebacks (range() arg 3 must not be zero, negative dimension, division by
    zero, set_num_threads expects a positive integer, a ConfigError for a misspelled --set
    key) or a child process failing; now a message naming the option, exit code 2."""
    from benchmark.perf import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err
