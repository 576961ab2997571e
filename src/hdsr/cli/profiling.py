"""``hdsr-profile``: parameters, multiply-accumulates and latency of the model variants.

    hdsr-profile --model hdsrnet --model ablation/r1_six_conv --scale 2 3 4 \\
        --input 256x256 --latency-sizes 256x256 512x512 --repeats 10 --warmup 2 --json out.json

Models are built from the package's Hydra configs (``model=<option>``, ``data.scale=<s>``).
All sizes are LR *input* sizes (height x width); the output is ``scale`` times larger.

How MACs are counted, and how they relate to the paper's FLOPs: ``hdsr.evaluation.complexity``.

``--json PATH`` is checked before any profiling (not a folder, its folder created if
missing and writable): a path that cannot be written is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hdsr.cli.destinations import file_problem
from hdsr.evaluation.complexity import PAPER_X4_256_GFLOPS, profile_model
from hdsr.sizes import parse_size

#: Table VI of the paper (HDSRNet x4, RTX 3090): latency in ms per input size.
PAPER_LATENCY_MS = {"256x256": 14.17, "512x512": 26.11}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hdsr-profile",
        description="Parameters, MACs and latency of model variants (sizes are LR inputs).",
    )
    p.add_argument(
        "--model",
        action="extend",
        nargs="+",
        default=None,
        help="model config option(s), e.g. hdsrnet ablation/r1_six_conv (repeatable; "
        "default hdsrnet)",
    )
    p.add_argument("--scale", type=int, nargs="+", default=[4], choices=(2, 3, 4))
    p.add_argument(
        "--input",
        type=parse_size,
        default=(256, 256),
        metavar="HxW",
        help="LR input size for the MAC count (default 256x256)",
    )
    p.add_argument(
        "--latency-sizes",
        type=parse_size,
        nargs="*",
        default=[(256, 256), (512, 512)],
        metavar="HxW",
        help="LR input sizes to time, batch 1 (default: Table VI's 256x256 512x512; "
        "give the flag with no size to skip timing)",
    )
    p.add_argument("--repeats", type=int, default=10, help="timed passes (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes first")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--precision", choices=("32", "bf16", "16"), default="32")
    p.add_argument("--json", type=Path, default=None, help="write the records (a list) here")
    return p


def print_table(records: Sequence[dict[str, Any]], console: Any) -> None:
    """The records as a rich table (MACs in G, latency in ms)."""
    from rich.table import Table

    sizes = list(dict.fromkeys(k for r in records for k in r["latency_ms"]))
    first = records[0] if records else {}
    inp = "x".join(map(str, first.get("input_hw", [])))
    table = Table(
        title=f"Model complexity (MACs at a {inp} LR input; latency batch 1, LR input sizes, "
        f"{first.get('device', '')}, precision {first.get('precision', '')})"
    )
    for col in ("model", "scale", "trainable params", "params", "GMACs", "GMACs w/o dynamic"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for s in sizes:
        table.add_column(f"ms @ {s}", justify="right", no_wrap=True)
    for r in records:
        table.add_row(
            r["model"],
            f"x{r['scale']}",
            f"{r['trainable_params']:,}",
            f"{r['params']:,}",
            f"{r['macs'] / 1e9:.2f}",
            f"{r['macs_without_dynamic'] / 1e9:.2f}",
            *(f"{r['latency_ms'][s]:.2f}" if s in r["latency_ms"] else "-" for s in sizes),
        )
    console.print(table)
    console.print(
        "FLOPs = 2 x MACs. The paper's figures (HDSRNet x4): "
        f"{PAPER_X4_256_GFLOPS} G 'FLOPs' at 256x256, which is the MAC count without the "
        "dynamic convs; latency "
        + ", ".join(f"{v} ms @ {k}" for k, v in PAPER_LATENCY_MS.items())
        + " on an RTX 3090.",
        markup=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hdsr-profile``; returns the exit status (0 done, 2 bad arguments or a
    ``--json`` path that cannot be written)."""
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        print("hdsr-profile: --repeats must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    if args.json is not None and (problem := file_problem(args.json, "--json")):
        print(f"hdsr-profile: {problem}", file=sys.stderr)
        return 2
    from hydra.errors import HydraException
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # files and pipes: a wide table rather than squeezed columns
        console = Console(width=160)
    models = args.model or ["hdsrnet"]
    records = []
    for option in models:
        for scale in args.scale:
            try:
                rec = profile_model(
                    option,
                    scale,
                    args.input,
                    args.latency_sizes,
                    repeats=args.repeats,
                    warmup=args.warmup,
                    device=args.device,
                    precision=args.precision,
                )
            except HydraException as err:
                print(f"hdsr-profile: model={option}: {err}", file=sys.stderr)
                return 2
            records.append(rec)
    print_table(records, console)
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(records, indent=2) + "\n")
        except OSError as err:  # checked above; the disk may have filled since
            print(f"hdsr-profile: --json {args.json}: {err.strerror or err}", file=sys.stderr)
            return 2
        console.print(f"wrote {args.json}", markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
