"""Checkpoints and run-folder configs are data: loading them never runs code or builds
anything but hdsr's own networks (payloads that would write a marker file)."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import torch

from hdsr.errors import UntrustedConfigError
from hdsr.imaging import write_png
from hdsr.inference.loading import load_model
from hdsr.models.registry import build_network
from helpers import FIXTURES

DATA = FIXTURES
#: a checkpoint written by hdsr-train 0.1.0 (main at 8b500c9): n_feats=8, n_blocks=1,
#: lower_layers=2, x2, 2 steps on data=demo
OLD_CKPT = DATA / "hdsrnet_tiny_x2_v0.1.ckpt"


class _Payload:
    """Unpickling this calls ``func(*args)``: what a hostile checkpoint would do."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _old_hparams() -> dict:
    return torch.load(OLD_CKPT, weights_only=True)


def test_old_checkpoint_loads_as_data_with_the_same_network():
    model = load_model(OLD_CKPT)
    assert (model.scale, model.name) == (2, "hdsrnet")
    assert sum(p.numel() for p in model.net.parameters()) == 7072
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 12, 10, generator=g) * 255
    with torch.no_grad():
        y = model.net(x)
    # figures of the same file loaded by 0.1.0 (torch.load + hydra.utils.instantiate)
    assert y.shape == (1, 3, 24, 20)
    assert float(y.double().mean()) == pytest.approx(140.3852777083715, abs=1e-3)
    assert y[0, :, 0, 0].tolist() == pytest.approx([202.35985, 159.49652, 78.62166], abs=1e-3)


def test_pickle_payload_in_a_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": _Payload(builtins.open, str(marker), "w")}}, evil)
    with pytest.raises(ValueError, match="refused") as err:
        load_model(evil)
    assert str(evil) in str(err.value)
    assert not marker.exists()


def test_upscale_refuses_a_pickle_payload(tmp_path, capsys):
    from hdsr.cli.upscale import main

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save(_Payload(builtins.open, str(marker), "w"), evil)
    write_png(tmp_path / "in" / "a.png", np.full((8, 8, 3), 100, np.uint8))
    code = main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(evil)])
    assert code == 2
    assert not marker.exists()
    assert "refused" in capsys.readouterr().err


@pytest.mark.parametrize(
    "net_config, key",
    [
        ({"_target_": "builtins.open", "file": "VICTIM", "mode": "w"}, "_target_"),
        ({"_target_": "shutil.copyfile", "src": "VICTIM", "dst": "VICTIM.copy"}, "_target_"),
        ({"_target_": "hdsr.models.HDSRNet", "_args_": ["VICTIM"]}, "_args_"),
        (
            {"_target_": "hdsr.models.HDSRNet", "scale": {"_target_": "builtins.open"}},
            "net_config.scale",
        ),
        ({"_target_": "hdsr.models.HDSRNet", "scale": 2, "path": "VICTIM"}, "path"),
    ],
)
def test_checkpoint_net_config_builds_only_hdsr_networks(tmp_path, net_config, key):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")

    def fill(v):
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fill(x) for x in v]
        return str(victim) if v == "VICTIM" else f"{victim}.copy" if v == "VICTIM.copy" else v

    ckpt = _old_hparams()
    ckpt["hyper_parameters"]["net_config"] = fill(net_config)
    path = tmp_path / "plain_data.ckpt"
    torch.save(ckpt, path)
    torch.load(path, weights_only=True)  # the payload is plain data: weights_only lets it in
    with pytest.raises(UntrustedConfigError) as err:
        load_model(path)
    msg = str(err.value)
    assert str(path) in msg and "net_config" in msg and key.split(".")[-1] in msg
    assert victim.read_text() == "keep me"
    assert not Path(f"{victim}.copy").exists()


def test_build_network_equals_instantiate_for_every_packaged_model(model_configs):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    for (option, scale), model in model_configs.items():
        if option != "hdsrnet" and scale != 4:
            continue  # one scale per ablation keeps this quick; the builder is the same
        torch.manual_seed(0)
        ours = build_network(OmegaConf.to_container(model.net, resolve=True), "test")
        torch.manual_seed(0)
        ref = instantiate(model.net)
        assert type(ours) is type(ref), option
        a, b = ours.state_dict(), ref.state_dict()
        assert list(a) == list(b), option
        assert all(torch.equal(a[k], b[k]) for k in a), option


def test_report_builds_only_hdsr_networks_from_a_run_folder(tmp_path, capsys):
    from hdsr.cli.report import main

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    job = tmp_path / "sweep" / "job0" / ".hydra"
    job.mkdir(parents=True)
    (job / "config.yaml").write_text(
        "data:\n  scale: 2\nmodel:\n  name: evil\n  net:\n"
        f"    _target_: builtins.open\n    file: {victim}\n    mode: w\n"
    )
    code = main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert str(job / "config.yaml") in err and "model.net._target_" in err
    assert victim.read_text() == "keep me"


def test_checkpoint_path_that_is_a_directory_says_so(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_model(tmp_path)


def test_srmodule_load_from_checkpoint_reads_an_hdsr_checkpoint_as_data(tmp_path):
    """SRModule.load_from_checkpoint, the Lightning idiom: the 0.1.0 checkpoint gives the
    network load_model gives (same outputs, bit for bit) with its stored settings; a
    pickle payload is refused naming the file and never runs."""
    from hdsr.errors import UnreadableCheckpoint
    from hdsr.training.module import SRModule

    path = DATA / "hdsrnet_tiny_x2_v0.1.ckpt"
    module = SRModule.load_from_checkpoint(path)
    assert type(module) is SRModule and module.scale == 2
    assert module.hparams.model_name == load_model(path).name
    x = torch.rand(1, 3, 12, 10) * 255
    with torch.no_grad():
        assert torch.equal(module.net.eval()(x), load_model(path).net(x))
    moved = SRModule.load_from_checkpoint(path, val_set_names=["a", "b"])
    assert moved.val_set_names == ["a", "b"] and len(moved.val_metrics) == 2
    with pytest.raises(ValueError, match="weights-only"):
        SRModule.load_from_checkpoint(path, weights_only=False)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": _Payload(builtins.open, str(marker), "w")}}, evil)
    with pytest.raises(UnreadableCheckpoint, match=r"evil\.ckpt is not a readable checkpoint"):
        SRModule.load_from_checkpoint(evil)
    assert not marker.exists()
    alien = tmp_path / "alien.ckpt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["net_config"] = {"_target_": "os.system", "command": "true"}
    torch.save(ckpt, alien)
    with pytest.raises(UntrustedConfigError, match="os.system"):
        SRModule.load_from_checkpoint(alien)
