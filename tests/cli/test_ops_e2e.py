"""Operations end to end: W&B read-back, DDP sweeps, resume, signals, simulated SLURM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.callbacks import PACE_ENV, pace_overrides
from helpers.commands import read_csv, run, run_here, start, wandb_records

pytestmark = pytest.mark.slow

TINY = "trainer.limit_val_batches=1 data.patches_per_epoch=4 data.batch_size=2 data.patch_size=32"


def test_wandb_records_one_run_per_job_with_group_config_history_summary(tmp_path):
    cmd = (
        "hdsr-train -m model=ablation/r1_six_conv,ablation/r7_upper_only sweep_name=abl "
        f"trainer.max_steps=4 trainer.log_every_n_steps=1 {TINY}"
    )
    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    groups = set()
    for variant in ("r1_six_conv", "r7_upper_only"):
        job = tmp_path / "runs" / "abl" / f"{variant}_x2_s0"
        rec = wandb_records(job / "wandb")
        run_rec = rec["run"]
        groups.add(run_rec["run_group"])
        assert run_rec["display_name"] == f"{variant}_x2_s0"
        assert run_rec["job_type"] == "train"
        assert {variant, "x2", "seed0"} <= set(run_rec["tags"])
        assert run_rec["run_id"] == (job / "wandb_run_id").read_text().strip()
        config = run_rec["config"]["update"]
        assert config["model"]["name"] == variant and config["data"]["scale"] == 2
        keys = set().union(*rec["history"])
        assert {"train/loss", "lr-Adam", "model/params", "trainer/global_step"} <= keys
        assert {"val/psnr_y/demo", "val/ssim_y/demo", "bicubic/psnr_y/demo"} <= keys
        assert any(k.startswith("val/images/demo/") for k in keys)
        assert any(k.startswith("final/metrics") for k in keys)
        # limit_val_batches=1 scores the model on astronaut alone: bicubic covers the same
        # image (its MATLAB fixture value), not both demo images (33.4548634)
        assert rec["summary"]["final/bicubic/psnr_y/demo"] == pytest.approx(31.693843, abs=1e-5)
        assert f"final/{variant}/psnr_y/demo" in rec["summary"]
        assert rec["exit_code"] == 0
    assert groups == {"abl"}


def test_crashed_job_is_a_failed_wandb_run_and_bad_global_batch_is_named(tmp_path):
    cmd = (
        "hdsr-train trainer=ddp_sim trainer.max_steps=2 trainer.limit_val_batches=1 "
        "data.patches_per_epoch=6 data.batch_size=3 data.patch_size=32"
    )
    proc = run(cmd, tmp_path)
    assert proc.returncode != 0
    assert "data.batch_size=3 (the global batch) is not divisible by the 2" in proc.stderr
    rec = wandb_records(tmp_path / "runs" / "hdsrnet_x2_s0" / "wandb")
    assert rec["exit_code"] not in (None, 0)


def test_wandb_disabled_writes_no_wandb_files(tmp_path):
    proc = run(f"hdsr-train trainer.max_steps=1 {TINY}", tmp_path, WANDB_MODE="disabled")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = tmp_path / "runs" / "hdsrnet_x2_s0"
    assert not (run_dir / "wandb").exists()
    assert (run_dir / "csv" / "version_0" / "metrics.csv").is_file()


def test_ddp_sweep_runs_each_job_once_on_its_ranks(tmp_path):
    cmd = (
        "hdsr-train -m model=ablation/r1_six_conv,ablation/r7_upper_only trainer=ddp_sim "
        "logger=csv trainer.max_steps=2 data.patches_per_epoch=4 data.batch_size=2 "
        "data.patch_size=32"
    )
    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["sweep"]  # no stray run directories
    jobs = sorted(p.name for p in (runs / "sweep").iterdir() if p.is_dir())
    assert jobs == ["r1_six_conv_x2_s0", "r7_upper_only_x2_s0"]
    assert proc.stdout.count("Validation x2") == 2  # one final table per job, from rank 0
    # the scores are synchronised by torchmetrics: Lightning has no advice to give
    assert "sync_dist=True" not in proc.stdout + proc.stderr
    from hdsr.data.demo import DemoImages
    from hdsr.imaging import to_uint8_image
    from hdsr.metrics import psnr_y, ssim_y
    from hdsr.models import HDSRNet

    pairs = DemoImages(["astronaut", "chelsea"]).load(2)
    for job in jobs:
        job_dir = runs / "sweep" / job
        assert (job_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran this job
        assert sorted(p.name for p in (job_dir / "csv").iterdir()) == ["version_0"]
        rows = read_csv(job_dir / "csv" / "version_0" / "metrics.csv")
        logged = [r for r in rows if r.get("val/psnr_y/demo")]
        assert len(logged) == 1
        # the two ranks scored one image each; the logged mean is over both, once each
        ckpt = torch.load(
            job_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
        )
        cfg = ckpt["hyper_parameters"]
        assert ckpt["global_step"] == 2 and cfg["scale"] == 2
        net = HDSRNet(
            2,
            block=["conv"] if job.startswith("r1") else ["dilated", "dynamic", "conv"],
            block_residual=not job.startswith("r1"),
            lower=None,
        )
        net.load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items()})
        scores = []
        with torch.no_grad():
            for p in pairs:
                lr = torch.from_numpy(p.lr).permute(2, 0, 1).float()[None]
                sr = to_uint8_image(net(lr)).numpy()
                scores.append((psnr_y(sr, p.hr, 2), ssim_y(sr, p.hr, 2)))
        expected_psnr = sum(s[0] for s in scores) / 2
        assert float(logged[0]["val/psnr_y/demo"]) == pytest.approx(expected_psnr, abs=1e-4)


# -- resume -------------------------------------------------------------------------------
#: what resuming is about does not depend on the network's size: a small HDSRNet keeps
#: these runs seconds long (the full one made the killed-run tests minutes each)
TINY_NET = "model.net.n_feats=8 model.net.n_blocks=1 model.net.lower_layers=2"
RESUME = (
    "logger=csv data.patches_per_epoch=16 data.batch_size=2 data.patch_size=32 "
    f"trainer.limit_val_batches=1 {TINY_NET}"
)
EVERY_STEP = "checkpoint.every_n_train_steps=1"


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The last checkpoint's weights (with EMA: the average's and the trained ones', keys
    prefixed ``raw:``) and its step."""
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    raw = {f"raw:{k}": v for k, v in ckpt.get("current_model_state", {}).items()}
    return {**ckpt["state_dict"], **raw}, ckpt["global_step"]


