"""Tiled inference: exact whole-image results with bounded memory.

Two exact paths, both equal to the untiled pass up to float rounding:

* :func:`stagewise_forward` (an :class:`~hdsr.models.HDSRNet`; the default): the network
  runs stage by stage over tiles. The network says what its stages are
  (``HDSRNet.upper_stages``, cut before each dynamic conv; ``lower_stage``,
  ``tail_radius``, ``prepare`` and ``construct``: see :mod:`hdsr.models.hdsrnet`); this
  module runs each stage's steps on windows, cropping every layer's output by the
  radius its step reports. A dynamic conv's whole-image input mean is summed from the
  tiles' cores while the stage before it runs, and pinned (:func:`pinned_attention`)
  while its stage runs. Between stages only the maps the rest of the network reads are
  kept for the whole image (the current map and the stage's stack; for HDSRNet the
  current activation and the block's input, two 64-channel maps, updated in place band
  by band), and each stage reads them with just the context its own layers need, so the
  work is about one forward pass.
* :func:`tiled_forward` (any ``fn``): overlapping windows of the whole network, with the
  dynamic convs pinned to means found by :func:`global_dynamic_means` first (about 2x
  the work), holding only one window at a time.

Why the windows path stays
--------------------------
:func:`tiled_forward` is the only path for four things that
``hdsr.inference.forward.upscale`` (``hdsr-upscale``, ``hdsr-eval``) offers:

* networks other than HDSRNet, which report no stages: the bicubic baseline
  (``BicubicUpsampler``), or any ``fn``;
* weights held in bfloat16/float16 (``bf16-true``, ``16-true``): ``ScoringNet`` casts
  them up on every pass and names no ``stagewise_net``;
* ``--tile-attention local`` (``global_attention=False``): windows that pool their own
  statistics, approximate by design, which the stage-wise path never is;
* budgets below the stage-wise floor (``hdsr.inference.budget``): the stage-wise path's
  carried maps grow with the image (2 x 64 float32 per LR pixel), one window does not.

Measured with ``experiments/benchmarks/tiling_paths.py`` (x2, random-weight HDSRNet of
64 features, tile 64, overlap 32, CPU with 2 shared cores; peak = resident memory the
pass adds to the process; max|d| against the untiled pass, 0..255 scale):

    512x512 LR             peak MiB   seconds   max|d|
    untiled                  839        8.4     0
    stage-wise               229       18.3     0.0016
    windows, global            66       67.9     0.0016
    windows, local             66       16.0     11

so at 512x512 a budget of 70-230 MiB is met only by windows, for 3.7x the time of
stage-wise tiles. By ``hdsr.inference.budget``'s estimates the least budgets are 285
MiB (stage-wise) against 149 MiB (windows) at 512x512 and 2.5 GiB against 374 MiB at
2048x2048. On a 128x128 image, bfloat16 weights took 63 MiB through the windows path,
and a float32 copy of them 27 MiB through the stage-wise one.

The windows path and HDSRNet
----------------------------
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

from hdsr.models.hdsrnet import HDSRNet, Stage, Step, run_steps
from hdsr.models.layers import DynamicConv2d

Forward = Callable[[torch.Tensor], torch.Tensor]

#: LR pixels of context added on each side of a tile (>= HDSRNet's ~23 px receptive radius).
DEFAULT_OVERLAP = 32


def check_image(x: torch.Tensor, name: str = "lr") -> None:
    """Raise ``ValueError`` unless ``x`` is a 4-D ``(B, C, h, w)`` tensor."""
    if x.dim() != 4:
        raise ValueError(f"{name} must be a (B, C, h, w) tensor, got shape {tuple(x.shape)}")


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
    check_image(lr)
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


# --- stage-wise tiling ------------------------------------------------------------------------


def stagewise_network(net: nn.Module) -> HDSRNet | None:
    """The :class:`HDSRNet` that :func:`stagewise_forward` can run for ``net``: ``net``
    itself, or what a wrapper names as its ``stagewise_net`` (None: use another path)."""
    if isinstance(net, HDSRNet):
        return net
    inner = getattr(net, "stagewise_net", None)
    return inner if isinstance(inner, HDSRNet) else None


def _format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a map laid out channel-fastest (even a cropped view of one)."""
    return torch.channels_last if x.stride(1) == 1 and x.shape[1] > 1 else torch.contiguous_format


