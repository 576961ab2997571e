"""The LightningModule: optimizer recipe, validation metrics, seeded training."""

from __future__ import annotations

from functools import partial

import lightning as L
import numpy as np
import pytest
import torch

from hdsr.data.datamodule import SRDataModule
from hdsr.data.pairs import make_pair
from hdsr.imaging import to_uint8_image
from hdsr.metrics import psnr_y, ssim_y
from hdsr.models import HDSRNet
from hdsr.training.module import SRModule
from helpers import FIXTURES
from helpers.configs import compose


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
    module = SRModule(tiny_net(), scale=2)  # the defaults: the paper's Adam and StepLR
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
    assert cfg.optimizer.lr == 1e-4 and cfg.scheduler.step_size == 300000


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
    adam = partial(torch.optim.Adam, lr=1e-3)
    module = SRModule(tiny_net(), scale=2, optimizer=adam, val_set_names=["a", "b"])
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
    batch = {"lr": lr, "hr": torch.from_numpy(pair.hr), "name": pair.name, "index": 0}
    with torch.no_grad():
        module.validation_step(batch, 0)
        sr = to_uint8_image(module(lr)).numpy()
    assert sr.dtype == np.uint8 and sr.shape == pair.hr.shape
    metrics = module.val_metrics[0]
    assert metrics["psnr_y"].per_image() == [(0, psnr_y(sr, pair.hr, 2))]
    assert metrics["ssim_y"].per_image() == [(0, ssim_y(sr, pair.hr, 2))]


V01_CKPT = FIXTURES / "hdsrnet_tiny_x2_v0.1.ckpt"


def test_metrics_add_no_checkpoint_keys_and_old_checkpoints_load():
    """The per-set PSNRY/SSIMY are child modules (Lightning moves them) whose states are
    not persistent: the state_dict is the network's, as in checkpoints of hdsr 0.1."""
    from hdsr.models.registry import build_network

    ckpt = torch.load(V01_CKPT, weights_only=True)
    net = build_network(ckpt["hyper_parameters"]["net_config"], str(V01_CKPT), "net_config")
    module = SRModule(net, scale=2, val_set_names=["a", "b"], test_set_names=["c"])
    assert len(module.val_metrics) == 2 and len(module.test_metrics) == 1
    assert list(module.state_dict()) == list(ckpt["state_dict"])
    module.load_state_dict(ckpt["state_dict"], strict=True)
    # the test step's inference options and image folder are not saved with the weights
    module = SRModule(net, scale=2, inference={"tile": 8}, image_dir="x")
    assert not {"inference", "image_dir"} & set(module.hparams)


def _run(module: SRModule, stage: str, tmp_path) -> dict:
    dm = SRDataModule(2, Images(0), {"a": Images(1, n=3)}, test_sets={"a": Images(1, n=3)})
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    getattr(trainer, stage)(module, datamodule=dm, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_test_step_with_default_inference_scores_what_validation_scores(tmp_path):
    torch.manual_seed(0)
    module = SRModule(tiny_net(), scale=2, val_set_names=["a"], test_set_names=["a"])
    val = _run(module, "validate", tmp_path)
    val_images = module.image_scores
    test = _run(module, "test", tmp_path)
    assert val_images["a"] and module.image_scores == val_images
    assert [s[:2] for s in val_images["a"]] == [(0, "im0"), (1, "im1"), (2, "im2")]
    assert module.scored_images == {"a": ["im0", "im1", "im2"]}
    assert {k.replace("test/", "val/"): v for k, v in test.items()} == val
    assert set(val) == {"val/psnr_y/a", "val/ssim_y/a"}


def test_test_step_runs_upscale_with_the_inference_options_and_writes_images(tmp_path):
    """self_ensemble, tile, overlap and precision are those of hdsr.inference.forward.upscale
    (hdsr-upscale's function); each SR image is written as <set>/<name>_x<s>.png."""
    from hdsr.imaging import read_image
    from hdsr.inference.forward import upscale
    from hdsr.metrics import sr_like_hr

    torch.manual_seed(0)
    net = tiny_net().eval()
    opts = {"tile": 4, "tile_overlap": 2, "self_ensemble": True, "precision": "bf16"}
    module = SRModule(
        net, scale=2, test_set_names=["a"], inference=opts, image_dir=tmp_path / "img"
    )
    _run(module, "test", tmp_path)
    pairs = Images(1, n=3).load(2)
    for k, ((index, name, psnr, _), pair) in enumerate(
        zip(module.image_scores["a"], pairs, strict=True)
    ):
        assert index == k
        lr = torch.from_numpy(pair.lr).permute(2, 0, 1).float()[None]
        sr = upscale(net, lr, 2, tile=4, overlap=2, self_ensemble=True, precision="bf16")
        sr = sr_like_hr(to_uint8_image(sr).numpy(), pair.hr)
        assert (name, psnr) == (pair.name, psnr_y(sr, pair.hr, 2))
        assert np.array_equal(read_image(tmp_path / "img" / "a" / f"{name}_x2.png"), sr)
    with pytest.raises(ValueError, match="unknown inference options"):
        SRModule(net, scale=2, inference={"tiles": 4})
    with pytest.raises(ValueError, match="precision must be one of"):
        SRModule(net, scale=2, inference={"precision": "fp8"})
