"""Operations configs: trainers, precision/runtime switches, experiments, SLURM launcher."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from hdsr.data.datamodule import SRDataModule
from hdsr.data.datasets import PatchSampler, ShardSampler
from hdsr.models import HDSRNet
from hdsr.training.callbacks import GracefulStop, slurm_job_id, slurm_requeueing
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


def _stopped_by(sig: int, ckpt: str = "/tmp/x.ckpt", **kwargs) -> GracefulStop:
    stop = GracefulStop(ckpt, **kwargs)
    stop.received, stop.saved = int(sig), True
    return stop


def write_scontrol(log: Path, then: str = "") -> None:
    """The fake scontrol of ``scontrol_log``: records its arguments in ``log`` (one line
    per call), then runs the shell lines ``then``."""
    script = log.parent / "bin" / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\n{then}')
    script.chmod(0o755)


@pytest.fixture
def scontrol_log(tmp_path, monkeypatch):
    """A scontrol on PATH that records its arguments (one line per call)."""
    log = tmp_path / "scontrol.log"
    (tmp_path / "bin").mkdir()
    write_scontrol(log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    for var in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "31")
    return log


def test_under_submitit_the_signal_goes_to_submitit_and_hdsr_never_requeues(
    scontrol_log, monkeypatch
):
    """One requeue mechanism per job: in a job submitit started, submitit's handler gets
    the pre-timeout signal once last.ckpt is written (it requeues within
    max_num_timeout); hdsr runs no scontrol."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    handed = []
    before = signal.signal(signal.SIGUSR2, lambda sig, frame: handed.append(sig))
    try:
        assert _stopped_by(signal.SIGUSR2).requeue_if_slurm(is_global_zero=True) is False
        assert handed == [signal.SIGUSR2] and not scontrol_log.exists()
        # SIGTERM (scancel, preemption's kill) is no pre-timeout signal: nothing is handed on
        assert _stopped_by(signal.SIGTERM).requeue_if_slurm(is_global_zero=True) is False
        assert handed == [signal.SIGUSR2]
        # requeue off: nothing either
        stop = _stopped_by(signal.SIGUSR2, requeue=False)
        assert stop.requeue_if_slurm(is_global_zero=True) is False and handed == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, before)


def test_a_plain_slurm_job_requeues_itself_at_most_max_requeues_times(
    scontrol_log, monkeypatch, caplog
):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert _stopped_by(signal.SIGUSR1).requeue_if_slurm(is_global_zero=False) is False
    assert not scontrol_log.exists()  # rank 0 only
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert _stopped_by(signal.SIGUSR1, max_requeues=2).requeue_if_slurm(True) is True
    assert scontrol_log.read_text().split() == ["requeue", "31"]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert _stopped_by(signal.SIGUSR1, max_requeues=2).requeue_if_slurm(True) is False
    assert scontrol_log.read_text().split() == ["requeue", "31"]  # no second call
    assert "it has restarted 2 times (slurm.max_requeues=2)" in caplog.text
    with pytest.raises(ValueError, match="max_requeues must be >= 0"):
        GracefulStop("/tmp/x.ckpt", max_requeues=-1)


@pytest.fixture
def requeued_scontrol(scontrol_log):
    """A scontrol that, like one requeueing the job it runs in, gets the SIGTERM SLURM
    sends the job's processes before it has exited (if it lives on, it answers as for a
    job requeued once and exits 0)."""
    write_scontrol(scontrol_log, then="kill -TERM $$\necho 'JobId=31 Restarts=1'\nexit 0\n")
    return scontrol_log


def test_scontrol_requeue_outlives_the_sigterm_of_the_requeue_it_asked_for(
    requeued_scontrol, monkeypatch, caplog
):
    """The requeue is done when SLURM signals the job: the scontrol that asked for it
    (a process of that job) finishing with SIGTERM is no failure, neither in hdsr's own
    requeue nor in submitit's handler (which raised CalledProcessError as the job's
    result, so the sweep failed). SIGTERM's handler is the one it was afterwards."""
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert _stopped_by(signal.SIGUSR1).requeue_if_slurm(is_global_zero=True) is True
    assert "failed" not in caplog.text
    assert requeued_scontrol.read_text().split() == ["requeue", "31"]
    assert signal.getsignal(signal.SIGTERM) == before

    from submitit.slurm.slurm import SlurmJobEnvironment

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    # submitit's own requeue (check_call of scontrol), as its handler runs it
    submitit_requeue = signal.signal(
        signal.SIGUSR2, lambda sig, frame: SlurmJobEnvironment()._requeue(countdown=1)
    )
    try:
        assert _stopped_by(signal.SIGUSR2).requeue_if_slurm(is_global_zero=True) is False
    finally:
        signal.signal(signal.SIGUSR2, submitit_requeue)
    assert requeued_scontrol.read_text().split() == ["requeue", "31"] * 2
    assert signal.getsignal(signal.SIGTERM) == before
    # and the look at the job's restarts that follows a stop (after_stop) gets its answer
    assert slurm_requeueing() is True
    assert signal.getsignal(signal.SIGTERM) == before


