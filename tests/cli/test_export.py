"""``hdsr-export``: ONNX graphs that match PyTorch, fp16, and nothing written on failure.

Randomly initialised networks put out values in the thousands (a trained one stays near
0..255), where float32 rounding alone reaches 1e-3. The test networks are therefore
brought to the image scale (their final conv scaled so that no output on the checked
inputs is more than 220 from the mean grey) and given sharp attention (the attention
logits scaled up), so that the dynamic convs really mix different kernels for different
inputs and a graph with frozen attention could not pass.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hdsr import export
from hdsr.cli.export import main
from hdsr.export import check_inputs
from hdsr.models import DynamicConv2d, HDSRNet, hdsr_to_official_key, load_official

# the export extra (in the test extra too); without it only the import error is testable
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TINY = {
    "_target_": "hdsr.models.HDSRNet",
    "scale": 2,
    "n_feats": 8,
    "n_blocks": 1,
    "lower_layers": 2,
}
#: the sizes the full-size network is checked on (the default ones take ~4x as long)
SMALL = ((17, 23), (24, 32), (12, 9))
ROW = re.compile(r"^(\d+)x(\d+)\s+(natural|noise)\s+(.*)$", re.M)


def _image_scale(net: torch.nn.Module, sizes=export.SIZES) -> torch.nn.Module:
    """Sharp attention, and outputs within about -100..350 on the checked inputs (noise
    included), like a trained network's, instead of a random one's thousands."""
    net.eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, DynamicConv2d):
                m.attention[2].weight.mul_(200.0)
        mean = net.add_mean.bias.view(1, 3, 1, 1)
        peak = max((net(torch.from_numpy(lr)) - mean).abs().max() for _, lr in check_inputs(sizes))
        net.tail.conv.weight.mul_(220.0 / peak)
    return net


def _save_ckpt(path: Path, state: dict, raw: dict | None = None, config: dict = TINY) -> Path:
    ckpt = {
        "state_dict": {f"net.{k}": v for k, v in state.items()},
        "hyper_parameters": {"net_config": config, "scale": config["scale"], "model_name": "t"},
    }
    if raw is not None:  # an EMA run: averaged weights in state_dict, trained ones here
        ckpt["current_model_state"] = {f"net.{k}": v for k, v in raw.items()}
    torch.save(ckpt, path)
    return path


def _tiny(seed: int) -> HDSRNet:
    torch.manual_seed(seed)
    return _image_scale(HDSRNet(**{k: v for k, v in TINY.items() if k != "_target_"}))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, HDSRNet, HDSRNet]:
    """An EMA checkpoint of a tiny HDSRNet x2: ``(path, ema net, raw net)``."""
    ema, raw = _tiny(0), _tiny(1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    return _save_ckpt(path, ema.state_dict(), raw.state_dict()), ema, raw


def _rows(stdout: str) -> list[tuple[int, int, str, list[float]]]:
    rows = []
    for h, w, image, rest in ROW.findall(stdout):
        cells = rest.split()
        rows.append((int(h), int(w), image, [float(c) for c in cells if "x" not in c]))
    return rows


def _run(model: Path, lr: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(["sr"], {"lr": lr})[0]


def _torch(net: torch.nn.Module, lr: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(lr)).numpy()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".onnx", ".part"))


def test_parity_on_three_sizes_photo_and_noise(tiny, tmp_path, capsys):
    path, ema, _ = tiny
    out = tmp_path / "tiny.onnx"
    assert main([str(path), "-o", str(out), "--scale-check"]) == 0
    stdout = capsys.readouterr().out
    rows = _rows(stdout)
    assert [(h, w, img) for h, w, img, _ in rows] == [
        (h, w, img) for h, w in ((17, 23), (48, 64), (96, 80)) for img in ("natural", "noise")
    ]
    assert all(len(d) == 1 and d[0] <= 1e-3 for *_, d in rows), stdout
    for h, w in ((17, 23), (48, 64), (96, 80)):  # --scale-check: the sr size column
        assert re.search(rf"^{h}x{w}\s+natural\s+{2 * h}x{2 * w}\s", stdout, re.M)
    assert "1 dynamic conv(s)" in stdout and "parity ok on 6 inputs" in stdout
    assert _leftovers(tmp_path) == ["tiny.onnx"]

    model = onnx.load(str(out))
    (inp,), (outp,) = model.graph.input, model.graph.output
    assert (inp.name, outp.name) == ("lr", "sr")
    assert inp.type.tensor_type.elem_type == outp.type.tensor_type.elem_type == 1  # float32
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == [1, 3, "height", "width"]
    # the dynamic conv's kernel is computed in the graph from the input
    assert export.graph_dynamic_convs(model) == 1

    # sizes and contents the command did not check, including an odd size and a flat image
    rng = np.random.default_rng(5)
    photo = check_inputs()[4][1]  # the 96x80 crop
    for lr in (
        rng.uniform(0, 255, (1, 3, 9, 31)).astype(np.float32),
        np.full((1, 3, 20, 13), 200.0, np.float32),
        np.ascontiguousarray(photo[:, :, 5:60, 7:50]),
    ):
        got, want = _run(out, lr), _torch(ema, lr)
        assert got.shape == (1, 3, 2 * lr.shape[2], 2 * lr.shape[3])
        assert np.abs(got - want).max() <= 1e-3


def test_attention_differs_between_the_checked_images(tiny):
    """The check has teeth: the photo and the noise give the dynamic conv different mixes."""
    _, ema, _ = tiny
    conv = next(m for m in ema.modules() if isinstance(m, DynamicConv2d))
    seen = []
    hook = conv.register_forward_hook(lambda m, args, out: seen.append(m.attention_weights(*args)))
    for _, lr in check_inputs():
        _torch(ema, lr)
    hook.remove()
    spread = (torch.cat(seen).max(0).values - torch.cat(seen).min(0).values).max()
    assert spread > 0.2


def test_frozen_attention_is_refused_and_nothing_written(tiny, tmp_path, monkeypatch, capsys):
    path, _, _ = tiny
    frozen = torch.tensor([[0.7, 0.1, 0.1, 0.1]])
    monkeypatch.setattr(export.BatchOneDynamicConv2d, "attention_weights", lambda self, x: frozen)
    out = tmp_path / "frozen.onnx"
    assert main([str(path), "-o", str(out)]) == 1
    assert "0 of 1 dynamic convs" in capsys.readouterr().err  # the structural check
    # and were that check fooled, the parity check on the six inputs would still fail
    monkeypatch.setattr(export, "graph_dynamic_convs", lambda model: 1)
    assert main([str(path), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "fp32 parity failed" in err and "a wrong graph" in err
    assert _leftovers(tmp_path) == []


def test_the_header_names_the_weights_exported(tiny, tmp_path, capsys):
    """ "ema weights" only for an EMA checkpoint's average (it said so for any .ckpt)."""
    path, ema, _ = tiny
    plain = _save_ckpt(tmp_path / "plain.ckpt", ema.state_dict())
    for ckpt, extra, says in (
        (plain, [], "trained weights"),
        (plain, ["--weights", "raw"], "trained weights"),
        (path, [], "ema weights"),
    ):
        assert main([str(ckpt), "-o", str(tmp_path / "h.onnx"), *extra]) == 0
        assert f"t x2 (7,072 parameters, {says}) from {ckpt}" in capsys.readouterr().out


