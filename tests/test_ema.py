"""EMA of the weights (``ema.decay``): the update rule, what validation scores, the two
weight sets in checkpoints and who reads which."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from hdsr.data.datamodule import SRDataModule
from hdsr.inference.loading import load_model
from hdsr.training.ema import EMA, check_ema
from hdsr.training.module import SRModule
from hdsr.training.run import build_callbacks
from helpers.configs import compose
from test_module import Images, tiny_net


class Recorder(L.Callback):
    """The trained weights after every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.steps.append({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})


def _fit(tmp_path, ema: EMA, steps: int = 5, val_every: int | None = None):
    torch.manual_seed(0)
    dm = SRDataModule(2, Images(0), {"a": Images(1)}, patch_size=8, batch_size=2, seed=0)
    module = SRModule(tiny_net(), scale=2, val_set_names=["a"])
    recorder = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        max_steps=steps,
        val_check_interval=val_every or steps,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[ema, recorder],
    )
    trainer.fit(module, datamodule=dm)
    return trainer, module, recorder


def test_update_rule_against_a_direct_computation(tmp_path):
    """From ``start_step`` (0-based) on: the first update copies the weights, then
    ``ema = decay * ema + (1 - decay) * w`` after each step; buffers too."""
    decay, start = 0.6, 1
    ema = EMA(decay, start_step=start)
    _, module, rec = _fit(tmp_path, ema, steps=5)
    want = dict(rec.steps[start])
    for w in rec.steps[start + 1 :]:
        want = {k: decay * want[k] + (1 - decay) * w[k] for k in want}
    got = ema._average_model.module.net.state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7)
    assert int(ema._average_model.n_averaged) == 5 - start
    # the model keeps the trained weights when fit ends, the average differs from them
    trained = module.net.state_dict()
    assert all(torch.equal(trained[k], rec.steps[-1][k]) for k in trained)
    assert any(not torch.allclose(got[k], trained[k]) for k in got if got[k].is_floating_point())


def test_validation_scores_the_average_and_logs_the_trained_psnr(tmp_path):
    ema = EMA(0.5, raw_metric_set="a")
    trainer, module, _ = _fit(tmp_path, ema, steps=4, val_every=4)
    metrics = trainer.callback_metrics
    assert {"val/psnr_y/a", "val/ssim_y/a", "val/psnr_y_raw/a"} <= set(metrics)
    avg, raw = ema._average_model.module, module  # after validation: trained in the model

    def psnr(m: SRModule) -> float:
        validate = L.Trainer(
            accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
        )
        m = SRModule(m.net, scale=2, val_set_names=["a"])
        dm = SRDataModule(2, Images(0), {"a": Images(1)}, patch_size=8, batch_size=2)
        return float(validate.validate(m, datamodule=dm, verbose=False)[0]["val/psnr_y/a"])

    assert float(metrics["val/psnr_y/a"]) == pytest.approx(psnr(avg), abs=1e-9)
    assert float(metrics["val/psnr_y_raw/a"]) == pytest.approx(psnr(raw), abs=1e-9)
    assert float(metrics["val/psnr_y/a"]) != float(metrics["val/psnr_y_raw/a"])


@pytest.mark.parametrize(
    ("decay", "start", "says"),
    [
        (-0.5, 0, "ema.decay"),
        (0, 0, "ema.decay"),
        (1, 0, "ema.decay"),
        (1.5, 0, "ema.decay"),
        ("0.9", 0, "ema.decay"),
        (True, 0, "ema.decay"),
        (0.9, -1, "ema.start_step"),
        (0.9, 1.5, "ema.start_step"),
    ],
)
def test_bad_options_name_the_key(decay, start, says):
    with pytest.raises(ValueError, match=says):
        check_ema(decay, start)


def test_bad_options_stop_hdsr_train_before_any_work():
    from hdsr.errors import ConfigError
    from hdsr.training.config import check_config

    with pytest.raises(ConfigError, match=r"ema.decay must be .* got 1.0"):
        check_config(compose(["ema.decay=1.0"]))
    check_config(compose(["ema.decay=0.999", "ema.start_step=100"]))


