"""The network: parameter counts, shapes, numerics, dynamic conv and the official loader."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from hdsr.models import DynamicConv2d, HDSRNet, count_parameters, load_official
from hdsr.models.official import hdsr_to_official_key
from helpers import FIXTURES
from helpers.configs import MODEL_OPTIONS
from helpers.official_reference import RefHDSRNet

# Trainable parameters of the authors' released models (SPEC section 1).
OFFICIAL_PARAMS = {2: 1_818_496, 3: 2_003_136, 4: 1_966_208}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parameter_counts_equal_the_released_models(scale):
    model = HDSRNet(scale)
    assert count_parameters(model) == OFFICIAL_PARAMS[scale]
    # the mean shifts are frozen buffers, not parameters
    assert count_parameters(model, trainable_only=False) == OFFICIAL_PARAMS[scale]
    assert {"sub_mean.weight", "add_mean.bias"} <= set(model.state_dict())


def test_reference_model_has_the_released_parameter_count():
    for scale, n in OFFICIAL_PARAMS.items():
        ref = RefHDSRNet(scale)
        assert sum(p.numel() for p in ref.parameters() if p.requires_grad) == n


def test_variants_are_configurations_with_expected_structure(model_configs):
    nets = {opt: instantiate(cfg.net) for (opt, s), cfg in model_configs.items() if s == 4}
    assert len(nets) == 10  # hdsrnet + nine Table I rows
    full = count_parameters(nets["hdsrnet"])
    assert count_parameters(nets["ablation/r9_hdsrnet"]) == full
    assert count_parameters(nets["ablation/r8_plain_lower"]) == full
    # row 1: six stacked Conv+ReLU (3->64 then five 64->64), no residual, no lower net
    r1 = nets["ablation/r1_six_conv"]
    assert r1.lower is None and not r1.upper.blocks[0].residual
    assert sum(isinstance(m, torch.nn.Conv2d) for m in r1.upper.modules()) == 6
    # row 2 has the same parameters as row 1 but residual blocks
    assert count_parameters(nets["ablation/r2_residual_conv"]) == count_parameters(r1)
    assert nets["ablation/r2_residual_conv"].upper.blocks[0].residual
    kinds = {
        "ablation/r3_no_dynamic": ("dilated", "conv"),
        "ablation/r4_no_dilated": ("dynamic", "conv"),
        "ablation/r5_conv_for_dilated": ("conv", "dynamic", "conv"),
        "ablation/r6_conv_for_dynamic": ("dilated", "conv", "conv"),
        "ablation/r7_upper_only": ("dilated", "dynamic", "conv"),
    }
    for opt, expected in kinds.items():
        layers = [m.conv for m in nets[opt].upper.blocks[0].body]
        got = tuple(
            "dynamic"
            if isinstance(c, DynamicConv2d)
            else "dilated"
            if c.dilation == (2, 2)
            else "conv"
            for c in layers
        )
        assert got == expected, opt
        assert nets[opt].lower is None, opt
    assert nets["ablation/r8_plain_lower"].lower.symmetric is False
    assert nets["hdsrnet"].lower.symmetric is True


@pytest.mark.parametrize("option", MODEL_OPTIONS)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_every_variant_and_scale_trains_one_step_without_nan(model_configs, option, scale):
    torch.manual_seed(0)
    net = instantiate(model_configs[(option, scale)].net)
    lr = torch.rand(2, 3, 6, 5) * 255
    hr = torch.rand(2, 3, 6 * scale, 5 * scale) * 255
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    out = net(lr)
    assert out.shape == (2, 3, 6 * scale, 5 * scale)
    assert torch.isfinite(out).all()
    loss = F.l1_loss(out, hr)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert torch.isfinite(net(lr)).all()


def _official_state(scale: int, seed: int = 0) -> tuple[RefHDSRNet, dict]:
    torch.manual_seed(seed)
    ref = RefHDSRNet(scale).eval()
    with torch.no_grad():  # spread the attention logits so the kernels really mix
        for m in ref.modules():
            if hasattr(m, "t") and hasattr(m, "net"):
                m.net[2].weight.mul_(200.0)
    return ref, ref.state_dict()


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_load_official_matches_the_authors_formulation(scale):
    ref, state = _official_state(scale)
    model = load_official(state, scale)
    assert not model.training
    x = torch.rand(3, 3, 11, 9) * 255
    with torch.no_grad():
        expected = ref(x)
        got = model(x)
    rel = (got - expected).abs().max() / expected.abs().max()
    assert rel < 1e-5
    # and channels_last, batch > 1 (the released view-based dynamic conv cannot do this)
    with torch.no_grad():
        got_cl = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
    assert ((got_cl - expected).abs().max() / expected.abs().max()) < 1e-5


def test_load_official_accepts_model_prefix_and_a_file(tmp_path):
    ref, state = _official_state(2, seed=1)
    prefixed = {f"model.{k}": v for k, v in state.items()}
    path = tmp_path / "HDSRNet_x2.pt"
    torch.save(prefixed, path)
    model = load_official(path, 2)
    x = torch.rand(1, 3, 8, 8) * 255
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), rtol=1e-5, atol=1e-3)


def test_load_official_is_strict_and_names_the_key():
    _, state = _official_state(2)
    missing = dict(state)
    del missing["Block.conv9.0.attention.net.2.weight"]
    with pytest.raises(KeyError, match=r"Block\.conv9\.0\.attention\.net\.2\.weight"):
        load_official(missing, 2)
    extra = dict(state, **{"conv18.0.weight": torch.zeros(3)})
    with pytest.raises(KeyError, match=r"conv18\.0\.weight"):
        load_official(extra, 2)
    _, state4 = _official_state(4)
    with pytest.raises(KeyError, match=r"upsample\.up\.body\.2\.weight"):
        load_official(state4, 2)  # an x4 checkpoint has a second upsampler stage
    _, state3 = _official_state(3)
    with pytest.raises(ValueError, match=r"upsample\.up\.body\.0\.weight"):
        load_official(state3, 2)  # same keys, x3 shapes


def test_official_key_names_cover_the_model():
    names = [hdsr_to_official_key(k) for k in HDSRNet(4).state_dict()]
    assert "Block.conv15.0.attention.net.0.weight" in names
    assert "conv17.0.weight" in names and "upsample.up.body.2.bias" in names
    assert len(set(names)) == len(names) == 56


def _dynamic_conv_per_sample(dc: DynamicConv2d, x: torch.Tensor) -> torch.Tensor:
    """Reference: aggregate each sample's kernel explicitly and convolve it alone."""
    attn = dc.attention_weights(x)
    outs = []
    for i in range(x.shape[0]):
        w = (attn[i].view(-1, 1, 1, 1, 1) * dc.kernels).sum(0)
        b = (attn[i].view(-1, 1) * dc.bias).sum(0)
        outs.append(F.conv2d(x[i : i + 1], w, b, padding=1))
    return torch.cat(outs)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dynamic_conv_any_batch_mode_and_memory_format(batch, train, channels_last):
    torch.manual_seed(batch)
    dc = DynamicConv2d(8, num_kernels=4, reduction=4, temperature=0.5)
    torch.nn.init.normal_(dc.bias)
    dc.train(train)
    x = torch.randn(batch, 8, 7, 6)
    expected = _dynamic_conv_per_sample(dc, x)
    if channels_last:
        dc = dc.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    out = dc(x)
    assert out.shape == (batch, 8, 7, 6)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert dc.weight.grad is not None and torch.isfinite(dc.weight.grad).all()


