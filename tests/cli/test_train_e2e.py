"""End-to-end: hdsr-train as a user runs it (subprocess, fresh directory, no W&B key)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter

import pytest

from helpers.commands import REPO, read_csv, run, run_here

TINY = [
    "data.batch_size=4",
    "data.patch_size=32",
    "data.patches_per_epoch=160",
    "trainer.log_every_n_steps=5",
]


@pytest.mark.slow
def test_default_run_trains_validates_and_reports(tmp_path):
    proc = run(f"hdsr-train trainer.max_steps=40 {' '.join(TINY)}", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    run_dir = tmp_path / "runs" / "hdsrnet_x2_s0"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    # the final table: bicubic on astronaut + chelsea at x2 equals the MATLAB fixture means
    # ((31.693843 + 35.215884) / 2 = 33.45; (0.944476 + 0.914631) / 2 = 0.9296)
    bicubic_row = next(line for line in out.splitlines() if "bicubic" in line)
    assert "33.45" in bicubic_row and "0.9296" in bicubic_row
    assert any("hdsrnet" in line for line in out.splitlines() if "│" in line)
    assert str(run_dir / "checkpoints" / "last.ckpt") in out.replace("\n", "")
    rows = read_csv(run_dir / "csv" / "version_0" / "metrics.csv")
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 6
    assert sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, losses  # the L1 loss falls
    psnr = [float(r["val/psnr_y/demo"]) for r in rows if r.get("val/psnr_y/demo")]
    ssim = [float(r["val/ssim_y/demo"]) for r in rows if r.get("val/ssim_y/demo")]
    assert psnr and ssim and 5 < psnr[-1] < 60 and 0 < ssim[-1] <= 1
    # W&B offline without an API key: one run, syncable later
    wandb_runs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_runs) == 1
    assert "wandb sync" in out


TINY_NET = "model.net.n_feats=8 model.net.n_blocks=1 model.net.lower_layers=2"


@pytest.mark.slow
def test_each_line_is_printed_once_without_tips_and_the_bar_counts_steps(tmp_path):
    proc = run(f"hdsr-train trainer.max_steps=12 {' '.join(TINY)} {TINY_NET}", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout + proc.stderr
    assert "\r" not in printed  # no TTY (COLUMNS=120): no redraws, every line is printed
    lines = [line.strip() for line in printed.splitlines()]
    lines = [line for line in lines if line.removeprefix("wandb:").strip()]  # W&B's blanks
    assert [line for line, n in Counter(lines).items() if n > 1] == []
    assert "Tip" not in printed and "litlogger" not in printed and "litmodels" not in printed
    assert "anonymous" not in printed  # W&B's warning about Lightning's anonymous=None
    # one bar for the run: optimizer steps toward trainer.max_steps (not "Epoch 2/-2")
    (bar,) = [line for line in lines if line.startswith("step ")]
    assert " 12/12 " in bar and "/-2" not in printed and "v_num" not in printed
    # the INFO lines go to the console once and all of them to the job's log file
    info = [line for line in proc.stdout.splitlines() if "][INFO] - " in line]
    log = (tmp_path / "runs" / "hdsrnet_x2_s0" / "train.log").read_text().splitlines()
    assert info == log and any("Seed set to 0" in line for line in log)
    assert any("`Trainer.fit` stopped: `max_steps=12` reached" in line for line in log)
    # nothing false or foreign: no deprecation warning of Lightning's, no FLOPs of zero
    assert "deprecated" not in printed and "Warning" not in printed
    assert "FLOPs" not in printed and "Flops" not in printed
    (summary,) = [line for line in log if "- model: net (HDSRNet) " in line]
    assert "parameters (all trainable)" in summary
    assert "already configured with model summary" not in printed


@pytest.mark.slow
def test_learning_rate_sweep_with_adamw_as_typed(tmp_path):
    cmd = (
        "hdsr-train -m optimizer=adamw optimizer.lr=1e-4,2e-4 logger=csv trainer.max_steps=2 "
        "trainer.log_every_n_steps=1 "
        "trainer.limit_val_batches=1 data.patches_per_epoch=4 data.batch_size=2 "
        f"data.patch_size=32 {TINY_NET}"
    )
    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "runs" / "sweep"
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    # run_name, then the swept key (optimizer=adamw is the same for every job)
    assert jobs == ["hdsrnet_x2_s0,optimizer.lr=0.0001", "hdsrnet_x2_s0,optimizer.lr=0.0002"]
    import torch

    for job, lr in zip(jobs, (1e-4, 2e-4), strict=True):
        ckpt = torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)
        (group,) = ckpt["optimizer_states"][0]["param_groups"]
        assert group["lr"] == lr and group["weight_decay"] == 0.01 and group["fused"]
        assert ckpt["hyper_parameters"]["optimizer"]["_target_"] == "torch.optim.adamw.AdamW"
        rows = read_csv(sweep / job / "csv" / "version_0" / "metrics.csv")
        assert {float(r["lr-AdamW"]) for r in rows if r.get("lr-AdamW")} == {lr}


@pytest.mark.slow
def test_ablation_sweep_as_typed_runs_nine_jobs(tmp_path):
    # unquoted, exactly as users type it in bash
    cmd = (
        "hdsr-train -m model=ablation/* trainer.max_steps=1 trainer.limit_val_batches=1 "
        "data.patches_per_epoch=2 data.batch_size=2 data.patch_size=32"
    )
    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "runs" / "sweep"
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == sorted(
        f"{p.stem}_x2_s0" for p in (REPO / "conf" / "model" / "ablation").glob("*.yaml")
    )
    run_ids = set()
    for job in jobs:
        job_dir = sweep / job
        assert (job_dir / "checkpoints" / "last.ckpt").is_file(), job
        rows = read_csv(job_dir / "csv" / "version_0" / "metrics.csv")
        assert any(r.get("val/psnr_y/demo") for r in rows), job
        (wb,) = (job_dir / "wandb").glob("offline-run-*")  # one W&B run per job
        run_ids.add(wb.name.rsplit("-", 1)[1])
    assert len(run_ids) == 9


@pytest.mark.slow
def test_sweep_errors_are_clear(tmp_path):
    proc = run_here("hdsr-train -m model=ablation/zz*", tmp_path)
    assert proc.returncode == 2 and "matches no option" in proc.stderr
    proc = run_here("hdsr-train data.scale=5 logger=csv", tmp_path)
    assert proc.returncode != 0 and "data.scale must be one of [2, 3, 4]" in proc.stderr
    assert not (tmp_path / "runs" / "hdsrnet_x5_s0" / "checkpoints").exists()


@pytest.mark.slow
def test_configs_work_from_a_built_wheel(tmp_path):
    dist, target, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build_dir = tmp_path / "src"
    shutil.copytree(
        REPO,
        build_dir,
        ignore=shutil.ignore_patterns(".venv", "runs", "build", "*.egg-info", ".git"),
    )
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(build_dir)],
        check=True,
    )
    (wheel,) = dist.glob("hdsr-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    assert (target / "hdsr" / "conf" / "model" / "ablation" / "r1_six_conv.yaml").is_file()
    env = {"PYTHONPATH": str(target)}
    code = (
        "import hdsr, sys; assert hdsr.__file__.startswith(sys.argv[1]), hdsr.__file__; "
        "from hdsr.cli.overrides import expand_group_patterns as e; "
        "print(e(['-m', 'model=ablation/*'], 'hdsr.conf')[1])"
    )
    proc = run(f'{sys.executable} -c "{code}" {target}', elsewhere, **env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().count("ablation/") == 9
    proc = run(
        f"{sys.executable} {target}/bin/hdsr-train --cfg job model=ablation/r7_upper_only",
        elsewhere,
        **env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "name: r7_upper_only" in proc.stdout and "lower: null" in proc.stdout


# bicubic on astronaut + chelsea, means of the MATLAB fixture values at each scale
FIXTURE_BICUBIC = {3: ("30.77", "0.8727"), 4: ("29.15", "0.8235")}


@pytest.mark.slow
@pytest.mark.parametrize("scale", [3, 4])
def test_scale_switches_network_lr_and_metrics(tmp_path, scale):
    import torch

    cmd = (
        f"hdsr-train data.scale={scale} model=ablation/r1_six_conv logger=csv "
        "trainer.max_steps=2 data.patches_per_epoch=4 data.batch_size=2 data.patch_size=48"
    )
    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bicubic_row = next(line for line in proc.stdout.splitlines() if "bicubic" in line)
    psnr, ssim = FIXTURE_BICUBIC[scale]
    assert psnr in bicubic_row and ssim in bicubic_row
    run_dir = tmp_path / "runs" / f"r1_six_conv_x{scale}_s0"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    upsampler = {k: v.shape for k, v in ckpt["state_dict"].items() if "tail.upsample" in k}
    expected = {3: {"net.tail.upsample.0.weight": (576, 64, 3, 3)}, 4: {}}[scale]
    for key, shape in expected.items():
        assert tuple(upsampler[key]) == shape
    assert ("net.tail.upsample.2.weight" in upsampler) == (scale == 4)
    assert not (run_dir / "wandb").exists()  # logger=csv writes no W&B files


@pytest.mark.slow
def test_div2k_and_benchmarks_end_to_end(tmp_path):
    from helpers.datatrees import make_benchmark, make_div2k

    root = make_div2k(tmp_path / "DIV2K", [1, 2, 801], scales=(2,), size=(64, 80))
    bench = make_benchmark(tmp_path / "benchmark", "Set5", 2, scales=(2,))
    make_benchmark(bench, "Set14", 2, gray=(1,))  # no LR folder: generated
    data = (
        f"data=div2k data.root={root} data.benchmark_root={bench} data.num_workers=1 "
        "'data.train.ranges=[[1,2],[801,801]]' data.val_sets=[Set5,Set14] data.patch_size=32"
    )
    proc = run(f"hdsr-prepare {data}", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ready: 3 training images at x2" in proc.stdout
    assert len(list((root / ".hdsr_cache").rglob("*.npy"))) == 6
    assert not (tmp_path / "runs").exists()  # preparing makes no run directory
    cmd = (
        f"hdsr-train {data} logger=csv trainer.max_steps=4 data.batch_size=2 "
        "data.patches_per_epoch=4"
    )
    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_csv(tmp_path / "runs" / "hdsrnet_x2_s0" / "csv" / "version_0" / "metrics.csv")
    for key in ("val/psnr_y/Set5", "val/ssim_y/Set5", "val/psnr_y/Set14", "val/ssim_y/Set14"):
        assert any(r.get(key) for r in rows), key
    table = proc.stdout
    assert "Set5 PSNR" in table and "Set14 PSNR" in table


@pytest.mark.slow
def test_final_table_scores_bicubic_on_the_images_the_model_was_scored_on(tmp_path):
    cmd = (
        "hdsr-train model=ablation/r1_six_conv logger=csv trainer.max_steps=1 "
        "trainer.limit_val_batches=1 data.patches_per_epoch=2 data.batch_size=2 data.patch_size=32"
    )
    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one image (astronaut): its MATLAB-bicubic x2 figures, not the two-image mean 33.45
    bicubic_row = next(line for line in proc.stdout.splitlines() if "bicubic" in line)
    assert "31.69" in bicubic_row and "0.9445" in bicubic_row, proc.stdout
    assert "1 of 2 images" in proc.stdout
    rows = read_csv(tmp_path / "runs" / "r1_six_conv_x2_s0" / "csv" / "version_0" / "metrics.csv")
    logged = [float(r["bicubic/psnr_y/demo"]) for r in rows if r.get("bicubic/psnr_y/demo")]
    assert logged == [pytest.approx(31.693843, abs=1e-5)]


@pytest.mark.slow
def test_config_errors_leave_no_empty_run_folder(tmp_path):
    proc = run_here("hdsr-train data.batch_size=abc logger=csv", tmp_path)
    # one line naming the key, exit 2 as for a bad argument, no traceback
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "hdsr-train: error: data.batch_size must be a positive integer, got 'abc'"
    )
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    assert not (tmp_path / "runs").exists(), list((tmp_path / "runs").rglob("*"))
    # a mandatory value left open: the key and an example
    proc = run_here("hdsr-train data=div2k logger=csv", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "hdsr-train: error: data.root is not set: add data.root=/data/DIV2K "
        "(DIV2K_train_HR/ and the rest inside) to the command"
    )
    assert not (tmp_path / "runs").exists(), list((tmp_path / "runs").rglob("*"))
    # a run folder with results in it is kept, whatever the new command got wrong
    kept = tmp_path / "runs" / "hdsrnet_x2_s0" / "checkpoints" / "last.ckpt"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"results")
    proc = run_here("hdsr-train data.patch_size=1 logger=csv", tmp_path)
    assert proc.returncode != 0 and "data.patch_size=1" in proc.stderr
    assert kept.read_bytes() == b"results"
    proc = run_here("hdsr-eval model=bicubic data.scale=2 data.benchmark_root=. tile=abc", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("hdsr-eval: error: tile must be")
    assert not (tmp_path / "runs" / "eval").exists()


@pytest.mark.slow
def test_ctrl_c_during_start_up_is_one_line_and_leaves_no_run_folder(tmp_path):
    """A Ctrl-C while hdsr-train starts (the job's imports) reached Hydra as a
    KeyboardInterrupt: a traceback, and a run folder holding only .hydra and an empty
    train.log."""
    import signal
    import time

    from helpers.commands import start

    proc = start("hdsr-train logger=csv", tmp_path)
    hydra_dir = tmp_path / "runs" / "hdsrnet_x2_s0" / ".hydra"
    deadline = time.monotonic() + 120
    while not hydra_dir.is_dir() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert hydra_dir.is_dir(), proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        "hdsr-train: interrupted (Ctrl-C)"
    ), err[-3000:]
    assert not (tmp_path / "runs").exists(), list((tmp_path / "runs").rglob("*"))


@pytest.mark.parametrize("entry", ["train_main", "eval_main"])
def test_ctrl_c_while_hydra_writes_the_run_folder_is_one_line(entry, tmp_path, monkeypatch):
    """A Ctrl-C that lands while Hydra writes .hydra/ (before the task runs) escaped as a
    KeyboardInterrupt traceback and left the half-written run folder."""
    import os
    import signal

    import hydra.core.utils

    real_save = hydra.core.utils._save_config

    def interrupted(cfg, filename, output_dir):
        real_save(cfg, filename, output_dir)
        if filename == "config.yaml":  # Ctrl-C between Hydra's first and second file
            # with Python's own handler the signal would stop pytest itself: fail instead
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler, (
                "nothing holds back a Ctrl-C while Hydra writes the run folder"
            )
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(hydra.core.utils, "_save_config", interrupted)
    cmd = {
        "train_main": "hdsr-train logger=csv",
        "eval_main": "hdsr-eval model=bicubic data.scale=2 data.benchmark_root=.",
    }[entry]
    proc = run_here(cmd, tmp_path)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == f"{cmd.split()[0]}: interrupted (Ctrl-C)"
    assert not (tmp_path / "runs").exists(), list((tmp_path / "runs").rglob("*"))
