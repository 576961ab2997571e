"""Reading, super-resolving and writing image files (``hdsr-upscale``).

Images are decoded to 8-bit RGB (+ alpha) with the EXIF orientation applied; 16-bit and
float images are refused; gray stays gray; alpha goes through MATLAB bicubic. Outputs
are written under a temporary name and renamed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hdsr.imaging import ImageReadError, high_bit_depth, to_uint8
from hdsr.imresize import imresize
from hdsr.inference.budget import Plan
from hdsr.inference.forward import upscale

#: PIL modes of more than 8 bits per channel, refused.
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I", "F", "I;32", "I;32B")


#: the EXIF tag of the orientation
ORIENTATION = 0x0112


@dataclass
class LoadedImage:
    """A decoded 8-bit image: ``rgb`` ``(H, W, 3)`` uint8, optional ``alpha`` ``(H, W)``
    uint8, and whether the source was gray (``gray``), which decides the output mode.
    ``notes`` are notices for the user about how the file was read (each names it)."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    gray: bool
    notes: list[str] = field(default_factory=list)


def image_files(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand ``inputs``: files as given, folders to their image files (sorted by name,
    non-recursive; an image file is one whose extension PIL registers)."""
    exts = {e.lower() for e in Image.registered_extensions()}
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in exts)
        else:
            files.append(path)  # a missing file is reported when it is read
    return files


def load_image(path: str | os.PathLike[str]) -> LoadedImage:
    """Decode ``path`` to 8-bit RGB (+ alpha); raise ``ImageReadError`` naming the file.

    The EXIF orientation is applied; a multi-frame file gives its first frame and a note.
    """
    path = Path(path)
    notes: list[str] = []
    try:
        with Image.open(path) as im:
            mode = im.mode
            deep = high_bit_depth(im)  # before load(), which clears what it reads
            if mode in HIGH_BIT_MODES or mode.startswith("I;") or deep:
                raise ImageReadError(
                    f"{path}: a 16-bit/32-bit or float image (PIL mode {mode!r}, "
                    f"{deep or 'high bit depth'}); hdsr-upscale takes 8-bit "
                    "images only (convert it to 8 bits per channel first)"
                )
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                kind = "animated" if im.format in ("GIF", "PNG", "WEBP") else "multi-frame"
                notes.append(f"{path}: {kind}, {frames} frames: upscaling the first frame only")
            im.load()  # decode now, so a truncated file fails here
            if im.getexif().get(ORIENTATION, 1) != 1:
                im = ImageOps.exif_transpose(im)  # upright, as image viewers show it
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode == "PA":
                im = im.convert("RGBA")
            elif mode == "1":
                im = im.convert("L")
            elif mode not in ("L", "LA", "RGB", "RGBA"):
                try:
                    im = im.convert("RGBA" if "A" in mode else "RGB")
                except ValueError as err:
                    raise ImageReadError(f"{path}: unsupported image mode {mode!r}") from err
            arr = np.asarray(im)
            mode = im.mode
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a directory") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageReadError(f"{path}: cannot decode image ({err})") from None
    if mode in ("L", "LA"):
        gray = arr if mode == "L" else arr[:, :, 0]
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
        alpha = arr[:, :, 1] if mode == "LA" else None
        return LoadedImage(_copy(rgb), _copy(alpha), gray=True, notes=notes)
    alpha = arr[:, :, 3] if mode == "RGBA" else None
    return LoadedImage(_copy(arr[:, :, :3]), _copy(alpha), gray=False, notes=notes)


def _copy(a: np.ndarray | None) -> np.ndarray | None:
    """A writable, C-contiguous uint8 copy (PIL's arrays are read-only)."""
    return None if a is None else np.array(a, dtype=np.uint8, order="C")


def output_path(outdir: Path, src: Path, scale: int) -> Path:
    """``outdir/<stem>_x<scale>.png``."""
    return outdir / f"{src.stem}_x{scale}.png"


def upscale_image(
    img: LoadedImage,
    net,
    scale: int,
    *,
    tile: int | None,
    overlap: int,
    self_ensemble: bool,
    device: str,
    precision: str,
    global_attention: bool = True,
    max_memory: int | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Image.Image:
    """Super-resolve one loaded image to an 8-bit PIL image (RGB, L, RGBA or LA).

    ``tile``, ``max_memory``, ``on_plan`` and ``progress`` are those of
    :func:`hdsr.inference.forward.upscale` (``tile=None``: the memory budget decides; 0: never
    tiles).
    """
    import torch


    lr = torch.from_numpy(img.rgb).permute(2, 0, 1).unsqueeze(0).float()
    sr = upscale(
        net,
        lr,
        scale,
        tile=tile,
        overlap=overlap,
        self_ensemble=self_ensemble,
        device=device,
        precision=precision,
        global_attention=global_attention,
        max_memory=max_memory,
        on_plan=on_plan,
        progress=progress,
    )
    del lr
    with torch.inference_mode():  # sr is an inference tensor: edit it in place in this mode
        sr = sr[0]
        if img.gray:
            sr = sr.mean(dim=0, keepdim=True)
        out = to_uint8(sr, inplace=True).permute(1, 2, 0).numpy()
    del sr
    if img.gray:
        out = out[:, :, 0]
    if img.alpha is not None:
        out = np.dstack([out, imresize(img.alpha, scale)])
        return Image.fromarray(np.ascontiguousarray(out), "LA" if img.gray else "RGBA")
    return Image.fromarray(np.ascontiguousarray(out), "L" if img.gray else "RGB")


def save_atomically(image: Image.Image, path: Path) -> None:
    """Write ``image`` as PNG to a temporary file beside ``path``, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
