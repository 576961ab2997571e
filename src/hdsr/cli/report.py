"""``hdsr-report``: the ablation table and validation curves of a multirun directory.

Reads each job's resolved config (``.hydra/config.yaml``) and CSV logs
(``csv/version_*/metrics.csv``), so it works without W&B:

    hdsr-report runs/table1            # writes ablation.md, ablation.csv, val_psnr.png there

A run that cannot be read (a garbled ``metrics.csv``, a config that is not plain YAML
data, e.g. one with a ``!!python/object`` tag, which is refused and never constructed, or
that names no hdsr network) is skipped with a warning naming the file and what is wrong,
and listed under the table: the other runs are still reported (exit status 0). When no
run can be read, each is one error line and the exit status is 2, as for a folder with no
runs or an output folder that cannot be written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hdsr.evaluation.sweep_report import collect, plot_curves, write_table
from hdsr.sizes import parse_size


def main(argv: list[str] | None = None) -> int:
    """Run ``hdsr-report``; returns the exit status (0 written, damaged runs skipped with a
    warning; 2 bad arguments, no run, or no readable run)."""
    ap = argparse.ArgumentParser(prog="hdsr-report", description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path, help="a multirun directory, e.g. runs/table1")
    ap.add_argument(
        "-o", "--out", type=Path, default=None, help="output folder (default: sweep_dir)"
    )
    ap.add_argument(
        "--macs-input",
        type=parse_size,
        default="256x256",
        help="LR input size HxW at which MACs are counted (default 256x256)",
    )
    args = ap.parse_args(argv)

    h, w = args.macs_input
    if not args.sweep_dir.is_dir():
        ap.error(f"{args.sweep_dir} is not a directory")
    out = args.out or args.sweep_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"hdsr-report: error: -o {out}: {err.strerror or err}", file=sys.stderr)
        return 2
    skipped: list[str] = []
    try:
        records = collect(args.sweep_dir, (h, w), skipped)
    except FileNotFoundError as err:
        print(f"hdsr-report: error: {err}", file=sys.stderr)
        return 2
    if not records:  # every run damaged
        for why in skipped:
            print(f"hdsr-report: error: {why}", file=sys.stderr)
        return 2
    for why in skipped:
        print(f"hdsr-report: warning: run skipped: {why}", file=sys.stderr)
    write_table(records, out, (h, w), skipped)
    plot_curves(records, out / "val_psnr.png")
    print((out / "ablation.md").read_text())
    print(f"wrote {out / 'ablation.md'}, {out / 'ablation.csv'}, {out / 'val_psnr.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