def test_a_start_step_training_never_reaches_is_refused():
    """An average first updated at or after the last step would hold the initial weights
    for validation, best.ckpt, the final table and every reader."""
    from hdsr.errors import ConfigError
    from hdsr.training.config import check_config

    for start in (5, 9):
        with pytest.raises(ConfigError, match=rf"ema.start_step={start} .*trainer.max_steps=5"):
            check_config(
                compose(["ema.decay=0.9", f"ema.start_step={start}", "trainer.max_steps=5"])
            )
    check_config(compose(["ema.decay=0.9", "ema.start_step=4", "trainer.max_steps=5"]))
    check_config(compose(["ema.start_step=9", "trainer.max_steps=5"]))  # EMA off: unused
    check_config(compose(["ema.decay=0.9", "ema.start_step=9", "trainer.max_steps=-1"]))


def test_validation_before_the_first_update_scores_the_trained_weights(tmp_path):
    """Before ``start_step`` the average holds the initial weights: it is not swapped in
    (it was, and validation scored the untrained network)."""
    ema = EMA(0.5, start_step=10, raw_metric_set="a")
    trainer, module, rec = _fit(tmp_path, ema, steps=4, val_every=4)
    assert int(ema._average_model.n_averaged) == 0
    trained = module.net.state_dict()
    assert all(torch.equal(trained[k], rec.steps[-1][k]) for k in trained)
    validate = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    dm = SRDataModule(2, Images(0), {"a": Images(1)}, patch_size=8, batch_size=2)
    fresh = SRModule(module.net, scale=2, val_set_names=["a"])
    want = validate.validate(fresh, datamodule=dm, verbose=False)[0]["val/psnr_y/a"]
    assert float(trainer.callback_metrics["val/psnr_y/a"]) == pytest.approx(want, abs=1e-9)
    assert "val/psnr_y_raw/a" not in trainer.callback_metrics  # it would be the same


def test_the_callback_is_there_only_with_a_decay(tmp_path):
    def emas(overrides):
        cfg = compose([f"paths.run_dir={tmp_path}", *overrides])
        return [c for c in build_callbacks(cfg, True, True) if isinstance(c, EMA)]

    assert emas([]) == []  # the paper's recipe: off
    (ema,) = emas(["ema.decay=0.99", "ema.start_step=7"])
    assert ema.decay == 0.99 and ema.update_starting_at_step == 7
    assert ema.raw_metric_set == "demo"  # the first validation set (data=demo)
    (ema,) = emas(["ema.decay=0.9", "data=div2k", "data.val_sets=[Set14,Set5]"])
    assert ema.raw_metric_set == "Set14"


def _short_trainer(tmp_path, steps: int, callbacks: list) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=steps,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )


def _checkpoint(tmp_path, ema: bool, start_step: int = 0):
    """An hdsr-train-style checkpoint written by a short fit (with or without EMA)."""
    torch.manual_seed(0)
    dm = SRDataModule(2, Images(0), {"a": Images(1)}, patch_size=8, batch_size=2, seed=0)
    net_config = {"_target_": "hdsr.models.HDSRNet", "scale": 2, "n_feats": 8}
    net_config.update(n_blocks=1, lower_layers=2)
    module = SRModule(tiny_net(), scale=2, val_set_names=["a"], net_config=net_config)
    trainer = _short_trainer(tmp_path, 3, [EMA(0.5, start_step=start_step)] if ema else [])
    trainer.fit(module, datamodule=dm)
    path = tmp_path / ("ema.ckpt" if ema else "plain.ckpt")
    trainer.save_checkpoint(path)
    return path, module