def test_dynamic_conv_input_gradient_keeps_the_memory_format():
    """A channels_last batch gets its input gradient back channels_last, same values."""
    torch.manual_seed(0)
    dc = DynamicConv2d(8, temperature=0.5)
    x = torch.randn(3, 8, 7, 6)
    g = torch.randn(3, 8, 7, 6)
    grads = {}
    for name, fmt in (("nchw", torch.contiguous_format), ("cl", torch.channels_last)):
        xi = x.clone(memory_format=fmt).requires_grad_()
        dc.to(memory_format=fmt)(xi).backward(g)
        grads[name] = xi.grad
    assert grads["cl"].is_contiguous(memory_format=torch.channels_last)
    assert not grads["cl"].is_contiguous()
    torch.testing.assert_close(grads["cl"], grads["nchw"], rtol=1e-5, atol=1e-6)


def test_dynamic_conv_temperature():
    dc = DynamicConv2d(8, temperature=40.0)
    assert dc.temperature == 40.0 == HDSRNet(2).upper.blocks[0].body[1].conv.temperature
    assert HDSRNet(2, temperature=7.0).upper.blocks[0].body[1].conv.temperature == 7.0
    torch.manual_seed(0)
    x = torch.rand(2, 8, 5, 5) + 0.5  # positive input and first-layer weights: the
    with torch.no_grad():  # hidden ReLU is active for every sample, the logits differ
        dc.attention[0].weight.uniform_(0.1, 1.0)
        dc.attention[2].weight.normal_(0, 10.0)
    hot = dc.attention_weights(x)
    dc.temperature = 1.0
    sharp = dc.attention_weights(x)
    assert torch.allclose(hot.sum(1), torch.ones(2)) and torch.allclose(sharp.sum(1), torch.ones(2))
    assert (hot.max(1).values < sharp.max(1).values).all()  # higher T, flatter attention
    with pytest.raises(ValueError, match="temperature"):
        DynamicConv2d(8, temperature=0)


