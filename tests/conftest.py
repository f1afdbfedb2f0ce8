"""Shared pytest fixtures. Keep each fixture small and documented; scope them as widely
as is safe (session fixtures must not be mutated by tests)."""
from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    # Tests run small tensors, where intra-op threads add overhead and oversubscribe shared
    # CPUs (measured: the capture tests take 85 s with 2 threads on a busy 2-core machine,
    # 30 s with 1). TORCH_TEST_THREADS=N overrides.
    import torch

    torch.set_num_threads(int(os.environ.get("TORCH_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny random-weight SD (``model=tiny``), built once per session.

    Tests may run passes with it (capture restores its processors) but must not change
    its weights or attributes; read its counters as differences.
    """
    from benchmark.models import ModelConfig, load_model

    return load_model(ModelConfig(name="tiny", path=None, device="cpu"))


@pytest.fixture(autouse=True)
def _no_run_report(request, monkeypatch):
    """In-process runs skip their end-of-run figures and report.html (several seconds of
    matplotlib each on a busy CPU) unless the test is marked ``run_report``; the tests of
    the report itself (tests/test_visualize.py) and subprocess runs keep them."""
    if request.node.get_closest_marker("run_report") is None:
        import benchmark.runner

        monkeypatch.setattr(benchmark.runner, "write_report", lambda run_dir: None)
@pytest.fixture(scope="session")
def tiny_sdxl_model():
    """The tiny random-weight SDXL (``model=tiny_sdxl``), built once per session (read-only, like ``tiny_model``)."""
    from benchmark.models import ModelConfig, load_model

    return load_model(ModelConfig(name="tiny_sdxl", path=None, device="cpu"))
