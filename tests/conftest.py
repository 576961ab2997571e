"""Shared fixtures; one compute thread per test process when the suite runs in parallel."""

from __future__ import annotations

import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core (pytest-xdist). torch's default of one thread
    # per core in every worker, and in every hdsr-train it starts, oversubscribes the
    # cores: the suite took twice as long in parallel as with one thread each. Set before
    # torch is imported here; subprocesses inherit it.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

from helpers import prefork  # noqa: E402
from helpers.configs import MODEL_OPTIONS, compose  # noqa: E402 - after the thread settings


def pytest_configure(config: pytest.Config) -> None:
    """A parallel run's workers share the servers their commands are forked from (one per
    start-up environment instead of one per worker: ~6 CPU-seconds each)."""
    if not os.environ.get("PYTEST_XDIST_WORKER") and getattr(config.option, "numprocesses", 0):
        prefork.share_servers()


def pytest_unconfigure(config: pytest.Config) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        prefork.stop_shared_servers()


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (``make test``): three workers per core, at most one per 2 GiB of memory.
    A test often waits (on SLURM's scheduling and time limits, on signals, on the commands
    it starts): with one worker per core the 2-core machine the suite is timed on sat idle
    a third of the time (28 min; 17 min with two per core); with three it is busy
    throughout (>= 92 % in every minute, 2026-12-03)."""
    cores = len(os.sched_getaffinity(0))
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return max(1, min(3 * cores, int(memory_gib // 2)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest tests first (the SLURM ones, then the other slow ones), so that the
    parallel suite does not end on one worker running a five-minute test alone."""
    items.sort(
        key=lambda item: (
            item.get_closest_marker("slurm") is None,
            item.get_closest_marker("slow") is None,
        )
    )


@pytest.fixture(scope="session")
def model_configs():
    """{(option, scale): model.net config} for every model option and scale."""
    return {
        (opt, s): compose([f"model={opt}", f"data.scale={s}"]).model
        for opt in MODEL_OPTIONS
        for s in (2, 3, 4)
    }
