"""Inference helpers: self-ensemble (x8), tiled forward passes and ``upscale``.

All image tensors are float RGB ``(B, 3, h, w)`` on a 0..255 scale; super-resolved outputs
are ``(B, 3, s*h, s*w)`` on the same scale (not rounded or clipped).

Tiling lives in :mod:`hdsr.tiling`; which path runs for an image is decided by
:mod:`hdsr.budget`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hdsr.budget import Plan, default_budget, plan
from hdsr.imaging import autocast_context, resolve_device
from hdsr.tiling import (
    DEFAULT_OVERLAP,
    Forward,
    check_image,
    stagewise_forward,
    stagewise_maps,
    stagewise_network,
    tiled_forward,
)

__all__ = ["DEFAULT_OVERLAP", "forward_x8", "upscale"]


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
    budget (:func:`hdsr.budget.plan` picks the path).

    Args:
        net: maps ``(B, 3, h, w)`` to ``(B, 3, scale*h, scale*w)``, RGB on 0..255; it is
            moved to ``device`` (and should be in eval mode).
        lr: ``(1, 3, h, w)`` (or ``(3, h, w)``, or a batch) float RGB on 0..255.
        scale: ``net``'s upscaling factor.
        tile: None: untiled when the pass fits ``max_memory``, else tiled with the largest
            tile that fits; 0: untiled always; N: LR tiles of N px. Tiles run stage by
            stage (:func:`hdsr.tiling.stagewise_forward`, an HDSRNet) or as overlapping
            windows of ``overlap`` px (:func:`hdsr.tiling.tiled_forward`, any network, or
            when the stage-wise maps do not fit). With tiling the input stays where it is
            and one tile at a time goes to ``device``.
        overlap: LR context pixels on each side of a window (the windows path).
        self_ensemble: average over the 8 flips/transposes (:func:`forward_x8`; 8x slower).
        device: "cpu", "cuda", "cuda:1", "auto", ...
        precision: "32" (float32), "bf16" or "16" (autocast to bfloat16 / float16).
        global_attention: tiles' dynamic convs mix their kernels from whole-image
            statistics (exact); False runs windows that pool their own (approximate).
        max_memory: the budget in bytes (default: :func:`hdsr.budget.default_budget`).
        on_plan: called with the :class:`~hdsr.budget.Plan` before the pass.
        progress: called with (tiles done, tiles in all) on the stage-wise path.

    Returns:
        float32 ``(1, 3, scale*h, scale*w)`` on 0..255 (not rounded or clipped), on
        ``lr``'s device.

    Raises:
        hdsr.budget.BudgetTooSmall: no path fits ``max_memory``.
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
        return forward_x8(one, lr) if self_ensemble else one(lr)
