"""The LightningModule: optimizer recipe, validation metrics, seeded training."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from conftest import compose
from hdsr.data.datamodule import SRDataModule
from hdsr.data.pairs import make_pair
from hdsr.imaging import to_uint8_image
from hdsr.metrics import psnr_y
from hdsr.models import HDSRNet
from hdsr.module import SRModule


class Images:
    """A tiny in-memory pair source."""

    def __init__(self, seed: int, n: int = 2, size: int = 24) -> None:
        rng = np.random.default_rng(seed)
        base = rng.integers(0, 256, size=(n, size // 4, size // 4, 3), dtype=np.uint8)
        self.images = [b.repeat(4, 0).repeat(4, 1) for b in base]  # smooth-ish content

    def load(self, scale: int):
        return [make_pair(f"im{i}", im, scale) for i, im in enumerate(self.images)]


def tiny_net(scale: int = 2) -> HDSRNet:
    return HDSRNet(scale, n_feats=8, n_blocks=1, lower_layers=2)


def test_optimizer_follows_the_recipe():
    module = SRModule(tiny_net(), scale=2, lr_step=300_000)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]
    assert isinstance(opt, torch.optim.Adam)
    group = opt.param_groups[0]
    assert group["lr"] == 1e-4 and group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8
    assert sched["interval"] == "step" and sched["scheduler"].step_size == 300_000
    assert sched["scheduler"].gamma == 0.5
    assert group["fused"] and not group["foreach"]  # no trainer attached: fp32 default


@pytest.mark.parametrize(
    ("precision", "clip", "fused"),
    [("32-true", 10, True), ("bf16-mixed", 10, False), ("bf16-mixed", None, True)],
)
def test_fused_adam_unless_lightning_must_clip_mixed_precision(precision, clip, fused):
    """Lightning's AMP plugins refuse to clip a fused optimizer's gradients."""
    module = SRModule(tiny_net(), scale=2)
    module.trainer = L.Trainer(
        accelerator="cpu", precision=precision, gradient_clip_val=clip, logger=False
    )
    group = module.configure_optimizers()["optimizer"].param_groups[0]
    assert bool(group["fused"]) is fused and bool(group["foreach"]) is (not fused)


def test_trainer_config_clips_gradients_by_value_10():
    cfg = compose([])
    assert cfg.trainer.gradient_clip_val == 10
    assert cfg.trainer.gradient_clip_algorithm == "value"
    assert cfg.optim.lr == 1e-4 and cfg.optim.lr_step == 300000


def _fit(tmp_path, seed: int) -> tuple[dict, dict]:
    L.seed_everything(seed)
    dm = SRDataModule(
        2,
        Images(0),
        {"a": Images(1), "b": Images(2, n=1)},
        patch_size=8,
        batch_size=2,
        patches_per_epoch=4,
        seed=seed,
    )
    module = SRModule(tiny_net(), scale=2, lr=1e-3, val_set_names=["a", "b"])
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        gradient_clip_val=10,
        gradient_clip_algorithm="value",
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return {k: v.clone() for k, v in module.state_dict().items()}, metrics


def test_seeded_training_is_reproducible_and_logs_per_set(tmp_path):
    w1, m1 = _fit(tmp_path, seed=7)
    w2, m2 = _fit(tmp_path, seed=7)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=0, atol=0)
    assert m1 == m2
    assert {"val/psnr_y/a", "val/ssim_y/a", "val/psnr_y/b", "val/ssim_y/b"} <= set(m1)
    w3, _ = _fit(tmp_path, seed=8)
    assert any(not torch.equal(w1[k], w3[k]) for k in w1)


def test_validation_scores_the_rounded_uint8_output():
    (pair,) = Images(3, n=1).load(2)
    module = SRModule(tiny_net(), scale=2, val_set_names=["s"])
    module.on_validation_epoch_start()
    lr = torch.from_numpy(pair.lr).permute(2, 0, 1).float()[None]
    batch = {"lr": lr, "hr": torch.from_numpy(pair.hr), "name": pair.name}
    with torch.no_grad():
        module.validation_step(batch, 0)
        sr = to_uint8_image(module(lr)).numpy()
    assert sr.dtype == np.uint8 and sr.shape == pair.hr.shape
    (score,) = module._scores["s"]
    assert score[:2] == (0, pair.name)
    assert score[2] == psnr_y(sr, pair.hr, 2)