def test_rerun_resumes_and_resume_false_or_ckpt_path(tmp_path):
    run_dir = tmp_path / "runs" / "hdsrnet_x2_s0"
    first = run(f"hdsr-train trainer.max_steps=2 {RESUME} {EVERY_STEP}", tmp_path)
    assert first.returncode == 0 and "resuming from" not in first.stdout
    saved = tmp_path / "step2.ckpt"
    saved.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
    again = run(f"hdsr-train trainer.max_steps=4 {RESUME}", tmp_path)
    assert again.returncode == 0
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in again.stdout
    assert final_weights(run_dir)[1] == 4
    fresh = run(f"hdsr-train trainer.max_steps=1 resume=false {RESUME}", tmp_path)
    assert fresh.returncode == 0 and "resuming from" not in fresh.stdout
    assert final_weights(run_dir)[1] == 1
    given = run(f"hdsr-train trainer.max_steps=3 ckpt_path={saved} {RESUME}", tmp_path)
    assert given.returncode == 0 and f"resuming from {saved}" in given.stdout
    assert final_weights(run_dir)[1] == 3
    missing = run_here(f"hdsr-train ckpt_path={tmp_path / 'nope.ckpt'} {RESUME}", tmp_path)
    assert missing.returncode != 0 and "nope.ckpt: no such checkpoint file" in missing.stderr
    # every start keeps its own CSV log
    assert len(list((run_dir / "csv").iterdir())) == 4


