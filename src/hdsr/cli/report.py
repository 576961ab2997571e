"""``hdsr-report``: the ablation table and validation curves of a multirun directory.

Reads each job's resolved config (``.hydra/config.yaml``) and CSV logs
(``csv/version_*/metrics.csv``), so it works without W&B:

    hdsr-report runs/table1            # writes ablation.md, ablation.csv, val_psnr.png there
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hdsr.errors import UntrustedConfigError
from hdsr.evaluation.sweep_report import collect, plot_curves, write_table
from hdsr.sizes import parse_size


def main(argv: list[str] | None = None) -> int:
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
    out.mkdir(parents=True, exist_ok=True)
    try:
        records = collect(args.sweep_dir, (h, w))
    except (FileNotFoundError, UntrustedConfigError) as err:
        print(f"hdsr-report: error: {err}", file=sys.stderr)
        return 2
    write_table(records, out, (h, w))
    plot_curves(records, out / "val_psnr.png")
    print((out / "ablation.md").read_text())
    print(f"wrote {out / 'ablation.md'}, {out / 'ablation.csv'}, {out / 'val_psnr.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
