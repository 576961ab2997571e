"""MATLAB-bicubic upsampling wrapped as a model, so the protocol can be checked on its own."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hdsr.imaging import check_scale, to_uint8
from hdsr.imresize import imresize


class BicubicUpsampler(nn.Module):
    """``(B, 3, h, w)`` on 0..255 -> ``(B, 3, s*h, s*w)``: MATLAB ``imresize(x, s)`` per image.

    Inputs are rounded to uint8 first (LR images are 8-bit), so the output equals the
    bicubic baseline of the papers' tables. No parameters: nothing to train.
    """

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = check_scale(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for img in x:
            u8 = to_uint8(img.detach()).permute(1, 2, 0).cpu().numpy()
            up = imresize(np.ascontiguousarray(u8), self.scale)
            out.append(torch.from_numpy(up).permute(2, 0, 1).to(x.dtype))
        return torch.stack(out).to(x.device)
