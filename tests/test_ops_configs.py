"""Operations configs: trainers, precision/runtime switches, experiments, SLURM launcher."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from hdsr.data.datamodule import SRDataModule
from hdsr.data.datasets import PatchSampler, ShardSampler
from hdsr.models import HDSRNet
from hdsr.training.callbacks import GracefulStop, slurm_job_id
from hdsr.training.module import SRModule
from helpers.configs import compose


def compose_hydra(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="hdsr.conf", version_base="1.3"):
        return hydra_compose("train", overrides=overrides, return_hydra_config=True)


#: the DDP strategy of trainer=ddp, multi_node and ddp_sim (Lightning's DDPStrategy)
DDP = {
    "_target_": "lightning.pytorch.strategies.DDPStrategy",
    "gradient_as_bucket_view": True,
    "static_graph": True,
}


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("cpu", {"accelerator": "cpu", "devices": 1}),
        ("gpu", {"accelerator": "gpu", "devices": 1}),
        ("ddp", {"accelerator": "gpu", "devices": -1, "strategy": DDP}),
        ("multi_node", {"accelerator": "gpu", "strategy": DDP, "num_nodes": 2}),
        ("ddp_sim", {"accelerator": "cpu", "devices": 2, "strategy": DDP}),
    ],
)
def test_trainer_options(option, expected):
    cfg = compose([f"trainer={option}"])
    for key, value in expected.items():
        assert cfg.trainer[key] == value, key
    assert cfg.trainer.gradient_clip_algorithm == "value"


def test_precision_and_runtime_switches_compose():
    cfg = compose(
        ["trainer.precision=bf16-mixed", "runtime.channels_last=true", "runtime.compile=true"]
    )
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.runtime.channels_last and cfg.runtime.compile


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_paper_recipes(scale):
    cfg = compose([f"experiment=paper_x{scale}"])
    assert cfg.data.scale == scale and cfg.model.net.scale == scale
    assert cfg.data.train._target_ == "hdsr.data.div2k.DIV2KImages"
    assert list(cfg.data.train.ranges) == [[1, 900]]
    assert cfg.data.patch_size == 128 and cfg.data.batch_size == 64
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-4
    assert cfg.scheduler._target_.endswith("StepLR") and cfg.scheduler.step_size == 300000
    assert cfg.scheduler.gamma == 0.5
    assert cfg.trainer.gradient_clip_val == 10 and cfg.trainer.max_steps == 1_200_000


def test_table1_experiment_sweeps_x4_on_urban100():
    cfg = compose(["experiment=table1", "model=ablation/r4_no_dilated"])
    assert cfg.data.scale == 4 and list(cfg.data.val_sets) == ["Urban100"]
    assert cfg.sweep_name == "table1" and cfg.model.name == "r4_no_dilated"


def test_slurm_launcher_configs():
    cfg = compose_hydra(["launcher=slurm"])
    launcher = cfg.hydra.launcher
    assert "SlurmLauncher" in launcher._target_
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1
    assert launcher.signal_delay_s > 0 and launcher.max_num_timeout > 0
    node = compose_hydra(["launcher=slurm_node", "trainer.devices=8"])
    assert node.hydra.launcher.tasks_per_node == 8
    strategy = node.trainer.strategy  # trainer=ddp's DDPStrategy and its settings
    assert strategy._target_.endswith("DDPStrategy") and strategy.static_graph
    assert node.trainer.accelerator == "gpu" and node.trainer.benchmark


def test_run_name_and_job_dirs():
    cfg = compose_hydra(["model=ablation/r7_upper_only", "data.scale=4", "seed=3"])
    assert cfg.run_name == "r7_upper_only_x4_s3"


# -- global batch, sharding, resumable patch order -------------------------------------
class _FakeTrainer:
    def __init__(self, rank, world, step=0):
        self.global_rank, self.world_size, self.global_step = rank, world, step


def test_global_batch_is_split_and_must_divide():
    dm = SRDataModule(2, train=None, val_sets={"a": None}, batch_size=8)
    dm.trainer = _FakeTrainer(0, 2)
    assert dm.per_rank_batch_size() == 4
    dm.trainer = _FakeTrainer(0, 3)
    with pytest.raises(ValueError, match=r"data.batch_size=8 .* not divisible by the 3"):
        dm.per_rank_batch_size()


def test_ranks_together_see_the_single_process_batches():
    single = list(PatchSampler(16, batch_size=4))
    r0 = list(PatchSampler(16, batch_size=2, rank=0, world_size=2))
    r1 = list(PatchSampler(16, batch_size=2, rank=1, world_size=2))
    for step in range(4):
        got = sorted(r0[2 * step : 2 * step + 2] + r1[2 * step : 2 * step + 2])
        assert got == single[4 * step : 4 * step + 4]


def test_patch_sampler_starts_at_the_trainers_step():
    step = {"n": 0}
    s = PatchSampler(12, batch_size=3, step_fn=lambda: step["n"])
    assert list(s) == list(range(12))
    step["n"] = 6  # e.g. resumed at step 6, wherever the epochs ended
    assert list(s)[:6] == list(range(18, 24)) and len(s) == 12


@pytest.mark.parametrize("n, world", [(5, 3), (2, 3), (1, 2), (5, 8), (4, 2)])
def test_shard_sampler_gives_every_rank_one_length_and_covers_each_item(n, world):
    shards = [list(ShardSampler(n, r, world)) for r in range(world)]
    per_rank = -(-n // world)
    assert all(len(s) == per_rank for s in shards)  # no rank idles at the gather
    assert set(sum(shards, [])) == set(range(n))
    assert shards[0] == list(range(0, n, world))[:per_rank]  # rank 0 as before
    for i in range(n):  # the owner holds it before the wrap; repeats are on higher ranks
        holders = [r for r, shard in enumerate(shards) if i in shard]
        owner = ShardSampler.owner(i, world)
        assert holders[0] == owner and shards[owner][i // world] == i


# -- runtime switches give the same numbers --------------------------------------------
def test_channels_last_module_matches_default():
    torch.manual_seed(0)
    net = HDSRNet(2, n_feats=8, n_blocks=1, lower_layers=2)
    ref = SRModule(net, scale=2)
    x = torch.rand(2, 3, 10, 9) * 255
    with torch.no_grad():
        expected = ref(x)
        fast = SRModule(net, scale=2, channels_last=True)
        got = fast(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


# -- signals ----------------------------------------------------------------------------
def test_graceful_stop_records_signal_and_restores_handlers():
    stop = GracefulStop("/tmp/x.ckpt")
    before = signal.getsignal(signal.SIGTERM)
    stop.on_train_start(None, None)
    assert signal.getsignal(signal.SIGTERM) == stop._handle
    os.kill(os.getpid(), signal.SIGUSR1)
    assert stop.received == signal.SIGUSR1 and stop.exit_code == 128 + signal.SIGUSR1
    stop.restore_handlers()
    assert signal.getsignal(signal.SIGTERM) == before


def test_slurm_job_id(monkeypatch):
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert slurm_job_id() == "77"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "70")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_job_id() == "70_3"


# -- GPU trainer settings: cuDNN autotuning, DDP options ----------------------------------
@pytest.mark.parametrize("option", ["gpu", "ddp", "multi_node"])
def test_gpu_trainer_configs_turn_on_cudnn_benchmark(option):
    """Training patches have one fixed shape: cuDNN tunes each conv once (trainer.benchmark)."""
    assert compose([f"trainer={option}"]).trainer.benchmark is True


@pytest.mark.parametrize("option", ["default", "cpu", "ddp_sim"])
def test_cpu_trainer_configs_leave_cudnn_benchmark_alone(option):
    assert compose([f"trainer={option}"]).trainer.benchmark is None


@pytest.mark.parametrize("option", ["ddp", "multi_node", "ddp_sim"])
def test_ddp_configs_build_one_ddp_strategy(option):
    """trainer=ddp_sim (the CPU runs in the tests) uses exactly trainer=ddp's DDP options."""
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import DDPStrategy

    from hdsr.devices import trainer_kwargs

    cfg = compose([f"trainer={option}"])
    assert cfg.trainer.strategy == compose(["trainer=ddp"]).trainer.strategy
    strategy = instantiate(trainer_kwargs(cfg.trainer)["strategy"])
    assert type(strategy) is DDPStrategy
    assert strategy._ddp_kwargs == {"gradient_as_bucket_view": True, "static_graph": True}


def test_ddp_strategy_options_can_be_overridden():
    cfg = compose(["trainer=ddp", "trainer.strategy.static_graph=false"])
    assert cfg.trainer.strategy.static_graph is False
    cfg = compose(["trainer=ddp", "trainer.strategy=ddp_find_unused_parameters_true"])
    assert cfg.trainer.strategy == "ddp_find_unused_parameters_true"
