"""``hdsr-upscale``: super-resolve image files with a trained checkpoint.

    hdsr-upscale INPUT... -o OUTDIR --ckpt FILE [--max-memory SIZE] [--tile N] [--overlap N]
                 [--self-ensemble]
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

Memory: each image runs untiled when its estimated peak fits the budget (``--max-memory``,
default 60% of the memory available now, within a cgroup/SLURM limit), else in tiles
run stage by stage (exact: the dynamic convs use whole-image statistics; about one pass
of work), else, for the smallest budgets, in overlapping windows (exact, about two
passes). Which path runs and why is printed once per image (``hdsr.inference.budget``).
``--tile N`` forces tiles of N LR pixels, ``--tile 0`` never tiles. The next image is
read and the previous one written in background threads while the network runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from hdsr.devices import PRECISIONS, resolve_device
from hdsr.imaging import ImageReadError
from hdsr.inference.budget import BudgetTooSmall, Plan
from hdsr.inference.files import (
    LoadedImage,
    image_files,
    load_image,
    output_path,
    save_atomically,
    upscale_image,
)
from hdsr.inference.forward import DEFAULT_OVERLAP
from hdsr.inference.loading import load_model
from hdsr.runtime import retain_host_memory
from hdsr.sizes import parse_memory


def _memory(text: str) -> int:
    try:
        return parse_memory(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hdsr-upscale",
        description="Super-resolve images with an HDSRNet checkpoint (ours or the authors').",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--outdir", required=True, type=Path, help="output folder")
    p.add_argument("--ckpt", required=True, help="hdsr-train .ckpt or official HDSRNet_x*.pt")
    p.add_argument(
        "--max-memory",
        type=_memory,
        default=None,
        metavar="SIZE",
        help="memory one image's pass may take, e.g. 8G or 512M (default: 60%% of the "
        "memory available now); images above it are tiled",
    )
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        help="LR tile side in pixels (default: decided by --max-memory; 0: never tile)",
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
    p.add_argument(
        "--weights",
        choices=("ema", "raw"),
        default="ema",
        help="of a checkpoint trained with EMA (ema.decay): the average (default) or the "
        "trained weights; other checkpoints hold one set",
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


def _jobs(files: list[Path], outdir: Path, scale: int) -> list[tuple[Path, Path, Path | None]]:
    """``(input, output, earlier input with the same output or None)`` per file."""
    claimed: dict[Path, Path] = {}
    jobs = []
    for src in files:
        dst = output_path(outdir, src, scale)
        jobs.append((src, dst, claimed.get(dst)))
        claimed.setdefault(dst, src)
    return jobs


def destination_problem(outdir: Path, jobs: list[tuple[Path, Path, Path | None]]) -> str | None:
    """Why the outputs cannot be written where asked (checked before any image is
    computed), or None: ``-o`` is a file or cannot be created or written, or an output
    would replace one of the inputs (``a.png`` -> ``a_x2.png`` beside an input
    ``a_x2.png``; a rerun into the input folder would upscale its own outputs)."""
    if outdir.exists() and not outdir.is_dir():
        return f"-o {outdir} is a file, not a folder"
    inputs = {src.resolve(): src for src, _, _ in jobs}
    for src, dst, _ in jobs:
        if dst.resolve() in inputs:
            return (
                f"the output of {src} would replace the input {inputs[dst.resolve()]}; "
                "write to another folder (-o)"
            )
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=outdir, prefix=".hdsr-upscale-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return f"-o {outdir}: cannot write there ({err.strerror or err})"
    return None


def _load(job: tuple[Path, Path, Path | None]) -> LoadedImage:
    """Read a job's image (in the I/O thread); refuse an output another input claimed."""
    src, dst, clash = job
    if clash is not None:
        raise ImageReadError(f"{src}: its output {dst.name} would overwrite that of {clash}")
    return load_image(src)


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

    retain_host_memory(args.retain_host_memory)

    console = Console(stderr=True)
    try:
        device = str(resolve_device(args.device))
        torch.empty(0, device=device)  # fail now, not once per image, without that device
    except (RuntimeError, AssertionError) as err:
        console.print(f"hdsr-upscale: device {args.device}: {err}", style="red", markup=False)
        return 2
    try:
        model = load_model(args.ckpt, weights=args.weights)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        console.print(f"hdsr-upscale: cannot load {args.ckpt}: {err}", style="red", markup=False)
        return 2
    files = image_files(args.inputs)
    if not files:
        console.print("[red]hdsr-upscale: no image files in the inputs[/red]")
        return 1
    s = model.scale
    jobs = _jobs(files, args.outdir, s)
    problem = destination_problem(args.outdir, jobs)
    if problem is not None:
        console.print(f"hdsr-upscale: {problem}", style="red", markup=False)
        return 2
    console.print(
        f"{model.name} x{s} on {device}, {len(files)} image(s) -> {args.outdir}", markup=False
    )

    failures: list[tuple[Path, str]] = []
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with (
        Progress(*columns, console=console) as progress,
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="hdsr-upscale-io") as io,
    ):
        task = progress.add_task("upscaling", total=len(files))
        tiles = progress.add_task("tiles", total=None, visible=False)
        # the next image is decoded and the last one written while the network runs
        loads = {0: io.submit(_load, jobs[0])} if jobs else {}
        saving: tuple[Path, Future] | None = None

        def say(text: str, style: str | None = None) -> None:
            progress.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

        def finish_save() -> None:
            nonlocal saving
            if saving is not None:
                src, future = saving
                saving = None
                try:
                    future.result()
                except Exception as err:  # noqa: BLE001 - report it as that file's failure
                    failures.append((src, f"{src}: {type(err).__name__}: {err}"))

        for i, (src, dst, _) in enumerate(jobs):
            if i + 1 < len(jobs):
                loads[i + 1] = io.submit(_load, jobs[i + 1])
            progress.update(task, description=f"upscaling {escape(src.name)}")
            try:
                img = loads.pop(i).result()
                for note in img.notes:  # printed above the progress bar
                    say(note, "yellow")

                def on_plan(how: Plan, src: Path = src, img: LoadedImage = img) -> None:
                    h, w = img.rgb.shape[:2]
                    say(f"{src.name}: {w}x{h} -> {how.describe()}")
                    progress.update(tiles, completed=0, total=None, visible=how.tile is not None)

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
                    max_memory=args.max_memory,
                    on_plan=on_plan,
                    progress=lambda k, n: progress.update(tiles, completed=k, total=n),
                )
                del img
                finish_save()
                saving = (src, io.submit(save_atomically, result, dst))
                del result
            except ImageReadError as err:
                failures.append((src, str(err)))
            except BudgetTooSmall as err:
                failures.append((src, f"{src}: {err}"))
            except Exception as err:  # noqa: BLE001 - report and go on with the others
                failures.append((src, f"{src}: {type(err).__name__}: {err}"))
            progress.update(tiles, visible=False)
            progress.advance(task)
        finish_save()

    failures.sort(key=lambda f: files.index(f[0]))
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