class _Win:
    """A map computed over rows ``[y0, y1)`` and columns ``[x0, x1)`` of an ``h`` x ``w``
    image; sides at the image border had the network's own zero padding."""

    __slots__ = ("t", "y0", "x0", "h", "w")

    def __init__(self, t: torch.Tensor, y0: int, x0: int, h: int, w: int) -> None:
        self.t, self.y0, self.x0, self.h, self.w = t, y0, x0, h, w

    @property
    def y1(self) -> int:
        return self.y0 + self.t.shape[-2]

    @property
    def x1(self) -> int:
        return self.x0 + self.t.shape[-1]

    def crop(self, y0: int, y1: int, x0: int, x1: int) -> _Win:
        if y0 < self.y0 or y1 > self.y1 or x0 < self.x0 or x1 > self.x1:
            raise RuntimeError(
                f"stage-wise tiling: region [{y0}:{y1}, {x0}:{x1}] is outside the valid "
                f"[{self.y0}:{self.y1}, {self.x0}:{self.x1}]"
            )
        t = self.t[:, :, y0 - self.y0 : y1 - self.y0, x0 - self.x0 : x1 - self.x0]
        return _Win(t, y0, x0, self.h, self.w)

    def step(self, step: Step) -> _Win:
        """A layer step (zero padding ``step.radius``) over the window, less the
        ``radius`` px it got wrong beside each side that is not the image border (the
        ``apply`` of :func:`~hdsr.models.hdsrnet.run_steps`)."""
        x, r = self.t, step.radius
        if not x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # a cropped view: convs read a strided input through a slow path
            x = x.contiguous(memory_format=_format_of(x))
        out = _Win(step.layer(x), self.y0, self.x0, self.h, self.w)
        return out.crop(
            self.y0 + (r if self.y0 > 0 else 0),
            self.y1 - (r if self.y1 < self.h else 0),
            self.x0 + (r if self.x0 > 0 else 0),
            self.x1 - (r if self.x1 < self.w else 0),
        )

    def __add__(self, other: _Win) -> _Win:
        y0, y1 = max(self.y0, other.y0), min(self.y1, other.y1)
        x0, x1 = max(self.x0, other.x0), min(self.x1, other.x1)
        t = self.crop(y0, y1, x0, x1).t + other.crop(y0, y1, x0, x1).t
        return _Win(t, y0, x0, self.h, self.w)


def _run(stage: Stage, x: _Win, stack: list[_Win]) -> tuple[_Win, list[_Win]]:
    """``stage`` over windows: each layer's output loses the border it got wrong."""
    return run_steps(stage.steps, x, stack, apply=lambda step, win: win.step(step))


def _cores(length: int, tile: int) -> list[tuple[int, int]]:
    return [(lo, hi) for lo, hi, _, _ in _spans(length, tile, 0)]


