"""Inference helpers: self-ensemble (x8), tiled forward passes and ``upscale``.

All image tensors are float RGB ``(B, 3, h, w)`` on a 0..255 scale; super-resolved outputs
are ``(B, 3, s*h, s*w)`` on the same scale (not rounded or clipped).

Tiling lives in :mod:`hdsr.inference.tiling`; which path runs for an image is decided by
:mod:`hdsr.inference.budget`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from hdsr.devices import PRECISIONS, autocast_context, resolve_device
from hdsr.errors import NonFiniteOutput
from hdsr.inference.budget import Plan, default_budget, plan
from hdsr.inference.tiling import (
    DEFAULT_OVERLAP,
    Forward,
    check_image,
    stagewise_forward,
    stagewise_maps,
    stagewise_network,
    tiled_forward,
)

__all__ = [
    "DEFAULT_OVERLAP",
    "INFERENCE_DEFAULTS",
    "ScoringNet",
    "forward_x8",
    "inference_options",
    "upscale",
]


def forward_x8(fn: Forward, lr: torch.Tensor) -> torch.Tensor:
    """Geometric self-ensemble: the mean of ``fn`` over the 8 dihedral transforms of ``lr``.

    Each transform (optional H/W transpose, then optional flips of H and of W) is applied to
    ``lr``, ``fn`` is run on it, the transform is undone on the output, and the eight
    results are averaged (accumulated one at a time, so only one extra output is alive).

    Args:
        fn: maps ``(B, C, h, w)`` to ``(B, C', s*h, s*w)`` (any float dtype).
        lr: ``(B, C, h, w)`` input, e.g. RGB on 0..255.

    Returns:
        float32 ``(B, C', s*h, s*w)`` on the device of ``fn``'s outputs.
    """
    check_image(lr)
    acc: torch.Tensor | None = None
    for t in range(8):
        x = lr.transpose(-1, -2) if t & 4 else lr
        if t & 1:
            x = x.flip(-2)
        if t & 2:
            x = x.flip(-1)
        y = fn(x.contiguous())
        if t & 2:
            y = y.flip(-1)
        if t & 1:
            y = y.flip(-2)
        if t & 4:
            y = y.transpose(-1, -2)
        if acc is None:
            acc = y.to(torch.float32, copy=True).contiguous()
        else:
            acc.add_(y.to(torch.float32))
        del x, y
    assert acc is not None
    return acc.div_(8)


def upscale(
    net: nn.Module,
    lr: torch.Tensor,
    scale: int,
    *,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    self_ensemble: bool = False,
    device: str | torch.device = "cpu",
    precision: str = "32",
    global_attention: bool = True,
    max_memory: int | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Super-resolve ``lr`` with ``net`` under ``torch.inference_mode``, within a memory
    budget (:func:`hdsr.inference.budget.plan` picks the path).

    Args:
        net: maps ``(B, 3, h, w)`` to ``(B, 3, scale*h, scale*w)``, RGB on 0..255; it is
            moved to ``device`` (and should be in eval mode).
        lr: ``(1, 3, h, w)`` (or ``(3, h, w)``, or a batch) float RGB on 0..255.
        scale: ``net``'s upscaling factor.
        tile: None: untiled when the pass fits ``max_memory``, else tiled with the largest
            tile that fits; 0: untiled always; N: LR tiles of N px. Tiles run stage by
            stage (:func:`hdsr.inference.tiling.stagewise_forward`, an HDSRNet) or as overlapping
            windows of ``overlap`` px (:func:`hdsr.inference.tiling.tiled_forward`, any network, or
            when the stage-wise maps do not fit). With tiling the input stays where it is
            and one tile at a time goes to ``device``.
        overlap: LR context pixels on each side of a window (the windows path).
        self_ensemble: average over the 8 flips/transposes (:func:`forward_x8`; 8x slower).
        device: "cpu", "cuda", "cuda:1", "auto", ...
        precision: "32" (float32), "bf16" or "16" (autocast to bfloat16 / float16).
        global_attention: tiles' dynamic convs mix their kernels from whole-image
            statistics (exact); False runs windows that pool their own (approximate).
        max_memory: the budget in bytes (default: :func:`hdsr.inference.budget.default_budget`).
        on_plan: called with the :class:`~hdsr.inference.budget.Plan` before the pass.
        progress: called with (tiles done, tiles in all) on the stage-wise path.

    Returns:
        float32 ``(1, 3, scale*h, scale*w)`` on 0..255 (not rounded or clipped), on
        ``lr``'s device.

    Raises:
        hdsr.inference.budget.BudgetTooSmall: no path fits ``max_memory``.
        hdsr.errors.NonFiniteOutput: the output holds NaN or Inf values.
    """
    dev = resolve_device(device)
    autocast_context(dev, precision)  # validates precision before any work
    if lr.dim() == 3:
        lr = lr.unsqueeze(0)
    check_image(lr)
    home = lr.device
    staged = stagewise_network(net) if global_attention else None
    n_feats = staged.tail.conv.in_channels if staged is not None else 64
    budget = max_memory if max_memory is not None else default_budget(dev)
    how = plan(
        *lr.shape[-2:],
        scale,
        budget=budget,
        precision=precision,
        tile=tile,
        overlap=overlap,
        maps=None if staged is None else stagewise_maps(staged),
        n_feats=n_feats,
        device_type=dev.type,
        ensemble=self_ensemble,
    )
    if on_plan is not None:
        on_plan(how)
    net = net.to(dev)

    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast_context(dev, precision):
            y = net(x.to(dev, torch.float32))
        return y.to(home, torch.float32)

    def one(x: torch.Tensor) -> torch.Tensor:
        if how.mode == "untiled":
            return run(x)
        if how.mode == "stagewise":
            assert staged is not None and how.tile is not None
            return stagewise_forward(
                staged,
                x,
                how.tile,
                device=dev,
                autocast=lambda: autocast_context(dev, precision),
                progress=progress,
            )
        assert how.tile is not None
        return tiled_forward(
            run, x, scale, how.tile, overlap, attention_net=net, global_attention=global_attention
        )

    with torch.inference_mode():
        lr = lr.float()
        sr = forward_x8(one, lr) if self_ensemble else one(lr)
        finite = torch.isfinite(sr)
        if not bool(finite.all()):
            bad = int(finite.numel() - finite.sum())
            raise NonFiniteOutput(
                f"the network's output has {bad} NaN/Inf value(s) of {sr.numel()}: no image "
                f"or score is made from it (precision {precision}; broken weights, or values "
                "out of a half-precision range: try precision 32)"
            )
        return sr


#: the test step's inference options (hdsr-eval's), with their defaults: one float32 pass
#: over the whole image, which scores what validation scores
INFERENCE_DEFAULTS: dict[str, Any] = {
    "tile": None,
    "tile_overlap": DEFAULT_OVERLAP,
    "max_memory": None,
    "self_ensemble": False,
    "precision": "32",
}


class ScoringNet(nn.Module):
    """``net`` as it is scored: float32 activations, channels_last input when the
    network is held channels_last, and weights held in bfloat16/float16 (``bf16-true``,
    ``16-true``) cast up to float32 for the pass (the network keeps them).

    A module holding ``net``, so ``hdsr.inference.forward.upscale`` finds its dynamic convs for
    tiled inference. Autocast is left as the caller has it. Made for one image: the
    float32 copies of low-precision weights are taken once, when it is built, and serve
    every forward of the image (tiles, self-ensemble passes).
    """

    def __init__(self, net: nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.net = net
        self.channels_last = channels_last
        self.low = {
            name: t.float()
            for name, t in (*net.named_parameters(), *net.named_buffers())
            if t.dtype in (torch.bfloat16, torch.float16)
        }

    @property
    def stagewise_net(self) -> nn.Module | None:
        """The network ``hdsr.inference.tiling.stagewise_forward`` may run in its place: ``net``
        when its weights are float32 already (nothing to cast), else None."""
        return None if self.low else self.net

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            lr = lr.contiguous(memory_format=torch.channels_last)
        lr = lr.to(torch.promote_types(lr.dtype, torch.float32))
        if not self.low:
            return self.net(lr)
        return torch.func.functional_call(self.net, self.low, (lr,), strict=False)


def inference_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` over :data:`INFERENCE_DEFAULTS`; unknown keys and precisions refused."""
    opts = {**INFERENCE_DEFAULTS, **dict(options or {})}
    unknown = sorted(set(opts) - set(INFERENCE_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown inference options {unknown}; known: {list(INFERENCE_DEFAULTS)}")
    opts["precision"] = str(opts["precision"])
    if opts["precision"] not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {opts['precision']!r}")
    return opts
