"""Checkpoint files: atomic writes, unreadable last.ckpt, resume=false, safe and checked resume."""

from __future__ import annotations

import logging
import os
import pickle
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from helpers.commands import BIN, run, run_here
from helpers.configs import compose

TINY = (
    "model=ablation/r1_six_conv logger=csv trainer.enable_progress_bar=false "
    "trainer.limit_val_batches=1 data.patches_per_epoch=4 data.batch_size=2 data.patch_size=32"
)
RUN = Path("runs") / "r1_six_conv_x2_s0"


def fake_checkpoint(model: str = "ablation/r1_six_conv", scale: int = 2, step: int = 3) -> dict:
    """The keys hdsr-train's checkpoints carry that resume reads (no real weights needed)."""
    from omegaconf import OmegaConf

    cfg = compose([f"model={model}", f"data.scale={scale}"])
    hparams = {
        "scale": scale,
        "model_name": cfg.model.name,
        "net_config": OmegaConf.to_container(cfg.model.net, resolve=True),
    }
    state = {"net.w": torch.full((3,), float(step))}
    return {
        "state_dict": state,
        "global_step": step,
        "epoch": 0,
        "pytorch-lightning_version": "2.6.0",
        "hyper_parameters": hparams,
    }


# -- A: atomic writes ---------------------------------------------------------------------
# Saves a checkpoint over an existing last.ckpt through the CheckpointIO hdsr-train's Trainer
# uses, and hangs (after writing a marker) at the first moment the new bytes reach the disk:
# half-way through our own torch.save into a file, at an fsync, or when a copy from $TMPDIR
# into place has begun (Lightning's default path across file systems).
SAVE_AND_HANG = r"""
import io, os, sys, time
import lightning as L
import torch
from hdsr.training.run import checkpoint_plugins as _plugins

dest, marker = sys.argv[1], sys.argv[2]
trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, plugins=_plugins())
checkpoint_io = trainer.strategy.checkpoint_io

def hang(*args, **kwargs):
    open(marker, "w").close()
    time.sleep(600)

real_save = torch.save
def half_save(obj, f, *args, **kwargs):
    if isinstance(f, io.BytesIO):
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    hang()

torch.save, os.fsync, os.sendfile = half_save, hang, hang
big = {"state_dict": {"w": torch.full((4_000_000,), 2.0)}, "global_step": 2}
checkpoint_io.save_checkpoint(big, dest)
"""


def test_checkpoint_killed_mid_write_leaves_the_old_last_ckpt_and_no_temp_files(tmp_path):
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    shm = Path(tempfile.mkdtemp(prefix="hdsr-test-", dir="/dev/shm"))
    try:
        if shm.stat().st_dev == tmp_path.stat().st_dev:
            pytest.skip("/dev/shm is on the same file system as the test's folder")
        folder = tmp_path / "checkpoints"
        folder.mkdir()
        last = folder / "last.ckpt"
        old = {"state_dict": {"w": torch.arange(1000.0)}, "global_step": 1}
        torch.save(old, last)
        old_bytes = last.read_bytes()
        others = {"notes.txt": b"mine", ".last.ckpt.swp": b"editor", "best.ckpt": b"b"}
        for name, data in others.items():
            (folder / name).write_bytes(data)
        marker = tmp_path / "ready"
        with open(tmp_path / "stderr.txt", "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", SAVE_AND_HANG, str(last), str(marker)],
                # torch keeps its compiler cache under $TMPDIR by default: elsewhere here
                env={
                    **os.environ,
                    "TMPDIR": str(shm),
                    "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
                },
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            try:
                start = time.time()
                while not marker.exists():
                    assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
                    assert time.time() - start < 120, "the save never started"
                    time.sleep(0.02)
            finally:
                proc.kill()
                proc.wait()
        assert last.read_bytes() == old_bytes  # the previous complete file, untouched
        loaded = torch.load(last, weights_only=True, map_location="cpu")
        assert loaded["global_step"] == 1
        assert torch.equal(loaded["state_dict"]["w"], torch.arange(1000.0))
        assert list(shm.iterdir()) == []  # nothing was staged in $TMPDIR
        # the killed write left its temporary file beside last.ckpt; the next start removes
        # it, and only it
        from hdsr.training.checkpoint_files import remove_stale_temp_files

        leftovers = {p.name for p in folder.iterdir()} - {"last.ckpt", *others}
        assert len(leftovers) == 1
        removed = remove_stale_temp_files(folder)
        assert {p.name for p in removed} == leftovers
        assert sorted(p.name for p in folder.iterdir()) == sorted(["last.ckpt", *others])
    finally:
        shutil.rmtree(shm, ignore_errors=True)