def test_max_requeues_comes_from_the_slurm_config():
    cfg = compose(["slurm.max_requeues=3"])
    assert cfg.callbacks.graceful_stop.max_requeues == 3
    assert compose([]).callbacks.graceful_stop.max_requeues == 50


def test_the_stop_checkpoint_is_saved_as_a_full_state_explicitly(tmp_path):
    """Lightning logs "`weights_only` was not set, defaulting to `False`" for a save that
    does not say; the line reads like an unsafe load in a job's log."""
    saved = []

    class Trainer:
        strategy = type("S", (), {"reduce_boolean_decision": lambda self, d, all: d})()
        should_stop = False

        def save_checkpoint(self, path, weights_only=None):
            saved.append((path, weights_only))

    stop = GracefulStop(tmp_path / "last.ckpt")
    stop.received = int(signal.SIGTERM)
    stop._maybe_stop(Trainer())
    assert saved == [(str(tmp_path / "last.ckpt"), False)]


# -- the rendezvous of ranks started by SLURM or torchrun ---------------------------------
def test_a_rendezvous_name_that_does_not_resolve_fails_at_once_naming_it():
    from hdsr.devices import check_rendezvous

    t = time.time()
    with pytest.raises(RuntimeError, match=r"no-such-node\.invalid:29500 .*does not resolve"):
        check_rendezvous("no-such-node.invalid", 29500, rank=1)
    assert time.time() - t < 10


def test_an_unreachable_rendezvous_fails_after_a_few_tries(monkeypatch):
    import socket

    from hdsr import devices

    tries = []

    def connect(self, address):
        tries.append(address)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(devices, "RENDEZVOUS_CONNECT_S", 0.01)
    with pytest.raises(RuntimeError, match=r"rank 1 cannot reach .* 127\.0\.0\.1:29501"):
        devices.check_rendezvous("127.0.0.1", 29501, rank=1)
    assert len(tries) == devices.RENDEZVOUS_ATTEMPTS
    devices.check_rendezvous("127.0.0.1", 29501, rank=0)  # rank 0 opens the store itself


def test_a_rendezvous_that_is_not_open_yet_is_waited_for():
    import socket
    import threading

    from hdsr.devices import check_rendezvous

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def open_late():
        time.sleep(1.0)  # rank 0 still starting: connections are refused meanwhile
        server.bind(("127.0.0.1", port))
        server.listen()

    opener = threading.Thread(target=open_late)
    opener.start()
    try:
        check_rendezvous("127.0.0.1", port, rank=1)
    finally:
        opener.join()
        server.close()


# -- what a run prints on a machine with SLURM ---------------------------------------------
def test_the_srun_hint_is_dropped_outside_a_slurm_job_and_kept_inside(monkeypatch):
    import warnings

    from hdsr.console import SRUN_HINT, one_line_each

    hint = SRUN_HINT.replace("\\", "") + ". HINT: If your intention is to run Lightning on SLURM"
    for job, shown in ((None, False), ("12", True)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            if job:
                monkeypatch.setenv("SLURM_JOB_ID", job)
            else:
                monkeypatch.delenv("SLURM_JOB_ID", raising=False)
            one_line_each()
            warnings.warn(hint, UserWarning, stacklevel=1)
        assert bool(seen) is shown, job


def test_submitits_sacct_warning_is_shown_once_with_what_it_means(caplog, monkeypatch):
    import logging

    from hdsr import console
    from hdsr.console import sacct_warning_once

    monkeypatch.setattr(console, "stop_polling_sacct", lambda: "no accounting here")

    sacct_warning_once()
    sacct_warning_once()  # installed once
    logger = logging.getLogger("submitit")
    with caplog.at_level(logging.WARNING, logger="submitit"):
        for n in (1, 2, 3):
            logger.warning(f"Call #{n} - Bypassing sacct error Command '['sacct']' failed")
        logger.warning("another submitit warning")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "Call #1" in lines[0]
    assert "(no accounting here; this warning is shown once)" in lines[0]
    assert lines[1] == "another submitit warning"


@pytest.mark.parametrize(
    ("says", "stops"),
    [("Slurm accounting storage is disabled", True), ("sacct: error: slurmdbd down", False)],
)
def test_sacct_is_no_longer_polled_only_where_accounting_is_disabled(
    tmp_path, monkeypatch, says, stops
):
    pytest.importorskip("submitit")
    from submitit.slurm.slurm import SlurmInfoWatcher

    from hdsr.console import stop_polling_sacct

    fake = tmp_path / "sacct"
    fake.write_text(f"#!/bin/sh\necho '{says}' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(SlurmInfoWatcher, "_make_command", SlurmInfoWatcher._make_command)
    watcher = SlurmInfoWatcher()
    watcher.register_job("5")
    said = stop_polling_sacct()
    assert (watcher._make_command() is None) is stops, said
    assert ("not polled again" in said) is stops


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