def test_raw_weights_and_fp16(tiny, tmp_path, capsys):
    path, ema, raw = tiny
    out = tmp_path / "raw16.onnx"
    assert main([str(path), "-o", str(out), "--weights", "raw", "--fp16"]) == 0
    stdout = capsys.readouterr().out
    rows = _rows(stdout)
    assert len(rows) == 6 and all(len(d) == 2 for *_, d in rows)
    assert all(d[0] <= 1e-3 for *_, d in rows)  # the fp32 graph of the same network
    fp16 = float(re.search(r"fp16 graph max abs diff (\S+)", stdout).group(1))
    assert fp16 == max(d[1] for *_, d in rows)
    print(f"tiny x2, fp16 graph vs PyTorch fp32: max abs diff {fp16} (0..255 scale)")
    assert 0 < fp16 < 5  # reported, not bounded by the command; float16-sized here

    model = onnx.load(str(out))
    types = {init.data_type for init in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    lr = check_inputs()[2][1]
    got = _run(out, lr)
    # the trained (raw) weights, not the averaged ones
    assert np.abs(got - _torch(raw, lr)).max() < 5
    assert np.abs(got - _torch(ema, lr)).max() > 20
    assert _leftovers(tmp_path) == ["raw16.onnx"]


def test_full_size_x2_in_the_authors_format(tmp_path, capsys):
    """The released HDSRNet x2 (64 features, 5 blocks, 16 lower layers) from a ``.pt``."""
    torch.manual_seed(0)
    net = _image_scale(HDSRNet(scale=2), SMALL)
    state = {}
    for key, value in net.state_dict().items():
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] > 64:
            value = value.view(value.shape[0], 64, 64, 3, 3)  # released kernel layout
        state[hdsr_to_official_key(key)] = value
    pt = tmp_path / "HDSRNet_x2.pt"
    torch.save(state, pt)
    assert torch.equal(load_official(pt, 2).tail.conv.weight, net.tail.conv.weight)

    out = tmp_path / "x2.onnx"
    sizes = ",".join(f"{h}x{w}" for h, w in SMALL)
    assert main([str(pt), "-o", str(out), "--fp16", "--scale-check", "--sizes", sizes]) == 0
    stdout = capsys.readouterr().out
    assert "HDSRNet (official) x2 (1,818,496 parameters, released weights)" in stdout
    assert "5 dynamic conv(s)" in stdout
    rows = _rows(stdout)
    assert [(h, w) for h, w, *_ in rows] == [s for s in SMALL for _ in "ab"]
    assert all(d[0] <= 1e-3 for *_, d in rows), stdout
    fp16 = float(re.search(r"fp16 graph max abs diff (\S+)", stdout).group(1))
    print(f"full x2, fp16 graph vs PyTorch fp32: max abs diff {fp16} (0..255 scale)")
    assert np.isfinite(fp16)
    assert _leftovers(tmp_path) == ["x2.onnx"]


