"""Inference helpers: self-ensemble (x8), tiled forward passes and ``upscale``.

All image tensors are float RGB ``(B, 3, h, w)`` on a 0..255 scale; super-resolved outputs
are ``(B, 3, s*h, s*w)`` on the same scale (not rounded or clipped).

Tiling and HDSRNet
------------------
``tiled_forward`` runs the network on overlapping LR windows and keeps each window's
central (core) region. HDSRNet's receptive field reaches about 23 LR pixels (x2; 24 at
x4) from an output pixel: the upper net's head and 5 blocks of a 2-dilated, a dynamic and
a plain 3x3 conv give 21 px, the upsampler conv 1 px, the final conv at HR up to 1 px
(the lower net's 16 convs reach 16 px). So with ``overlap >= 24`` every core pixel sees
the same neighbourhood as in the untiled pass.

What the overlap cannot fix is the dynamic conv's attention: it pools its input over the
whole image, and a tile pooling over its own window mixes different kernels. With random
weights this is large: HDSRNet x2 on ``skimage.data.astronaut()`` halved (256x256 LR),
tile 96, overlap 32, window-local attention gives max abs diff 219 and PSNR 22.2 dB
against the untiled output (18.6 dB at tile 48; 50 dB on uniform noise, whose window
means barely vary). So by default (``global_attention=True``) the dynamic convs are
pinned to whole-image statistics computed tile by tile beforehand
(:func:`global_dynamic_means`, about 1.1x the cost of a forward pass). Measured with
random-weight HDSRNet (64 features) on that 256x256 LR image and on 240x200 uniform
noise, tile 48, max abs diff / PSNR on the 0..255 scale against the untiled pass:

    overlap   x2 astronaut     x2 noise         x4 astronaut     x4 noise
    8         5.47 / 63.7      2.69 / 65.6      6.80 / 66.1      2.69 / 67.9
    16        0.0033 / 120.8   0.0018 / 122.0   0.0054 / 120.0   0.0019 / 122.5
    24, 32    0.0020 / 121.3   0.0018 / 122.5   0.0051 / 120.4   0.0017 / 122.9

i.e. exact up to float rounding from 16-20 px on. The default overlap,
:data:`DEFAULT_OVERLAP` = 32, keeps a margin above the computed 24 px radius.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from hdsr.imaging import autocast_context, resolve_device
from hdsr.models.layers import DynamicConv2d

Forward = Callable[[torch.Tensor], torch.Tensor]

#: LR pixels of context added on each side of a tile (>= HDSRNet's ~23 px receptive radius).
DEFAULT_OVERLAP = 32
#: LR tile side chosen by :func:`auto_tile` for large images (window = tile + 2*overlap).
DEFAULT_TILE = 448
#: Images with at most this many LR pixels run untiled under :func:`auto_tile`.
AUTO_TILE_MAX_PIXELS = 512 * 512


def _check_image(x: torch.Tensor, name: str = "lr") -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} must be a (B, C, h, w) tensor, got shape {tuple(x.shape)}")


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
    _check_image(lr)
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


def _spans(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(core_lo, core_hi, win_lo, win_hi)`` along one axis of ``length`` LR pixels.

    The axis is cut into ``ceil(length / tile)`` cores of (nearly) equal size <= ``tile``;
    each window is its core plus ``overlap`` px on each side, shifted inward at the image
    borders so windows keep the same size (extra context never hurts).
    """
    n = max(1, math.ceil(length / tile))
    bounds = [round(i * length / n) for i in range(n + 1)]
    spans = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        w_lo, w_hi = lo - overlap, hi + overlap
        if w_lo < 0:
            w_hi, w_lo = w_hi - w_lo, 0
        if w_hi > length:
            w_lo, w_hi = max(0, w_lo - (w_hi - length)), length
        spans.append((lo, hi, w_lo, w_hi))
    return spans


@dataclass(frozen=True)
class _Tile:
    """One tile: its core ``[y0, y1) x [x0, x1)`` and window ``[wy0, wy1) x [wx0, wx1)``."""

    y0: int
    y1: int
    wy0: int
    wy1: int
    x0: int
    x1: int
    wx0: int
    wx1: int

    def window(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, self.wy0 : self.wy1, self.wx0 : self.wx1]

    def core_of(self, y: torch.Tensor, r: int) -> torch.Tensor:
        """The core of a window-sized map ``y`` that is ``r`` times the window's size."""
        return y[
            :,
            :,
            r * (self.y0 - self.wy0) : r * (self.y1 - self.wy0),
            r * (self.x0 - self.wx0) : r * (self.x1 - self.wx0),
        ]


def _tiles(h: int, w: int, tile: int, overlap: int) -> list[_Tile]:
    return [_Tile(*ys, *xs) for ys in _spans(h, tile, overlap) for xs in _spans(w, tile, overlap)]


def _check_tiling(scale: int, tile: int, overlap: int) -> None:
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"scale must be a positive integer, got {scale}")


