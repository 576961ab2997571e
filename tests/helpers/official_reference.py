"""A straightforward formulation of the authors' HDSRNet, written from the paper/SPEC.

It uses the released state_dict names (conv1..conv17, upsample.up.body.N, Block.convN,
sub_mean/add_mean) and the released dynamic-conv formulation (softmax over K=4 kernels,
grouped conv over the batch through ``view``), so ``hdsr.models.load_official`` can be
checked against an independent implementation. Test-only: not part of the package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MEAN = (0.4488, 0.4371, 0.4040)


class RefMeanShift(nn.Conv2d):
    def __init__(self, sign: int) -> None:
        super().__init__(3, 3, 1)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1)
        self.bias.data = sign * 255.0 * torch.tensor(MEAN)
        for p in self.parameters():
            p.requires_grad = False


class RefAttention(nn.Module):
    def __init__(self, c: int, k: int, t: float) -> None:
        super().__init__()
        self.t = t
        self.net = nn.Sequential(
            nn.Conv2d(c, c // 4, 1, bias=False), nn.ReLU(), nn.Conv2d(c // 4, k, 1, bias=False)
        )

    def forward(self, x):
        x = F.adaptive_avg_pool2d(x, 1)
        return F.softmax(self.net(x).view(x.size(0), -1) / self.t, 1)


class RefDynamicConv(nn.Module):
    def __init__(self, c: int = 64, k: int = 4, t: float = 40.0) -> None:
        super().__init__()
        self.k, self.c = k, c
        self.attention = RefAttention(c, k, t)
        self.weight = nn.Parameter(torch.randn(k, c, c, 3, 3) * 0.05)
        self.bias = nn.Parameter(torch.randn(k, c) * 0.05)

    def forward(self, x):
        a = self.attention(x)
        b, c, h, w = x.size()
        x = x.view(1, -1, h, w)
        weight = torch.mm(a, self.weight.view(self.k, -1)).view(b * self.c, c, 3, 3)
        bias = torch.mm(a, self.bias).view(-1)
        out = F.conv2d(x, weight, bias, stride=1, padding=1, groups=b)
        return out.view(b, self.c, out.size(-2), out.size(-1))


def _cr(cin, cout, dilation=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False), nn.ReLU()
    )


class RefUpper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _cr(3, 64)
        for b in range(5):
            n = 2 + 3 * b
            setattr(self, f"conv{n}", _cr(64, 64, dilation=2))
            setattr(self, f"conv{n + 1}", nn.Sequential(RefDynamicConv(), nn.ReLU()))
            setattr(self, f"conv{n + 2}", _cr(64, 64))

    def forward(self, x):
        x = self.conv1(x)
        for b in range(5):
            n = 2 + 3 * b
            y = getattr(self, f"conv{n}")(x)
            y = getattr(self, f"conv{n + 1}")(y)
            y = getattr(self, f"conv{n + 2}")(y)
            x = y + x
        return x


class RefUpsampler(nn.Module):
    def __init__(self, scale: int) -> None:
        super().__init__()
        layers = []
        if scale == 3:
            layers += [nn.Conv2d(64, 576, 3, padding=1), nn.PixelShuffle(3)]
        else:
            for _ in range({2: 1, 4: 2}[scale]):
                layers += [nn.Conv2d(64, 256, 3, padding=1), nn.PixelShuffle(2)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


class RefUpWrap(nn.Module):
    def __init__(self, scale: int) -> None:
        super().__init__()
        self.up = RefUpsampler(scale)

    def forward(self, x):
        return self.up(x)


class RefHDSRNet(nn.Module):
    """Authors'-layout HDSRNet; ``symmetric=False`` drops the SLNet pairings (row 8)."""

    def __init__(self, scale: int, symmetric: bool = True) -> None:
        super().__init__()
        self.symmetric = symmetric
        self.sub_mean = RefMeanShift(-1)
        self.add_mean = RefMeanShift(+1)
        self.conv1 = _cr(3, 64)
        for i in range(2, 17):
            setattr(self, f"conv{i}", _cr(64, 64))
        self.conv17 = nn.Sequential(nn.Conv2d(64, 3, 3, padding=1, bias=False))
        self.upsample = RefUpWrap(scale)
        self.Block = RefUpper()

    def lower(self, x):
        o = {1: self.conv1(x)}
        for i in range(2, 9):
            o[i] = getattr(self, f"conv{i}")(o[i - 1])
        passed = o[8]
        for i in range(9, 17):
            o[i] = getattr(self, f"conv{i}")(passed)
            passed = o[i] + o[17 - i] if self.symmetric else o[i]
        return passed

    def forward(self, x):
        x = self.sub_mean(x)
        y = self.Block(x) * self.lower(x)
        return self.add_mean(self.conv17(self.upsample(y)))
