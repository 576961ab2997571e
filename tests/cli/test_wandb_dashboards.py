"""W&B dashboards that compare runs: metric summaries, model artifacts, the per-image table
(read back from the offline run files, as a user's `wandb sync` would upload them)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from helpers.commands import read_csv, run, wandb_records

TINY = (
    "trainer.log_every_n_steps=1 data.patches_per_epoch=4 data.batch_size=2 data.patch_size=32 "
    "model.net.n_feats=8 model.net.n_blocks=1 model.net.lower_layers=2"
)
COLUMNS = ["set", "image", "psnr_y", "ssim_y", "bicubic_psnr_y", "delta_psnr_y"]
#: MATLAB-bicubic PSNR-Y of the demo images at x2 (the fixture values other tests use)
BICUBIC = {"astronaut": 31.693843, "chelsea": 35.215884}


def test_define_metrics_best_scores_and_lowest_loss_against_the_global_step():
    from hdsr.training.loggers import define_metrics

    calls = []
    fake_run = SimpleNamespace(define_metric=lambda name, **kw: calls.append((name, kw)))
    define_metrics(fake_run, ["Set5", "Urban100"])
    step = {"step_metric": "trainer/global_step"}
    assert calls == [
        ("val/psnr_y/Set5", {**step, "summary": "max"}),
        ("val/ssim_y/Set5", {**step, "summary": "max"}),
        ("val/psnr_y_raw/Set5", {**step, "summary": "max"}),
        ("val/psnr_y/Urban100", {**step, "summary": "max"}),
        ("val/ssim_y/Urban100", {**step, "summary": "max"}),
        ("val/psnr_y_raw/Urban100", {**step, "summary": "max"}),
        ("train/loss", {**step, "summary": "min"}),
    ]


def test_image_rows_pair_each_image_with_its_bicubic_score():
    from hdsr.evaluation.tables import image_rows

    scores = {"S": [(0, "a", 30.0, 0.9), (1, "b", 25.5, 0.8)], "T": [(0, "c", 20.0, 0.5)]}
    bicubic = {"S": {"b": (26.0, 0.7), "a": (28.0, 0.85)}, "T": {"c": (19.0, 0.4)}}
    rows = image_rows(scores, bicubic)
    assert [list(r) for r in rows] == [COLUMNS] * 3
    assert [(r["set"], r["image"], r["delta_psnr_y"]) for r in rows] == [
        ("S", "a", 2.0),
        ("S", "b", -0.5),
        ("T", "c", 1.0),
    ]
    assert rows[1]["bicubic_psnr_y"] == 26.0 and rows[1]["ssim_y"] == 0.8


def _metric_definitions(rec: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for m in rec["metrics"]:
        out.setdefault(m.get("name") or m.get("glob_name"), []).append(m)
    return out


@pytest.mark.slow
def test_summaries_model_artifacts_and_per_image_table_of_a_resumed_run(tmp_path):
    env = {"WANDB_DATA_DIR": str(tmp_path / "wandb-data")}  # offline artifact staging
    first = run(f"hdsr-train trainer.max_steps=2 {TINY}", tmp_path, **env)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run(
        f"hdsr-train trainer.max_steps=4 logger.wandb.log_model=true {TINY}", tmp_path, **env
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_dir = tmp_path / "runs" / "hdsrnet_x2_s0"
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2  # one per start, both the same W&B run
    recs = [wandb_records(d) for d in offline]

    # define_metric: once in each start, the fresh one and the resumed one
    for rec in recs:
        defs = _metric_definitions(rec)
        assert len(defs["trainer/global_step"]) == 1
        for name, summary in (
            ("val/psnr_y/demo", "max"),
            ("val/ssim_y/demo", "max"),
            ("train/loss", "min"),
        ):
            (d,) = defs[name]
            assert d["summary"] == {summary: True}
            assert d["step_metric"] == "trainer/global_step"
        assert all("trainer/global_step" in h for h in rec["history"] if "train/loss" in h)
    # the summary holds the best validation score of the start, not its last one
    rec = recs[1]
    psnr = [h["val/psnr_y/demo"] for h in rec["history"] if "val/psnr_y/demo" in h]
    losses = [h["train/loss"] for h in rec["history"] if "train/loss" in h]
    assert psnr and rec["summary"]["val/psnr_y/demo"] == {"max": max(psnr)}
    assert rec["summary"]["train/loss"] == {"min": min(losses)}

    # log_model: off by default (the first start), best and last with our metadata after
    assert [a for a in recs[0]["artifacts"] if a["type"] == "model"] == []
    models = {}
    for a in rec["artifacts"]:
        if a["type"] == "model":
            assert a["name"] == f"model-{(run_dir / 'wandb_run_id').read_text().strip()}"
            (alias,) = set(a["aliases"]) & {"best", "last"}
            assert [c["path"] for c in a["manifest"]["contents"]] == ["model.ckpt"]
            models[alias] = json.loads(a["metadata"])
    assert set(models) == {"best", "last"}
    val = [  # both starts' validations (best.ckpt is chosen over the whole run)
        (int(r["step"]), float(r["val/psnr_y/demo"]))
        for version in sorted((run_dir / "csv").iterdir())
        for r in read_csv(version / "metrics.csv")
        if r.get("val/psnr_y/demo")
    ]
    assert len(val) == 2
    for alias, meta in models.items():
        ckpt = torch.load(run_dir / "checkpoints" / f"{alias}.ckpt", weights_only=True)
        assert meta["variant"] == "hdsrnet" and meta["scale"] == 2
        assert meta["monitor"] == "val/psnr_y/demo" and meta["mode"] == "max"
        assert meta["global_step"] == ckpt["global_step"]
        assert meta["original_filename"] == f"{alias}.ckpt"
    assert models["last"]["global_step"] == 4
    assert models["best"]["score"] == pytest.approx(max(s for _, s in val), abs=1e-5)
    assert models["last"]["score"] == pytest.approx(val[-1][1], abs=1e-5)

    # the per-image table of the final validation: one row per image of the demo set
    (item,) = [h for h in rec["history"] if "final/per_image.path" in h]
    table = json.loads((offline[1] / "files" / item["final/per_image.path"]).read_text())
    assert table["columns"] == COLUMNS
    rows = [dict(zip(COLUMNS, row, strict=True)) for row in table["data"]]
    assert [(r["set"], r["image"]) for r in rows] == [("demo", "astronaut"), ("demo", "chelsea")]
    for r in rows:
        assert r["bicubic_psnr_y"] == pytest.approx(BICUBIC[r["image"]], abs=1e-5)
        assert r["delta_psnr_y"] == pytest.approx(r["psnr_y"] - r["bicubic_psnr_y"], abs=1e-9)
        assert 0 < r["ssim_y"] <= 1 and math.isfinite(r["psnr_y"])
    # its images are the ones behind the final scores
    mean = sum(r["psnr_y"] for r in rows) / len(rows)
    assert mean == pytest.approx(rec["summary"]["final/hdsrnet/psnr_y/demo"], abs=1e-5)
    assert mean == pytest.approx(val[-1][1], abs=1e-5)
