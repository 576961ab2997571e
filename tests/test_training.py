"""hdsr-train's parts from the config: the callbacks group, train() on the composed
config (fast_dev_run), and resuming a checkpoint of hdsr 0.1."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

from hdsr.training.callbacks import GracefulStop, ModelSummary, StepProgressBar
from hdsr.training.run import build_callbacks
from helpers import FIXTURES
from helpers.configs import compose

TINY = [
    "model.net.n_feats=8",
    "model.net.n_blocks=1",
    "model.net.lower_layers=2",
    "data.batch_size=2",
    "data.patch_size=32",
    "data.patches_per_epoch=4",
    "logger=csv",
    "trainer.enable_progress_bar=false",
]
V01_CKPT = FIXTURES / "hdsrnet_tiny_x2_v0.1.ckpt"


def test_callbacks_group_builds_todays_callbacks(tmp_path):
    cfg = compose([f"paths.run_dir={tmp_path}"])
    best, last, lr, bar, stop, summary = build_callbacks(cfg, has_logger=True, progress_bar=True)
    ckpt_dir = str(tmp_path / "checkpoints")
    assert isinstance(best, ModelCheckpoint) and best.dirpath == ckpt_dir
    assert (best.filename, best.monitor, best.mode, best.save_last) == (
        "best",
        "val/psnr_y/demo",  # the first validation set
        "max",
        True,
    )
    assert isinstance(last, ModelCheckpoint) and last.dirpath == ckpt_dir
    assert last.save_top_k == 0 and last._every_n_train_steps == 1000 and last.save_last
    # the state keys checkpoints of hdsr 0.1 hold, so a resume restores best_model_score
    held = torch.load(V01_CKPT, weights_only=True)["callbacks"]
    assert best.state_key in held
    assert isinstance(lr, LearningRateMonitor) and lr.logging_interval == "step"
    assert isinstance(bar, StepProgressBar)
    assert isinstance(stop, GracefulStop) and stop.check_every_n_steps == 10 and stop.requeue
    assert stop.ckpt_path == str(tmp_path / "checkpoints" / "last.ckpt")
    assert isinstance(summary, ModelSummary)  # hdsr's: one line, no FLOPs of zero


def test_callbacks_follow_the_run_and_can_be_left_out(tmp_path):
    cfg = compose(
        [
            f"paths.run_dir={tmp_path}",
            "data=div2k",
            "data.val_sets=[Set14,Set5]",
            "checkpoint.every_n_train_steps=null",
            "callbacks.graceful_stop=null",
            "stop.check_every_n_steps=3",
        ]
    )
    got = build_callbacks(cfg, has_logger=False, progress_bar=False, model_summary=False)
    assert [type(c) for c in got] == [ModelCheckpoint]  # no logger: no LR monitor
    assert got[0].monitor == "val/psnr_y/Set14"
    cfg = compose(["data=div2k", "data.val_sets=Set14", "stop.check_every_n_steps=3"])
    assert cfg.callbacks.best_checkpoint.monitor == "val/psnr_y/Set14"
    assert cfg.callbacks.graceful_stop.check_every_n_steps == 3


def test_train_fast_dev_run_on_the_composed_config(tmp_path):
    """train(cfg) end to end in this process: one step, one image per validation set."""
    from hdsr.training.run import train

    cfg = compose([*TINY, f"paths.run_dir={tmp_path / 'run'}", "+trainer.fast_dev_run=true"])
    result = train(cfg)
    assert set(result["metrics"]) == {"val/psnr_y/demo", "val/ssim_y/demo"}
    assert 0 < result["metrics"]["val/psnr_y/demo"] < 60
    assert result["images"] == {"demo": (1, 2)}  # bicubic on the image the model was scored on
    assert result["run_dir"] == str(tmp_path / "run")
    assert result["checkpoint"] == str(tmp_path / "run" / "checkpoints" / "last.ckpt")


def test_a_checkpoint_of_hdsr_0_1_resumes(tmp_path):
    """The v0.1 checkpoint's hyper_parameters hold lr/betas/eps/lr_step/lr_gamma, which
    the module no longer takes: Lightning restores the optimizer's and scheduler's state
    from the checkpoint. (When the optimizer/scheduler groups came, the weights, optimizer
    state and CSV rows of this resume were compared with the hdsr-train before them: equal
    to the bit.)"""
    from hdsr.training.run import train

    run_dir = tmp_path / "run"
    cfg = compose(
        [
            *TINY,
            f"paths.run_dir={run_dir}",
            f"ckpt_path={V01_CKPT}",
            "trainer.max_steps=5",
            "trainer.limit_val_batches=1",
            "checkpoint.every_n_train_steps=1",
        ]
    )
    old = torch.load(V01_CKPT, weights_only=True)
    train(cfg)
    new = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (old["global_step"], new["global_step"]) == (2, 5)
    groups = new["optimizer_states"][0]["param_groups"]
    assert [{k: g[k] for k in ("lr", "betas", "eps", "fused")} for g in groups] == [
        {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "fused": True}
    ]
    (sched,) = new["lr_schedulers"]
    assert (sched["step_size"], sched["gamma"], sched["last_epoch"]) == (300_000, 0.5, 5)
    assert new["hyper_parameters"]["optimizer"]["_target_"] == "torch.optim.adam.Adam"
    assert set(new["callbacks"]) >= set(old["callbacks"])
    moved = [
        k for k in old["state_dict"] if not torch.equal(old["state_dict"][k], new["state_dict"][k])
    ]
    assert moved  # it trained on from the old weights


def test_configs_of_earlier_versions_name_todays_classes():
    """A run folder's config from before the package was split into folders names
    hdsr.module.SRModule, hdsr.callbacks.*, hdsr.ema.EMA: they are mapped to today's
    modules (and nothing else is touched); the result builds the same objects."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from hdsr.training.config import LEGACY_TARGETS, upgrade_targets

    cfg = compose([])
    old = OmegaConf.create(OmegaConf.to_yaml(cfg))
    old.model._target_ = "hdsr.module.SRModule"
    old.callbacks.progress_bar._target_ = "hdsr.callbacks.StepProgressBar"
    old.callbacks.ema._target_ = "hdsr.ema.EMA"
    old.callbacks.graceful_stop._target_ = "hdsr.callbacks.GracefulStop"
    changed = upgrade_targets(old)
    assert {k for k, _, _ in changed} == {
        "model._target_",
        "callbacks.progress_bar._target_",
        "callbacks.ema._target_",
        "callbacks.graceful_stop._target_",
    }
    assert OmegaConf.to_container(old) == OmegaConf.to_container(cfg)
    for new in LEGACY_TARGETS.values():
        assert get_class(new).__name__ == new.rsplit(".", 1)[1]
    assert upgrade_targets(old) == []


