"""Low precision and torch.compile: the image is made in float32 under autocast (the
tail's last conv and the mean shifts), validation and test score float32 whatever the
training precision, float16 cannot overflow the product of the two nets, and the compiled
forward neither rebuilds the sub-pixel map nor recompiles more than it must."""

from __future__ import annotations

import copy
import sys

import lightning as L
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from hdsr.data.datamodule import SRDataModule
from hdsr.data.pairs import make_pair
from hdsr.models import HDSRNet
from hdsr.models.layers import DIV2K_RGB_MEAN, MeanShift
from hdsr.training.module import SRModule

BF16 = torch.bfloat16


def tiny_net(scale: int = 2, **kwargs) -> HDSRNet:
    return HDSRNet(scale, n_feats=8, n_blocks=1, lower_layers=2, **kwargs)


def photo_lr(size: int = 24, top: int = 100, left: int = 180) -> torch.Tensor:
    """A crop of skimage's astronaut, (1, 3, size, size) float on 0..255."""
    img = skimage.data.astronaut()[top : top + size, left : left + size]
    return torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float()


def on_image_scale(net: HDSRNet, x: torch.Tensor) -> HDSRNet:
    """Scale the tail conv so that the (random) network's output spreads over 0..255 like
    a trained one's (std 60 around the mean shift) instead of +-2000."""
    with torch.no_grad():
        y = net(x) - net.add_mean.bias.view(1, 3, 1, 1)
        net.tail.conv.weight.mul_(60.0 / float(y.std()))
    return net


# ---------------------------------------------------------------- fp32 image under autocast


@pytest.mark.parametrize("dtype", [BF16, torch.float16])
@pytest.mark.parametrize("subpixel_tail", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_network_output_is_float32_under_autocast(dtype, subpixel_tail, channels_last):
    torch.manual_seed(0)
    net = tiny_net(subpixel_tail=subpixel_tail, channels_last=channels_last)
    x = photo_lr(12)
    with torch.autocast("cpu", dtype=dtype):
        y = net(x)
    assert y.dtype == torch.float32 and y.shape == (1, 3, 24, 24)
    F.l1_loss(y, torch.rand_like(y) * 255).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
    assert net.tail.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("subpixel_tail", [True, False])
def test_tail_makes_the_image_in_float32_not_in_bfloat16_steps(subpixel_tail):
    """Given the same (bfloat16) upsampler output, the network's image equals the float32
    (here float64) tail of it to ~1e-4; a bfloat16 tail is off by up to half a bfloat16
    step (0.5 grey levels in [128, 256)), and every one of its pixels sits on that grid."""
    torch.manual_seed(0)
    x = photo_lr(24)
    net = on_image_scale(tiny_net(subpixel_tail=subpixel_tail), x)
    seen = {}
    net.tail.upsample[0].register_forward_hook(lambda m, a, out: seen.setdefault("up", out))
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        new = net(x)
        up = seen["up"]
        assert up.dtype == BF16  # the upsampler's conv (the costly part) stays bf16
        shuffled = F.pixel_shuffle(up, 2)
        mean = net.add_mean
        old = F.conv2d(net.tail.conv(shuffled), mean.weight, mean.bias)  # a bf16 tail
        ref = F.conv2d(shuffled.double(), net.tail.conv.weight.double(), padding=1)
        ref = ref + mean.bias.double().view(1, 3, 1, 1)
    image = (ref >= 0) & (ref < 256)  # the pixels on the image scale: most of them
    assert image.float().mean() > 0.8
    new_err = float((new.double() - ref)[image].abs().max())
    old_err = float((old.double() - ref)[image].abs().max())
    assert old.dtype == BF16 and new.dtype == torch.float32
    assert old_err > 0.25 and new_err < 1e-3 and new_err < old_err / 100, (new_err, old_err)
    on_grid = (new == new.to(BF16).float()).float().mean()
    assert on_grid < 0.05  # the L1 gradient no longer vanishes where output == target


def test_mean_shifts_add_the_exact_mean_under_autocast():
    exact = 255 * torch.tensor(DIV2K_RGB_MEAN)
    zeros = torch.zeros(1, 3, 2, 2)
    with torch.autocast("cpu", dtype=BF16):
        add = MeanShift(+1)(zeros)
        sub = MeanShift(-1)(zeros)
    assert add.dtype == sub.dtype == torch.float32
    assert torch.equal(add[0, :, 0, 0], exact)  # 114.444, not bf16's 114.5
    assert torch.equal(sub[0, :, 0, 0], -exact)
    assert MeanShift(-1).to(BF16)(zeros.to(BF16)).dtype == BF16  # feeds bf16 layers


@pytest.mark.parametrize("dtype", [BF16, torch.float16])
@pytest.mark.parametrize("scale", [2, 4])
def test_low_precision_weights_also_give_a_float32_image(dtype, scale):
    """bf16-true / 16-true: weights (and the map buffer) in the low dtype, no autocast."""
    torch.manual_seed(0)
    net = tiny_net(scale).to(dtype)
    assert net.tail.subpixel_map.dtype == dtype
    y = net(photo_lr(12).to(dtype))
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    y.mean().backward()
    assert all(p.grad.dtype == dtype for p in net.parameters())


def test_float16_product_beyond_its_range_stays_finite():
    """``upper * lower`` feeds the upsampler; under float16 both run in float32 there.

    The upper net's output is scaled by 2^7 and the upsampler's first conv by 2^-7: the
    same function in float32 (exact power-of-two scaling), but a product far past 65504.
    """
    torch.manual_seed(0)
    x = photo_lr(16)
    net = on_image_scale(tiny_net(), x).eval()
    with torch.no_grad():
        ref = net(x)
        net.tail.upsample[0].weight.mul_(2.0**-7)
    seen = {}

    def boost(module, args, out):
        seen["upper"] = out
        return out * 2.0**7

    net.upper.register_forward_hook(boost)
    net.lower.register_forward_hook(lambda m, a, out: seen.setdefault("lower", out))
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref, rtol=0, atol=0)
        seen.clear()
        with torch.autocast("cpu", dtype=torch.float16):
            out = net(x)
    assert seen["upper"].dtype == torch.float16
    product = seen["upper"].float() * 2.0**7 * seen["lower"].float()
    assert product.abs().max() > 2 * 65504
    assert torch.isfinite(out).all()
    assert float((out - ref).abs().max()) < 2.0