def test_readers_take_the_average_by_default_and_the_trained_weights_on_request(tmp_path):
    path, module = _checkpoint(tmp_path, ema=True)
    ckpt = torch.load(path, weights_only=True)
    assert "current_model_state" in ckpt and "averaging_state" in ckpt
    avg, raw = load_model(path).net.state_dict(), load_model(path, weights="raw").net.state_dict()
    trained = module.net.state_dict()
    assert all(torch.equal(raw[k], trained[k]) for k in trained)
    assert any(not torch.equal(avg[k], raw[k]) for k in avg)
    with pytest.raises(ValueError, match="weights must be one of"):
        load_model(path, weights="best")


def test_a_checkpoint_without_ema_loads_either_way(tmp_path):
    path, module = _checkpoint(tmp_path, ema=False)
    trained = module.net.state_dict()
    for weights in ("ema", "raw"):
        got = load_model(path, weights=weights).net.state_dict()
        assert all(torch.equal(got[k], trained[k]) for k in trained)


def test_hdsr_upscale_weights_option(tmp_path):
    import numpy as np
    from PIL import Image

    from hdsr.cli.upscale import main
    from hdsr.inference.forward import upscale

    path, _ = _checkpoint(tmp_path, ema=True)
    img = tmp_path / "p.png"
    rgb = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(img)
    outs = {}
    for weights in ("ema", "raw"):
        out = tmp_path / weights
        assert main([str(img), "-o", str(out), "--ckpt", str(path), "--weights", weights]) == 0
        outs[weights] = np.asarray(Image.open(out / "p_x2.png"))
        lr = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        sr = upscale(load_model(path, weights=weights).net, lr, 2)[0]
        want = sr.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(outs[weights], want)
    assert not np.array_equal(outs["ema"], outs["raw"])


def test_an_average_never_updated_is_never_loaded(tmp_path, caplog):
    """A checkpoint of a run stopped before ``ema.start_step`` (written by an earlier
    version, which did not refuse the setting): its ``state_dict`` holds the initial
    weights. Every reader takes the trained weights instead, and says so."""
    path, module = _checkpoint(tmp_path, ema=True, start_step=50)
    ckpt = torch.load(path, weights_only=True)
    assert int(ckpt["averaging_state"]["n_averaged"]) == 0
    trained = module.net.state_dict()
    with caplog.at_level("WARNING"):
        loaded = load_model(path)
    assert loaded.weights == "trained"
    assert "EMA average was never updated" in caplog.text and str(path) in caplog.text
    got = loaded.net.state_dict()
    assert all(torch.equal(got[k], trained[k]) for k in trained)
    with pytest.warns(UserWarning, match="never updated"):
        again = SRModule.load_from_checkpoint(path)
    assert all(torch.equal(again.net.state_dict()[k], trained[k]) for k in trained)
    # an updated average is what the default loads, and says it is the average
    path, _ = _checkpoint(tmp_path / "b", ema=True)
    assert load_model(path).weights == "ema"
    assert load_model(path, weights="raw").weights == "trained"


def test_resuming_an_ema_run_with_ema_off_goes_on_from_the_trained_weights(tmp_path, caplog):
    """The checkpoint's ``state_dict`` is the average: without the EMA callback Lightning
    would resume from it and the trained weights would be lost for good."""
    path, module = _checkpoint(tmp_path, ema=True)
    trained = {k: v.clone() for k, v in module.net.state_dict().items()}

    class Start(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.weights = {k: v.clone() for k, v in pl_module.net.state_dict().items()}

    start = Start()
    dm = SRDataModule(2, Images(0), {"a": Images(1)}, patch_size=8, batch_size=2, seed=0)
    again = SRModule(tiny_net(), scale=2, val_set_names=["a"])
    trainer = _short_trainer(tmp_path, 4, [start])
    with caplog.at_level("WARNING"):
        trainer.fit(again, datamodule=dm, ckpt_path=path, weights_only=True)
    assert all(torch.equal(start.weights[k], trained[k]) for k in trained)
    assert "training goes on from its trained weights" in caplog.text
    assert trainer.global_step == 4
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    after = torch.load(tmp_path / "after.ckpt", weights_only=True)
    assert "current_model_state" not in after  # one set now: the trained weights