def test_lower_net_symmetric_pairing_matches_eq4():
    ref, state = _official_state(2, seed=3)
    model = load_official(state, 2)
    x = torch.rand(2, 3, 9, 9) * 255 - 110
    with torch.no_grad():
        torch.testing.assert_close(model.lower(x), ref.lower(x), rtol=1e-5, atol=1e-3)
        ref.symmetric = False
        model.lower.symmetric = False
        torch.testing.assert_close(model.lower(x), ref.lower(x), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("bad", [1, 5, 8, True])
def test_bad_scale_is_an_error(bad):
    with pytest.raises(ValueError, match="scale"):
        HDSRNet(bad)


@pytest.mark.parametrize("option", MODEL_OPTIONS)
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_paths_match_the_plain_formulation(model_configs, option, scale, channels_last):
    """channels_last and the sub-pixel tail give the plain NCHW outputs and gradients.

    Every layer of the variant at a quarter of its width (16 features): the layouts and
    the tail are per layer, and the width changes none of them."""
    cfg = model_configs[(option, scale)].net
    torch.manual_seed(1)
    plain = instantiate(cfg, n_feats=16, channels_last=False, subpixel_tail=False).double()
    fast = instantiate(cfg, n_feats=16, channels_last=channels_last, subpixel_tail=True)
    fast.load_state_dict({k: v.float() for k, v in plain.state_dict().items()})
    lr = torch.rand(2, 3, 7, 6, dtype=torch.float64) * 255
    hr = torch.rand(2, 3, 7 * scale, 6 * scale, dtype=torch.float64) * 255
    ref = plain(lr)
    F.l1_loss(ref, hr).backward()
    out = fast(lr.float())
    F.l1_loss(out, hr.float()).backward()
    assert ((out.double() - ref).abs().max() / ref.abs().max()) <= 1e-5
    grads = dict(plain.named_parameters())
    for name, p in fast.named_parameters():
        g, g_ref = p.grad.double(), grads[name].grad
        rel = (g - g_ref).norm() / g_ref.norm().clamp_min(1e-30)
        assert rel <= 1e-3, (name, float(rel))


def test_subpixel_kernel_equals_conv_after_shuffle():
    from hdsr.models.hdsrnet import subpixel_conv_weight

    torch.manual_seed(0)
    for r in (2, 3):
        w = torch.randn(3, 5, 3, 3, dtype=torch.float64)
        y = torch.randn(1, 5 * r * r, 4, 6, dtype=torch.float64)
        expected = F.conv2d(F.pixel_shuffle(y, r), w, padding=1)
        got = F.pixel_shuffle(F.conv2d(y, subpixel_conv_weight(w, r), padding=1), r)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_official_key_names_and_shapes_equal_the_released_checkpoints(scale):
    """Every key and shape of the authors' HDSRNet_x{s}.pt (copied from their state_dict)."""
    import json

    from hdsr.models.official import official_key_map

    released = json.loads((FIXTURES / "official_state_dict_keys.json").read_text())[f"x{scale}"]
    names = official_key_map(scale)
    assert set(names) == set(released)
    ours = HDSRNet(scale).state_dict()
    for official, key in names.items():
        shape = list(ours[key].shape)
        if len(released[official]) == 5:  # dynamic kernels are stored flat: (K, C*C*3*3)
            k, *rest = released[official]
            assert shape == [k, int(torch.tensor(rest).prod())], official
        else:
            assert shape == released[official], official


def test_training_works_after_an_inference_mode_pass():
    """The sub-pixel tail's kernel map must not be an inference-mode tensor, even when
    the network is moved (and the map rebuilt) under inference_mode."""
    net = HDSRNet(3, n_feats=8, n_blocks=1, lower_layers=2)
    with torch.inference_mode():
        net.to("cpu", torch.float32)
        net(torch.rand(1, 3, 6, 6) * 255)
    assert not net.tail.subpixel_map.is_inference()
    net(torch.rand(2, 3, 6, 6) * 255).sum().backward()
    assert net.tail.conv.weight.grad is not None


@pytest.mark.slow
@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="torch.compile needs a C++ toolchain"
)
def test_compiled_network_with_dynamic_convs_matches_eager():
    """runtime.compile: the dynamic conv (grouped conv, channels_last gradient) compiles."""
    torch.manual_seed(0)
    eager = HDSRNet(2, n_feats=8, n_blocks=1, lower_layers=2)
    other = HDSRNet(2, n_feats=8, n_blocks=1, lower_layers=2)
    other.load_state_dict(eager.state_dict())
    compiled = torch.compile(other)
    x = torch.rand(2, 3, 12, 12) * 255
    y = torch.rand(2, 3, 24, 24) * 255
    out_c, out_e = compiled(x), eager(x)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-4)
    F.l1_loss(out_c, y).backward()
    F.l1_loss(out_e, y).backward()
    for (name, a), b in zip(other.named_parameters(), eager.parameters(), strict=True):
        assert float((a.grad - b.grad).norm()) <= 1e-4 * float(b.grad.norm()) + 1e-8, name


