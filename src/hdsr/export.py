"""An HDSRNet as an ONNX graph, checked against PyTorch (the library behind ``hdsr-export``).

The graph reads ``lr``, float32 ``(1, 3, H, W)`` on 0..255, any ``H`` and ``W``, and
writes ``sr``, float32 ``(1, 3, sH, sW)`` on the same scale (not clipped, like the PyTorch
network).

The batch is one image: a dynamic conv mixes its own kernel per image, which a batch
applies as a conv grouped by the batch size, and an ONNX ``Conv`` fixes its group count
when it is written. The graph has the network's own parameters; each dynamic conv is
exported as real graph ops (mean over the image, attention MLP, softmax, kernel mix, then
a ``Conv`` whose kernel is that result), so every input gets its own attention.

The checks: :func:`graph_dynamic_convs` (every dynamic conv has a ``Conv`` whose kernel is
computed from ``lr`` in the graph, not a constant frozen from the traced image),
:func:`compare` (onnxruntime against PyTorch's eager output on :func:`check_inputs`, a
photograph and uniform noise per size) and :func:`parity_verdict` (the bound, or float32
rounding as :func:`rounding_note` tells it apart from a wrong graph).

``onnx`` and ``onnxruntime`` are the ``export`` extra: :func:`require_onnx` imports them.
"""

from __future__ import annotations

import copy
import errno
import math
import os
import re
import secrets
import socket
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.data import astronaut
from torch import nn

from hdsr.inference.budget import FIXED_BYTES, untiled_bytes
from hdsr.models.layers import DynamicConv2d

try:  # private: its absence only costs the exact top opset
    from torch.onnx import _constants as _onnx_constants
except ImportError:
    _onnx_constants = None

EXTRA_HINT = "hdsr-export needs the export extra (onnx, onnxruntime): pip install 'hdsr[export]'"
#: the opsets accepted: Einsum (the sub-pixel tail's kernel) needs 12; the TorchScript
#: exporter stops at 20
MIN_OPSET = 12
DEFAULT_OPSET = 17
#: (height, width) of the LR inputs the parity check runs
SIZES: tuple[tuple[int, int], ...] = ((17, 23), (48, 64), (96, 80))
#: max abs difference, on the 0..255 scale, allowed between onnxruntime and PyTorch
TOLERANCE = 1e-3
#: the size of the dummy input the exporter traces (none of the checked sizes)
TRACE_SIZE = (16, 24)


def max_opset() -> int:
    """The newest opset the TorchScript-based exporter (``dynamo=False``) writes."""
    try:
        return int(_onnx_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except AttributeError:  # also: no _constants module at all (None)
        return 20


class MissingExtra(ImportError):
    """onnx or onnxruntime is not installed."""


def require_onnx():
    """``(onnx, onnxruntime)``, or :class:`MissingExtra` naming the extra to install."""
    try:
        # here, not at the top: the export extra stays optional
        import onnx
        import onnxruntime
    except ImportError as err:
        raise MissingExtra(f"{EXTRA_HINT} ({err})") from None
    return onnx, onnxruntime


# --- the exported module ------------------------------------------------------------------


class BatchOneDynamicConv2d(DynamicConv2d):
    """``DynamicConv2d`` for one image, with the kernel's shape spelled out.

    The same arithmetic as ``DynamicConv2d.forward``'s one-image branch (attention from
    this input, ``attn @ weight``, one conv), on the same parameters. That branch shapes
    the kernel ``(b * c, c, k, k)`` from the input's batch size, which the exporter
    records as a graph value, and the exporter refuses a conv whose kernel shape it cannot
    infer; here the shape comes from the module's own sizes.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, k = self.channels, self.kernel_size
        attn = self.attention_weights(x)  # (1, K)
        weight = (attn @ self.weight).view(c, c, k, k)
        bias = (attn @ self.bias).reshape(c)
        return F.conv2d(x, weight, bias, padding=k // 2)


class Float32IO(nn.Module):
    """A float16 network behind a float32 input (cast once on the way in); HDSRNet's
    output is float32 already (its final conv and mean shift run in float32)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(torch.float16)).float()


def export_module(net: nn.Module, fp16: bool = False) -> nn.Module:
    """A copy of ``net`` to trace: its dynamic convs take the one-image form, its weights
    float16 behind a float32 input with ``fp16``. ``net`` itself is left as it is."""
    module = copy.deepcopy(net).eval()
    for m in module.modules():
        if type(m) is DynamicConv2d:
            m.__class__ = BatchOneDynamicConv2d  # same parameters and names
    return Float32IO(module.half()) if fp16 else module.float()


def count_dynamic_convs(net: nn.Module) -> int:
    return sum(isinstance(m, DynamicConv2d) for m in net.modules())