class _StopForward(Exception):
    """Raised by a statistics hook to end a forward pass once its input is recorded."""


def dynamic_convs(net: nn.Module) -> list[DynamicConv2d]:
    """The :class:`~hdsr.models.layers.DynamicConv2d` modules of ``net``."""
    return [m for m in net.modules() if isinstance(m, DynamicConv2d)]


@contextlib.contextmanager
def pinned_attention(means: dict[DynamicConv2d, torch.Tensor]) -> Iterator[None]:
    """Make each dynamic conv in ``means`` pool to the given ``(B, C)`` mean, not its input's.

    A forward pre-hook on the conv's attention MLP replaces the pooled ``(B, C, 1, 1)``
    input, so the candidate kernels are mixed as for the whole image whatever part of it
    the conv sees. The hooks are removed on exit.
    """

    def make_hook(mean: torch.Tensor):
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
            pooled = args[0]
            if pooled.shape[0] != mean.shape[0]:
                raise ValueError(
                    f"pinned attention is for batch {mean.shape[0]}, got {pooled.shape[0]}"
                )
            return (mean.to(pooled.device, pooled.dtype).view_as(pooled),)

        return hook

    handles = [dc.attention.register_forward_pre_hook(make_hook(m)) for dc, m in means.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def global_dynamic_means(
    fn: Forward, net: nn.Module, lr: torch.Tensor, tile: int, overlap: int = DEFAULT_OVERLAP
) -> dict[DynamicConv2d, torch.Tensor]:
    """Whole-image input means of ``net``'s dynamic convs, computed tile by tile.

    A dynamic conv mixes its kernels from the global average of its input, which no single
    tile sees. This finds those averages with bounded memory: pass *k* runs ``fn`` on every
    tile, with the first *k-1* dynamic convs (in execution order) pinned to their
    whole-image means, stops each forward at the *k*-th one and sums its input over the
    tile's core. As long as ``overlap`` covers the receptive field of that input (19 LR px
    for HDSRNet's last dynamic conv), the sums are those of the untiled pass. Costs about
    one extra forward pass of the upper net per dynamic conv, up to it (HDSRNet: about
    1.1x a full forward in all).

    Args:
        fn: the function tiled (it calls ``net``).
        net: the network holding the dynamic convs.
        lr: ``(B, C, H, W)`` input.
        tile, overlap: as in :func:`tiled_forward`.

    Returns:
        ``{conv: (B, C) float64 mean}`` for every dynamic conv that runs in ``fn``.
    """
    convs = dynamic_convs(net)
    b, _, h, w = lr.shape
    tiles = _tiles(h, w, tile, overlap)
    means: dict[DynamicConv2d, torch.Tensor] = {}
    ctx: dict = {}

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x, t = args[0], ctx["tile"]
        if ctx["hit"] is None:
            ctx["hit"] = module
        elif ctx["hit"] is not module:
            raise RuntimeError("the dynamic convs ran in a different order on another tile")
        r, rem = divmod(x.shape[-2], t.wy1 - t.wy0)
        if rem or r < 1 or x.shape[-1] != r * (t.wx1 - t.wx0):
            raise ValueError(
                f"a dynamic conv input of size {tuple(x.shape[-2:])} is not a multiple of "
                f"its {t.wy1 - t.wy0}x{t.wx1 - t.wx0} tile"
            )
        ctx["ratio"] = r
        part = t.core_of(x, r).sum(dim=(2, 3), dtype=torch.float64).cpu()
        ctx["sum"] = part if ctx["sum"] is None else ctx["sum"] + part
        raise _StopForward

    with torch.no_grad():
        while len(means) < len(convs):
            ctx.update(hit=None, sum=None, ratio=1)
            handles = [dc.register_forward_pre_hook(hook) for dc in convs if dc not in means]
            try:
                with pinned_attention(means):
                    for t in tiles:
                        ctx["tile"] = t
                        try:
                            fn(t.window(lr))
                        except _StopForward:
                            continue
                        if ctx["hit"] is not None:
                            raise RuntimeError("a dynamic conv ran on some tiles but not others")
                        break  # a full forward ran: no unpinned dynamic conv is used
            finally:
                for handle in handles:
                    handle.remove()
            if ctx["hit"] is None:
                break
            r = ctx["ratio"]
            means[ctx["hit"]] = ctx["sum"] / (r * h * r * w)
    return means


def tiled_forward(
    fn: Forward,
    lr: torch.Tensor,
    scale: int,
    tile: int,
    overlap: int = DEFAULT_OVERLAP,
    *,
    attention_net: nn.Module | None = None,
    global_attention: bool = True,
) -> torch.Tensor:
    """Run ``fn`` on overlapping LR tiles and stitch the cores of the HR outputs.

    The LR image is cut into a grid of cores of at most ``tile`` x ``tile`` pixels (equal
    sizes, so there is no sliver at the right/bottom edge); ``fn`` sees each core with up to
    ``overlap`` LR pixels of context on every side (clipped at the image border, where the
    network's own zero padding applies as in the untiled pass), and only the core's
    ``scale``-times region of its output is kept. Peak memory of ``fn`` is that of one
    ``(tile + 2*overlap)``-sided window. An image no larger than one tile runs untiled.

    Dynamic convs (HDSRNet's) pool their input over the whole image; with
    ``global_attention`` (the default) they are pinned to the whole-image means found by
    :func:`global_dynamic_means` first, which makes the result equal the untiled pass up
    to float rounding whenever ``overlap`` >= the receptive radius (about 24 LR px for
    HDSRNet). Without it every tile pools over its own window: faster, but not exact.

    Args:
        fn: maps ``(B, C, h, w)`` to ``(B, C', scale*h, scale*w)``.
        lr: ``(B, C, H, W)`` input (RGB on 0..255 for the SR networks).
        scale: the integer upscaling factor of ``fn``.
        tile: LR side of a core, in pixels (>= 1).
        overlap: LR pixels of context on each side of a core (>= 0).
        attention_net: the module whose dynamic convs ``fn`` runs; defaults to ``fn`` when
            it is an ``nn.Module``.
        global_attention: pin the dynamic convs to whole-image statistics.

    Returns:
        ``(B, C', scale*H, scale*W)`` in ``fn``'s output dtype, on ``lr``'s device.
    """
    _check_image(lr)
    _check_tiling(scale, tile, overlap)
    b, _, h, w = lr.shape
    if h <= tile and w <= tile:
        return fn(lr)
    s = int(scale)
    if attention_net is None and isinstance(fn, nn.Module):
        attention_net = fn
    means: dict[DynamicConv2d, torch.Tensor] = {}
    if global_attention and attention_net is not None and dynamic_convs(attention_net):
        means = global_dynamic_means(fn, attention_net, lr, tile, overlap)
    out: torch.Tensor | None = None
    with pinned_attention(means):
        for t in _tiles(h, w, tile, overlap):
            sr = fn(t.window(lr))
            want = (s * (t.wy1 - t.wy0), s * (t.wx1 - t.wx0))
            if tuple(sr.shape[-2:]) != want:
                raise ValueError(
                    f"fn returned {tuple(sr.shape)} for a {t.wy1 - t.wy0}x{t.wx1 - t.wx0} "
                    f"tile; expected spatial size {want} for scale {s}"
                )
            if out is None:
                out = torch.empty((b, sr.shape[1], s * h, s * w), dtype=sr.dtype, device=lr.device)
            out[:, :, s * t.y0 : s * t.y1, s * t.x0 : s * t.x1] = t.core_of(sr, s).to(lr.device)
            del sr
    assert out is not None
    return out


def auto_tile(h: int, w: int, max_pixels: int = AUTO_TILE_MAX_PIXELS) -> int | None:
    """The tile size for an ``h`` x ``w`` LR image: ``None`` (untiled) for images of at most
    ``max_pixels`` pixels, else :data:`DEFAULT_TILE` (bounds memory for any image size)."""
    return None if h * w <= max_pixels else DEFAULT_TILE


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
) -> torch.Tensor:
    """Super-resolve ``lr`` with ``net`` under ``torch.inference_mode``.

    Args:
        net: maps ``(B, 3, h, w)`` to ``(B, 3, scale*h, scale*w)``, RGB on 0..255; it is
            moved to ``device`` (and should be in eval mode).
        lr: ``(1, 3, h, w)`` (or ``(3, h, w)``, or a batch) float RGB on 0..255.
        scale: ``net``'s upscaling factor.
        tile: LR tile side for :func:`tiled_forward`, or ``None`` for one pass over the whole
            image. With tiling, only one tile at a time is moved to ``device``.
        overlap: LR context pixels on each side of a tile.
        self_ensemble: average over the 8 flips/transposes (:func:`forward_x8`; 8x slower).
        device: "cpu", "cuda", "cuda:1", "auto", ...
        precision: "32" (float32), "bf16" or "16" (autocast to bfloat16 / float16).
        global_attention: with tiling, pin the dynamic convs to whole-image statistics
            (exact, about 2x the work of one pass); False lets each tile pool its own window.

    Returns:
        float32 ``(1, 3, scale*h, scale*w)`` on 0..255 (not rounded or clipped), on
        ``lr``'s device.
    """
    dev = resolve_device(device)
    autocast_context(dev, precision)  # validates precision before any work
    if lr.dim() == 3:
        lr = lr.unsqueeze(0)
    _check_image(lr)
    home = lr.device
    net = net.to(dev)

    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast_context(dev, precision):
            y = net(x.to(dev, torch.float32))
        return y.to(home, torch.float32)

    def one(x: torch.Tensor) -> torch.Tensor:
        if tile is None:
            return run(x)
        return tiled_forward(
            run, x, scale, tile, overlap, attention_net=net, global_attention=global_attention
        )

    with torch.inference_mode():
        lr = lr.float()
        return forward_x8(one, lr) if self_ensemble else one(lr)
