"""``hdsr-profile``: parameter counts, MACs (dynamic convs included) and the CLI."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hdsr.cli.profiling import main
from hdsr.evaluation.complexity import build_model, count_macs, profile_model
from hdsr.models import HDSRNet
from hdsr.sizes import parse_size


@pytest.mark.parametrize(("scale", "params"), [(2, 1_818_496), (3, 2_003_136), (4, 1_966_208)])
def test_released_parameter_counts(scale, params):
    rec = profile_model("hdsrnet", scale, (16, 16))
    assert rec["trainable_params"] == params
    assert rec["params"] == params  # MeanShift weights are buffers
    assert rec["buffers"] == 2 * (9 + 3)
    assert rec["latency_ms"] == {}


def test_macs_x4_at_256_match_the_paper_without_dynamic_convs():
    net, _ = build_model("hdsrnet", 4)
    macs = count_macs(net, (256, 256))
    assert macs["without_dynamic"] == pytest.approx(110.99e9, rel=0.005)  # the paper's figure
    assert macs["total"] == pytest.approx(122.9e9, rel=0.005)
    # five 3x3 64->64 convs at 256x256, plus their attention MLPs and kernel aggregation
    assert macs["dynamic_conv"] == 5 * 256 * 256 * 64 * 64 * 9
    assert macs["dynamic"] == macs["total"] - macs["without_dynamic"]
    assert 0 < macs["dynamic_attention"] < 1e6
    assert next(net.parameters()).device.type == "cpu"  # counted on a copy


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_count_macs_agrees_with_torch_flop_counter(scale):
    # without the sub-pixel tail, every op is a plain conv/mm that FlopCounterMode sees;
    # batch 2 takes the dynamic conv's grouped per-sample path
    net = HDSRNet(scale, n_feats=16, subpixel_tail=False).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(torch.zeros(2, 3, 12, 10))
    assert count_macs(net, (12, 10))["total"] * 2 == fc.get_total_flops() // 2
    # the sub-pixel tail computes the same function: the count is of the architecture
    fast = HDSRNet(scale, n_feats=16, subpixel_tail=True)
    assert count_macs(fast, (12, 10)) == count_macs(net, (12, 10))


def test_variants_without_dynamic_convs_count_zero_dynamic():
    for option in ("ablation/r1_six_conv", "ablation/r3_no_dynamic"):
        net, _ = build_model(option, 2)
        macs = count_macs(net, (8, 8))
        assert macs["dynamic"] == 0 and macs["total"] == macs["without_dynamic"] > 0


def test_parse_size():
    assert parse_size("256x192") == (256, 192)
    assert parse_size("64") == (64, 64)
    for bad in ("0x4", "ax4", "1x2x3"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)


def test_cli_table_and_json(tmp_path, capsys):
    out = tmp_path / "prof.json"
    argv = ["--model", "hdsrnet", "--model", "ablation/r1_six_conv", "--scale", "2", "3"]
    argv += ["--input", "16x16", "--latency-sizes", "16x16", "12x20"]
    argv += ["--repeats", "1", "--warmup", "0", "--device", "cpu", "--json", str(out)]
    assert main(argv) == 0
    records = json.loads(out.read_text())
    assert [(r["model"], r["scale"]) for r in records] == [
        ("hdsrnet", 2),
        ("hdsrnet", 3),
        ("ablation/r1_six_conv", 2),
        ("ablation/r1_six_conv", 3),
    ]
    for r in records:
        assert set(r["latency_ms"]) == {"16x16", "12x20"}
        assert all(v > 0 for v in r["latency_ms"].values())
        assert r["input_hw"] == [16, 16] and r["device"] == "cpu"
        for key in ("trainable_params", "params", "macs", "macs_without_dynamic", "gflops"):
            assert key in r
    assert records[0]["trainable_params"] == 1_818_496
    text = capsys.readouterr().out
    assert "hdsrnet" in text and "LR input" in text


def test_cli_unknown_model_is_an_error(capsys):
    assert main(["--model", "nope", "--latency-sizes", "--input", "8x8"]) == 2
    assert "nope" in capsys.readouterr().err


def _fake_profile(calls):
    def profile(option, scale, input_hw, *args, **kwargs):
        calls.append((option, scale))
        return {
            "model": option,
            "scale": scale,
            "trainable_params": 1,
            "params": 1,
            "macs": 1,
            "macs_without_dynamic": 1,
            "latency_ms": {},
            "input_hw": list(input_hw),
            "device": "cpu",
            "precision": "32",
        }

    return profile


def test_cli_json_path_that_cannot_be_written_is_refused_before_profiling(
    tmp_path, monkeypatch, capsys
):
    """A folder, a folder that is a file, one that cannot be created, a folder nothing can
    be written to (creating a file there denied: tests run as root, where chmod does not
    stop writes): one line naming --json, exit 2, before any profiling."""
    import tempfile

    import hdsr.cli.profiling as profiling

    calls = []
    monkeypatch.setattr(profiling, "profile_model", _fake_profile(calls))
    afile = tmp_path / "afile"
    afile.write_text("")
    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own keyword
        if dir is not None and Path(dir) == ro:
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    base = ["--latency-sizes", "--input", "8x8", "--json"]
    for path, says in (
        (tmp_path, f"--json {tmp_path} is a directory"),
        (afile / "p.json", f"--json {afile / 'p.json'}: {afile} is a file, not a folder"),
        (afile / "sub" / "p.json", "cannot write to the folder"),
        (ro / "p.json", f"cannot write to the folder {ro} (Permission denied)"),
    ):
        assert main([*base, str(path)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and says in err, err
    assert calls == []
    # a missing folder is created, as before
    assert main([*base, str(tmp_path / "new" / "p.json")]) == 0
    assert json.loads((tmp_path / "new" / "p.json").read_text())[0]["model"] == "hdsrnet"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_cli_json_in_a_read_only_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["--latency-sizes", "--input", "8x8", "--json", str(ro / "p.json")]) == 2
    finally:
        ro.chmod(0o755)
    assert "(Permission denied)" in capsys.readouterr().err
