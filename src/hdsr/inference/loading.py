"""Load a trained network from a checkpoint: ours (.ckpt) or the authors' (.pt)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from hdsr.checkpoint_io import check_finite, read_checkpoint, weight_set
from hdsr.models import load_official
from hdsr.models.registry import build_network


@dataclass
class LoadedModel:
    """A network in eval mode with what is known about it."""

    net: nn.Module
    scale: int
    name: str
    source: str
    #: which weights were loaded: "ema" (an EMA run's average), "trained" or "released"
    weights: str = "trained"


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


#: which weights of a checkpoint :func:`load_model` loads
WEIGHTS = ("ema", "raw")


def load_model(
    path: str | os.PathLike[str], map_location: str = "cpu", weights: str = "ema"
) -> LoadedModel:
    """Rebuild the network of ``path``.

    * A Lightning ``.ckpt`` written by ``hdsr-train``: the network is rebuilt from the
      config stored in the checkpoint (``net_config``) and its weights loaded strictly.
      A run with EMA (``ema.decay``) keeps the averaged weights in ``state_dict`` and the
      trained ones in ``current_model_state`` (Lightning's ``WeightAveraging`` layout):
      ``weights="ema"`` (default) loads the averaged ones, ``"raw"`` the trained ones; a
      checkpoint without EMA has one set, loaded either way. An average that was never
      updated (training stopped before ``ema.start_step``) is not loaded: the trained
      weights are, with a logged warning.
    * Anything else is read as the authors' released format (``HDSRNet_x{2,3,4}.pt``),
      the scale taken from the upsampler, through ``hdsr.models.load_official``.

    Raises ``hdsr.errors.NonFiniteWeights`` naming the tensor when the weights hold NaN
    or Inf values (they could only give broken images and scores).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {list(WEIGHTS)}, got {weights!r}")
    ckpt = read_checkpoint(path, map_location)
    if isinstance(ckpt, dict) and "state_dict" in ckpt and "hyper_parameters" in ckpt:
        hp = ckpt["hyper_parameters"]
        if not isinstance(hp, dict) or not hp.get("net_config"):
            raise ValueError(f"{path}: the checkpoint has no net_config to rebuild its network")
        net = build_network(hp["net_config"], str(path), "hyper_parameters.net_config")
        key, label, note = weight_set(ckpt, weights, path)
        if note:
            logging.getLogger(__name__).warning(note)
        if not isinstance(ckpt[key], dict):
            raise ValueError(f"{path}: its {key} is not a mapping of tensors")
        state = {k.removeprefix("net."): v for k, v in ckpt[key].items() if k.startswith("net.")}
        check_finite(state, path, key + ".net")
        net.load_state_dict(state, strict=True)
        name = hp.get("model_name") or path.stem
        return LoadedModel(net.eval(), int(hp["scale"]), str(name), str(path), label)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: neither an hdsr-train .ckpt nor an HDSRNet state_dict")
    scale = official_scale(state)
    check_finite(state, path, "state_dict" if "state_dict" in ckpt else "weights")
    net = load_official(state, scale)
    return LoadedModel(net, scale, "HDSRNet (official)", str(path), "released")