def test_wandb_resume_keeps_the_run_id(tmp_path):
    base = (
        "data.patches_per_epoch=4 data.batch_size=2 data.patch_size=32 trainer.limit_val_batches=1"
    )
    run_dir = tmp_path / "runs" / "hdsrnet_x2_s0"
    assert run(f"hdsr-train trainer.max_steps=2 {base}", tmp_path).returncode == 0
    first_id = (run_dir / "wandb_run_id").read_text().strip()
    assert run(f"hdsr-train trainer.max_steps=4 {base}", tmp_path).returncode == 0
    ids = {p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*")}
    assert ids == {first_id}  # the resumed run continues the same W&B run
    assert run(f"hdsr-train trainer.max_steps=2 resume=false {base}", tmp_path).returncode == 0
    assert (run_dir / "wandb_run_id").read_text().strip() != first_id


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t < timeout, f"{path} never appeared"
        time.sleep(0.05)


#: command -> final weights and step of its uninterrupted run, shared by the parameters
#: of the killed-run test that run the same command (SIGTERM and SIGINT)
_REFERENCE_RUNS: dict[str, tuple[dict[str, torch.Tensor], int]] = {}


def _uninterrupted(cmd: str, tmp_path_factory) -> tuple[dict[str, torch.Tensor], int]:
    if cmd not in _REFERENCE_RUNS:
        ref_dir = tmp_path_factory.mktemp("uninterrupted")
        ref = run(cmd, ref_dir)
        assert ref.returncode == 0, ref.stderr[-2000:]
        _REFERENCE_RUNS[cmd] = final_weights(ref_dir / "runs" / "hdsrnet_x2_s0")
    return _REFERENCE_RUNS[cmd]


@pytest.mark.parametrize(
    ("sig", "ema"),
    [(signal.SIGTERM, ""), (signal.SIGINT, ""), (signal.SIGTERM, "ema.decay=0.9")],
    ids=["SIGTERM", "SIGINT", "SIGTERM-ema"],
)
def test_killed_run_checkpoints_exits_nonzero_and_resumes_exactly(
    tmp_path, tmp_path_factory, sig, ema
):
    """Stopped by a signal and resumed, the run ends bitwise where the uninterrupted one
    does; with EMA both weight sets do (the average and the trained weights)."""
    steps = 64  # 8 epochs of 8 steps, 0.25 s of sleep each: the signal comes well before
    cmd = f"hdsr-train trainer.max_steps={steps} {RESUME} {ema}"
    cut_dir = tmp_path / "cut"
    cut_dir.mkdir()
    ckpt = cut_dir / "runs" / "hdsrnet_x2_s0" / "checkpoints" / "last.ckpt"
    proc = start(f"{cmd} {pace_overrides(0.25)}", cut_dir, **PACE_ENV)
    _wait_for(ckpt, proc)  # the end of epoch 1: training is under way
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-3000:]
    stopped_at = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < stopped_at < steps
    resumed = run(cmd, cut_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    got, got_step = final_weights(cut_dir / "runs" / "hdsrnet_x2_s0")
    want, want_step = _uninterrupted(cmd, tmp_path_factory)
    assert got_step == want_step == steps
    assert set(got) == set(want) and any(k.startswith("raw:") for k in want) == bool(ema)
    for key in want:
        assert torch.equal(got[key], want[key]), key  # bitwise the uninterrupted run
    if ema:  # the two sets differ: the average is not the trained weights
        assert any(not torch.equal(want[k], want[f"raw:{k}"]) for k in want if "raw:" not in k)


def test_slurm_pre_timeout_signal_checkpoints_and_requeues(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "scontrol.log"
    (fake / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (fake / "scontrol").chmod(0o755)
    env = {
        **PACE_ENV,
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "hdsr-test",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
        "SLURM_JOB_NUM_NODES": "1",
    }
    paced = pace_overrides(0.25)  # 60 steps of 0.25 s: the signals come while it trains
    cmd = f"env PATH={fake}:$PATH hdsr-train trainer.max_steps=60 {RESUME} {EVERY_STEP} {paced}"
    proc = start(cmd, tmp_path, **env)
    ckpt = tmp_path / "runs" / "hdsrnet_x2_s0" / "checkpoints" / "last.ckpt"
    _wait_for(ckpt, proc)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGUSR1, err[-3000:]
    assert log.read_text().split() == ["requeue", "4242"]
    # the stop's save says it writes the whole state (no "defaulting to False" line)
    assert "weights_only` was not set" not in out + err
    step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < step < 60
    # the requeued job runs the same command and picks the checkpoint up
    back = run(f"hdsr-train trainer.max_steps={step + 2} {RESUME} {EVERY_STEP}", tmp_path, **env)
    assert back.returncode == 0 and "resuming from" in back.stdout
    # SIGTERM (scancel) stops with a checkpoint but does not requeue
    log.unlink()
    proc = start(cmd, tmp_path, **env)
    time.sleep(0.1)
    _wait_for(ckpt, proc)
    mtime = ckpt.stat().st_mtime_ns
    while ckpt.stat().st_mtime_ns == mtime:  # this run is training (it refreshed last.ckpt)
        assert proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and not log.exists()


def test_compile_option_trains(tmp_path):
    if sys.platform != "linux":
        pytest.skip("torch.compile needs a C++ toolchain")
    cmd = (
        "hdsr-train model=ablation/r1_six_conv runtime.compile=true runtime.channels_last=true "
        f"logger=csv trainer.max_steps=1 {TINY}"
    )
    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(
        tmp_path / "runs" / "r1_six_conv_x2_s0" / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=True,
    )["state_dict"]
    assert all(k.startswith("net.") and "_orig_mod" not in k for k in state)


def test_device_resident_training_runs(tmp_path):
    proc = run(
        f"hdsr-train data.device_resident=true logger=csv trainer.max_steps=2 {TINY}", tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "runs" / "hdsrnet_x2_s0" / "checkpoints" / "last.ckpt").is_file()


def test_bf16_mixed_training_runs_through_cpu_autocast(tmp_path):
    """The GPU recipe's precision (Lightning bf16-mixed: autocast, fp32 weights) on the CPU."""
    cmd = (
        "hdsr-train trainer.precision=bf16-mixed logger=csv trainer.max_steps=2 "
        f"trainer.log_every_n_steps=1 {TINY}"
    )
    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "hdsrnet_x2_s0"
    state, _ = final_weights(run_dir)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    rows = read_csv(run_dir / "csv" / "version_0" / "metrics.csv")
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 2 and all(0 < x < 255 for x in losses)


@pytest.mark.parametrize("ranks, images", [(3, ["astronaut", "chelsea"]), (2, ["astronaut"])])
def test_more_ranks_than_validation_images_score_each_image_once(tmp_path, ranks, images):
    """One process trains 2 steps; the same run, rerun on more ranks than images, validates
    the same weights (resumed at max_steps) and logs the one-process numbers exactly."""
    names = ",".join(images)
    cmd = (
        f"hdsr-train model=ablation/r1_six_conv logger=csv trainer.max_steps=2 "
        f"data.batch_size=6 data.patches_per_epoch=12 data.patch_size=32 "
        f"'data.val_sets.demo.names=[{names}]'"
    )
    one = run(cmd, tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    many = run(f"{cmd} trainer=ddp_sim trainer.devices={ranks}", tmp_path)
    assert many.returncode == 0, many.stderr[-3000:]
    csv_dir = tmp_path / "runs" / "r1_six_conv_x2_s0" / "csv"

    def last_val(version: int) -> dict[str, str]:
        rows = read_csv(csv_dir / f"version_{version}" / "metrics.csv")
        return [r for r in rows if r.get("val/psnr_y/demo")][-1]

    first, second = last_val(0), last_val(1)
    assert second["val/psnr_y/demo"] == first["val/psnr_y/demo"]
    assert second["val/ssim_y/demo"] == first["val/ssim_y/demo"]
    bicubic = [r["bicubic/psnr_y/demo"] for r in read_csv(csv_dir / "version_1" / "metrics.csv")]
    expected = {1: "31.69", 2: "33.45"}[len(images)]  # MATLAB fixture: each image once
    assert any(b.startswith(expected) for b in bicubic if b), bicubic


def test_ddp_ranks_hold_identical_ema_weights(tmp_path):
    """trainer=ddp_sim with ema.decay: each rank averages its replica; the averages agree
    bitwise, and the checkpoint holds that average."""
    out = tmp_path / "ranks"
    cmd = (
        "hdsr-train trainer=ddp_sim trainer.max_steps=3 trainer.limit_val_batches=1 logger=csv "
        "data.patches_per_epoch=8 data.batch_size=2 data.patch_size=32 ema.decay=0.5 "
        f"+callbacks.per_rank._target_=helpers.ddp_checks.SaveEMAPerRank "
        f"+callbacks.per_rank.out_dir={out}"
    )
    proc = run(cmd, tmp_path, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(out / f"ema_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    ckpt = torch.load(
        tmp_path / "runs" / "hdsrnet_x2_s0" / "checkpoints" / "last.ckpt", weights_only=True
    )
    assert all(torch.equal(ckpt["state_dict"][k], ranks[0][k]) for k in ckpt["state_dict"])
    raw = ckpt["current_model_state"]
    assert any(not torch.equal(raw[k], ranks[0][k]) for k in raw)
