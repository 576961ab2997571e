"""The benchmark scripts run end to end and check what they claim to check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_speed_runs_every_section_on_cpu(tmp_path):
    """--tiny --gpu-section: worker processes, CPU bf16 autocast and the device loader."""
    out = tmp_path / "speed.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments/benchmarks/bench_speed.py"),
            "--tiny",
            "--gpu-section",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {r["scale"] for r in res["forward"]} == {2, 3, 4}
    for r in res["forward"]:
        assert r["rel_err"] <= 1e-5 and r["ref_ms"] > 0 and r["ours_ms"] > 0
        # the FLOP rate is set against a conv ceiling timed in the same repeats
        lo, hi = r["ceiling_fraction_range"]
        assert r["ceiling_gflops"] > 0 and 0 < lo <= r["ceiling_fraction"] <= hi
    for r in res["train"]:
        assert r["grad_rel_l2_vs_fp64"] <= 1e-3
    variants = [r["variant"] for r in res["gpu_train"]]
    assert variants[0] == "authors fp32 NCHW" and "hdsr bf16-mixed channels_last" in variants
    assert {r["variant"] for r in res["inference_x4"]} == {"authors fp32", "hdsr fp32", "hdsr bf16"}
    assert res["device_loader"]["patches_per_s"] > 0
    assert "training throughput, x4" in proc.stdout


def test_benchmark_worker_failure_names_the_worker():
    sys.path.insert(0, str(ROOT / "experiments/benchmarks"))
    try:
        import bench_speed
    finally:
        sys.path.pop(0)
    spec = {
        "kind": "hdsr",
        "label": "hdsr x5",
        "mode": "forward",
        "scale": 5,
        "batch": 1,
        "size": 8,
        "state": {},
        "device": "cpu",
    }
    with pytest.raises(RuntimeError, match="hdsr x5"):
        bench_speed.Worker(spec)