def stagewise_forward(
    net: HDSRNet,
    lr: torch.Tensor,
    tile: int,
    *,
    device: torch.device | str = "cpu",
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """``net(lr)`` computed stage by stage over tiles of at most ``tile`` x ``tile`` LR px.

    Equal to the untiled pass up to float rounding (the dynamic convs' whole-image means
    are summed in float64 from the tiles). Holds on ``device``, beside one tile's work,
    the maps carried between stages (:func:`stagewise_maps`), and the output on ``lr``'s
    device. Runs without autograd.

    Args:
        net: an :class:`HDSRNet` in eval mode, on ``device``.
        lr: ``(B, 3, H, W)`` float RGB on 0..255, on any device.
        tile: LR side of a tile's core (>= 1).
        device: where the network runs.
        autocast: a context factory entered around every tile's work (precision).
        progress: called with (tiles done, tiles in all) after each tile of each stage.

    Returns:
        float32 ``(B, 3, s*H, s*W)`` on ``lr``'s device.
    """
    check_image(lr)
    _check_tiling(net.scale, tile, 0)
    with torch.no_grad():
        outs = [
            _stagewise_one(net, lr[i : i + 1], tile, torch.device(device), autocast, progress)
            for i in range(lr.shape[0])
        ]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def stagewise_maps(net: HDSRNet) -> int:
    """How many whole-image ``n_feats`` maps :func:`stagewise_forward` keeps: the current
    map and the stack carried from one stage to the next (0 with a single stage)."""
    stages = net.upper_stages()
    return max((1 + st.stack_out for st in stages[:-1]), default=0)


class _StageRunner:
    """One image (batch 1) through :func:`stagewise_forward`."""

    def __init__(
        self,
        net: HDSRNet,
        lr: torch.Tensor,
        dev: torch.device,
        progress: Callable[[int, int], None] | None,
        total: int,
    ) -> None:
        self.net, self.lr, self.dev, self.progress = net, lr, dev, progress
        self.h, self.w = lr.shape[-2:]
        self.format = torch.channels_last if net.channels_last else torch.contiguous_format
        self.maps: dict[str, torch.Tensor] = {}  # the whole-image maps carried between stages
        self.pending: list[tuple[int, int, dict[str, torch.Tensor]]] = []  # bands to write
        self.out: torch.Tensor | None = None
        self.done, self.total = 0, total
        self.lower = net.lower_stage()
        #: context the lower net and the construction block read around a core
        self.lower_radius = net.tail_radius + (self.lower.radius if self.lower else 0)

    def _empty(self, channels: int, rows: int, like: torch.Tensor) -> torch.Tensor:
        shape = (1, channels, rows, self.w)
        t = torch.empty(shape, dtype=like.dtype, device=self.dev)
        return t.contiguous(memory_format=self.format)

    def lr_window(self, y0: int, y1: int, x0: int, x1: int, r: int) -> _Win:
        """The network's input map (``prepare``) over a core and ``r`` px around it
        (inside the image)."""
        wy0, wx0 = max(0, y0 - r), max(0, x0 - r)
        t = self.lr[:, :, wy0 : min(self.h, y1 + r), wx0 : min(self.w, x1 + r)]
        t = t.to(self.dev, torch.float32).contiguous(memory_format=self.format)
        return _Win(self.net.prepare(t), wy0, wx0, self.h, self.w)

    def map_window(self, name: str, y0: int, y1: int, x0: int, x1: int, r: int) -> _Win:
        wy0, wx0 = max(0, y0 - r), max(0, x0 - r)
        t = self.maps[name][:, :, wy0 : min(self.h, y1 + r), wx0 : min(self.w, x1 + r)]
        return _Win(t, wy0, wx0, self.h, self.w)

    def flush(self, upto: int) -> None:
        """Write back the pending bands that end at or above row ``upto`` (no later band
        of the running stage reads them)."""
        while self.pending and self.pending[0][1] <= upto:
            y0, y1, band = self.pending.pop(0)
            for name, t in band.items():
                if name not in self.maps:
                    self.maps[name] = self._empty(t.shape[1], self.h, t)
                self.maps[name][:, :, y0:y1].copy_(t)

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    def upper(self, stage: Stage, first: bool, core: tuple[int, int, int, int], r: int):
        """The stage over ``core`` (and ``r`` px of context): the current map and the
        stack (the carried maps ``cur``, ``stack0``, ...)."""
        if first:
            return _run(stage, self.lr_window(*core, r), [])
        stack = [self.map_window(f"stack{i}", *core, r) for i in range(stage.stack_in)]
        return _run(stage, self.map_window("cur", *core, r), stack)

    def image(self, cur: _Win, core: tuple[int, int, int, int]) -> None:
        """The lower net and the construction block over ``core``; writes the output."""
        net, s, (y0, y1, x0, x1), tr = self.net, self.net.scale, core, self.net.tail_radius
        ty0, tx0 = max(0, y0 - tr), max(0, x0 - tr)
        region = (ty0, min(self.h, y1 + tr), tx0, min(self.w, x1 + tr))
        lower = None
        if self.lower is not None:
            window = self.lr_window(*core, self.lower_radius)
            lower = _run(self.lower, window, [])[0].crop(*region).t
        sr = net.construct(cur.crop(*region).t, lower)
        sr = sr[:, :, s * (y0 - ty0) : s * (y1 - ty0), s * (x0 - tx0) : s * (x1 - tx0)]
        if self.out is None:
            shape = (1, sr.shape[1], s * self.h, s * self.w)
            self.out = torch.empty(shape, dtype=torch.float32, device=self.lr.device)
        self.out[:, :, s * y0 : s * y1, s * x0 : s * x1] = sr.to(self.lr.device, torch.float32)

    def run(
        self,
        stages: list[Stage],
        rows: list[tuple[int, int]],
        cols: list[tuple[int, int]],
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> torch.Tensor:
        means: dict[DynamicConv2d, torch.Tensor] = {}
        for j, stage in enumerate(stages):
            last = j == len(stages) - 1
            r = stage.radius + (self.net.tail_radius if last else 0)
            sums: torch.Tensor | None = None
            with pinned_attention(means), autocast():
                for bi, (y0, y1) in enumerate(rows):
                    band: dict[str, torch.Tensor] = {}
                    for x0, x1 in cols:
                        core = (y0, y1, x0, x1)
                        cur, stack = self.upper(stage, j == 0, core, r)
                        if last:
                            self.image(cur, core)
                            self.tick()
                            continue
                        # the stack maps the stage made (those it kept stay as they are)
                        tiles = {"cur": cur.crop(*core).t}
                        for i in range(stage.kept, stage.stack_out):
                            tiles[f"stack{i}"] = stack[i].crop(*core).t
                        part = tiles["cur"].sum(dim=(2, 3), dtype=torch.float64)
                        sums = part if sums is None else sums + part
                        for name, t in tiles.items():
                            if name not in band:
                                band[name] = self._empty(t.shape[1], y1 - y0, t)
                            band[name][:, :, :, x0:x1].copy_(t)
                        self.tick()
                    if not last:
                        self.pending.append((y0, y1, band))
                        following = rows[bi + 1][0] - r if bi + 1 < len(rows) else self.h
                        self.flush(self.h if j == 0 else following)
                self.flush(self.h)
            if not last:
                dynamic = stages[j + 1].dynamic
                assert sums is not None and dynamic is not None
                means[dynamic] = sums / (self.h * self.w)
        assert self.out is not None
        return self.out


def _stagewise_one(
    net: HDSRNet,
    lr: torch.Tensor,
    tile: int,
    dev: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    progress: Callable[[int, int], None] | None,
) -> torch.Tensor:
    rows, cols = _cores(lr.shape[-2], tile), _cores(lr.shape[-1], tile)
    stages = net.upper_stages()
    runner = _StageRunner(net, lr, dev, progress, len(stages) * len(rows) * len(cols))
    return runner.run(stages, rows, cols, autocast)
