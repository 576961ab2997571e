"""TF32 switches (hdsr.devices) proved on the CPU, where the flags are plain attributes:
exact float32 for hdsr-eval precision=32, TF32 for CUDA training, restored afterwards."""

from __future__ import annotations

import pytest
import torch

from hdsr.devices import (
    exact_float32,
    restoring_tf32,
    set_cuda_tf32,
    tf32_state,
    trainer_kwargs,
)


@pytest.fixture
def restore_tf32():
    """Put the process's TF32 switches back as they were, whatever the test did."""
    saved = tf32_state()
    with restoring_tf32():
        yield saved
    assert tf32_state() == saved


@pytest.mark.parametrize(
    "before",
    [
        "default",
        "high",  # torch.set_float32_matmul_precision("high"), as many scripts do
        "training",  # set_cuda_tf32(True), as hdsr-train on CUDA
        "new_api_global_tf32",  # torch >= 2.9: torch.backends.fp32_precision = "tf32"
    ],
)
def test_exact_float32_turns_tf32_off_and_restores_the_previous_state(before, restore_tf32):
    if before == "high":
        torch.set_float32_matmul_precision("high")
    elif before == "training":
        set_cuda_tf32(True)
    elif before == "new_api_global_tf32":
        if not hasattr(torch.backends, "fp32_precision"):
            pytest.skip("torch < 2.9 has no fp32_precision API")
        torch.backends.fp32_precision = "tf32"
    state = tf32_state()
    with exact_float32():
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 is False
        assert torch.get_float32_matmul_precision() == "highest"
        inside = tf32_state()
        for key in ("cuda.matmul", "cudnn.conv", "cudnn.rnn"):
            if f"{key}.fp32_precision" in inside:
                assert inside[f"{key}.fp32_precision"] == "ieee", key
    assert tf32_state() == state
    with pytest.raises(KeyError), exact_float32():  # restored when the block raises too
        raise KeyError("x")
    assert tf32_state() == state


def test_cuda_tf32_for_training_leaves_cpu_matmuls_alone(restore_tf32):
    mkldnn = tf32_state().get("mkldnn.matmul.fp32_precision")
    set_cuda_tf32(True)
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.backends.cudnn.allow_tf32 is True
    assert tf32_state().get("mkldnn.matmul.fp32_precision") == mkldnn


def test_cpu_results_do_not_depend_on_the_tf32_switches(restore_tf32):
    from hdsr.models import HDSRNet

    torch.manual_seed(0)
    net = HDSRNet(2, n_feats=8, n_blocks=1, lower_layers=2).eval()
    x = torch.rand(1, 3, 9, 11) * 255
    with torch.no_grad():
        plain = net(x)
        with exact_float32():
            exact = net(x)
        set_cuda_tf32(True)
        tf32 = net(x)
    assert torch.equal(plain, exact) and torch.equal(plain, tf32)


@pytest.mark.parametrize(
    ("accelerator", "cuda_available", "tf32"),
    [("gpu", False, True), ("cuda", False, True), ("auto", True, True), ("auto", False, False)]
    + [("cpu", True, False)],
)
def test_trainer_kwargs_allow_tf32_only_when_training_on_cuda(
    monkeypatch, accelerator, cuda_available, tf32
):
    import hdsr.devices

    calls = []
    monkeypatch.setattr(hdsr.devices, "set_cuda_tf32", calls.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    kwargs = trainer_kwargs({"accelerator": accelerator, "strategy": "auto", "max_steps": 3})
    assert kwargs == {
        "_target_": "lightning.pytorch.Trainer",
        "accelerator": accelerator,
        "strategy": "auto",
        "max_steps": 3,
    }
    assert calls == ([True] if tf32 else [])


@pytest.mark.slow
def test_eval_precision_32_runs_the_models_with_tf32_off_then_restores(
    tmp_path, monkeypatch, restore_tf32
):
    """hdsr-eval precision=32: every model runs under exact_float32; bf16 leaves TF32 be."""
    from hydra import compose, initialize_config_module

    import hdsr.cli.evaluate  # noqa: F401 - registers the run-name resolver
    from hdsr.evaluation.module import EvaluationModule
    from hdsr.evaluation.run import run_eval
    from helpers.datatrees import make_benchmark

    bench = make_benchmark(tmp_path / "bench", "Set5", 2, size=(24, 28))
    seen = []
    real = EvaluationModule.test_step

    def spy(self, *args, **kwargs):
        seen.append((self.inference["precision"], tf32_state()))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(EvaluationModule, "test_step", spy)
    set_cuda_tf32(True)  # e.g. left on by training in the same process
    before = tf32_state()
    for precision in ("32", "bf16"):
        overrides = [
            "model=bicubic",
            "data.scale=2",
            f"data.benchmark_root={bench}",
            "data.test_sets=[Set5]",
            "logger=csv",
            f"precision={precision}",
            f"paths.run_dir={tmp_path / precision}",
        ]
        with initialize_config_module(config_module="hdsr.conf", version_base="1.3"):
            cfg = compose(config_name="eval", overrides=overrides)
        run_eval(cfg)
        assert tf32_state() == before
    # each image of the model (with the precision asked) and of the bicubic baseline
    assert [p for p, _ in seen] == ["32"] * 2 + ["32"] * 2 + ["32"] * 2 + ["bf16"] * 2
    exact = [state for _, state in seen[:4]]
    assert all(s["cuda.matmul.allow_tf32"] is False for s in exact)
    assert all(s["cudnn.allow_tf32"] is False for s in exact)
    assert all(s["float32_matmul_precision"] == "highest" for s in exact)
    assert all(state == before for _, state in seen[4:])


@pytest.mark.parametrize("devices", [0, -1])
def test_a_device_count_lightning_refuses_is_one_line(devices):
    """``hdsr-eval trainer.devices=0`` (or -1 on the CPU) ended in Hydra's multi-line
    instantiate error; it is a ConfigError now, which the commands print in one line."""
    from omegaconf import OmegaConf

    from hdsr.devices import build_trainer
    from hdsr.errors import ConfigError
    from hdsr.run_dirs import config_error_line

    cfg = OmegaConf.create(
        {"_target_": "lightning.pytorch.Trainer", "accelerator": "cpu", "devices": devices}
    )
    with pytest.raises(ConfigError, match="refused by Lightning: .*devices") as err:
        build_trainer(cfg, logger=False)
    line = config_error_line(err.value)
    assert line is not None and "devices" in line