@pytest.mark.parametrize("strategy", ["auto", "ddp", "ddp_spawn"])
def test_every_strategy_writes_through_the_atomic_checkpoint_io(strategy):
    from hdsr.devices import build_trainer
    from hdsr.training.checkpoint_files import AtomicCheckpointIO
    from hdsr.training.run import checkpoint_plugins as _plugins

    trainer_cfg = "trainer=cpu" if strategy == "auto" else "trainer=ddp_sim"
    cfg = compose([trainer_cfg, f"trainer.strategy={strategy}"]).trainer
    trainer = build_trainer(cfg, logger=False, plugins=_plugins())
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    # ddp_spawn sends the strategy to its processes by pickling it
    sent = pickle.loads(pickle.dumps(trainer.strategy))
    assert isinstance(sent.checkpoint_io, AtomicCheckpointIO)


def test_atomic_checkpoint_io_saves_locally_and_keeps_lightnings_path_for_urls(tmp_path):
    from hdsr.training.checkpoint_files import AtomicCheckpointIO

    checkpoint_io = AtomicCheckpointIO()
    ckpt = {"state_dict": {"w": torch.ones(3)}, "global_step": 5}
    path = tmp_path / "new" / "last.ckpt"
    checkpoint_io.save_checkpoint(ckpt, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    assert torch.load(path, weights_only=True)["global_step"] == 5
    checkpoint_io.save_checkpoint(ckpt, f"file://{tmp_path}/last.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 5
    url = "memory://hdsr-test/checkpoints/last.ckpt"
    checkpoint_io.save_checkpoint(ckpt, url)
    assert checkpoint_io.load_checkpoint(url, weights_only=True)["global_step"] == 5
    checkpoint_io.remove_checkpoint(url)


# -- A: an unreadable last.ckpt -------------------------------------------------------------
def test_unreadable_last_ckpt_falls_back_to_the_newest_readable_one(tmp_path, caplog):
    from hdsr.training.config import resolve_resume

    cfg = compose(["model=ablation/r1_six_conv"])
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"PK\x03\x04torn")
    torch.save(fake_checkpoint(step=4), folder / "best.ckpt")
    torch.save(fake_checkpoint(step=7), folder / "step.ckpt")
    torch.save({"net.w": torch.ones(3)}, folder / "weights-only.ckpt")  # not a checkpoint
    (folder / "junk.ckpt").write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING):
        assert resolve_resume(cfg, tmp_path) == str(folder / "step.ckpt")
    text = caplog.text
    assert f"{folder / 'last.ckpt'} is unreadable" in text
    assert f"falling back to {folder / 'step.ckpt'}" in text
    (folder / "step.ckpt").write_bytes(b"")
    (folder / "best.ckpt").write_bytes(b"x" * 10)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert resolve_resume(cfg, tmp_path) is None
    assert f"{folder / 'last.ckpt'} is unreadable" in caplog.text
    assert f"no readable checkpoint in {folder}: starting fresh" in caplog.text


