"""Shared fixtures; one compute thread per test process when the suite runs in parallel."""

from __future__ import annotations

import os

import pytest

#: torch's thread count before the parallel suite set it to one
DEFAULT_THREADS = os.cpu_count() or 1

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core (pytest-xdist). torch's default of one thread
    # per core in every worker, and in every hdsr-train it starts, oversubscribes the
    # cores: the suite took twice as long in parallel as with one thread each. Set before
    # torch is imported here; subprocesses inherit it.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

from helpers.configs import MODEL_OPTIONS, compose  # noqa: E402 - after the thread settings


@pytest.fixture(scope="session")
def model_configs():
    """{(option, scale): model.net config} for every model option and scale."""
    return {
        (opt, s): compose([f"model={opt}", f"data.scale={s}"]).model
        for opt in MODEL_OPTIONS
        for s in (2, 3, 4)
    }


@pytest.fixture
def default_threads():
    """torch's default thread count (one per core) for the test, as a user's process has.

    oneDNN picks its convolution algorithms by thread count; a test whose float32
    tolerance was set on the default algorithms runs with them under the parallel suite."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(DEFAULT_THREADS)
    yield
    torch.set_num_threads(before)
