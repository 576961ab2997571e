"""Load a trained network from a checkpoint: ours (.ckpt) or the authors' (.pt)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass
class LoadedModel:
    """A network in eval mode with what is known about it."""

    net: nn.Module
    scale: int
    name: str
    source: str


def official_scale(state: dict) -> int:
    """The scale of an authors'-format state_dict, read from its upsampler's shapes."""
    keys = {k.removeprefix("model."): v for k, v in state.items()}
    if "upsample.up.body.2.weight" in keys:
        return 4
    weight = keys.get("upsample.up.body.0.weight")
    if weight is None:
        raise KeyError("not an HDSRNet checkpoint: no upsample.up.body.0.weight")
    return {256: 2, 576: 3}.get(int(weight.shape[0]), 0) or _bad_upsampler(weight.shape)


def _bad_upsampler(shape) -> int:
    raise ValueError(f"unexpected upsampler shape {tuple(shape)} in the checkpoint")


def load_model(path: str | os.PathLike[str], map_location: str = "cpu") -> LoadedModel:
    """Rebuild the network of ``path``.

    * A Lightning ``.ckpt`` written by ``hdsr-train``: the network is rebuilt from the
      config stored in the checkpoint (``net_config``) and its weights loaded strictly.
    * Anything else is read as the authors' released format (``HDSRNet_x{2,3,4}.pt``),
      the scale taken from the upsampler, through ``hdsr.models.load_official``.
    """
    from hdsr.models import load_official

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear error
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({err})") from None
    if isinstance(ckpt, dict) and "state_dict" in ckpt and "hyper_parameters" in ckpt:
        hp = ckpt["hyper_parameters"]
        cfg = hp.get("net_config")
        if not cfg:
            raise ValueError(f"{path}: the checkpoint has no net_config to rebuild its network")
        from hydra.utils import instantiate

        net = instantiate(cfg)
        state = {
            k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")
        }
        net.load_state_dict(state, strict=True)
        name = hp.get("model_name") or path.stem
        return LoadedModel(net.eval(), int(hp["scale"]), str(name), str(path))
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: neither an hdsr-train .ckpt nor an HDSRNet state_dict")
    scale = official_scale(state)
    return LoadedModel(load_official(state, scale), scale, "HDSRNet (official)", str(path))
