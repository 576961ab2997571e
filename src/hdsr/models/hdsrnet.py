"""HDSRNet (Tian et al., arXiv 2402.15704) and its Table I ablation variants.

    I_S = CB( HUNet(I_L) * SLNet(I_L) )

Every variant is a configuration of the same parts: the layers inside each heterogeneous
block, whether the blocks are residual, and which lower net (if any) multiplies the upper
net's output. Images are RGB tensors ``(B, 3, H, W)`` on a 0..255 scale; the output is
``(B, 3, s*H, s*W)`` on the same scale (not clipped).

The forward pass in pieces
--------------------------
Besides ``forward``, :class:`HDSRNet` describes its pass as data, for code that runs it
piece by piece (``hdsr.inference.tiling`` runs it over tiles). On whole maps:

    x = net.prepare(image)                          # pointwise
    feats, stack = x, []
    for stage in net.upper_stages():                # cut before each dynamic conv
        feats, stack = run_steps(stage.steps, feats, stack)
    low = run_steps(net.lower_stage().steps, x)[0]  # None without a lower net
    sr = net.construct(feats, low)                  # reads net.tail_radius px around

Each net is a program of :class:`Step` s (a Conv+ReLU layer with its receptive radius, or
a push/add of a saved map), so the residual and symmetric skips are explicit; the upper
net's program is cut into :class:`Stage` s before each dynamic conv, whose attention
pools its whole input. The pieces give ``forward``'s output to the bit
(``tests/models/test_models.py`` checks it); ``forward`` itself does not use them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hdsr.imaging import check_scale
from hdsr.models.layers import (
    ConvReLU,
    DynamicConv2d,
    MeanShift,
    conv2d_fp32,
    conv3x3,
    full_precision,
)

LAYER_KINDS = ("conv", "dilated", "dynamic")
LOWER_KINDS = ("symmetric", "plain", None)


def make_layer(kind: str, n_feats: int, temperature: float = 40.0) -> ConvReLU:
    """One ``kind`` layer followed by ReLU: 'conv' (CR), 'dilated' (DiCR), 'dynamic' (DyCR)."""
    if kind == "conv":
        return ConvReLU(conv3x3(n_feats, n_feats))
    if kind == "dilated":
        return ConvReLU(conv3x3(n_feats, n_feats, dilation=2))
    if kind == "dynamic":
        return ConvReLU(DynamicConv2d(n_feats, temperature=temperature))
    raise ValueError(f"unknown layer kind {kind!r}; expected one of {LAYER_KINDS}")


def receptive_radius(layer: nn.Module) -> int:
    """Pixels of context a size-keeping layer reads on each side of an output pixel:
    ``dilation * (kernel // 2)`` for a (square) conv, a dynamic conv or a Conv+ReLU."""
    conv = layer.conv if isinstance(layer, ConvReLU) else layer
    if isinstance(conv, DynamicConv2d):
        return conv.kernel_size // 2
    if isinstance(conv, nn.Conv2d) and conv.kernel_size[0] == conv.kernel_size[1]:
        return conv.dilation[0] * (conv.kernel_size[0] // 2)
    raise TypeError(f"no receptive radius known for {type(conv).__name__}")


#: what a :class:`Step` does
STEP_OPS = ("layer", "push", "add")


@dataclass(frozen=True)
class Step:
    """One step of a net's forward pass, a program over the current map ``x`` and a stack
    of saved maps (all ``(B, C, H, W)``; ``C`` is ``n_feats`` except the first layer's
    3-channel input):

    * ``"layer"``: ``x = layer(x)``. ``layer`` is a :class:`ConvReLU` whose zero padding
      keeps the size; an output pixel reads ``radius`` pixels of ``x`` on each side (a
      dynamic conv, in addition, mixes its kernels from the mean of all of ``x``).
    * ``"push"``: save ``x`` on the stack (it stays the current map): a residual block's
      input, a symmetric lower net's first-half outputs.
    * ``"add"``: ``x = x + stack.pop()``: a residual block's end, a lower layer's skip sum.

    :func:`run_steps` runs a list of them.
    """

    op: str
    layer: ConvReLU | None = None
    radius: int = 0

    def __post_init__(self) -> None:
        if self.op not in STEP_OPS:
            raise ValueError(f"unknown step {self.op!r}; expected one of {STEP_OPS}")
        if (self.layer is None) == (self.op == "layer"):
            raise ValueError(f"a 'layer' step, and only one, has a layer: {self}")

    @classmethod
    def of(cls, layer: ConvReLU) -> Step:
        """The ``"layer"`` step of ``layer``, with its receptive radius."""
        return cls("layer", layer, receptive_radius(layer))

    @property
    def dynamic(self) -> DynamicConv2d | None:
        """The step's :class:`DynamicConv2d` (None for any other step)."""
        conv = getattr(self.layer, "conv", None)
        return conv if isinstance(conv, DynamicConv2d) else None


def run_steps(
    steps: Sequence[Step],
    x: Any,
    stack: Sequence[Any] = (),
    *,
    apply: Callable[[Step, Any], Any] | None = None,
) -> tuple[Any, list[Any]]:
    """Run ``steps`` on the current map ``x`` and a ``stack`` of saved maps (bottom first):
    returns the final ``(x, stack)``.

    ``apply(step, x)`` runs a ``"layer"`` step (default ``step.layer(x)``); with it the
    maps may be anything that ``apply`` takes and ``+`` adds, e.g. tiles that track
    which pixels of the image they hold. The sums are ``x + stack.pop()``, in ``forward``'s
    operand order.
    """
    stack = list(stack)
    for step in steps:
        if step.op == "layer":
            x = step.layer(x) if apply is None else apply(step, x)
        elif step.op == "push":
            stack.append(x)
        else:
            x = x + stack.pop()
    return x, stack


@dataclass(frozen=True)
class Stage:
    """A run of steps that needs no statistic of a whole map, except at its start: the
    whole-map mean of its input when it starts with a dynamic conv.

    Attributes:
        steps: the steps, in order.
        dynamic: the dynamic conv of the first step, whose attention pools the stage's
            input ``x`` over the whole image (``(B, C)`` mean over ``H, W``); None when the
            stage does not start with one (the upper net's first stage, the lower net).
        stack_in: maps on the stack when the stage starts (residual inputs carried in
            from the stage before).
        stack_out: maps on the stack when it ends (carried on to the next stage).
        kept: the bottom ``kept`` maps of the stack are never popped in the stage, so
            they leave it as they came in; those above are the stage's own.
    """

    steps: tuple[Step, ...]
    dynamic: DynamicConv2d | None
    stack_in: int
    stack_out: int
    kept: int

    @property
    def radius(self) -> int:
        """Pixels of context the stage reads around an output pixel: its layers' radii,
        summed (the maps it starts with, on its core and this far around it)."""
        return sum(step.radius for step in self.steps)


def cut_stages(steps: Sequence[Step], stack: int = 0) -> list[Stage]:
    """``steps`` cut before each dynamic conv: a first stage (empty if the first step is
    a dynamic conv), then one stage from each dynamic conv to the next. ``stack``: maps
    on the stack at the start."""
    groups: list[list[Step]] = [[]]
    for step in steps:
        if step.dynamic is not None:
            groups.append([])
        groups[-1].append(step)
    stages = []
    for group in groups:
        depth = low = stack
        for step in group:
            depth += {"push": 1, "add": -1}.get(step.op, 0)
            low = min(low, depth)
        if low < 0:
            raise ValueError("an 'add' step with nothing on the stack")
        first = group[0].dynamic if group else None
        stages.append(Stage(tuple(group), first, stack, depth, low))
        stack = depth
    return stages


class HeterogeneousBlock(nn.Module):
    """``body(x) + x`` (or ``body(x)`` when ``residual`` is False); body = the given layers."""

    def __init__(
        self, layers: Sequence[str], n_feats: int, residual: bool = True, temperature: float = 40.0
    ) -> None:
        super().__init__()
        if not layers:
            raise ValueError("a heterogeneous block needs at least one layer")
        self.residual = residual
        self.body = nn.Sequential(*(make_layer(k, n_feats, temperature) for k in layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y + x if self.residual else y

    def steps(self) -> list[Step]:
        """``forward`` as steps: push the input, the layers, add it back (residual)."""
        layers = [Step.of(layer) for layer in self.body]
        return [Step("push"), *layers, Step("add")] if self.residual else layers


class UpperNet(nn.Module):
    """HUNet: Conv+ReLU (3 -> n_feats) then ``n_blocks`` heterogeneous blocks.

    The released HUNet uses blocks of (dilated, dynamic, conv) with residuals.
    """

    def __init__(
        self,
        n_feats: int = 64,
        n_blocks: int = 5,
        block: Sequence[str] = ("dilated", "dynamic", "conv"),
        residual: bool = True,
        temperature: float = 40.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.head = ConvReLU(conv3x3(in_channels, n_feats))
        self.blocks = nn.Sequential(
            *(HeterogeneousBlock(block, n_feats, residual, temperature) for _ in range(n_blocks))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.head(x))

    def steps(self) -> list[Step]:
        """``forward`` as steps: the head, then each block's steps."""
        return [Step.of(self.head), *(step for block in self.blocks for step in block.steps())]


class LowerNet(nn.Module):
    """SLNet: ``n_layers`` Conv+ReLU layers (the first 3 -> n_feats).

    With ``symmetric=True`` (Eq. 4 of the paper), layers 1..n/2 chain plainly; for the
    second half, layer i passes on ``O_i + O_(n+1-i)``, so the output is ``O_n + O_1``.
    With ``symmetric=False`` it is a plain chain of Conv+ReLU layers.
    """

    def __init__(
        self, n_feats: int = 64, n_layers: int = 16, symmetric: bool = True, in_channels: int = 3
    ) -> None:
        super().__init__()
        if symmetric and n_layers % 2:
            raise ValueError(
                f"a symmetric lower net needs an even number of layers, got {n_layers}"
            )
        self.symmetric = symmetric
        self.layers = nn.ModuleList(
            ConvReLU(conv3x3(in_channels if i == 0 else n_feats, n_feats)) for i in range(n_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.symmetric:
            for layer in self.layers:
                x = layer(x)
            return x
        half = len(self.layers) // 2
        outs = []
        for layer in self.layers[:half]:
            x = layer(x)
            outs.append(x)
        for layer in self.layers[half:]:
            x = layer(x) + outs.pop()
        return x

    def steps(self) -> list[Step]:
        """``forward`` as steps: the layers, the first half's outputs pushed and each
        second-half layer's output added to the last one pushed (symmetric)."""
        if not self.symmetric:
            return [Step.of(layer) for layer in self.layers]
        half = len(self.layers) // 2
        first = (s for layer in self.layers[:half] for s in (Step.of(layer), Step("push")))
        second = (s for layer in self.layers[half:] for s in (Step.of(layer), Step("add")))
        return [*first, *second]


class Upsampler(nn.Sequential):
    """Sub-pixel upsampler: (Conv 3x3 with bias -> PixelShuffle(2)) x log2(s), or x3 once."""

    def __init__(self, scale: int, n_feats: int = 64) -> None:
        scale = check_scale(scale)
        factors = [2, 2] if scale == 4 else [scale]
        layers: list[nn.Module] = []
        for f in factors:
            layers += [conv3x3(n_feats, f * f * n_feats, bias=True), nn.PixelShuffle(f)]
        super().__init__(*layers)


def subpixel_selection(
    r: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """0/1 map ``S[sy, sx, py, px, y, x, ky, kx]``: HR tap (ky, kx) of output sub-pixel
    (sy, sx) reads input sub-pixel (py, px) at LR kernel position (y, x)."""
    # a normal tensor even when built (or moved) under inference_mode: the network that
    # keeps it may be trained later
    with torch.inference_mode(False):
        sel = torch.zeros(r, r, r, r, 3, 3, 3, 3, dtype=dtype)
        for sy in range(r):
            for sx in range(r):
                for dy in (-1, 0, 1):
                    qy, py = divmod(sy + dy, r)
                    for dx in (-1, 0, 1):
                        qx, px = divmod(sx + dx, r)
                        sel[sy, sx, py, px, qy + 1, qx + 1, dy + 1, dx + 1] = 1
        return sel.to(device)


def subpixel_conv_weight(
    weight: torch.Tensor, r: int, sel: torch.Tensor | None = None
) -> torch.Tensor:
    """The LR-grid kernel equal to a 3x3 conv applied after ``PixelShuffle(r)``.

    ``conv(pixel_shuffle(y, r), weight)`` equals ``pixel_shuffle(conv(y, W), r)`` with
    ``W`` of shape ``(C_out * r^2, C_in * r^2, 3, 3)``: HR tap ``(sy + dy, sx + dx)`` of the
    output sub-pixel ``(sy, sx)`` reads LR offset ``floor((s + d) / r)`` and input sub-pixel
    ``(s + d) mod r``. Same padding semantics (zeros), so the results agree to rounding.
    One einsum with the 0/1 map ``sel`` (``subpixel_selection(r)``, built here when not
    given), so it is cheap to redo on every forward pass. Every entry of ``W`` is one
    entry of ``weight`` or zero, so ``W`` is exact in any dtype.
    """
    c_out, c_in = weight.shape[:2]
    if sel is None:
        sel = subpixel_selection(r)
    sel = sel.to(device=weight.device, dtype=weight.dtype)
    w = torch.einsum("oihw,abpqyxhw->oabipqyx", weight, sel)
    return w.reshape(c_out * r * r, c_in * r * r, 3, 3)


class ConstructionBlock(nn.Module):
    """CB: sub-pixel upsampler, then Conv 3x3 (n_feats -> 3, no bias) at the HR size.

    With ``subpixel_tail`` (the default) the final conv runs before the last pixel
    shuffle, as the equivalent LR-grid conv (``subpixel_conv_weight``): the same function
    of the same parameters, but one wide conv instead of a 3-output-channel conv on the
    HR grid, which is slow on CPUs. The parameters and their names do not change.

    The final conv (either form) makes the image on the 0..255 scale, so it runs in
    float32 with autocast off and its input cast up (``conv2d_fp32``): under bfloat16 it
    would round the output to steps of 0.5-1.0 grey levels. The upsampler's conv, the
    expensive part, still runs in the autocast dtype.

    The 0/1 map of the sub-pixel form (``subpixel_map``) is built once, here, so a
    compiled forward does not rebuild it on the host on every call. It is a constant
    tensor, not a buffer (the state_dict, ``buffers()`` and DDP's buffer broadcast do not
    see it), that follows the module through ``.to()``/``.cuda()``/``.half()`` (see
    ``_apply``); 0/1 are exact in every float dtype.
    """

    def __init__(
        self, scale: int, n_feats: int = 64, out_channels: int = 3, subpixel_tail: bool = True
    ) -> None:
        super().__init__()
        self.upsample = Upsampler(scale, n_feats)
        self.conv = conv3x3(n_feats, out_channels)
        self.subpixel_tail = subpixel_tail
        self.subpixel_map = subpixel_selection(self.upsample[-1].upscale_factor)

    def _apply(self, fn, recurse: bool = True):
        # The path of every device/dtype conversion of a module. The map takes the
        # converted map's device and dtype but is rebuilt, not converted: it is derived,
        # never state, so even a conversion that drops values (``to_empty``) keeps it exact.
        super()._apply(fn, recurse)
        like = fn(self.subpixel_map)
        r = self.upsample[-1].upscale_factor
        self.subpixel_map = subpixel_selection(r, like.device, like.dtype)
        return self

    @property
    def radius(self) -> int:
        """LR pixels of input the block reads on each side of the LR pixels whose output
        it makes (2 at x2, x3 and x4): the region an HR pixel reads, traced back through
        each conv (``+radius``) and pixel shuffle (``/factor``, rounded up). With
        ``subpixel_tail`` the final conv is a 3x3 conv on the grid before the last
        shuffle."""
        layers: list[nn.Module] = list(self.upsample)
        layers.insert(len(layers) - 1 if self.subpixel_tail else len(layers), self.conv)
        reach = 0
        for layer in reversed(layers):
            if isinstance(layer, nn.PixelShuffle):
                reach = -(-reach // layer.upscale_factor)
            else:
                reach += receptive_radius(layer)
        return reach

    def forward(self, x: torch.Tensor, then: torch.dtype | None = None) -> torch.Tensor:
        """``x`` (B, n_feats, h, w) -> the image (B, 3, s*h, s*w) in float32 (or wider).

        ``then``: ``x`` is float32 because it may not fit the working dtype ``then``
        (float16); the upsampler's first conv reads it in float32 and hands its output
        on in ``then`` (``HDSRNet.forward`` asks for this under float16).
        """
        conv = self.conv
        layers = list(self.upsample)
        if then is not None:
            first = layers.pop(0)
            x = conv2d_fp32(
                x, first.weight, first.bias, padding=first.padding, dilation=first.dilation
            ).to(then)
        if not self.subpixel_tail:
            for layer in layers:
                x = layer(x)
            return conv2d_fp32(
                x, conv.weight, conv.bias, padding=conv.padding, dilation=conv.dilation
            )
        *body, shuffle = layers
        for layer in body:
            x = layer(x)
        r = shuffle.upscale_factor
        dtype = torch.promote_types(x.dtype, torch.float32)
        with full_precision(x.device.type):
            weight = subpixel_conv_weight(conv.weight.to(dtype), r, self.subpixel_map)
        return F.pixel_shuffle(conv2d_fp32(x, weight, padding=1), r)


class HDSRNet(nn.Module):
    """Heterogeneous dynamic convolutional network for single-image super-resolution.

    Args:
        scale: upscaling factor, 2, 3 or 4.
        n_feats: feature channels (64).
        n_blocks: heterogeneous blocks in the upper net (5).
        block: layer kinds of each block, from 'conv', 'dilated', 'dynamic'.
        block_residual: residual connection around each block.
        lower: 'symmetric' (SLNet), 'plain' (16 chained Conv+ReLU) or None (no lower net:
            the upper net's output goes straight into the construction block).
        lower_layers: layers in the lower net (16).
        temperature: dynamic-conv softmax temperature (40).
        rgb_range: pixel value range of inputs and outputs (255).
        channels_last: run in the channels_last memory format (weights and activations);
            the fast path on CPUs (oneDNN) and tensor-core GPUs. Same results.
        subpixel_tail: run the final conv before the last pixel shuffle (same function of
            the same weights; see ``ConstructionBlock``).

    Input ``(B, 3, H, W)``, output ``(B, 3, scale*H, scale*W)``, both on 0..rgb_range.
    The output is float32 under autocast and with bfloat16/float16 weights too: the
    layers between the mean shifts run in the low precision, but the mean shifts and the
    final conv, which make the image on the 0..255 scale, run in float32.

    The same pass in pieces (module docstring): :meth:`prepare`, :meth:`upper_stages`,
    :meth:`lower_stage`, :meth:`construct` and :attr:`tail_radius`.
    """

    def __init__(
        self,
        scale: int = 2,
        n_feats: int = 64,
        n_blocks: int = 5,
        block: Sequence[str] = ("dilated", "dynamic", "conv"),
        block_residual: bool = True,
        lower: str | None = "symmetric",
        lower_layers: int = 16,
        temperature: float = 40.0,
        rgb_range: float = 255.0,
        channels_last: bool = True,
        subpixel_tail: bool = True,
    ) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        self.channels_last = channels_last
        if lower not in LOWER_KINDS:
            raise ValueError(f"lower must be one of {LOWER_KINDS}, got {lower!r}")
        self.sub_mean = MeanShift(-1, rgb_range)
        self.upper = UpperNet(n_feats, n_blocks, tuple(block), block_residual, temperature)
        self.lower = (
            LowerNet(n_feats, lower_layers, symmetric=lower == "symmetric") if lower else None
        )
        self.tail = ConstructionBlock(self.scale, n_feats, subpixel_tail=subpixel_tail)
        self.add_mean = MeanShift(+1, rgb_range)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.sub_mean(x)
        feats = self.upper(x)
        return self.construct(feats, None if self.lower is None else self.lower(x))

    # --- the forward pass in pieces (see the module docstring) ---------------------------

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """``forward``'s first step, the map both nets read: the image ``(B, 3, H, W)`` on
        0..rgb_range, in the network's memory format, less the DIV2K mean (float32 for a
        float32 image). Pointwise: a crop of the image gives the same crop of the map."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.sub_mean(x)

    def upper_stages(self) -> list[Stage]:
        """The upper net (HUNet) cut before each dynamic conv, in order: the first stage
        maps ``prepare(image)`` (3 channels, empty stack) to ``n_feats`` channels; each
        later stage starts with a dynamic conv and continues the one before (its ``x``
        and stack); the last ends with the map ``construct`` reads as ``feats``, on an
        empty stack. Stage ``k`` can run on a part of the image once the whole-image mean
        of its input (stage ``k-1``'s output) is known. One stage when there is no dynamic
        conv."""
        return cut_stages(self.upper.steps())

    def lower_stage(self) -> Stage | None:
        """The lower net (SLNet) as one stage (no dynamic conv), mapping ``prepare(image)``
        to the map ``construct`` reads as ``lower``; None without a lower net."""
        if self.lower is None:
            return None
        (stage,) = cut_stages(self.lower.steps())
        return stage

    @property
    def tail_radius(self) -> int:
        """LR pixels of ``feats`` and ``lower`` that ``construct`` reads on each side of the
        LR pixels whose ``scale`` x ``scale`` output it makes (the construction block's
        reach; the product and the mean shift are pointwise)."""
        return self.tail.radius

    def construct(self, feats: torch.Tensor, lower: torch.Tensor | None) -> torch.Tensor:
        """The image from the two nets' maps: ``add_mean(CB(feats * lower))`` (``CB(feats)``
        without a lower net), float32; ``feats`` and ``lower`` are ``(B, n_feats, h, w)``,
        the image ``(B, 3, s*h, s*w)``. Also run on tiles by ``hdsr.inference.tiling``."""
        if lower is None:
            return self.add_mean(self.tail(feats))
        if torch.float16 not in (feats.dtype, lower.dtype):
            return self.add_mean(self.tail(feats * lower))
        # float16 (16-mixed autocast, or half weights): the product of the two ReLU maps
        # can leave the float16 range (max 65504). Measured in float32 on skimage photos
        # (astronaut, chelsea, coffee, rocket) and flat/checkerboard/noise images, the
        # full-size network at initialisation reaches |upper * lower| = 33.6k, half the
        # range, with each map only ~240: a 1.4x growth of both maps in training
        # overflows. So the product is taken in float32, and the upsampler's first conv,
        # which would cast it straight back to float16, reads it in float32 as well; its
        # output (7.5k at most there) goes on in float16, and the rest fits with room.
        # bfloat16 has float32's range, and float32 runs the plain branch above.
        product = feats.float() * lower.float()
        return self.add_mean(self.tail(product, then=torch.float16))


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
