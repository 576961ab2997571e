"""hdsr-eval and hdsr-report on tiny generated data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hdsr.imaging import write_png
from helpers import FIXTURES
from helpers.commands import read_csv, run, run_here
from helpers.datatrees import make_benchmark

pytestmark = pytest.mark.slow

FIXTURE = json.loads((FIXTURES / "matlab_bicubic.json").read_text())


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """Set5 = four scikit-image photos (MATLAB fixture values known); others generated."""
    import skimage.data

    root = tmp_path_factory.mktemp("benchmark")
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        write_png(root / "Set5" / "HR" / f"{name}.png", np.asarray(getattr(skimage.data, name)()))
    make_benchmark(root, "Set14", 2, gray=(1,), size=(40, 44))
    make_benchmark(root, "BSD100", 2, scales=(2,), size=(36, 40))
    make_benchmark(root, "Urban100", 1, size=(48, 48))
    return root


def test_bicubic_model_reproduces_the_matlab_protocol(tmp_path, bench):
    proc = run(
        f"hdsr-eval model=bicubic data.scale=2 data.benchmark_root={bench} logger=csv", tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "runs" / "eval" / "bicubic"
    per_image = read_csv(out / "per_image.csv")
    assert len(per_image) == 4 + 2 + 2 + 1
    for r in per_image:
        if r["set"] == "Set5":
            ref = FIXTURE["images"][r["image"]]["x2"]
            assert float(r["psnr_y"]) == pytest.approx(ref["bicubic_psnr_y"], abs=1e-6)
            assert float(r["ssim_y"]) == pytest.approx(ref["bicubic_ssim_y"], abs=1e-6)
            assert float(r["bicubic_psnr_y"]) == float(r["psnr_y"])
    md = (out / "results.md").read_text()
    assert "| bicubic (ours) | x2 |" in md
    assert "33.66/0.9299" in md and "37.95/0.9604" in md  # the paper's rows beside ours
    summary = read_csv(out / "results.csv")
    assert {r["set"] for r in summary} == {"Set5", "Set14", "B100", "Urban100"}
    assert "bicubic (paper)" in proc.stdout and "HDSRNet (paper)" in proc.stdout


def test_eval_checkpoints_official_and_ours_with_options(tmp_path, bench):
    from helpers.official_reference import RefHDSRNet

    torch.manual_seed(0)
    pt = tmp_path / "HDSRNet_x2.pt"
    torch.save(RefHDSRNet(2).state_dict(), pt)
    train = run(
        "hdsr-train model=ablation/r1_six_conv logger=csv trainer.max_steps=1 "
        "trainer.limit_val_batches=1 data.patches_per_epoch=2 data.batch_size=2 data.patch_size=32",
        tmp_path,
    )
    assert train.returncode == 0, train.stderr[-2000:]
    ours = tmp_path / "runs" / "r1_six_conv_x2_s0" / "checkpoints" / "last.ckpt"
    cmd = (
        f"hdsr-eval 'ckpt=[{pt},{ours}]' data.benchmark_root={bench} 'data.test_sets=[Set14,B100]' "
        "self_ensemble=true tile=16 tile_overlap=8 save_images=true"
    )
    proc = run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "runs" / "eval" / "HDSRNet_x2+r1_six_conv_x2_s0"
    rows = read_csv(out / "per_image.csv")
    assert {r["model"] for r in rows} == {"HDSRNet (official)", "r1_six_conv"}
    assert len(rows) == 2 * (2 + 2)
    gray = [r for r in rows if r["set"] == "Set14" and r["image"] == "img_001"]
    assert gray and all(np.isfinite(float(r["psnr_y"])) for r in gray)
    assert (out / "images" / "r1_six_conv" / "B100" / "img_000_x2.png").is_file()
    md = (out / "results.md").read_text()
    assert "| r1_six_conv (ours) | x2 |" in md and "| HDSRNet (official) (ours) | x2 |" in md
    assert "33.52/0.9170" in md  # published HDSRNet x2 Set14
    # W&B (default logger, offline without a key): one eval run with the tables
    from helpers.commands import wandb_records

    rec = wandb_records(out / "wandb")
    assert rec["run"]["job_type"] == "eval" and rec["exit_code"] == 0
    keys = set().union(*rec["history"])
    assert any(k.startswith("eval/results") for k in keys)


def test_eval_right_after_a_demo_run_scores_the_demo_images(tmp_path):
    """No benchmark folder: hdsr-eval scores the images hdsr-train validated on, the same way."""
    tiny = "model.net.n_feats=8 model.net.n_blocks=1 model.net.lower_layers=2"
    small = "data.batch_size=2 data.patch_size=32 data.patches_per_epoch=4"
    proc = run(f"hdsr-train trainer.max_steps=2 logger=csv {small} {tiny}", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_csv(tmp_path / "runs" / "hdsrnet_x2_s0" / "csv" / "version_0" / "metrics.csv")
    validated = [r for r in rows if r.get("val/psnr_y/demo")][-1]
    proc = run("hdsr-eval ckpt=runs/hdsrnet_x2_s0/checkpoints/last.ckpt", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "scoring the embedded demo validation images (astronaut, chelsea)" in proc.stdout
    (row,) = read_csv(tmp_path / "runs" / "eval" / "hdsrnet_x2_s0" / "results.csv")[:1]
    assert row["set"] == "demo" and int(row["images"]) == 2, row
    assert float(row["psnr_y"]) == pytest.approx(float(validated["val/psnr_y/demo"]), abs=1e-4)
    assert float(row["ssim_y"]) == pytest.approx(float(validated["val/ssim_y/demo"]), abs=1e-5)


def test_eval_demo_images_are_the_training_validation_images():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from hdsr.training.config import CONFIG_MODULE
    from helpers.configs import compose

    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        eval_cfg = hydra_compose("eval")
    assert list(eval_cfg.data.demo) == list(compose([]).data.val_sets.demo.names)


def test_eval_errors_are_clear(tmp_path, bench):
    proc = run_here(f"hdsr-eval model=bicubic data.benchmark_root={bench} logger=csv", tmp_path)
    assert proc.returncode != 0 and "model=bicubic needs data.scale" in proc.stderr
    proc = run_here(f"hdsr-eval data.benchmark_root={bench} logger=csv", tmp_path)
    assert proc.returncode != 0 and "nothing to evaluate" in proc.stderr
    proc = run_here(f"hdsr-eval ckpt={tmp_path}/none.pt data.benchmark_root={bench}", tmp_path)
    assert proc.returncode == 2 and "none.pt does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr  # one line, as for a bad value
    proc = run_here(f"hdsr-eval ckpt={tmp_path} data.benchmark_root={bench}", tmp_path)
    assert proc.returncode == 2 and f"{tmp_path} is a directory" in proc.stderr
    for bad, says in (
        ("tile=abc", "tile must be"),
        ("tile_overlap=-1", "tile_overlap must"),
        ("max_memory=lots", "max_memory: memory size must be"),
        ("weights=best", "weights must be ema or raw"),
    ):
        cmd = f"hdsr-eval model=bicubic data.scale=2 data.benchmark_root={bench} {bad}"
        proc = run_here(cmd, tmp_path)
        assert proc.returncode != 0 and says in proc.stderr, proc.stderr[-2000:]


def test_report_builds_table_and_plot(tmp_path):
    cmd = (
        "hdsr-train -m model=ablation/r1_six_conv,ablation/r9_hdsrnet sweep_name=t1 logger=csv "
        "trainer.max_steps=4 trainer.limit_val_batches=1 data.patches_per_epoch=4 "
        "data.batch_size=2 data.patch_size=32"
    )
    assert run(cmd, tmp_path).returncode == 0
    sweep = tmp_path / "runs" / "t1"
    proc = run(f"hdsr-report {sweep} --macs-input 32x32", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (sweep / "ablation.md").read_text()
    assert "| r1_six_conv | x2 |" in md and "| r9_hdsrnet | x2 |" in md
    assert "25.13/0.7525" in md and "26.01/0.7827" in md  # Table I beside each row
    assert "1,818,496" in md  # r9 = HDSRNet x2 parameters
    with open(sweep / "ablation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(float(r["psnr_y"]) > 0 and int(r["macs"]) > 0 for r in rows)
    png = sweep / "val_psnr.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = run(f"hdsr-report {tmp_path}", tmp_path)
    assert bad.returncode == 2 and "holds no runs" in bad.stderr


def _eval_cfg(overrides: list[str]):
    from hydra import compose, initialize_config_module

    import hdsr.cli.evaluate  # noqa: F401 - registers the run-name resolver

    with initialize_config_module(config_module="hdsr.conf", version_base="1.3"):
        return compose(config_name="eval", overrides=overrides)


def test_eval_keeps_checkpoints_of_one_variant_apart(tmp_path, bench):
    """Two runs of one variant (same model name) are two rows, each over its own images."""
    from hdsr.evaluation.run import run_eval

    old = FIXTURES / "hdsrnet_tiny_x2_v0.1.ckpt"
    ckpts = []
    for k, run_name in enumerate(("a", "b")):
        ckpt = torch.load(old, weights_only=True)
        sd = ckpt["state_dict"]
        sd["net.tail.conv.weight"] = sd["net.tail.conv.weight"] * (1 + 0.05 * k)
        path = tmp_path / run_name / "last.ckpt"
        path.parent.mkdir()
        torch.save(ckpt, path)
        ckpts.append(path)
    base = [f"data.benchmark_root={bench}", "data.test_sets=[Set14]", "logger=csv"]

    def measured(paths, out):
        cfg = _eval_cfg([f"ckpt=[{','.join(map(str, paths))}]", f"paths.run_dir={out}", *base])
        return [r for r in run_eval(cfg) if r["source"] == "measured" and r["method"] != "bicubic"]

    alone = [measured([p], tmp_path / f"alone{k}")[0] for k, p in enumerate(ckpts)]
    assert alone[0]["psnr_y"] != alone[1]["psnr_y"]
    both = measured(ckpts, tmp_path / "both")
    assert [r["method"] for r in both] == [f"hdsrnet ({ckpts[0]})", f"hdsrnet ({ckpts[1]})"]
    assert [r["images"] for r in both] == [2, 2]
    assert [r["psnr_y"] for r in both] == [r["psnr_y"] for r in alone]
    assert [r["ssim_y"] for r in both] == [r["ssim_y"] for r in alone]
    # runs in the usual layout are told apart by their run names
    from hdsr.evaluation.scoring import distinct_names
    from hdsr.inference.loading import LoadedModel

    models = [
        LoadedModel(None, 2, "hdsrnet", f"runs/{r}/checkpoints/last.ckpt") for r in ("x", "y")
    ]
    distinct_names(models)
    assert [m.name for m in models] == ["hdsrnet (x)", "hdsrnet (y)"]
    with pytest.raises(ValueError, match="given twice"):
        measured([ckpts[0], ckpts[0]], tmp_path / "twice")


#: per_image.csv of hdsr 0.1.0 for the tiny v0.1 checkpoint (see the test below)
V010_PER_IMAGE = """\
model,scale,set,image,psnr_y,ssim_y,bicubic_psnr_y,bicubic_ssim_y
hdsrnet,2,Set5,astronaut,8.278058784021,0.0249316085753801,31.693842683764764,0.9444758284522888
hdsrnet,2,Set5,chelsea,13.321820655993937,0.09810088728384404,35.215884092546204,0.9146310386225711
hdsrnet,2,Set14,img_000,15.938523267969147,0.13285076205810809,41.54208122537661,0.9414051023310475
hdsrnet,2,Set14,img_001,15.318277226906753,0.3450123162382232,36.77925615299291,0.8948244718739593
"""


def test_old_checkpoint_scores_exactly_as_hdsr_0_1_0(tmp_path):
    """The v0.1 tiny checkpoint on Set5 = astronaut, chelsea and a generated Set14 (one
    gray image): per_image.csv equal, character for character, to hdsr 0.1.0's."""
    import skimage.data

    root = tmp_path / "benchmark"
    for name in ("astronaut", "chelsea"):
        write_png(root / "Set5" / "HR" / f"{name}.png", np.asarray(getattr(skimage.data, name)()))
    make_benchmark(root, "Set14", 2, gray=(1,), size=(40, 44))
    ckpt = FIXTURES / "hdsrnet_tiny_x2_v0.1.ckpt"
    sets = "'data.test_sets=[Set5,Set14]'"
    proc = run(f"hdsr-eval ckpt={ckpt} data.benchmark_root={root} {sets} logger=csv", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "runs" / "eval" / "hdsrnet_tiny_x2_v0.1"
    with open(out / "per_image.csv", newline="") as f:  # csv writes \r\n line ends
        assert f.read() == V010_PER_IMAGE.replace("\n", "\r\n")


def test_eval_under_ddp_scores_each_image_once_as_one_process_does(tmp_path):
    """hdsr-eval trainer=ddp_sim: 2 ranks share the images (sets of 3 and 1: one rank
    scores a repeat) and write per_image.csv, the results and the SR images equal byte
    for byte to one process's; the table is printed once, by rank 0."""
    root = tmp_path / "bench"
    make_benchmark(root, "Set5", 3, size=(40, 44))
    make_benchmark(root, "Set14", 1, gray=(0,), size=(36, 40))
    ckpt = FIXTURES / "hdsrnet_tiny_x2_v0.1.ckpt"
    cmd = (
        f"hdsr-eval ckpt={ckpt} data.benchmark_root={root} 'data.test_sets=[Set5,Set14]' "
        "logger=csv save_images=true"
    )
    one = run(f"{cmd} paths.root=one", tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    ddp = run(f"{cmd} paths.root=ddp trainer=ddp_sim", tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    out = {k: tmp_path / k / "eval" / "hdsrnet_tiny_x2_v0.1" for k in ("one", "ddp")}
    assert (out["ddp"] / "train_ddp_process_1.log").is_file()  # rank 1 ran this job
    assert ddp.stdout.count("PSNR/SSIM (Y, shave = scale)") == 1
    files = {
        k: sorted(p.relative_to(d) for p in d.rglob("*") if p.is_file() and p.suffix != ".log")
        for k, d in out.items()
    }
    results = [Path(f) for f in ("per_image.csv", "results.csv", "results.md")]
    images = [Path("images/hdsrnet/Set5") / f"img_00{k}_x2.png" for k in range(3)]
    images.append(Path("images/hdsrnet/Set14/img_000_x2.png"))
    assert set(results + images) <= set(files["one"])
    assert [f for f in files["ddp"] if ".hydra" not in f.parts] == [
        f for f in files["one"] if ".hydra" not in f.parts
    ]
    for f in results + images:
        assert (out["ddp"] / f).read_bytes() == (out["one"] / f).read_bytes(), f
    assert len(read_csv(out["ddp"] / "per_image.csv")) == 4


def test_eval_trainer_config_places_the_scoring_on_device(monkeypatch):
    """device=auto: the trainer config decides (default: CUDA when there is a GPU, else
    the CPU; trainer=ddp: every GPU); cpu/cuda/cuda:N: one process there."""
    from hdsr.evaluation.run import trainer_config

    base = ["model=bicubic", "data.scale=2", "data.benchmark_root=."]
    for cuda, accelerator in ((False, "cpu"), (True, "cuda")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        conf = trainer_config(_eval_cfg(base))
        assert (conf["accelerator"], conf["devices"], conf["strategy"]) == (accelerator, 1, "auto")
    ddp = trainer_config(_eval_cfg([*base, "trainer=ddp"]))
    assert (ddp["accelerator"], ddp["devices"]) == ("gpu", -1)
    assert ddp["strategy"]["_target_"].endswith("DDPStrategy")
    assert ddp["benchmark"] is None  # no cuDNN autotuning per image size
    sim = trainer_config(_eval_cfg([*base, "trainer=ddp_sim"]))
    assert (sim["accelerator"], sim["devices"]) == ("cpu", 2)
    for device, accelerator, devices in (("cpu", "cpu", 1), ("cuda", "cuda", 1)) + (
        ("cuda:1", "cuda", [1]),
    ):
        conf = trainer_config(_eval_cfg([*base, f"device={device}"]))
        assert (conf["accelerator"], conf["devices"]) == (accelerator, devices)
    with pytest.raises(ValueError, match="leave device=auto"):
        trainer_config(_eval_cfg([*base, "trainer=ddp_sim", "device=cpu"]))
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        trainer_config(_eval_cfg([*base, "device=gpu0"]))