def write_onnx(module: nn.Module, path: str | os.PathLike[str], opset: int) -> None:
    """Trace ``module`` on one ``(1, 3, *TRACE_SIZE)`` image and write the graph: input
    ``lr`` and output ``sr`` with dynamic height and width."""
    sample = torch.rand(1, 3, *TRACE_SIZE, generator=torch.Generator().manual_seed(0)) * 255
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # the TorchScript exporter's own deprecation notice; its tracer warnings would
        # only repeat what the structural and parity checks below establish
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (sample,),
            os.fspath(path),
            dynamo=False,
            input_names=["lr"],
            output_names=["sr"],
            dynamic_axes={"lr": {2: "height", 3: "width"}, "sr": {2: "sr_height", 3: "sr_width"}},
            opset_version=opset,
            do_constant_folding=True,
        )


def write_checked(net: nn.Module, path: str | os.PathLike[str], opset: int, fp16: bool = False):
    """Write ``net``'s graph (:func:`export_module`, :func:`write_onnx`) to ``path``, read
    it back and run the ONNX checker on it; returns the loaded model. Whatever the
    exporter, the reader or the checker raises is passed on."""
    onnx, _ = require_onnx()
    write_onnx(export_module(net, fp16=fp16), path, opset)
    model = onnx.load(os.fspath(path))
    onnx.checker.check_model(model)
    return model


def _host() -> str:
    """This machine's short name as it goes into a temporary name (no dots)."""
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname().split(".")[0])[:40] or "host"


def temporary_path(dest: Path, tag: str) -> Path:
    """A fresh name next to ``dest``, for the exporter to create (with the usual mode):
    ``.<dest name>.<host>-<pid>.<random>.<tag>.part``, so that a later export can tell
    the temporaries of a dead process (:func:`stale_temporaries`) from those of a live one."""
    owner = f"{_host()}-{os.getpid()}"
    return dest.parent / f".{dest.name}.{owner}.{secrets.token_hex(4)}.{tag}.part"


#: a temporary of another machine (or of an hdsr before the owner was in the name) is
#: stale once this old: an export writes and renames its graphs within minutes
STALE_AGE_S = 24 * 3600
_OWNED = re.compile(r"(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[0-9a-f]{8}\.\w+")
_UNOWNED = re.compile(r"[0-9a-f]{8}\.\w+")  # the names of earlier versions


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as err:  # EPERM: someone else's live process
        return err.errno == errno.EPERM
    return True


def stale_temporaries(dest: Path, now: float | None = None) -> list[Path]:
    """The temporaries of ``dest`` (:func:`temporary_path`) left by exports that were
    killed (SIGKILL, out of memory): those of a process of this machine that no longer
    runs, and, whatever wrote them, those older than :data:`STALE_AGE_S`. Never raises."""
    now = time.time() if now is None else now
    head, host = f".{dest.name}.", _host()
    stale = []
    try:
        entries = list(dest.parent.iterdir())
    except OSError:
        return []
    for path in entries:
        name = path.name
        if not (name.startswith(head) and name.endswith(".part")):
            continue
        middle = name[len(head) : -len(".part")]
        owned = _OWNED.fullmatch(middle)
        if owned is None and _UNOWNED.fullmatch(middle) is None:
            continue  # not a temporary of this destination
        if owned and owned["host"] == host and int(owned["pid"]) != os.getpid():
            if not _alive(int(owned["pid"])):
                stale.append(path)
            continue
        try:
            if now - path.lstat().st_mtime > STALE_AGE_S:
                stale.append(path)
        except OSError:
            continue
    return sorted(stale)


def remove_quietly(path: Path) -> bool:
    """Delete ``path`` if it can be; whether it is gone. Never raises (cleanup must not
    hide the error that caused it, nor add a traceback of its own)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def cpu_session(ort, path: Path):
    """An onnxruntime session (CPUExecutionProvider) on the graph at ``path``."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: no notices about inserted casts
    return ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])


# --- memory -------------------------------------------------------------------------------

#: bytes per LR pixel that an onnxruntime session keeps after running one image (its CPU
#: arena does not shrink), per scale and graph: the full HDSRNet on CPU, fresh processes,
#: largest of 128..400 px sides (x2: 3048, 4138; x3: 5536, 8039; x4: 8632, 13160), plus
#: about 25%
ORT_BYTES_PER_PIXEL = {"fp32": {2: 3800, 3: 7000, 4: 10800}, "fp16": {2: 5200, 3: 10000, 4: 16500}}
#: the same for the float64 PyTorch run of :func:`rounding_note` (measured 22925, 51671,
#: 89044: float64 convolutions take a slower path than float32 ones), plus about 25%
FLOAT64_BYTES_PER_PIXEL = {2: 28700, 3: 64600, 4: 111000}


