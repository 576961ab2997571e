"""``hdsr-export``: an HDSRNet checkpoint as an ONNX graph, checked against PyTorch.

    hdsr-export CKPT -o model.onnx [--opset N] [--fp16] [--weights ema|raw] [--scale-check]
                [--tolerance T] [--sizes HxW,...] [--max-memory SIZE]

CKPT is an ``hdsr-train`` ``.ckpt`` (its EMA weights unless ``--weights raw``) or the
authors' ``HDSRNet_x{2,3,4}.pt``. The graph reads ``lr``, float32 ``(1, 3, H, W)`` on
0..255, any ``H`` and ``W``, and writes ``sr``, float32 ``(1, 3, sH, sW)``; how the dynamic
convs become graph ops is told in :mod:`hdsr.export`, which does the work.

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

Before any export work, ``-o`` is checked: not a folder, its folder created if missing
and writable. The parity check's peak memory at the largest ``--sizes`` is estimated
(:func:`hdsr.export.parity_peak_bytes`: the onnxruntime sessions and the float64
cross-check, which runs when a gap exceeds the tolerance) and sizes over ``--max-memory``
(default 60% of the memory available now, as ``hdsr-upscale``) are refused.

The file is written under a temporary name in the destination folder and renamed once
the checks pass: a failed export or check leaves no ``.onnx`` file. SIGTERM during the
export removes the temporaries and exits with 143; temporaries of an export killed
outright (SIGKILL, out of memory) are removed by the next export to the same file
(:func:`hdsr.export.stale_temporaries`: their process is gone, or they are a day old).

Exit status: 0 written; 1 the export or a check failed; 2 bad arguments, a checkpoint
that is missing, unreadable or whose network cannot be rebuilt, a destination that
cannot be written, ``--sizes`` over the memory limit, or the export extra (``onnx``,
``onnxruntime``) not installed; 143 stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from hdsr import export as onnx_export
from hdsr.cli.destinations import file_problem
from hdsr.inference.budget import DEFAULT_FRACTION, default_budget
from hdsr.inference.loading import load_model
from hdsr.models.hdsrnet import HDSRNet
from hdsr.sizes import format_memory, parse_memory

PROG = "hdsr-export"


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
        default=onnx_export.DEFAULT_OPSET,
        help=f"ONNX opset, {onnx_export.MIN_OPSET}..{onnx_export.max_opset()} "
        f"(default {onnx_export.DEFAULT_OPSET})",
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
        help=f"max abs difference allowed, 0..255 scale (default {onnx_export.TOLERANCE:g}, "
        "and a larger gap is accepted when onnxruntime is no further from a float64 run than "
        "PyTorch's own float32 output: rounding, not a wrong graph)",
    )
    p.add_argument(
        "--sizes",
        type=_sizes,
        default=onnx_export.SIZES,
        metavar="HxW,...",
        help="LR sizes to check, each on a photo and on noise (default "
        + ",".join(f"{h}x{w}" for h, w in onnx_export.SIZES)
        + ")",
    )
    p.add_argument(
        "--max-memory",
        type=_memory,
        default=None,
        metavar="SIZE",
        help="memory the parity check may take, e.g. 8G (default: "
        f"{DEFAULT_FRACTION * 100:.0f}%% of the memory available now); --sizes whose "
        "estimate is larger are refused before any work",
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


def _err(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr)


def _memory(text: str) -> int:
    try:
        return parse_memory(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _largest_side(limit: int, scale: int, **kw) -> int:
    """The largest ``n`` whose ``n`` x ``n`` parity check fits ``limit`` (0: none)."""
    low, high = 0, 1 << 16
    while low < high:
        mid = (low + high + 1) // 2
        if onnx_export.parity_peak_bytes([(mid, mid)], scale, **kw) <= limit:
            low = mid
        else:
            high = mid - 1
    return low


class _Terminated(BaseException):
    """SIGTERM arrived during the export (a BaseException: no ``except Exception`` of the
    export swallows it)."""


class _SigtermGuard:
    """While entered (in the main thread), SIGTERM raises :class:`_Terminated` once, so
    that the temporaries are removed before the process exits; after ``armed`` is set
    False (the cleanup) it is only recorded in ``received``."""

    def __init__(self) -> None:
        self.armed, self.received, self._installed = True, False, False
        self._previous = signal.SIG_DFL

    def _handler(self, signum, frame) -> None:
        self.received = True
        if self.armed:
            self.armed = False
            raise _Terminated

    def __enter__(self) -> _SigtermGuard:
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, self._handler)
            self._installed = True
            if previous is not None:  # None: a handler not set from Python
                self._previous = previous
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hdsr-export``; returns the exit status (0 written, 1 export or check failed,
    2 bad arguments, checkpoint, destination, memory or missing extra, 143 SIGTERM)."""
    args = build_parser().parse_args(argv)
    low, top = onnx_export.MIN_OPSET, onnx_export.max_opset()
    if not low <= args.opset <= top:
        _err(f"--opset {args.opset} is not supported: use {low}..{top}")
        return 2
    given_tolerance = args.tolerance is not None
    if not given_tolerance:
        args.tolerance = onnx_export.TOLERANCE
    if not (math.isfinite(args.tolerance) and args.tolerance > 0):  # inf: no check at all
        _err(f"--tolerance must be > 0 and finite, got {args.tolerance}")
        return 2
    dest: Path = args.output
    try:
        _, ort = onnx_export.require_onnx()
    except onnx_export.MissingExtra as err:
        _err(str(err))
        return 2

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
    if problem := file_problem(dest, "-o"):
        _err(problem)
        return 2
    # the float64 cross-check runs whenever the fp32 gap exceeds the tolerance
    need = onnx_export.parity_peak_bytes(args.sizes, scale, fp16=args.fp16)
    limit = args.max_memory if args.max_memory is not None else default_budget("cpu")
    if need > limit:
        h, w = max(args.sizes, key=lambda s: s[0] * s[1])
        whose = (
            "--max-memory"
            if args.max_memory is not None
            else f"{DEFAULT_FRACTION:.0%} of the memory available now; --max-memory sets it"
        )
        side = _largest_side(limit, scale, fp16=args.fp16)
        _err(
            f"--sizes {h}x{w}: the parity check at x{scale} would need ~{format_memory(need)} "
            f"(PyTorch and onnxruntime at that size), over the {format_memory(limit)} limit "
            f"({whose}); "
            + (f"check smaller --sizes (up to about {side}x{side})" if side else "raise it")
        )
        return 2

    n_params = sum(p.numel() for p in net.parameters())
    weights = loaded.weights
    print(
        f"{loaded.name} x{scale} ({n_params:,} parameters, {weights} weights) from "
        f"{args.ckpt} -> {dest} (opset {args.opset}{', float16' if args.fp16 else ''})"
    )
    stale = [p for p in onnx_export.stale_temporaries(dest) if onnx_export.remove_quietly(p)]
    if stale:
        print(f"removed {len(stale)} temporary file(s) of a killed export to {dest}")

    temporaries: list[Path] = []
    with _SigtermGuard() as guard:
        try:
            code = _export(args, net, scale, dest, ort, given_tolerance, temporaries)
        except _Terminated:
            code = 128 + signal.SIGTERM
        finally:
            guard.armed = False  # from here a SIGTERM is only recorded
            for tmp in temporaries:
                onnx_export.remove_quietly(tmp)
        if guard.received:
            done = f"{dest} was written" if code == 0 else f"nothing written to {dest}"
            _err(f"stopped by SIGTERM; temporary files removed, {done}")
            code = 128 + signal.SIGTERM
    return code


