"""Load the authors' released HDSRNet checkpoints (HDSRNet_x{2,3,4}.pt) strictly.

The released state_dict names the lower net ``conv1``..``conv16``, the final 64->3 conv
``conv17``, the upsampler ``upsample.up.body.N``, and the upper net ``Block.conv1`` (head)
then ``Block.conv2``..``Block.conv16`` (five blocks of dilated, dynamic, plain conv).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from hdsr.checkpoint_io import read_checkpoint
from hdsr.models.hdsrnet import HDSRNet, check_scale

_BLOCK_LAYERS = 3  # dilated, dynamic, conv in each released block
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^lower\.layers\.(\d+)\.conv\.(.+)$"), "conv{n1}.0.{rest}"),
    (re.compile(r"^tail\.conv\.(.+)$"), "conv17.0.{g1}"),
    (re.compile(r"^tail\.upsample\.(\d+)\.(.+)$"), "upsample.up.body.{g1}.{g2}"),
    (re.compile(r"^upper\.head\.conv\.(.+)$"), "Block.conv1.0.{g1}"),
    (re.compile(r"^upper\.blocks\.(\d+)\.body\.(\d+)\.conv\.(.+)$"), "Block.conv{block}.0.{tail}"),
    (re.compile(r"^(sub_mean|add_mean)\.(weight|bias)$"), "{g1}.{g2}"),
]


def hdsr_to_official_key(key: str) -> str:
    """The authors' state_dict name for one of our full-HDSRNet keys."""
    for pattern, template in _RULES:
        m = pattern.match(key)
        if not m:
            continue
        g = m.groups()
        fields = {f"g{i + 1}": v for i, v in enumerate(g)}
        if template.startswith("conv{n1}"):
            fields.update(n1=int(g[0]) + 1, rest=g[1])
        elif "{block}" in template:
            fields.update(
                block=2 + _BLOCK_LAYERS * int(g[0]) + int(g[1]),
                tail=g[2].replace("attention.", "attention.net.", 1),
            )
        return template.format(**fields)
    raise KeyError(f"{key!r} has no counterpart in the official HDSRNet checkpoint")


def official_key_map(scale: int) -> dict[str, str]:
    """``{official key: our key}`` for the full HDSRNet at ``scale``."""
    model = HDSRNet(scale=check_scale(scale))
    return {hdsr_to_official_key(k): k for k in model.state_dict()}


def convert_official_state_dict(
    state: Mapping[str, torch.Tensor], scale: int
) -> dict[str, torch.Tensor]:
    """Rename an official state_dict (keys with or without a leading ``model.``) to ours.

    Strict: raises ``KeyError`` naming every missing and every unexpected official key.
    """
    names = official_key_map(scale)
    bare = {(k[len("model.") :] if k.startswith("model.") else k): v for k, v in state.items()}
    missing = [k for k in names if k not in bare]
    unexpected = [k for k in bare if k not in names]
    if missing or unexpected:
        raise KeyError(
            f"not an official HDSRNet x{scale} state_dict: "
            f"missing keys: {', '.join(missing) or 'none'}; "
            f"unexpected keys: {', '.join(unexpected) or 'none'}"
        )
    # the released dynamic-conv kernels are (K, C, C, 3, 3); ours are stored flat (K, C*C*9)
    return {names[k]: (v.flatten(1) if v.dim() == 5 else v) for k, v in bare.items()}


def state_shape(state: Mapping[str, torch.Tensor], official_key: str) -> torch.Size:
    """Shape of ``official_key`` in ``state``, with or without the ``model.`` prefix."""
    value = state.get(official_key, state.get(f"model.{official_key}"))
    return value.shape if value is not None else torch.Size()


def load_official(
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    scale: int,
    map_location: str | torch.device = "cpu",
) -> HDSRNet:
    """Build an ``HDSRNet`` for ``scale`` in eval mode from the authors' released weights.

    Loading is strict: a missing or unexpected key, or a shape mismatch (e.g. an x4
    checkpoint loaded as x2), raises an error that names it.

    Args:
        path_or_state_dict: path to ``HDSRNet_x{s}.pt`` or an already loaded state_dict
            (optionally wrapped as ``{"state_dict": ...}``).
        scale: 2, 3 or 4; must match the checkpoint.
    """
    scale = check_scale(scale)
    if isinstance(path_or_state_dict, Mapping):
        state = path_or_state_dict
    else:
        state = read_checkpoint(os.fspath(path_or_state_dict), map_location=map_location)
    if isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    converted = convert_official_state_dict(state, scale)
    model = HDSRNet(scale=scale)
    expected = model.state_dict()
    for key, value in converted.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            official = hdsr_to_official_key(key)
            raise ValueError(
                f"shape mismatch for official key {official!r}: checkpoint has "
                f"{tuple(state_shape(state, official))}, HDSRNet x{scale} needs another shape "
                f"({tuple(expected[key].shape)} in hdsr's layout); is the scale right?"
            )
    model.load_state_dict(converted, strict=True)
    return model.eval()
