"""Parameters, multiply-accumulates and latency of a network (``hdsr-profile``, ``hdsr-report``).

Models are built from the package's Hydra configs (``model=<option>``, ``data.scale=<s>``).
All sizes are LR *input* sizes (height x width); the output is ``scale`` times larger.

MACs count every convolution as ``out_h * out_w * out_c * in_c * k_h * k_w / groups``,
including the two 1x1 MeanShift convs and HDSRNet's dynamic convs, which run through
``F.conv2d`` with per-sample kernels and so are invisible to counters that only hook
``nn.Conv2d``: each costs a 3x3 C->C conv at its feature size, plus its attention MLP
(two 1x1 convs on the pooled vector) and the kernel aggregation (``K * C*C*9`` MACs).
Pixel shuffles, ReLUs, additions, products and pooling count 0. FLOPs = 2 x MACs.
The construction block's final conv counts as the 3x3 conv at the HR size it is, even
when it runs as the equivalent (wider) LR-grid conv of ``subpixel_tail``: the count is of
the architecture, not of one implementation of it.

The paper's "110.99 G FLOPs" for HDSRNet x4 at a 256x256 input is (within 0.3%) this
count *without* the five dynamic convs (110.76 G MACs); with them it is 122.84 G MACs.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hdsr.devices import autocast_context, resolve_device
from hdsr.models.hdsrnet import ConstructionBlock
from hdsr.models.layers import DynamicConv2d, MeanShift

#: The paper's complexity figure for HDSRNet x4 at 256x256 ("FLOPs", in fact MACs without
#: the dynamic convs).
PAPER_X4_256_GFLOPS = 110.99


def _conv_macs(out: torch.Tensor, weight_shape: Sequence[int], groups: int = 1) -> int:
    """MACs of a convolution producing ``out`` ``(B, C_out, H, W)`` with a weight of shape
    ``(C_out, C_in / groups, k_h, k_w)``: ``out.numel() * C_in/groups * k_h * k_w``."""
    _, cin_per_group, kh, kw = weight_shape
    return int(out.numel()) * int(cin_per_group) * int(kh) * int(kw)


def count_macs(net: nn.Module, input_hw: tuple[int, int], in_channels: int = 3) -> dict[str, int]:
    """Multiply-accumulates of one forward pass of ``net`` on a ``(1, 3, H, W)`` input.

    Counted with forward hooks on ``nn.Conv2d``, ``MeanShift`` and ``DynamicConv2d``
    (``net`` is copied to the meta device when it can be, so nothing is computed).

    Args:
        net: the network; it is not modified.
        input_hw: LR input ``(H, W)`` in pixels.
        in_channels: input channels (3).

    Returns:
        ``{"total", "dynamic", "without_dynamic", "dynamic_conv", "dynamic_attention"}``
        in MACs: ``dynamic`` is everything the dynamic convs cost (``dynamic_conv``, their
        3x3 convs, plus ``dynamic_attention``, their attention MLPs and kernel
        aggregation); ``without_dynamic = total - dynamic``.
    """
    try:
        model = copy.deepcopy(net).to("meta")
        x = torch.zeros(1, in_channels, *input_hw, device="meta")
        return _count(model, x)
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
        x = torch.zeros(1, in_channels, *input_hw, device=device)
        return _count(net, x)


def _count(net: nn.Module, x: torch.Tensor) -> dict[str, int]:
    counts = {"other": 0, "dynamic_conv": 0, "dynamic_attention": 0}
    inside_dynamic = {
        id(m) for dc in net.modules() if isinstance(dc, DynamicConv2d) for m in dc.modules()
    }

    def conv_hook(module: nn.Conv2d, _args: Any, out: torch.Tensor) -> None:
        key = "dynamic_attention" if id(module) in inside_dynamic else "other"
        counts[key] += _conv_macs(out, module.weight.shape, module.groups)

    def meanshift_hook(module: MeanShift, _args: Any, out: torch.Tensor) -> None:
        counts["other"] += _conv_macs(out, module.weight.shape)

    # The construction block may apply its final conv functionally (``subpixel_tail``: as a
    # wider conv before the last shuffle); count it as the HR conv it is equivalent to.
    tail_conv_ran: dict[int, bool] = {}

    def tail_pre_hook(module: ConstructionBlock, _args: Any) -> None:
        tail_conv_ran[id(module.conv)] = False

    def tail_conv_hook(module: nn.Conv2d, _args: Any, _out: torch.Tensor) -> None:
        tail_conv_ran[id(module)] = True

    def tail_hook(module: ConstructionBlock, _args: Any, out: torch.Tensor) -> None:
        if not tail_conv_ran.get(id(module.conv), True):
            counts["other"] += _conv_macs(out, module.conv.weight.shape, module.conv.groups)

    def dynamic_hook(module: DynamicConv2d, args: Any, out: torch.Tensor) -> None:
        b, c, k = args[0].shape[0], module.channels, module.kernel_size
        counts["dynamic_conv"] += _conv_macs(out, (c, c, k, k))
        # per sample: (1, K) @ (K, C*C*k*k) for the kernel, (1, K) @ (K, C) for the bias
        counts["dynamic_attention"] += b * module.num_kernels * (c * c * k * k + c)

    handles = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, MeanShift):
            handles.append(m.register_forward_hook(meanshift_hook))
        elif isinstance(m, DynamicConv2d):
            handles.append(m.register_forward_hook(dynamic_hook))
        elif isinstance(m, ConstructionBlock):
            handles.append(m.register_forward_pre_hook(tail_pre_hook))
            handles.append(m.register_forward_hook(tail_hook))
            handles.append(m.conv.register_forward_hook(tail_conv_hook))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    dynamic = counts["dynamic_conv"] + counts["dynamic_attention"]
    total = counts["other"] + dynamic
    return {
        "total": total,
        "dynamic": dynamic,
        "without_dynamic": total - dynamic,
        "dynamic_conv": counts["dynamic_conv"],
        "dynamic_attention": counts["dynamic_attention"],
    }


def size_name(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def build_model(option: str, scale: int) -> tuple[nn.Module, str]:
    """Instantiate ``model=<option>`` at ``data.scale=<scale>`` from the package configs;
    returns ``(net, model.name)``."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    with initialize_config_module(config_module="hdsr.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={option}", f"data.scale={scale}"])
    return instantiate(cfg.model.net), str(cfg.model.name)


