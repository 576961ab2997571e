"""``hdsr-export``: an HDSRNet checkpoint as an ONNX graph, checked against PyTorch.

    hdsr-export CKPT -o model.onnx [--opset N] [--fp16] [--weights ema|raw] [--scale-check]
                [--tolerance T] [--sizes HxW,...]

CKPT is an ``hdsr-train`` ``.ckpt`` (its EMA weights unless ``--weights raw``) or the
authors' ``HDSRNet_x{2,3,4}.pt``. The graph reads ``lr``, float32 ``(1, 3, H, W)`` on
0..255, any ``H`` and ``W``, and writes ``sr``, float32 ``(1, 3, sH, sW)`` on the same
scale (not clipped, like the PyTorch network).

The batch is one image: a dynamic conv mixes its own kernel per image, which a batch
applies as a conv grouped by the batch size, and an ONNX ``Conv`` fixes its group count
when it is written. The graph has the network's own parameters; each dynamic conv is
exported as real graph ops (mean over the image, attention MLP, softmax, kernel mix, then
a ``Conv`` whose kernel is that result), so every input gets its own attention.

Before the file appears, it is checked (``onnxruntime``, CPUExecutionProvider):

* every dynamic conv of the network has a ``Conv`` whose kernel is computed from ``lr``
  in the graph (not a constant frozen from the image the exporter traced);
* the output of onnxruntime equals PyTorch's eager output to ``--tolerance`` (default
  1e-3 grey levels, max abs difference) on three sizes (17x23, 48x64, 96x80; or
  ``--sizes``), each on a photograph (crops of ``skimage.data.astronaut()``) and on
  uniform noise; different contents give the dynamic convs different attention, so a
  graph whose attention did not follow its input would fail here;
* ``--scale-check``: the output is ``scale`` times the input in both sides for each size.

``--fp16`` writes a graph with float16 weights and activations (input and output stay
float32; the mean shifts and the final conv, which make the image on the 0..255 scale,
stay float32 as in the PyTorch network). Its difference to the float32 PyTorch output is
reported, not bounded (only finite outputs are required); the float32 graph of the same
network is exported and checked alongside, and decides the exit status.

The file is written under a temporary name in the destination folder and renamed once
the checks pass: a failed export or check leaves no ``.onnx`` file.

Exit status: 0 written; 1 the export or a check failed; 2 bad arguments, a checkpoint
that is missing, unreadable or whose network cannot be rebuilt, or the export extra
(``onnx``, ``onnxruntime``) not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import secrets
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hdsr.models.layers import DynamicConv2d

PROG = "hdsr-export"
EXTRA_HINT = "hdsr-export needs the export extra (onnx, onnxruntime): pip install 'hdsr[export]'"
#: the opsets hdsr-export accepts: Einsum (the sub-pixel tail's kernel) needs 12; the
#: TorchScript exporter stops at 20
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
        from torch.onnx import _constants

        return int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except (ImportError, AttributeError):
        return 20


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Export an HDSRNet checkpoint (ours or the authors') to ONNX and check "
        "onnxruntime against PyTorch before writing it.",
    )
    p.add_argument("ckpt", metavar="CKPT", help="hdsr-train .ckpt or official HDSRNet_x*.pt")
    p.add_argument("-o", "--output", required=True, type=Path, help="the .onnx file to write")
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {MIN_OPSET}..{max_opset()} (default {DEFAULT_OPSET})",
    )
    p.add_argument(
        "--fp16",
        action="store_true",
        help="write float16 weights and activations (input and output stay float32)",
    )
    p.add_argument(
        "--weights",
        choices=("ema", "raw"),
        default="ema",
        help="a .ckpt with EMA: the averaged weights (default) or the trained ones",
    )
    p.add_argument(
        "--scale-check",
        action="store_true",
        help="also check that each output is scale x the input size",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help=f"max abs difference allowed, 0..255 scale (default {TOLERANCE:g}, and a larger "
        "gap is accepted when onnxruntime is no further from a float64 run than PyTorch's "
        "own float32 output: rounding, not a wrong graph)",
    )
    p.add_argument(
        "--sizes",
        type=_sizes,
        default=SIZES,
        metavar="HxW,...",
        help="LR sizes to check, each on a photo and on noise (default "
        + ",".join(f"{h}x{w}" for h, w in SIZES)
        + ")",
    )
    return p


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    """``"17x23,48x64"`` -> ``((17, 23), (48, 64))``."""
    sizes = []
    for item in text.split(","):
        h, sep, w = item.strip().lower().partition("x")
        if not (sep and h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
            raise argparse.ArgumentTypeError(f"{item.strip()!r} is not a size HxW, e.g. 48x64")
        sizes.append((int(h), int(w)))
    return tuple(sizes)


class MissingExtra(ImportError):
    """onnx or onnxruntime is not installed."""


def require_onnx():
    """``(onnx, onnxruntime)``, or :class:`MissingExtra` naming the extra to install."""
    try:
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


def check_inputs(sizes: Sequence[tuple[int, int]] = SIZES) -> list[tuple[str, np.ndarray]]:
    """``[(image, lr)]``: a photograph crop and uniform noise per size, float32
    ``(1, 3, h, w)`` on 0..255, the same every run."""
    from skimage.data import astronaut

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


# --- the command --------------------------------------------------------------------------


def _err(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr)


def _session(ort, path: Path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: no notices about inserted casts
    return ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])


def _temporary(dest: Path, tag: str) -> Path:
    """A fresh name next to ``dest``, for the exporter to create (with the usual mode)."""
    return dest.parent / f".{dest.name}.{secrets.token_hex(4)}.{tag}.part"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hdsr-export``; returns the exit status (0 written, 1 export or check failed,
    2 bad arguments, checkpoint or missing extra)."""
    args = build_parser().parse_args(argv)
    top = max_opset()
    if not MIN_OPSET <= args.opset <= top:
        _err(f"--opset {args.opset} is not supported: use {MIN_OPSET}..{top}")
        return 2
    given_tolerance = args.tolerance is not None
    if not given_tolerance:
        args.tolerance = TOLERANCE
    if not args.tolerance > 0:
        _err(f"--tolerance must be > 0, got {args.tolerance}")
        return 2
    dest: Path = args.output
    if dest.is_dir():
        _err(f"output {dest} is a directory; name the .onnx file to write")
        return 2
    if not dest.parent.is_dir():
        _err(f"output folder {dest.parent} does not exist")
        return 2
    try:
        onnx, ort = require_onnx()
    except MissingExtra as err:
        _err(str(err))
        return 2

    from hdsr.checkpoints import load_model
    from hdsr.models.hdsrnet import HDSRNet

    try:
        loaded = load_model(args.ckpt, weights=args.weights)
    except (FileNotFoundError, IsADirectoryError) as err:
        _err(str(err))
        return 2
    except Exception as err:  # noqa: BLE001 - unreadable file or unbuildable network
        why = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
        # hdsr's own messages name the file first; anything else gets it added
        _err(
            why
            if why.startswith(args.ckpt)
            else f"cannot rebuild a network from {args.ckpt}: {why}"
        )
        return 2
    net, scale = loaded.net.eval(), loaded.scale
    if not isinstance(net, HDSRNet):
        _err(
            f"{args.ckpt} holds a {type(net).__name__}, not an HDSRNet; hdsr-export writes "
            "HDSRNet networks only"
        )
        return 2
    expected_dynamic = count_dynamic_convs(net)
    n_params = sum(p.numel() for p in net.parameters())
    weights = "released" if loaded.name.endswith("(official)") else args.weights
    print(
        f"{loaded.name} x{scale} ({n_params:,} parameters, {weights} weights) from "
        f"{args.ckpt} -> {dest} (opset {args.opset}{', float16' if args.fp16 else ''})"
    )

    temporaries: list[Path] = []
    try:
        graphs: dict[str, Path] = {}
        for label in ["fp32"] + (["fp16"] if args.fp16 else []):
            tmp = _temporary(dest, label)
            temporaries.append(tmp)
            try:
                write_onnx(export_module(net, fp16=label == "fp16"), tmp, args.opset)
                model = onnx.load(os.fspath(tmp))
                onnx.checker.check_model(model)
            except Exception as err:  # noqa: BLE001 - report and write nothing
                _err(f"the {label} export failed: {type(err).__name__}: {err}")
                _err(f"nothing written to {dest}")
                return 1
            found = graph_dynamic_convs(model)
            if found != expected_dynamic or not symbolic_sides(model):
                _err(
                    f"the {label} graph is not input-dependent as it should be: "
                    f"{found} of {expected_dynamic} dynamic convs compute their kernel from "
                    f"the input, height/width symbolic: {symbolic_sides(model)}; nothing written"
                )
                return 1
            graphs[label] = tmp
        print(
            f"graph: lr (1, 3, height, width) -> sr (1, 3, {scale}*height, {scale}*width); "
            f"{expected_dynamic} dynamic conv(s), each mixing its kernel from the input"
        )
        try:
            sessions = {label: _session(ort, path) for label, path in graphs.items()}
        except Exception as err:  # noqa: BLE001 - onnxruntime refused the graph
            _err(f"onnxruntime cannot load the exported graph: {err}")
            return 1
        cases = check_inputs(args.sizes)
        rows = compare(sessions, net, scale, cases, args.scale_check)
        print(format_table(rows, list(sessions), args.scale_check))

        problems = [f"{r.size[0]}x{r.size[1]} {r.image}: {p}" for r in rows for p in r.problems]
        i_worst = max(range(len(rows)), key=lambda i: _badness(rows[i].diffs["fp32"]))
        worst32 = rows[i_worst]
        accepted = None
        if not worst32.diffs["fp32"] <= args.tolerance:
            note, rounding = rounding_note(net, sessions["fp32"], cases[i_worst][1])
            gap = (
                f"max abs diff {worst32.diffs['fp32']:.3g} > {args.tolerance:g} "
                f"({worst32.size[0]}x{worst32.size[1]} {worst32.image})"
            )
            if rounding and not given_tolerance:
                accepted = f"{gap}, accepted: {note}"
            else:
                problems += [f"fp32 parity failed: {gap}", note]
        if args.fp16:
            diffs16 = [r.diffs["fp16"] for r in rows]
            if not all(np.isfinite(d) for d in diffs16):
                problems.append("the fp16 graph's output is not finite (float16 overflow)")
        if problems:
            for p in problems:
                _err(p)
            _err(f"nothing written to {dest}")
            return 1

        keep = graphs["fp16" if args.fp16 else "fp32"]
        os.replace(keep, dest)
        temporaries.remove(keep)
        worst = max(r.diffs["fp32"] for r in rows)
        summary = accepted or f"fp32 max abs diff {worst:.3g} <= {args.tolerance:g}"
        if args.fp16:
            summary += f"; fp16 graph max abs diff {max(diffs16):.3g} (reported, not bounded)"
        size_mb = dest.stat().st_size / 1e6
        print(f"parity ok on {len(rows)} inputs: {summary}")
        print(f"wrote {dest} ({size_mb:.1f} MB, {'float16' if args.fp16 else 'float32'})")
        return 0
    finally:
        for tmp in temporaries:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _badness(diff: float) -> float:
    """Sort key: NaN (non-finite output) counts as worst."""
    return float("inf") if np.isnan(diff) else diff


if __name__ == "__main__":
    sys.exit(main())