def _export(
    args: argparse.Namespace,
    net: HDSRNet,
    scale: int,
    dest: Path,
    ort,
    given_tolerance: bool,
    temporaries: list[Path],
) -> int:
    """Export, check and rename; every temporary file is listed in ``temporaries`` (for
    the caller to remove) before it is created."""
    graphs: dict[str, Path] = {}
    for label in ["fp32"] + (["fp16"] if args.fp16 else []):
        tmp = onnx_export.temporary_path(dest, label)
        temporaries.append(tmp)
        try:
            model = onnx_export.write_checked(net, tmp, args.opset, fp16=label == "fp16")
        except Exception as err:  # noqa: BLE001 - report and write nothing
            _err(f"the {label} export failed: {type(err).__name__}: {err}")
            _err(f"nothing written to {dest}")
            return 1
        if problem := onnx_export.static_graph_problem(model, net):
            _err(
                f"the {label} graph is not input-dependent as it should be: {problem}; "
                "nothing written"
            )
            return 1
        graphs[label] = tmp
    print(
        f"graph: lr (1, 3, height, width) -> sr (1, 3, {scale}*height, {scale}*width); "
        f"{onnx_export.count_dynamic_convs(net)} dynamic conv(s), each mixing its kernel "
        "from the input"
    )
    try:
        sessions = {label: onnx_export.cpu_session(ort, p) for label, p in graphs.items()}
    except Exception as err:  # noqa: BLE001 - onnxruntime refused the graph
        _err(f"onnxruntime cannot load the exported graph: {err}")
        return 1
    cases = onnx_export.check_inputs(args.sizes)
    rows = onnx_export.compare(sessions, net, scale, cases, args.scale_check)
    print(onnx_export.format_table(rows, list(sessions), args.scale_check))

    verdict = onnx_export.parity_verdict(
        rows, cases, net, sessions["fp32"], args.tolerance, given_tolerance, args.fp16
    )
    if verdict.problems:
        for p in verdict.problems:
            _err(p)
        _err(f"nothing written to {dest}")
        return 1

    keep = graphs["fp16" if args.fp16 else "fp32"]
    try:
        os.replace(keep, dest)
    except OSError as err:
        _err(f"-o {dest}: cannot write it ({err.strerror or err}); nothing written")
        return 2
    temporaries.remove(keep)
    size_mb = dest.stat().st_size / 1e6
    print(f"parity ok on {len(rows)} inputs: {verdict.summary}")
    print(f"wrote {dest} ({size_mb:.1f} MB, {'float16' if args.fp16 else 'float32'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