def parity_peak_bytes(
    sizes: Sequence[tuple[int, int]], scale: int, *, fp16: bool = False, cross_check: bool = True
) -> int:
    """Estimated peak memory of the parity check (:func:`compare`, :func:`parity_verdict`)
    on ``sizes``: the onnxruntime sessions' arenas at the largest size (kept once used)
    plus, at that size, PyTorch's float32 pass (:func:`hdsr.inference.budget.untiled_bytes`)
    or, with ``cross_check``, the float64 run of :func:`rounding_note` (which runs when
    the fp32 gap exceeds the tolerance), whichever is larger. For the full-size network;
    smaller ones need less."""
    if not sizes:
        return FIXED_BYTES
    h, w = max(sizes, key=lambda s: s[0] * s[1])
    k = scale if scale in FLOAT64_BYTES_PER_PIXEL else max(FLOAT64_BYTES_PER_PIXEL)
    pixels = h * w
    arenas = ORT_BYTES_PER_PIXEL["fp32"][k] * pixels
    if fp16:
        arenas += ORT_BYTES_PER_PIXEL["fp16"][k] * pixels
    torch_pass = untiled_bytes(h, w, k)  # FIXED_BYTES included
    if cross_check:
        torch_pass = max(torch_pass, FLOAT64_BYTES_PER_PIXEL[k] * pixels + FIXED_BYTES)
    return math.ceil(arenas + torch_pass)


# --- checks -------------------------------------------------------------------------------


def graph_dynamic_convs(model) -> int:
    """How many ``Conv`` nodes of an ONNX model take a kernel computed from the input."""
    from_input = {i.name for i in model.graph.input}
    dynamic = 0
    for node in model.graph.node:  # ONNX graphs are stored in topological order
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in from_input:
            dynamic += 1
        if from_input.intersection(node.input):
            from_input.update(node.output)
    return dynamic


def symbolic_sides(model) -> bool:
    """Whether the graph input's height and width are symbolic (any size)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return len(dims) == 4 and all(d.dim_param and not d.dim_value for d in dims[2:])


def static_graph_problem(model, net: nn.Module) -> str | None:
    """``None`` when each of ``net``'s dynamic convs has a ``Conv`` in ``model`` whose
    kernel is computed from the input and the input's sides are symbolic; else what the
    graph has instead."""
    expected, found = count_dynamic_convs(net), graph_dynamic_convs(model)
    if found == expected and symbolic_sides(model):
        return None
    return (
        f"{found} of {expected} dynamic convs compute their kernel from "
        f"the input, height/width symbolic: {symbolic_sides(model)}"
    )


def check_inputs(sizes: Sequence[tuple[int, int]] = SIZES) -> list[tuple[str, np.ndarray]]:
    """``[(image, lr)]``: a photograph crop and uniform noise per size, float32
    ``(1, 3, h, w)`` on 0..255, the same every run."""
    photo = astronaut()
    rng = np.random.default_rng(0)
    cases = []
    for i, (h, w) in enumerate(sizes):
        y0, x0 = 60 + 37 * i, 150 + 29 * i  # face, helmet and suit, different per size
        if y0 + h > photo.shape[0] or x0 + w > photo.shape[1]:  # mirrored past the edge
            extra = ((0, max(0, y0 + h - photo.shape[0])), (0, max(0, x0 + w - photo.shape[1])))
            photo = np.pad(photo, (*extra, (0, 0)), mode="symmetric")
        crop = photo[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
        cases.append(("natural", np.ascontiguousarray(crop.transpose(2, 0, 1)[None])))
        noise = rng.uniform(0, 255, (1, 3, h, w)).astype(np.float32)
        cases.append(("noise", noise))
    return cases


def onnx_forward(session, lr: np.ndarray) -> np.ndarray:
    """onnxruntime's ``sr`` for one ``lr``."""
    return session.run(["sr"], {"lr": lr})[0]


def torch_forward(net: nn.Module, lr: np.ndarray) -> np.ndarray:
    """The PyTorch network's eager output for one ``lr``, float32 numpy."""
    with torch.inference_mode():
        return net(torch.from_numpy(lr)).float().numpy()


def rounding_note(net: nn.Module, session, lr: np.ndarray) -> tuple[str, bool]:
    """Whether a failed comparison looks like float32 rounding or like a wrong graph: both
    outputs against a float64 run of the PyTorch network on the same ``lr``. Returns the
    explanation and whether it is rounding (onnxruntime no further from the float64 run
    than PyTorch's float32 output)."""
    ref = torch_forward(net, lr).astype(np.float64)
    out = onnx_forward(session, lr).astype(np.float64)
    with torch.inference_mode():
        exact = copy.deepcopy(net).double()(torch.from_numpy(lr).double()).numpy()
    if out.shape != exact.shape or not np.isfinite(out).all():
        return "the graph's output has the wrong shape or is not finite: a broken export", False
    torch_err = float(np.abs(ref - exact).max())
    onnx_err = float(np.abs(out - exact).max())
    note = (
        f"against a float64 run (output range {exact.min():.0f}..{exact.max():.0f}): "
        f"PyTorch float32 is off by {torch_err:.3g}, onnxruntime by {onnx_err:.3g}"
    )
    if onnx_err <= torch_err:
        return note + (
            "; the graph is as close to exact as PyTorch itself: float32 rounding of large "
            "intermediate values, not an export error"
        ), True
    return note + "; onnxruntime is further off than PyTorch's rounding: a wrong graph", False