# ---------------------------------------------------------------- validation in float32


class Photos:
    """Two crops of skimage photographs as a validation/test source."""

    def load(self, scale: int):
        crops = [skimage.data.astronaut()[90:138, 170:218], skimage.data.coffee()[60:96, 200:248]]
        return [make_pair(f"p{i}", c, scale) for i, c in enumerate(crops)]


def _score(module: SRModule, precision: str, stage: str = "validate") -> tuple[dict, dict]:
    dm = SRDataModule(2, Photos(), {"a": Photos()}, test_sets={"t": Photos()}, batch_size=1)
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    getattr(trainer, stage)(module, datamodule=dm, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return metrics, copy.deepcopy(module.image_scores)


def _module(**kwargs) -> SRModule:
    torch.manual_seed(0)
    net = on_image_scale(tiny_net(), photo_lr(24))
    return SRModule(net, scale=2, val_set_names=["a"], test_set_names=["t"], **kwargs)


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_bf16_mixed_validation_and_test_score_what_fp32_scores(stage):
    """Lightning wraps validation_step/test_step in autocast under bf16-mixed; the scores
    (best.ckpt is chosen on them) are still those of the float32 network, to the bit."""
    base = _module(channels_last=True)
    fp32 = _score(copy.deepcopy(base), "32-true", stage)
    mixed = _score(copy.deepcopy(base), "bf16-mixed", stage)
    assert fp32[0] and fp32 == mixed
    # and the network really is at risk there: its bfloat16 output scores differently
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        lr = torch.from_numpy(Photos().load(2)[0].lr).permute(2, 0, 1)[None].float()
        assert not torch.equal(base.net(lr).float(), base.predict_fp32(lr))


def test_bf16_true_validation_scores_the_bf16_weights_in_float32():
    """Under bf16-true the weights themselves are bfloat16; validation runs them cast up
    to float32 (activations float32): the scores of the float32 network holding those
    rounded weights."""
    base = _module()
    rounded = copy.deepcopy(base)
    with torch.no_grad():
        for t in (*rounded.net.parameters(), *rounded.net.buffers()):
            t.copy_(t.to(BF16).float())
    true_bf16 = copy.deepcopy(base)
    got = _score(true_bf16, "bf16-true")
    assert next(true_bf16.net.parameters()).dtype == BF16
    assert got == _score(rounded, "32-true")


def test_validation_and_test_never_run_the_compiled_forward():
    """With runtime.compile the compiled forward is for training only: validation images
    come in many sizes (recompiles) and are scored by the eager network."""
    module = _module(compile=True)
    assert module._forward is not module.net

    def compiled(_lr):
        raise AssertionError("validation/test called the compiled forward")

    object.__setattr__(module, "_forward", compiled)
    for stage in ("validate", "test"):
        metrics, _ = _score(module, "32-true", stage)
        assert metrics


# ---------------------------------------------------------------- torch.compile


def test_subpixel_map_is_built_once_and_follows_the_module():
    net = tiny_net(3)
    sel = net.tail.subpixel_map
    assert sel.shape == (3, 3, 3, 3, 3, 3, 3, 3) and int(sel.sum()) == 81
    # not state: the state_dict (the authors' keys) and the buffers are as before
    assert set(net.state_dict()) == set(dict(net.named_parameters())) | {
        f"{m}.{b}" for m in ("sub_mean", "add_mean") for b in ("weight", "bias")
    }
    assert sum(b.numel() for b in net.buffers()) == 2 * (9 + 3)
    assert net.double().tail.subpixel_map.dtype == torch.float64
    half = net.half().tail.subpixel_map
    assert torch.equal(half.float(), sel)  # 0/1: exact in every float dtype
    assert torch.equal(net.to_empty(device="cpu").tail.subpixel_map, sel.half())
    assert net.to("meta").tail.subpixel_map.device.type == "meta"


@pytest.mark.slow
@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="torch.compile needs a C++ toolchain"
)
def test_compiled_forward_graphs_across_modes_and_sizes():
    """Train/eval switches and two image sizes: 3 graphs (train, train with dynamic sizes,
    eval, already dynamic), none rebuilding the sub-pixel map (once 36 indexed writes under
    inference_mode(False) in every graph), and the compiled outputs equal eager's.

    ``aot_eager`` (Dynamo + AOTAutograd, no code generation) keeps this fast; inductor's
    code for the network is checked in test_models. Inductor in torch 2.13 cannot lower
    the dynamic-shape graph of the grouped dynamic conv (InductorError: cannot determine
    truth value of Relational), a shape change it would meet on its first recompile:
    one more reason validation and test (images of many sizes) run eagerly.
    """
    from torch._dynamo.backends.debugging import aot_eager

    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    torch.manual_seed(0)
    eager = tiny_net()
    other = tiny_net()
    other.load_state_dict(eager.state_dict())
    compiled = torch.compile(other, backend=backend)
    for mode in ("train", "eval", "train", "eval"):
        for hw in ((12, 12), (16, 20)):
            training = mode == "train"
            eager.train(training)
            other.train(training)
            x = torch.rand(2, 3, *hw) * 255
            with torch.set_grad_enabled(training):
                out_c, out_e = compiled(x), eager(x)
            torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
            if training:
                out_c.sum().backward()
                out_e.sum().backward()
                pairs = zip(other.named_parameters(), eager.parameters(), strict=True)
                for (name, a), b in pairs:
                    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert len(graphs) == 3
    for gm in graphs:
        ops = {getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes}
        assert not {"setitem", "zeros", "_enter_inference_mode"} & ops, ops
    torch._dynamo.reset()
