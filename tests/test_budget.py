"""The memory budget: sizes, available memory (host, cgroup, a fake CUDA reading) and the
path each image gets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hdsr.inference import budget
from hdsr.inference.budget import (
    BudgetTooSmall,
    host_available,
    plan,
    stagewise_bytes,
    untiled_bytes,
    windows_bytes,
)
from hdsr.sizes import format_memory, parse_memory

GiB, MiB = 1 << 30, 1 << 20


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("8G", 8 * GiB),
        ("8g", 8 * GiB),
        (" 512M ", 512 * MiB),
        ("1.5GiB", 3 * GiB // 2),
        ("800MB", 800 * MiB),
        ("64k", 64 << 10),
        ("2T", 2 << 40),
        ("2000000000", 2_000_000_000),
        (4096, 4096),
    ],
)
def test_parse_memory(text, value) -> None:
    assert parse_memory(text) == value


@pytest.mark.parametrize("text", ["abc", "8X", "-1G", "0", "0.1", "", "G", "1e9", True])
def test_parse_memory_refuses_what_is_not_a_size(text) -> None:
    with pytest.raises(ValueError, match="memory size") as err:
        parse_memory(text)
    assert repr(text) in str(err.value)


def test_format_memory() -> None:
    assert format_memory(3 * GiB // 2) == "1.5 GiB"
    assert format_memory(840 * MiB) == "840 MiB"
    assert format_memory(12) == "12 B"


def _meminfo(tmp_path: Path, available_kib: int) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal: 99999999 kB\nMemFree: 1 kB\nMemAvailable: {available_kib} kB\n")
    return path


def test_host_available_is_bounded_by_the_cgroup(tmp_path) -> None:
    """A SLURM job's cgroup limit wins over the node's free memory (v2 and v1 files)."""
    meminfo = _meminfo(tmp_path, 16 * 1024 * 1024)  # 16 GiB free on the node
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text(f"{6 * GiB}\n")
    (v2 / "memory.current").write_text(f"{2 * GiB}\n")
    assert host_available(meminfo, v2) == 4 * GiB
    (v2 / "memory.max").write_text("max\n")  # no limit
    assert host_available(meminfo, v2) == 16 * GiB
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{3 * GiB}")
    (v1 / "memory" / "memory.usage_in_bytes").write_text(f"{1 * GiB}")
    assert host_available(meminfo, v1) == 2 * GiB
    assert host_available(meminfo, tmp_path / "none") == 16 * GiB


def test_cuda_budget_from_a_fake_device_reading(monkeypatch) -> None:
    """On CUDA the budget is a share of free device memory plus PyTorch's unused cache."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (30 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3 * GiB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 1 * GiB)
    assert budget.available_memory("cuda:0") == 32 * GiB
    assert budget.default_budget("cuda:0") == int(32 * GiB * budget.DEFAULT_FRACTION)
    # the plan a 3000x4000 x2 image gets there: too big untiled, stage-wise tiles fit
    how = plan(3000, 4000, 2, budget=budget.default_budget("cuda:0"), device_type="cuda")
    assert how.mode == "stagewise" and how.tile is not None
    assert how.need <= how.budget
    # the CUDA estimate keeps a margin over the CPU one
    assert untiled_bytes(500, 500, 2, device_type="cuda") > untiled_bytes(500, 500, 2)


def test_small_images_run_untiled() -> None:
    how = plan(680, 1024, 2, budget=8 * GiB)
    assert (how.mode, how.tile) == ("untiled", None)
    assert how.need == untiled_bytes(680, 1024, 2) <= 8 * GiB
    assert "untiled" in how.describe() and "fits" in how.describe()


def test_tile_zero_runs_untiled_whatever_the_budget() -> None:
    how = plan(3000, 4000, 4, budget=1 * MiB, tile=0)
    assert (how.mode, how.tile, how.reason) == ("untiled", None, "--tile 0")


def test_over_budget_takes_the_largest_stagewise_tile_that_fits() -> None:
    h, w = 3000, 4000
    need = untiled_bytes(h, w, 2)
    how = plan(h, w, 2, budget=need - 1)
    assert how.mode == "stagewise"
    bigger = [t for t in budget.TILE_CANDIDATES if t > how.tile]
    assert all(stagewise_bytes(h, w, 2, t) > how.budget for t in bigger)
    assert how.need == stagewise_bytes(h, w, 2, how.tile) <= how.budget
    assert "untiled needs" in how.reason
    # a smaller budget never gets a larger tile
    tighter = plan(h, w, 2, budget=stagewise_bytes(h, w, 2, 256))
    assert tighter.mode == "stagewise" and tighter.tile <= how.tile


def test_windows_when_the_carried_maps_do_not_fit() -> None:
    h, w = 3000, 4000
    low = windows_bytes(h, w, 2, 256, 32)
    assert low < stagewise_bytes(h, w, 2, 64)  # two whole-image maps cost more
    how = plan(h, w, 2, budget=low)
    assert how.mode == "windows" and how.tile is not None and how.need <= low
    # networks the stage-wise path cannot run (maps=None) take windows too
    assert plan(h, w, 2, budget=untiled_bytes(h, w, 2) - 1, maps=None).mode == "windows"


def test_forced_tile() -> None:
    how = plan(680, 1024, 2, budget=8 * GiB, tile=256)
    assert (how.mode, how.tile, how.reason) == ("stagewise", 256, "--tile 256")
    assert plan(680, 1024, 2, budget=8 * GiB, tile=256, maps=None).mode == "windows"


def test_too_small_a_budget_names_the_least_that_works() -> None:
    h, w = 3000, 4000
    with pytest.raises(BudgetTooSmall, match=r"least it can run in is ~") as err:
        plan(h, w, 2, budget=100 * MiB)
    least = windows_bytes(h, w, 2, budget.MIN_TILE, 32)
    assert format_memory(least) in str(err.value) and "--max-memory" in str(err.value)
    assert "max_memory=" in str(err.value)
    assert "(windows tiles of 64 px)" in str(err.value)
    assert plan(h, w, 2, budget=least).mode == "windows"
    # a small image: nothing beats one pass over it, and the message says so
    with pytest.raises(BudgetTooSmall, match=r"\(untiled\)"):
        plan(90, 120, 2, budget=1 * MiB)


def test_self_ensemble_keeps_a_second_output() -> None:
    assert untiled_bytes(100, 100, 4, ensemble=True) - untiled_bytes(100, 100, 4) == (
        4 * 3 * 100 * 100 * 16
    )