@dataclass
class Row:
    """One checked input: its size, content and the graphs' max abs differences."""

    size: tuple[int, int]
    image: str
    sr_size: tuple[int, ...]
    diffs: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def compare(
    sessions: dict[str, object],
    net,
    scale: int,
    cases: list[tuple[str, np.ndarray]],
    scale_check: bool,
) -> list[Row]:
    """Run each case through PyTorch and every session (``{label: session}``)."""
    rows = []
    for image, lr in cases:
        ref = torch_forward(net, lr)
        h, w = lr.shape[2:]
        row = Row((h, w), image, tuple(ref.shape))
        if scale_check and ref.shape != (1, 3, scale * h, scale * w):
            row.problems.append(f"PyTorch output {ref.shape} is not x{scale} of {lr.shape}")
        for label, session in sessions.items():
            out = onnx_forward(session, lr)
            if out.shape != ref.shape:
                row.diffs[label] = float("inf")
                row.problems.append(f"{label} output shape {out.shape}, PyTorch {ref.shape}")
                continue
            diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
            row.diffs[label] = float(diff.max()) if np.isfinite(out).all() else float("nan")
        rows.append(row)
    return rows


def format_table(rows: list[Row], labels: Sequence[str], scale_check: bool) -> str:
    head = ["size", "image"] + (["sr size"] if scale_check else [])
    head += [f"max|diff| {label}" for label in labels]
    lines = []
    for r in rows:
        cells = [f"{r.size[0]}x{r.size[1]}", r.image]
        if scale_check:
            cells.append(f"{r.sr_size[2]}x{r.sr_size[3]}" if len(r.sr_size) == 4 else "?")
        cells += [f"{r.diffs.get(label, float('nan')):.3g}" for label in labels]
        lines.append(cells)
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*cells).rstrip() for cells in [head, *lines])


@dataclass
class Verdict:
    """The outcome of the checks: what failed (nothing: the graph may be written) and,
    when nothing did, the one-line summary of the parity."""

    problems: list[str]
    summary: str = ""


def parity_verdict(
    rows: list[Row],
    cases: list[tuple[str, np.ndarray]],
    net: nn.Module,
    session32,
    tolerance: float,
    hard_bound: bool,
    fp16: bool,
) -> Verdict:
    """Judge :func:`compare`'s ``rows`` (of ``cases``): the fp32 graph (``session32``)
    within ``tolerance`` of PyTorch, or, unless ``hard_bound`` (a tolerance the user
    gave), beyond it by float32 rounding only (:func:`rounding_note`); with ``fp16`` the
    fp16 graph's outputs finite (its difference is reported, not bounded)."""
    problems = [f"{r.size[0]}x{r.size[1]} {r.image}: {p}" for r in rows for p in r.problems]
    i_worst = max(range(len(rows)), key=lambda i: _badness(rows[i].diffs["fp32"]))
    worst32 = rows[i_worst]
    accepted = None
    if not worst32.diffs["fp32"] <= tolerance:
        note, rounding = rounding_note(net, session32, cases[i_worst][1])
        gap = (
            f"max abs diff {worst32.diffs['fp32']:.3g} > {tolerance:g} "
            f"({worst32.size[0]}x{worst32.size[1]} {worst32.image})"
        )
        if rounding and not hard_bound:
            accepted = f"{gap}, accepted: {note}"
        else:
            problems += [f"fp32 parity failed: {gap}", note]
    if fp16:
        diffs16 = [r.diffs["fp16"] for r in rows]
        if not all(np.isfinite(d) for d in diffs16):
            problems.append("the fp16 graph's output is not finite (float16 overflow)")
    if problems:
        return Verdict(problems)
    worst = max(r.diffs["fp32"] for r in rows)
    summary = accepted or f"fp32 max abs diff {worst:.3g} <= {tolerance:g}"
    if fp16:
        summary += f"; fp16 graph max abs diff {max(diffs16):.3g} (reported, not bounded)"
    return Verdict(problems, summary)


def _badness(diff: float) -> float:
    """Sort key: NaN (non-finite output) counts as worst."""
    return float("inf") if np.isnan(diff) else diff
