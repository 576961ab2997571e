"""Non-finite weights and outputs: never an image, a score or an export.

A checkpoint with one NaN or Inf tensor is refused when it is loaded, naming the file and
the tensor; a network whose output overflows (finite weights, Inf out) is an error for
that image, never a black PNG or a low score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hdsr.errors import NonFiniteOutput, NonFiniteWeights
from hdsr.inference.forward import upscale
from hdsr.inference.loading import load_model
from hdsr.models import HDSRNet, hdsr_to_official_key

TINY = {"_target_": "hdsr.models.HDSRNet", "scale": 2, "n_feats": 8, "n_blocks": 1}
TINY["lower_layers"] = 2


def _net() -> HDSRNet:
    torch.manual_seed(0)
    return HDSRNet(**{k: v for k, v in TINY.items() if k != "_target_"}).eval()


def _ckpt(path: Path, net: torch.nn.Module) -> Path:
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    hp = {"net_config": TINY, "scale": 2, "model_name": "tiny"}
    torch.save({"state_dict": state, "hyper_parameters": hp}, path)
    return path


def _broken(path: Path, value: float = float("nan")) -> Path:
    """A tiny checkpoint with one non-finite value in the tail conv's weight."""
    net = _net()
    with torch.no_grad():
        net.tail.conv.weight[1, 0, 0, 0] = value
    return _ckpt(path, net)


def _overflowing(path: Path) -> Path:
    """Finite weights whose output overflows float32 (Inf) on any image."""
    net = _net()
    with torch.no_grad():
        net.tail.conv.weight.mul_(1e37)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    return _ckpt(path, net)


def _image(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "p.png")
    return folder / "p.png"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_loading_names_the_non_finite_tensor(tmp_path, value):
    path = _broken(tmp_path / "bad.ckpt", value)
    says = rf"{path}: tensor state_dict\.net\.tail\.conv\.weight"
    with pytest.raises(NonFiniteWeights, match=says):
        load_model(path)
    # the authors' format too (a bare state_dict, their key names, 64 features)
    net = HDSRNet(scale=2)
    with torch.no_grad():
        next(net.parameters())[0, 0, 0, 0] = value
    official = {hdsr_to_official_key(k): v for k, v in net.state_dict().items()}
    torch.save(official, tmp_path / "x2.pt")
    with pytest.raises(NonFiniteWeights, match=r"x2.pt: tensor weights\..*1 NaN/Inf"):
        load_model(tmp_path / "x2.pt")


def test_an_overflowing_output_is_an_error(tmp_path):
    net = load_model(_overflowing(tmp_path / "big.ckpt")).net
    lr = torch.rand(1, 3, 9, 7) * 255
    with pytest.raises(NonFiniteOutput, match="NaN/Inf"):
        upscale(net, lr, 2)
    with pytest.raises(NonFiniteOutput):
        upscale(net, lr, 2, tile=4)  # the tiled path is checked as well


def test_hdsr_upscale_writes_no_image(tmp_path, capsys):
    from hdsr.cli.upscale import main

    src = _image(tmp_path / "in")
    out = tmp_path / "out"
    assert main([str(src), "-o", str(out), "--ckpt", str(_broken(tmp_path / "n.ckpt"))]) == 2
    err = "".join(capsys.readouterr().err.split())
    assert "tensorstate_dict.net.tail.conv.weighthas1NaN/Infvalue(s)" in err
    assert not out.exists() or not list(out.iterdir())
    assert main([str(src), "-o", str(out), "--ckpt", str(_overflowing(tmp_path / "o.ckpt"))]) == 1
    err = "".join(capsys.readouterr().err.split())
    assert "NonFiniteOutput" in err and "p.png" in err
    assert not list(out.glob("*.png"))


def test_hdsr_export_writes_nothing(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from hdsr.cli.export import main

    dest = tmp_path / "out" / "m.onnx"
    dest.parent.mkdir()
    assert main([str(_broken(tmp_path / "n.ckpt")), "-o", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "tail.conv.weight" in err and "NaN/Inf" in err and "broken export" not in err
    assert not list(dest.parent.iterdir())


def test_hdsr_eval_scores_no_broken_output(tmp_path, monkeypatch):
    """In-process hdsr-eval on the demo images: the overflow names the image; the job's
    failure is one line (``hdsr.run_dirs.config_error_line``)."""
    from hydra import compose, initialize_config_module

    import hdsr.cli.evaluate  # noqa: F401 - registers the run-name resolver
    from hdsr.evaluation.run import run_eval
    from hdsr.run_dirs import config_error_line

    monkeypatch.chdir(tmp_path)
    ckpt = _overflowing(tmp_path / "big.ckpt")
    with initialize_config_module(config_module="hdsr.conf", version_base="1.3"):
        cfg = compose("eval", [f"ckpt={ckpt}", "logger=csv", f"paths.run_dir={tmp_path}/e"])
    with pytest.raises(NonFiniteOutput, match=r"^demo/astronaut: the network's output") as err:
        run_eval(cfg)
    line = config_error_line(err.value)
    assert line is not None and "\n" not in line and "demo/astronaut" in line
    nan = _broken(tmp_path / "nan.ckpt")
    with initialize_config_module(config_module="hdsr.conf", version_base="1.3"):
        cfg = compose("eval", [f"ckpt={nan}", "logger=csv", f"paths.run_dir={tmp_path}/f"])
    with pytest.raises(ValueError) as err:  # a ConfigError naming ckpt=, or the file's own
        run_eval(cfg)
    assert "tail.conv.weight" in (config_error_line(err.value) or "")