@pytest.mark.slow
def test_rerun_after_a_torn_last_ckpt_resumes_from_the_good_one(tmp_path):
    first = run(f"hdsr-train trainer.max_steps=2 {TINY}", tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = tmp_path / RUN / "checkpoints"
    assert torch.load(folder / "best.ckpt", weights_only=True)["global_step"] == 2
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[:64])  # what a kill during the copy left
    again = run(f"hdsr-train trainer.max_steps=4 {TINY}", tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout + again.stderr
    assert f"{last} is unreadable" in out
    assert f"resuming from {folder / 'best.ckpt'}" in out
    assert torch.load(last, weights_only=True)["global_step"] == 4


@pytest.mark.slow
def test_rerun_after_a_torn_last_ckpt_without_a_good_one_starts_fresh(tmp_path):
    from hdsr.training.checkpoint_files import temp_path_for

    folder = tmp_path / RUN / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(fake_checkpoint(), folder / "last.ckpt")
    torn = (folder / "last.ckpt").read_bytes()[:64]
    (folder / "last.ckpt").write_bytes(torn)
    stale = temp_path_for(folder / "last.ckpt")  # a write killed before the rename
    stale.write_bytes(b"partial")
    proc = run(f"hdsr-train trainer.max_steps=2 {TINY}", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert f"{folder / 'last.ckpt'} is unreadable" in out
    assert f"no readable checkpoint in {folder}: starting fresh" in out
    assert not re.search(r"^resuming from", out, re.MULTILINE)
    assert not stale.exists()
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 2
    (kept,) = folder.glob("previous-*/last.ckpt")  # the torn file is kept aside, not reused
    assert kept.read_bytes() == torn


# -- B: resume=false keeps the previous checkpoints ------------------------------------------
@pytest.mark.slow
def test_resume_false_moves_the_previous_checkpoints_aside(tmp_path):
    first = run(f"hdsr-train trainer.max_steps=2 {TINY}", tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = tmp_path / RUN / "checkpoints"
    before = {name: (folder / name).read_bytes() for name in ("last.ckpt", "best.ckpt")}
    fresh = run(f"hdsr-train trainer.max_steps=4 resume=false {TINY}", tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    out = fresh.stdout + fresh.stderr
    assert not re.search(r"^resuming from", out, re.MULTILINE)
    match = re.search(r"moved (.+) to (\S+)$", out, re.MULTILINE)
    assert match, out[-3000:]
    assert "best.ckpt" in match.group(1) and "last.ckpt" in match.group(1)
    aside = Path(match.group(2))
    assert aside.parent == folder and re.fullmatch(r"previous-\d{8}T\d{6}Z", aside.name)
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == before
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 4
    assert torch.load(folder / "best.ckpt", weights_only=True)["global_step"] in (2, 4)


def test_previous_checkpoints_go_to_a_new_folder_each_time(tmp_path):
    from datetime import UTC, datetime

    from hdsr.training.checkpoint_files import move_previous_checkpoints

    assert move_previous_checkpoints(tmp_path / "none") is None
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    (tmp_path / "last.ckpt").write_bytes(b"1")
    first = move_previous_checkpoints(tmp_path, now=now)
    (tmp_path / "last.ckpt").write_bytes(b"2")
    second = move_previous_checkpoints(tmp_path, now=now)
    assert first == tmp_path / "previous-20250102T030405Z"
    assert second == tmp_path / "previous-20250102T030405Z-2"
    assert (first / "last.ckpt").read_bytes() == b"1"
    assert (second / "last.ckpt").read_bytes() == b"2"
    assert move_previous_checkpoints(tmp_path, now=now) is None  # nothing left to move


# -- C: a pickle payload is refused ----------------------------------------------------------
class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    ckpt = fake_checkpoint()
    ckpt["hyper_parameters"]["payload"] = Payload(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    return path, marker


def test_resolve_resume_refuses_a_pickle_payload(tmp_path):
    from hdsr.errors import ConfigError
    from hdsr.training.config import resolve_resume

    path, marker = evil_checkpoint(tmp_path)
    cfg = compose(["model=ablation/r1_six_conv", f"ckpt_path={path}"])
    with pytest.raises(ConfigError, match=r"evil\.ckpt is not a readable checkpoint.*weights-only"):
        resolve_resume(cfg, tmp_path / "run")
    assert not marker.exists()


@pytest.mark.slow
def test_ckpt_path_with_a_pickle_payload_fails_clearly_and_runs_nothing(tmp_path):
    path, marker = evil_checkpoint(tmp_path)
    proc = run_here(f"hdsr-train trainer.max_steps=2 ckpt_path={path} {TINY}", tmp_path)
    assert proc.returncode != 0
    assert not marker.exists()
    last = proc.stderr.strip().splitlines()[-3:]
    assert any(f"{path} is not a readable checkpoint" in line for line in last), proc.stderr[-3000:]
    assert not (tmp_path / RUN / "checkpoints").exists()


# -- D: clear errors for what cannot be resumed -----------------------------------------------
def test_ckpt_path_directory_is_named(tmp_path):
    from hdsr.errors import ConfigError
    from hdsr.training.config import resolve_resume

    cfg = compose([f"ckpt_path={tmp_path}"])
    with pytest.raises(ConfigError, match="is a directory, not a checkpoint file"):
        resolve_resume(cfg, tmp_path / "run")


@pytest.mark.parametrize(
    ("held", "asked", "expected"),
    [
        (("ablation/r1_six_conv", 2), ["model=hdsrnet"], "model r1_six_conv at x2.*hdsrnet at x2"),
        (
            ("ablation/r1_six_conv", 3),
            ["model=ablation/r1_six_conv"],
            "model r1_six_conv at x3.*r1_six_conv at x2",
        ),
        (
            ("ablation/r1_six_conv", 2),
            ["model=ablation/r1_six_conv", "model.net.n_feats=32"],
            "model r1_six_conv at x2.*n_feats: 64 in the checkpoint, 32 in the config",
        ),
    ],
)
def test_checkpoint_of_another_variant_or_scale_is_named(tmp_path, held, asked, expected):
    from hdsr.errors import ConfigError
    from hdsr.training.config import resolve_resume

    path = tmp_path / "other.ckpt"
    torch.save(fake_checkpoint(*held), path)
    cfg = compose([*asked, f"ckpt_path={path}"])
    with pytest.raises(ConfigError, match=f"{re.escape(str(path))} holds {expected}"):
        resolve_resume(cfg, tmp_path / "run")
    # the run's own last.ckpt is checked the same way
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, folder / "last.ckpt")
    cfg = compose(asked)
    with pytest.raises(ConfigError, match=f"{re.escape(str(folder / 'last.ckpt'))} holds"):
        resolve_resume(cfg, tmp_path / "run")
    same = compose([f"model={held[0]}", f"data.scale={held[1]}"])
    assert resolve_resume(same, tmp_path / "run") == str(folder / "last.ckpt")


@pytest.mark.slow
def test_hdsr_train_names_a_mismatched_checkpoint_or_a_directory(tmp_path):
    path = tmp_path / "x3.ckpt"
    torch.save(fake_checkpoint(scale=3), path)
    proc = run_here(f"hdsr-train ckpt_path={path} {TINY}", tmp_path)
    assert proc.returncode != 0
    assert f"{path} holds model r1_six_conv at x3" in proc.stderr, proc.stderr[-3000:]
    assert "size mismatch" not in proc.stderr and "Missing key" not in proc.stderr
    proc = run_here(f"hdsr-train ckpt_path={tmp_path} {TINY}", tmp_path)
    assert proc.returncode != 0
    assert f"ckpt_path={tmp_path} is a directory, not a checkpoint file" in proc.stderr


# -- E: a second Ctrl-C ----------------------------------------------------------------------
@pytest.mark.slow
def test_second_ctrl_c_exits_130(tmp_path):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    environ["PATH"] = f"{BIN}{os.pathsep}{environ['PATH']}"
    # steps of about a second, so the second SIGINT lands inside the batch the first one
    # waits for
    cmd = (
        "exec hdsr-train logger=csv trainer.enable_progress_bar=false trainer.max_steps=100000 "
        "trainer.limit_val_batches=1 data.patches_per_epoch=10000 data.batch_size=4 "
        "data.patch_size=64 checkpoint.every_n_train_steps=1"
    )
    proc = subprocess.Popen(
        ["bash", "-c", cmd],
        cwd=tmp_path,
        env=environ,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()

    def wait_for(text: str, timeout: float = 120) -> None:
        end = time.time() + timeout
        while not any(text in line for line in seen):
            assert time.time() < end, f"no {text!r} in:\n" + "".join(seen)[-3000:]
            try:
                seen.append(lines.get(timeout=0.05))
            except queue.Empty:
                assert proc.poll() is None, "".join(seen)[-3000:]

    try:
        last = tmp_path / "runs" / "hdsrnet_x2_s0" / "checkpoints" / "last.ckpt"
        end = time.time() + 120
        while not last.exists():  # training is under way
            assert proc.poll() is None and time.time() < end
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        wait_for("received SIGINT")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    while not lines.empty():
        seen.append(lines.get())
    out = "".join(seen)
    assert "Detected KeyboardInterrupt" in out, out[-3000:]
    assert proc.returncode == 130, out[-3000:]
