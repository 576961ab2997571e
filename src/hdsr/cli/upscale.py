"""``hdsr-upscale``: super-resolve image files with a trained checkpoint.

    hdsr-upscale INPUT... -o OUTDIR --ckpt FILE [--tile N] [--overlap N] [--self-ensemble]
                 [--tile-attention global|local] [--device cpu|cuda|auto]
                 [--precision 32|bf16|16]

INPUTs are image files or folders (every image PIL can read inside, by file extension,
sorted, not recursive). Each ``name.ext`` becomes ``OUTDIR/name_x<s>.png``, 8-bit:

* RGB (and palette, CMYK, ...) -> RGB;
* gray (L, 1) -> gray: the network upscales a 3-channel copy, the PNG keeps the rounded
  mean of its three output channels;
* with alpha (RGBA, LA, PA, palette with transparency) -> RGBA (LA -> LA): the colour
  goes through the network, the alpha through MATLAB bicubic (``hdsr.imresize``);
* 16-bit and float images (PIL modes I;16*, I, F; 16-bit PNG and TIFF colour images,
  which PIL would read as 8-bit) are refused.

The EXIF orientation is applied as image viewers do (a portrait photo stored sideways
comes out upright). An animated or multi-frame file (GIF, APNG, multi-page TIFF, ...) is
upscaled as its first frame, with a notice naming the file and its frame count.

A file that fails writes nothing (the PNG is written under a temporary name and renamed);
the others still run, the failures are listed at the end and the exit status is 1.

Large images are tiled automatically (``--tile`` not given): images over 512x512 LR pixels
run in 448-pixel tiles with 32 pixels of overlap, which bounds memory and gives the
untiled result up to float rounding (``hdsr.inference``; ``--tile-attention local`` skips
the whole-image statistics pass of the dynamic convs: about 2x faster, not exact). A
4000x3000 input at x2 (HDSRNet, CPU, 2 cores) peaked at 1.67 GiB RSS and took 8-9 minutes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from hdsr.imaging import PRECISIONS, ImageReadError
from hdsr.inference import DEFAULT_OVERLAP
from hdsr.upscaling import image_files, load_image, output_path, save_atomically, upscale_image


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hdsr-upscale",
        description="Super-resolve images with an HDSRNet checkpoint (ours or the authors').",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--outdir", required=True, type=Path, help="output folder")
    p.add_argument("--ckpt", required=True, help="hdsr-train .ckpt or official HDSRNet_x*.pt")
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        help="LR tile side in pixels (default: automatic, tiles images over 512x512; "
        "0: never tile)",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=DEFAULT_OVERLAP,
        help=f"LR pixels of context on each side of a tile (default {DEFAULT_OVERLAP})",
    )
    p.add_argument(
        "--tile-attention",
        choices=("global", "local"),
        default="global",
        help="dynamic convs in tiles mix their kernels from whole-image statistics (global, "
        "exact; default) or from each tile's own (local, ~2x faster, approximate)",
    )
    p.add_argument("--self-ensemble", action="store_true", help="average 8 flips (8x slower)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="32")
    p.add_argument(
        "--retain-host-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep freed host memory for the next image instead of returning it to the OS "
        "(glibc; faster on CPU, the resident size stays at its peak; default on)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hdsr-upscale``; returns the exit status (0: all images written, 1: some
    failed, 2: bad arguments or checkpoint)."""
    args = build_parser().parse_args(argv)
    if args.tile is not None and args.tile < 0:
        print("hdsr-upscale: --tile must be >= 0", file=sys.stderr)
        return 2
    if args.overlap < 0:
        print("hdsr-upscale: --overlap must be >= 0", file=sys.stderr)
        return 2

    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from hdsr.checkpoints import load_model
    from hdsr.imaging import resolve_device
    from hdsr.runtime import retain_host_memory

    retain_host_memory(args.retain_host_memory)

    console = Console(stderr=True)
    try:
        device = str(resolve_device(args.device))
        torch.empty(0, device=device)  # fail now, not once per image, without that device
    except (RuntimeError, AssertionError) as err:
        console.print(f"hdsr-upscale: device {args.device}: {err}", style="red", markup=False)
        return 2
    try:
        model = load_model(args.ckpt)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        console.print(f"hdsr-upscale: cannot load {args.ckpt}: {err}", style="red", markup=False)
        return 2
    files = image_files(args.inputs)
    if not files:
        console.print("[red]hdsr-upscale: no image files in the inputs[/red]")
        return 1
    s = model.scale
    console.print(
        f"{model.name} x{s} on {device}, {len(files)} image(s) -> {args.outdir}", markup=False
    )

    failures: list[tuple[Path, str]] = []
    claimed: dict[Path, Path] = {}
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("upscaling", total=len(files))
        for src in files:
            progress.update(task, description=f"upscaling {escape(src.name)}")
            dst = output_path(args.outdir, src, s)
            try:
                if dst in claimed:
                    raise ImageReadError(
                        f"{src}: its output {dst.name} would overwrite that of {claimed[dst]}"
                    )
                claimed[dst] = src
                img = load_image(src)
                for note in img.notes:  # printed above the progress bar
                    progress.console.print(
                        note, style="yellow", markup=False, highlight=False, soft_wrap=True
                    )
                result = upscale_image(
                    img,
                    model.net,
                    s,
                    tile=args.tile,
                    overlap=args.overlap,
                    self_ensemble=args.self_ensemble,
                    device=device,
                    precision=args.precision,
                    global_attention=args.tile_attention == "global",
                )
                save_atomically(result, dst)
                del img, result
            except ImageReadError as err:
                failures.append((src, str(err)))
            except Exception as err:  # noqa: BLE001 - report and go on with the others
                failures.append((src, f"{src}: {type(err).__name__}: {err}"))
            progress.advance(task)

    done = len(files) - len(failures)
    console.print(f"wrote {done} of {len(files)} image(s) to {args.outdir}")
    if failures:
        console.print(f"[red]{len(failures)} failed:[/red]")
        for _, msg in failures:
            console.print(f"  {msg}", style="red", markup=False, highlight=False, soft_wrap=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