def measure_latency(
    net: nn.Module,
    input_hw: tuple[int, int],
    *,
    repeats: int = 10,
    warmup: int = 2,
    device: str | torch.device = "cpu",
    precision: str = "32",
) -> dict[str, float]:
    """Wall-clock time of one batch-1 forward pass on a ``(1, 3, H, W)`` input on 0..255.

    Runs ``warmup`` untimed passes, then ``repeats`` timed ones under
    ``torch.inference_mode`` (CUDA is synchronized around each). Returns milliseconds:
    ``{"median", "mean", "min"}``.
    """

    dev = resolve_device(device)
    net = net.to(dev).eval()
    x = torch.rand(1, 3, *input_hw, device=dev) * 255

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times = []
    with torch.inference_mode(), autocast_context(dev, precision):
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            net(x)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
    return {
        "median": statistics.median(times),
        "mean": statistics.fmean(times),
        "min": min(times),
    }


def profile_model(
    option: str,
    scale: int,
    input_hw: tuple[int, int],
    latency_sizes: Sequence[tuple[int, int]] = (),
    *,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    precision: str = "32",
) -> dict[str, Any]:
    """One record: parameters, MACs at ``input_hw`` and latency at each of ``latency_sizes``
    (all LR input sizes) for ``model=<option>`` at ``scale``."""

    net, name = build_model(option, scale)
    net.eval()
    macs = count_macs(net, input_hw)
    record: dict[str, Any] = {
        "model": option,
        "name": name,
        "scale": scale,
        "trainable_params": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "params": sum(p.numel() for p in net.parameters()),
        "buffers": sum(b.numel() for b in net.buffers()),
        "input_hw": list(input_hw),
        "macs": macs["total"],
        "macs_without_dynamic": macs["without_dynamic"],
        "macs_dynamic": macs["dynamic"],
        "macs_dynamic_conv": macs["dynamic_conv"],
        "macs_dynamic_attention": macs["dynamic_attention"],
        "gflops": 2 * macs["total"] / 1e9,
        "device": str(resolve_device(device)),
        "precision": precision,
        "repeats": repeats,
        "warmup": warmup,
        "latency_ms": {},
        "latency_mean_ms": {},
        "latency_min_ms": {},
    }
    for hw in latency_sizes:
        lat = measure_latency(
            net, hw, repeats=repeats, warmup=warmup, device=device, precision=precision
        )
        key = size_name(hw)
        record["latency_ms"][key] = lat["median"]
        record["latency_mean_ms"][key] = lat["mean"]
        record["latency_min_ms"][key] = lat["min"]
    return record