def test_failed_parity_leaves_no_file_and_keeps_an_old_one(tiny, tmp_path, monkeypatch, capsys):
    path, _, _ = tiny
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    real = export.onnx_forward
    monkeypatch.setattr(export, "onnx_forward", lambda s, lr: real(s, lr) + 0.01)
    assert main([str(path), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "fp32 parity failed: max abs diff 0.01" in err and "nothing written" in err
    assert out.read_bytes() == b"an earlier export"
    assert _leftovers(tmp_path) == ["model.onnx"]

    # a tolerance the float32 rounding cannot meet fails the same way
    monkeypatch.setattr(export, "onnx_forward", real)
    assert main([str(path), "-o", str(tmp_path / "tight.onnx"), "--tolerance", "1e-12"]) == 1
    assert "fp32 parity failed" in capsys.readouterr().err
    assert _leftovers(tmp_path) == ["model.onnx"]


def test_rounding_beyond_the_default_tolerance_is_accepted_not_a_given_one(
    tiny, tmp_path, monkeypatch, capsys
):
    """A trained network's large intermediate values can put PyTorch's own float32 output
    more than 1e-3 from exact: the default check then accepts a graph that is no further
    from a float64 run than PyTorch is; an explicit --tolerance is a hard bound."""
    path, _, _ = tiny
    monkeypatch.setattr(export, "TOLERANCE", 1e-12)  # every gap is over the default now
    assert main([str(path), "-o", str(tmp_path / "ok.onnx")]) == 0
    out = capsys.readouterr().out
    assert "accepted: against a float64 run" in out and "as close to exact as PyTorch" in out
    assert (tmp_path / "ok.onnx").is_file()
    monkeypatch.setattr(export, "rounding_note", lambda *a: ("a wrong graph", False))
    assert main([str(path), "-o", str(tmp_path / "bad.onnx")]) == 1
    assert not (tmp_path / "bad.onnx").exists()


def test_failed_export_leaves_no_partial_file(tiny, tmp_path, monkeypatch, capsys):
    path, _, _ = tiny
    real = export.write_onnx

    def half_written(module, tmp, opset):
        real(module, tmp, opset)
        Path(tmp).write_bytes(Path(tmp).read_bytes()[:1000])  # cut short

    monkeypatch.setattr(export, "write_onnx", half_written)
    assert main([str(path), "-o", str(tmp_path / "m.onnx")]) == 1
    assert "the fp32 export failed" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("module", ["onnxruntime", "onnx"])
def test_missing_export_extra(tiny, tmp_path, monkeypatch, capsys, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    assert main([str(tiny[0]), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'hdsr[export]'" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []


def test_bad_arguments_and_checkpoints(tiny, tmp_path, capsys):
    good = str(tiny[0])
    out = str(tmp_path / "m.onnx")

    def fails(argv: list[str], *needles: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err
        for needle in needles:
            assert needle in err, err

    fails([str(tmp_path / "nope.ckpt"), "-o", out], "nope.ckpt", "does not exist")
    fails([str(tmp_path), "-o", out], "is a directory")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    fails([str(junk), "-o", out], "junk.ckpt is not a readable checkpoint")
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(tiny[0].read_bytes()[:5000])
    fails([str(cut), "-o", out], "cut.ckpt is not a readable checkpoint", "Error")
    alien = _save_ckpt(tmp_path / "alien.ckpt", {}, config={"_target_": "os.system", "scale": 2})
    fails([str(alien), "-o", out], "alien.ckpt", "os.system", "refusing to build it")
    wrong = _save_ckpt(tmp_path / "wrong.ckpt", {"upper.head.conv.weight": torch.zeros(1)})
    fails([str(wrong), "-o", out], "cannot rebuild a network from", "wrong.ckpt")
    odd = tmp_path / "odd.pt"
    torch.save({"some.weight": torch.zeros(2)}, odd)
    fails([str(odd), "-o", out], "odd.pt", "not an HDSRNet checkpoint")
    bicubic = {"_target_": "hdsr.models.bicubic.BicubicUpsampler", "scale": 2}
    bic = _save_ckpt(tmp_path / "bicubic.ckpt", {}, config=bicubic)
    fails([str(bic), "-o", out], "BicubicUpsampler, not an HDSRNet")
    fails([good, "-o", out, "--opset", "11"], "--opset 11 is not supported", "12..")
    fails([good, "-o", out, "--opset", "99"], "--opset 99 is not supported")
    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    fails([good, "-o", str(afile / "m.onnx")], f"{afile} is a file, not a folder")
    fails([good, "-o", str(tmp_path)], "is a directory")
    fails([good, "-o", out, "--tolerance", "0"], "--tolerance must be > 0")
    for off in ("inf", "nan"):  # values that would switch the parity check off
        fails([good, "-o", out, "--tolerance", off], f"must be > 0 and finite, got {off}")
    with pytest.raises(SystemExit) as exit_:  # argparse's own usage error
        main([good, "-o", out, "--sizes", "17x23,64"])
    assert exit_.value.code == 2 and "'64' is not a size HxW" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []


# --- the destination, stale temporaries, SIGTERM and memory (review findings) -----------


def _one_line(err: str) -> str:
    """The one line a refused command writes to stderr (never a traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_export(monkeypatch):
    """Records the export work started: none may start once the arguments are refused."""
    started = []

    def refuse(*args, **kwargs):
        started.append(args)
        raise AssertionError("export work started")

    monkeypatch.setattr(export, "write_checked", refuse)
    monkeypatch.setattr(export, "check_inputs", refuse)
    return started


def test_unwritable_destination_is_one_line_before_any_work(
    tiny, tmp_path, monkeypatch, capsys, no_export
):
    """A folder nothing can be written to (here: creating a file in it is denied, as in a
    read-only folder; tests run as root, where chmod does not stop writes), a folder that
    is a file and one that cannot be created: one line naming -o, exit 2, no export."""
    ckpt = str(tiny[0])
    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own keyword
        if dir is not None and Path(dir) == ro:
            raise PermissionError(13, "Permission denied", str(Path(dir) / "x"))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    assert main([ckpt, "-o", str(ro / "m.onnx")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"-o {ro / 'm.onnx'}: cannot write to the folder {ro} (Permission denied)" in line

    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    assert main([ckpt, "-o", str(afile / "sub" / "m.onnx")]) == 2
    assert "cannot write to the folder" in _one_line(capsys.readouterr().err)
    assert no_export == [] and _leftovers(ro) == []

    # a missing folder is created (and the export then starts)
    new = tmp_path / "new" / "sub"
    assert main([ckpt, "-o", str(new / "m.onnx")]) == 1  # the export failed (refused)
    assert new.is_dir() and len(no_export) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_read_only_folder_is_refused(tiny, tmp_path, capsys, no_export):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main([str(tiny[0]), "-o", str(ro / "m.onnx")]) == 2
    finally:
        ro.chmod(0o755)
    assert "(Permission denied)" in _one_line(capsys.readouterr().err)
    assert no_export == []


def test_cleanup_of_temporaries_never_raises(tiny, tmp_path, monkeypatch, capsys):
    """The folder turns read-only during the export: the write fails and so does the
    removal of the temporary file; the failure is reported, not a second traceback."""

    def denied(module, tmp, opset):
        Path(tmp).write_bytes(b"partial")
        raise PermissionError(13, "Permission denied", str(tmp))

    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self.name.endswith(".part"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(export, "write_onnx", denied)
    monkeypatch.setattr(Path, "unlink", unlink)
    assert main([str(tiny[0]), "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "the fp32 export failed: PermissionError" in err and "Traceback" not in err


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname().split(".")[0])[:40] or "host"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_killed_exports_are_removed(tiny, tmp_path, capsys):
    """An export killed outright (SIGKILL, out of memory) leaves its ``.part`` files; the
    next export to the same file removes those of dead processes, and those a day old,
    and keeps a live export's and other destinations' ones."""
    dead, live = _dead_pid(), os.getppid()
    names = {
        f".m.onnx.{_host()}-{dead}.0123abcd.fp32.part": False,  # dead process: removed
        f".m.onnx.{_host()}-{dead}.4567cdef.fp16.part": False,
        f".m.onnx.{_host()}-{live}.89abcdef.fp32.part": True,  # a live export's
        f".m.onnx.otherhost-{dead}.0123abcd.fp32.part": True,  # another machine's, fresh
        ".m.onnx.0123abcd.fp32.part": True,  # an earlier hdsr's name, fresh
        ".m.onnx.89abcdef.fp32.part": False,  # ... and two days old
        f".other.onnx.{_host()}-{dead}.0123abcd.fp32.part": True,  # another destination's
    }
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    old = time.time() - 2 * 86400
    os.utime(tmp_path / ".m.onnx.89abcdef.fp32.part", (old, old))
    assert main([str(tiny[0]), "-o", str(tmp_path / "m.onnx")]) == 0
    assert "removed 3 temporary file(s) of a killed export" in capsys.readouterr().out
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {n for n, keep in names.items() if keep} | {"m.onnx"}
    # what makes that possible: the owner is in the name
    assert f"{_host()}-{os.getpid()}." in export.temporary_path(tmp_path / "m.onnx", "x").name


def test_sigterm_during_the_export_removes_its_temporaries(tiny, tmp_path, monkeypatch, capsys):
    """SIGTERM while the graph is being written: the temporaries are removed, one line,
    exit 143 (in-process: a handler that ignores SIGTERM stands in for the default one,
    which would end the test run)."""
    real = export.write_onnx

    def terminated(module, tmp, opset):
        real(module, tmp, opset)
        assert _leftovers(tmp_path)  # the temporary exists now
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # the handler runs in here

    received = []

    def ignore(*args):
        received.append(args)

    previous = signal.signal(signal.SIGTERM, ignore)
    try:
        monkeypatch.setattr(export, "write_onnx", terminated)
        assert main([str(tiny[0]), "-o", str(tmp_path / "m.onnx")]) == 128 + 15
    finally:
        assert signal.signal(signal.SIGTERM, previous) is ignore  # main restored it
    line = _one_line(capsys.readouterr().err)
    dest = tmp_path / "m.onnx"
    assert (
        line
        == f"hdsr-export: stopped by SIGTERM; temporary files removed, nothing written to {dest}"
    )
    assert received == [] and _leftovers(tmp_path) == []


_SLOW_EXPORT = """
import sys, time
from hdsr import export
from hdsr.cli.export import main
real = export.write_onnx
def slow(module, tmp, opset):
    real(module, tmp, opset)
    print("written", flush=True)
    time.sleep(120)
export.write_onnx = slow
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_to_an_export_process_leaves_no_part_file(tiny, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_EXPORT, str(tiny[0]), "-o", str(tmp_path / "m.onnx")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:
            if line.startswith("written"):
                break
        assert _leftovers(tmp_path)  # the temporary graph is there
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert _one_line(err).startswith("hdsr-export: stopped by SIGTERM; temporary files removed")
    assert _leftovers(tmp_path) == []


def test_sizes_over_the_memory_limit_are_refused_before_any_work(tiny, tmp_path, capsys, no_export):
    """5000x5000 was killed by the kernel at 23 GB: its estimate is far over any default
    limit; --max-memory lowers the limit below even the default sizes."""
    out = str(tmp_path / "m.onnx")
    assert main([str(tiny[0]), "-o", out, "--sizes", "17x23,5000x5000"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--sizes 5000x5000: the parity check at x2 would need ~" in line
    assert re.search(r"need ~\d+ GiB", line)  # float64 cross-check, onnxruntime: 25 Mpx
    assert "% of the memory available now; --max-memory sets it" in line
    side = int(re.search(r"check smaller --sizes \(up to about (\d+)x\1\)$", line).group(1))
    assert side > 17

    assert main([str(tiny[0]), "-o", out, "--max-memory", "100M"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--sizes 96x80" in line and "over the 100 MiB limit (--max-memory)" in line
    assert "check smaller --sizes (up to about " in line
    assert main([str(tiny[0]), "-o", out, "--max-memory", "1M"]) == 2
    assert _one_line(capsys.readouterr().err).endswith(
        "over the 1.0 MiB limit (--max-memory); raise it"
    )
    assert no_export == [] and _leftovers(tmp_path) == []
    # the estimate without the float64 cross-check and the fp16 graph is less
    full = export.parity_peak_bytes([(96, 80)], 2, fp16=True)
    assert export.parity_peak_bytes([(96, 80)], 2, cross_check=False) < full
