"""The benchmark scripts run end to end and check what they claim to check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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


def _bench_speed():
    sys.path.insert(0, str(ROOT / "experiments/benchmarks"))
    try:
        import bench_speed
    finally:
        sys.path.pop(0)
    return bench_speed


class _FakeCuda:
    """Records what the CUDA timing code asks of torch.cuda (mocked on the CPU)."""

    def __init__(self, monkeypatch, ms_per_call: float = 2.0):
        import torch

        self.log: list = []
        self.ms = ms_per_call
        fake = self

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing
                self.at = None

            def record(self, stream=None):
                fake.log.append(("record", stream))
                self.at = sum(1 for e in fake.log if e[0] == "call")

            def synchronize(self):
                fake.log.append(("event_sync",))

            def elapsed_time(self, end):
                return (end.at - self.at) * fake.ms

        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: self.log.append(("sync", d)))
        monkeypatch.setattr(torch.cuda, "current_stream", lambda d=None: f"stream of {d}")

    def call(self):
        self.log.append(("call",))


def test_cuda_timing_waits_on_the_chosen_device_and_times_with_events(monkeypatch):
    """cuda:1: synchronise device 1 (not the default one) before timing, then CUDA events
    on device 1's stream around the calls; the time is per call."""
    import torch

    bs = _bench_speed()
    cuda = _FakeCuda(monkeypatch, ms_per_call=2.0)
    seconds, faults = bs.timed(cuda.call, "cuda:1", calls=5)
    dev = torch.device("cuda:1")
    assert cuda.log == [
        ("sync", dev),
        ("record", f"stream of {dev}"),
        *[("call",)] * 5,
        ("record", f"stream of {dev}"),
        ("event_sync",),
    ]
    assert seconds == pytest.approx(0.002) and faults >= 0


def test_cuda_samples_repeat_short_calls_and_hot_median_syncs_after_warm_up(monkeypatch):
    bs = _bench_speed()
    cuda = _FakeCuda(monkeypatch, ms_per_call=2.0)
    assert bs.calls_per_sample(cuda.call, "cuda:0") == round(bs.MIN_SAMPLE_S / 0.002)
    assert bs.calls_per_sample(lambda: None, "cpu") == 1  # the CPU path times single calls
    cuda.log.clear()
    assert bs.hot_median(cuda.call, "cuda:0", warmup=3, calls=2) == pytest.approx(0.002)
    assert cuda.log[:4] == [("call",)] * 3 + [("sync", bs.torch.device("cuda:0"))]
    n = round(bs.MIN_SAMPLE_S / 0.002)
    assert sum(1 for e in cuda.log if e == ("call",)) == 3 + 1 + 2 * n


@pytest.mark.parametrize(
    ("precision", "clip", "kernel"),
    [
        ("bf16", 10.0, {"foreach": True}),
        ("32", 10.0, {"fused": True}),
        ("bf16", None, {"fused": True}),
    ],
)
def test_benchmarked_training_step_clips_and_uses_hdsr_trains_adam(
    monkeypatch, precision, clip, kernel
):
    """As SRModule.configure_optimizers: foreach under bf16 with clipping, else fused."""
    import torch

    bs = _bench_speed()
    made, clipped = [], []
    real_adam = torch.optim.Adam

    def adam(params, **kwargs):
        made.append({k: v for k, v in kwargs.items() if k in ("fused", "foreach")})
        return real_adam(params, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", adam)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_value_", lambda p, v: clipped.append(v))
    spec = {"kind": "hdsr", "mode": "train", "scale": 2, "batch": 1, "size": 6}
    spec |= {"state": bs.authors_state(2), "device": "cpu", "precision": precision, "clip": clip}
    step = bs.make_runner(spec)
    step()
    assert made == [kernel]
    assert clipped == ([clip] if clip else [])


def test_benchmark_clips_gradients_as_the_paper_recipes():
    from helpers.configs import compose

    bs = _bench_speed()
    for scale in (2, 3, 4):
        trainer = compose([f"experiment=paper_x{scale}"]).trainer
        assert trainer.gradient_clip_algorithm == "value"
        assert trainer.gradient_clip_val == bs.GRAD_CLIP