def _pieces(net: HDSRNet, lr: torch.Tensor) -> torch.Tensor:
    """``net(lr)`` from the network's description of itself (see hdsr.models.hdsrnet)."""
    from hdsr.models.hdsrnet import run_steps

    x = net.prepare(lr)
    feats, stack = x, []
    for stage in net.upper_stages():
        assert len(stack) == stage.stack_in
        feats, stack = run_steps(stage.steps, feats, stack)
        assert len(stack) == stage.stack_out
    assert stack == []
    lower = net.lower_stage()
    return net.construct(feats, None if lower is None else run_steps(lower.steps, x)[0])


@pytest.mark.parametrize("option", MODEL_OPTIONS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_stages_the_network_reports_reproduce_forward(model_configs, option, channels_last):
    """Run in order on the whole image, the stages, the lower net's stage and
    ``construct`` give ``forward``'s output to the bit: the tiler can trust them."""
    for scale in (2, 3, 4):
        torch.manual_seed(scale)
        net = instantiate(
            model_configs[(option, scale)].net, n_feats=8, channels_last=channels_last
        ).eval()
        lr = torch.rand(2, 3, 9, 7) * 255
        with torch.no_grad():
            assert torch.equal(_pieces(net, lr), net(lr)), (option, scale)
        stages = net.upper_stages()
        dynamic = [m for m in net.modules() if isinstance(m, DynamicConv2d)]
        # one stage, then one per dynamic conv, each starting at it, in execution order
        assert [st.dynamic for st in stages] == [None, *dynamic]
        assert all(st.steps[0].dynamic is st.dynamic for st in stages[1:])
        assert sum(len(st.steps) for st in stages) == len(net.upper.steps())


def test_stage_boundaries_and_radii_of_the_released_network():
    net = HDSRNet(2)
    stages = net.upper_stages()
    # head + block 1's push and dilated conv | dynamic, conv, add, push, dilated | ... |
    # the last dynamic conv, conv, add
    assert [[s.op for s in st.steps] for st in stages[:2]] == [
        ["layer", "push", "layer"],
        ["layer", "layer", "add", "push", "layer"],
    ]
    assert [st.radius for st in stages] == [3, 4, 4, 4, 4, 2]  # 21 px in all
    assert [(st.stack_in, st.stack_out, st.kept) for st in stages] == [
        (0, 1, 0),
        *[(1, 1, 0)] * 4,
        (1, 0, 0),
    ]
    lower = net.lower_stage()
    assert lower is not None and lower.dynamic is None and lower.radius == 16
    assert [s.op for s in lower.steps[:4]] == ["layer", "push", "layer", "push"]
    assert [s.op for s in lower.steps[-2:]] == ["layer", "add"]
    assert HDSRNet(2, lower=None).lower_stage() is None
    for scale in (2, 3, 4):
        for subpixel_tail in (False, True):
            assert HDSRNet(scale, n_feats=8, subpixel_tail=subpixel_tail).tail_radius == 2


def test_the_construction_block_reads_no_further_than_its_radius():
    """An output pixel changes only with inputs within ``tail_radius`` LR px of it."""
    for scale in (2, 3, 4):
        for subpixel_tail in (False, True):
            torch.manual_seed(0)
            net = HDSRNet(scale, n_feats=4, subpixel_tail=subpixel_tail).eval()
            feats, lower = torch.rand(1, 4, 9, 9), torch.rand(1, 4, 9, 9)
            moved = feats.clone()
            moved[:, :, 4, 4] += 1.0  # one LR pixel: outputs up to the radius may change
            with torch.no_grad():
                diff = (net.construct(moved, lower) - net.construct(feats, lower)).abs()
            rows = diff.amax(dim=(0, 1, 3)).nonzero().flatten() // scale
            assert int((rows - 4).abs().max()) == net.tail_radius, (scale, subpixel_tail)
