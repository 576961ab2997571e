"""experiments/benchmarks/gpu_check.py (``make gpu-check``): refuses to run without a GPU,
counts host syncs from the sync-debug warnings, and every step runs on the CPU dry run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "benchmarks" / "gpu_check.py"


def _gpu_check():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    return gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_exits_at_once_saying_why(tmp_path):
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr and "--cpu-dry-run" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing generated, nothing run
    assert time.perf_counter() - t < 60


def test_unknown_step_is_refused():
    with pytest.raises(SystemExit) as err:
        _gpu_check().main(["--steps", "train,nope", "--cpu-dry-run"])
    assert err.value.code == 2


def test_step_watch_counts_sync_warnings_and_passes_others_on(monkeypatch):
    """On CUDA the window turns on set_sync_debug_mode("warn"); each synchronizing op then
    warns. Mocked here: the counting, the source attribution and the restore."""
    gc = _gpu_check()
    modes = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    watch = gc.StepWatch(start=2, count=4, cuda=True)
    shown = []
    with warnings.catch_warnings():
        warnings.showwarning = lambda msg, *a, **k: shown.append(str(msg))
        watch._begin()

        def item_like_read():
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)

        for _ in range(3):
            item_like_read()
        warnings.warn("something else", UserWarning, stacklevel=1)
        watch._end()
        assert warnings.showwarning is not watch._showwarning  # restored
    assert modes == ["warn", "default"]
    assert shown == ["something else"]
    report = watch.report()
    assert report["syncs"] == 3 and report["syncs_per_step"] == 0.75
    ((source, n),) = report["sync_sources"].items()
    assert n == 3 and "item_like_read" in source


@pytest.mark.slow
def test_cpu_dry_run_runs_every_step(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = tmp_path.glob("gpu_check_*.json")
    res = json.loads(path.read_text())
    assert res["mode"] == "cpu dry run" and res["errors"] == {}
    assert set(res["step_s"]) == {"bench", "train", "compile", "validation", "eval", "upscale"}
    bench = res["bench"]
    assert bench["status"] == 0 and bench["gpu_train"] and bench["device_loader"]
    train = res["train"]
    assert (
        "experiment=paper_x4" in train["command"]
        and "data.device_resident=true" in train["command"]
    )
    assert "trainer.precision=bf16-mixed" in train["command"]
    assert train["ms_per_step"] > 0 and train["steps_watched"] == 2
    assert train["syncs"] is None  # counted on CUDA only
    assert Path(train["checkpoint"]).is_file()
    dynamo = res["compile"]["dynamo"]
    assert dynamo["training"]["frames_compiled"] >= 1 and dynamo["recompilations"] >= 0
    passes = res["validation"]["passes"]
    assert [p["benchmark"] for p in passes] == [False, True]
    assert all(p["pass1_s"] > 0 and p["pass2_s"] > 0 for p in passes)
    assert res["validation"]["shapes"] == 3
    (ev,) = res["eval"]["runs"]
    assert ev["status"] == 0 and len(ev["psnr_y"]) == 3
    ups = res["upscale"]["runs"]
    assert [(r["size"], r["variant"]) for r in ups] == [
        (size, v) for size in ("40x24", "72x48") for v in ("tile 0", "default", "tile 256")
    ]
    assert all(r["max_diff_vs_untiled"] < 0.01 and r["estimate_bytes"] > 0 for r in ups)
    assert [r["path"].split(" (")[0] for r in ups[:3]] == [
        "untiled",
        "untiled",
        "stagewise tiles of 256 px",
    ]
    assert "== gpu-check summary" in proc.stdout and str(path) in proc.stdout
