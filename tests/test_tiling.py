"""Stage-wise tiling: exact against the untiled pass for every scale, variant and shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import yaml
from torch import nn

from hdsr.inference.tiling import stagewise_forward, stagewise_maps, stagewise_network
from hdsr.models import ConvReLU, DynamicConv2d, HDSRNet
from hdsr.models.hdsrnet import Step
from hdsr.models.layers import conv3x3

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
#: the exactness bound of the tiled paths on the 0..255 scale
TOL = 0.01


def natural(h: int, w: int) -> torch.Tensor:
    """A crop of a photograph as a (1, 3, h, w) float tensor on 0..255."""
    img = skimage.data.astronaut()[100 : 100 + h, 150 : 150 + w]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()


def noise(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, h, w), generator=g).float()


def net_of(scale: int, **kw) -> HDSRNet:
    torch.manual_seed(scale)
    return HDSRNet(scale=scale, **kw).eval()


def max_diff(net: HDSRNet, lr: torch.Tensor, tile: int) -> float:
    with torch.inference_mode():
        ref = net(lr)
        out = stagewise_forward(net, lr, tile)
    assert out.shape == ref.shape and out.dtype == torch.float32
    return float((out - ref).abs().max())


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("image", ["natural", "noise"])
def test_full_network_equals_untiled(scale: int, image: str) -> None:
    """The paper's network (64 features, 5 blocks, 16-layer SLNet) on 3x3 tiles of
    unequal sizes: exact up to float rounding."""
    lr = natural(70, 58) if image == "natural" else noise(70, 58)
    assert max_diff(net_of(scale), lr, 24) < TOL


def test_local_attention_would_not_be_exact() -> None:
    """Why the stages carry whole-image means: tiles that pool their own windows differ."""
    from hdsr.inference.tiling import tiled_forward

    net, lr = net_of(2), natural(70, 58)
    with torch.inference_mode():
        ref = net(lr)
        local = tiled_forward(net, lr, 2, 12, 8, global_attention=False)
    assert float((local - ref).abs().max()) > 1.0


@pytest.mark.parametrize("variant", sorted(p.stem for p in (CONF / "ablation").glob("*.yaml")))
def test_every_table_i_variant_equals_untiled(variant: str) -> None:
    cfg = yaml.safe_load((CONF / "ablation" / f"{variant}.yaml").read_text()).get("net", {})
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    net = net_of(2, n_feats=16, n_blocks=3, lower_layers=6, **kw)
    assert max_diff(net, natural(33, 41), 12) < TOL


@pytest.mark.parametrize(
    ("h", "w", "tile"),
    [(1, 37, 8), (29, 1, 5), (20, 17, 3), (13, 40, 13), (9, 9, 64)],
    ids=["1xN", "Nx1", "tile-under-halo", "one-band", "one-tile"],
)
def test_shapes_and_tiles_smaller_than_the_context(h: int, w: int, tile: int) -> None:
    """1-pixel rows and columns; tiles smaller than a stage's context (the in-place
    update of the carried maps must wait until no later band reads the old rows)."""
    net = net_of(3, n_feats=16, n_blocks=2, lower_layers=4)
    assert max_diff(net, noise(h, w, seed=h * w), tile) < TOL


def test_block_starting_with_two_dynamic_convs() -> None:
    net = net_of(2, n_feats=8, n_blocks=2, lower_layers=2, block=("dynamic", "dynamic", "conv"))
    assert len(net.upper_stages()) == 1 + 2 * 2
    assert max_diff(net, natural(25, 30), 7) < TOL


def test_a_batch_is_each_image_on_its_own() -> None:
    net = net_of(2, n_feats=16, n_blocks=2, lower_layers=4)
    lr = torch.cat([natural(20, 24), noise(20, 24)])
    assert max_diff(net, lr, 9) < TOL


def test_bf16_autocast_tiles_match_the_bf16_pass() -> None:
    net, lr = net_of(2, n_feats=16, n_blocks=2, lower_layers=4), natural(30, 30)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    with torch.inference_mode():
        with bf16():
            ref = net(lr)
        out = stagewise_forward(net, lr, 11, autocast=bf16)
        fp32 = net(lr)
    assert out.dtype == torch.float32
    # bf16 rounds differently in tiles; the gap stays far below bf16's own error
    assert float((out - ref).abs().max()) < 0.5 * float((ref - fp32).abs().max()) + 0.5


def test_carried_maps_and_progress() -> None:
    net = net_of(2, n_feats=8, n_blocks=3, lower_layers=2)
    assert stagewise_maps(net) == 2  # the current map and the block's input
    assert stagewise_maps(net_of(2, n_feats=8, n_blocks=3, block=("conv",))) == 0
    calls: list[tuple[int, int]] = []
    with torch.inference_mode():
        stagewise_forward(net, noise(20, 30), 10, progress=lambda k, n: calls.append((k, n)))
    stages, tiles = len(net.upper_stages()), 2 * 3
    assert calls == [(k, stages * tiles) for k in range(1, stages * tiles + 1)]


def test_which_networks_run_stage_by_stage() -> None:
    from hdsr.inference.forward import ScoringNet
    from hdsr.models.bicubic import BicubicUpsampler

    net = net_of(2, n_feats=8, n_blocks=1, lower_layers=2)
    assert stagewise_network(net) is net
    assert stagewise_network(ScoringNet(net)) is net
    assert stagewise_network(ScoringNet(net.to(torch.bfloat16))) is None  # weights cast per pass
    assert stagewise_network(BicubicUpsampler(2)) is None


class NestedUpper(nn.Module):
    """An upper net no HDSRNet builds: a residual block nested in another around a
    dynamic conv, so two maps are on the stack when the dynamic conv's stage starts."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.head = ConvReLU(conv3x3(3, n))
        self.a = ConvReLU(conv3x3(n, n, dilation=2))
        self.dyn = ConvReLU(DynamicConv2d(n))
        self.b = ConvReLU(conv3x3(n, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        y = self.a(x)
        return (self.b(self.dyn(y)) + y) + x

    def steps(self) -> list[Step]:
        push, add = Step("push"), Step("add")
        layers = [Step.of(m) for m in (self.head, self.a, self.dyn, self.b)]
        return [layers[0], push, layers[1], push, layers[2], layers[3], add, add]


def test_the_tiler_runs_the_stages_the_network_reports() -> None:
    """The tiler knows the network only through its stage API: a network that reports
    a structure HDSRNet never builds (nested residuals, two maps on the stack at a
    dynamic conv) still tiles exactly, carrying three whole-image maps."""
    net = net_of(2, n_feats=8, n_blocks=1, lower_layers=2)
    net.upper = NestedUpper(8).to(memory_format=torch.channels_last).eval()
    stages = net.upper_stages()
    assert [(st.stack_in, st.stack_out) for st in stages] == [(0, 2), (2, 0)]
    assert stages[1].dynamic is net.upper.dyn.conv
    assert stagewise_maps(net) == 3
    assert max_diff(net, natural(23, 26), 7) < TOL


def test_bad_tile_is_refused() -> None:
    with pytest.raises(ValueError, match="tile"):
        stagewise_forward(net_of(2, n_feats=8, n_blocks=1), noise(8, 8), 0)
