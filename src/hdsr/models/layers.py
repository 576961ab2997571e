"""Building blocks of HDSRNet.

All feature maps are ``(B, C, H, W)`` float tensors; image tensors are RGB on a 0..255
scale (``rgb_range`` 255), as in the authors' EDSR-based code.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

#: DIV2K RGB mean on a 0..1 scale, subtracted at the input and added back at the output.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class MeanShift(nn.Module):
    """Frozen 1x1 conv that adds ``sign * rgb_range * mean`` to each RGB channel.

    The identity weight and the bias are buffers, so they are saved in the state_dict
    (under the authors' names ``weight``/``bias``) but never trained.
    """

    def __init__(
        self,
        sign: int,
        rgb_range: float = 255.0,
        mean: tuple[float, float, float] = DIV2K_RGB_MEAN,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", torch.eye(3).view(3, 3, 1, 1))
        self.register_buffer("bias", sign * rgb_range * torch.tensor(mean))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Computed in float32 even under autocast or with bfloat16 buffers: the shift is
        # added to (or taken from) the image on the 0..255 scale, where bfloat16's steps
        # are 0.5 to 1.0 (114.44 would be 114.5). The result keeps the input's dtype: a
        # float32 image stays float32 under autocast; a bfloat16 one (bf16-true) is
        # rounded once, for the bfloat16 layers that read it.
        return conv2d_fp32(x, self.weight, self.bias).to(x.dtype)


def full_precision(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device_type`` (a no-op where autocast does not exist,
    e.g. the meta device of ``hdsr.evaluation.complexity``'s shape-only runs)."""
    if not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def conv2d_fp32(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, **kwargs
) -> torch.Tensor:
    """``F.conv2d`` in float32 (or wider) whatever autocast or the weights' dtype say.

    Input, weight and bias are cast up to ``promote_types(x.dtype, float32)`` and autocast
    is off inside, so the result is float32 for float32, bfloat16 and float16 inputs (and
    float64 for float64). In float32 every cast is a no-op: the same op as before.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    with full_precision(x.device.type):
        return F.conv2d(
            x.to(dtype),
            weight.to(dtype),
            None if bias is None else bias.to(dtype),
            **kwargs,
        )


class ConvReLU(nn.Module):
    """``relu(layer(x))`` for any convolution ``layer`` (plain, dilated or dynamic)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.conv = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x), inplace=True)


def conv3x3(in_ch: int, out_ch: int, dilation: int = 1, bias: bool = False) -> nn.Conv2d:
    """3x3 convolution whose padding keeps the spatial size."""
    return nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=bias)


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity whose gradient leaves in the channels_last format.

    The grouped conv below reads a channels_last batch through an NCHW copy, so its input
    gradient comes back NCHW; the ReLU backward before it would then mix an NCHW gradient
    with a channels_last activation, a slow strided path (about 7x an aligned one).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


class DynamicConv2d(nn.Module):
    """Dynamic convolution (Chen et al., CVPR 2020) with ``num_kernels`` candidate kernels.

    Per sample, attention ``a = softmax(MLP(GAP(x)) / temperature)`` over the candidates
    mixes the kernels and biases into one 3x3 convolution: ``W = sum_k a_k W_k``.

    Args:
        channels: input and output channels.
        num_kernels: number of candidate kernels K (4 in HDSRNet).
        reduction: the attention MLP's hidden width is ``channels // reduction``.
        temperature: softmax temperature T (40 in the released code, never annealed).

    Shapes: ``x`` is ``(B, C, H, W)`` in any memory format; the output has the same shape.
    """

    def __init__(
        self,
        channels: int,
        num_kernels: int = 4,
        reduction: int = 4,
        temperature: float = 40.0,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.channels = channels
        self.num_kernels = num_kernels
        self.kernel_size = kernel_size
        self.temperature = float(temperature)
        hidden = channels // reduction
        self.attention = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_kernels, 1, bias=False),
        )
        # Candidate kernels stored flat, (K, C*C*k*k): the per-sample kernel is then one
        # matmul with the attention, and a 2-D parameter lets the whole model move to
        # channels_last (``Module.to`` cannot convert a 5-D tensor to channels_last).
        # ``kernels`` gives the (K, C, C, k, k) view used by the released checkpoints.
        self.weight = nn.Parameter(
            torch.empty(num_kernels, channels * channels * kernel_size * kernel_size)
        )
        self.bias = nn.Parameter(torch.zeros(num_kernels, channels))
        self.reset_parameters()

    @property
    def kernels(self) -> torch.Tensor:
        """The candidate kernels as a ``(K, C_out, C_in, k, k)`` view of ``weight``."""
        k = self.kernel_size
        return self.weight.view(self.num_kernels, self.channels, self.channels, k, k)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for k in range(self.num_kernels):
                nn.init.kaiming_uniform_(self.kernels[k])
        for m in self.attention:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention over the candidate kernels, shape ``(B, K)``."""
        pooled = x.mean(dim=(2, 3), keepdim=True)
        logits = self.attention(pooled).flatten(1)
        return torch.softmax(logits / self.temperature, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        attn = self.attention_weights(x)  # (B, K)
        weight = (attn @ self.weight).view(b * c, c, self.kernel_size, self.kernel_size)
        bias = (attn @ self.bias).reshape(-1)
        pad = self.kernel_size // 2
        if b == 1:
            return F.conv2d(x, weight, bias, padding=pad)
        # One grouped conv applies each sample's own kernel; reshape (not view) so that
        # channels_last inputs work for any batch size.
        if x.requires_grad and x.is_contiguous(memory_format=torch.channels_last):
            x = _ChannelsLastGrad.apply(x)
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, bias, padding=pad, groups=b)
        return out.reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, {self.channels}, kernel_size={self.kernel_size}, "
            f"num_kernels={self.num_kernels}, temperature={self.temperature}"
        )