def test_a_run_started_from_another_runs_checkpoint_shows_only_its_own_best(tmp_path):
    """``ckpt_path=`` restores the other run's ModelCheckpoint state, its best.ckpt path
    included: the final summary named that file as this run's best."""
    from hdsr.training.run import train

    first = tmp_path / "a"
    train(compose([*TINY, f"paths.run_dir={first}", "trainer.max_steps=2"]))
    assert (first / "checkpoints" / "best.ckpt").is_file()
    other = compose(
        [
            *TINY,
            f"paths.run_dir={tmp_path / 'b'}",
            f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}",
            "trainer.max_steps=2",  # reached already: validated, nothing saved as best
        ]
    )
    result = train(other)
    assert str(first) not in result["best_checkpoint"]
    own = tmp_path / "b" / "checkpoints" / "best.ckpt"
    assert result["best_checkpoint"] == (str(own) if own.is_file() else "")


def test_a_full_disk_during_training_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    """A checkpoint write that finds no room (torch's writer raises a RuntimeError, the
    file system an OSError): one line naming the file and the free space, exit 1 (it was
    60 chained traceback lines without the file's name); no partial file is left."""
    import errno

    from hydra.core.utils import JobReturn, JobStatus

    from hdsr.errors import OutputWriteError
    from hdsr.run_dirs import ExitOnConfigError
    from hdsr.training import checkpoint_files
    from hdsr.training.run import train

    def no_room(obj, f):
        f.write(b"PK" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64")

    monkeypatch.setattr(checkpoint_files.torch, "save", no_room)
    run_dir = tmp_path / "run"
    with pytest.raises(OutputWriteError) as err:
        train(compose([*TINY, f"paths.run_dir={run_dir}", "trainer.max_steps=2"]))
    text = str(err.value)
    assert text.startswith(f"writing {run_dir / 'checkpoints'}/") and ".ckpt failed: " in text
    assert "MiB free there" in text and "\n" not in text
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]

    failed = JobReturn(status=JobStatus.FAILED, _return_value=err.value)
    with pytest.raises(SystemExit) as stop:
        ExitOnConfigError().on_job_end(None, failed)
    assert stop.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.endswith(text) and ": error: writing " in line

    # another writer's OSError on a full disk (metrics.csv) is named the same way
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    monkeypatch.undo()

    def csv_no_room(self) -> None:
        path = f"{self.log_dir}/metrics.csv"
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(ExperimentWriter, "save", csv_no_room)
    with pytest.raises(OutputWriteError, match=r"metrics\.csv failed: No space left on device"):
        train(compose([*TINY, f"paths.run_dir={tmp_path / 'csv'}", "trainer.max_steps=2"]))
