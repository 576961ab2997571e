"""How an image is run within a memory budget: untiled, stage-wise tiles or windows.

:func:`plan` picks, for an LR image of ``h`` x ``w`` pixels, the fastest exact path whose
estimated peak memory fits the budget:

1. ``untiled``: one pass over the whole image (the network's own speed);
2. ``stagewise``: :func:`hdsr.inference.tiling.stagewise_forward` with the largest tile that fits
   (about one pass of work; holds up to two whole-image feature maps);
3. ``windows``: :func:`hdsr.inference.tiling.tiled_forward` (about two passes of work; holds one
   window and the output).

The budget is memory the pass may add to the process (model weights and libraries are
already there): ``--max-memory``, or by default :data:`DEFAULT_FRACTION` of the memory
available now (host RAM, within a cgroup limit such as a SLURM job's, on CPU; free device
memory on CUDA).

The estimates are linear in the LR pixels, with coefficients measured on CPU by
``experiments/benchmarks/measure_memory.py`` (peak RSS of one pass in a fresh process,
glibc keeping freed memory as the tools run) and rounded up; they are used for CUDA too,
with :data:`CUDA_MARGIN` for the caching allocator's rounding and cuDNN's workspace.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from hdsr.sizes import format_memory

#: share of the available memory a pass may use when no budget is given
DEFAULT_FRACTION = 0.6
#: bytes per LR pixel at the peak of an untiled float32 pass, per scale: the largest of 48
#: fresh-process measurements (3914, 4609, 8718; glibc's heap fragments differently from
#: run to run, so one point varies by up to 30%), plus about 15%
UNTILED_BYTES_PER_PIXEL = {2: 4500, 3: 5300, 4: 10000}
#: the same under bfloat16/float16 autocast: on CPUs without native bf16 the pass holds
#: more, not less (largest measured 11851, 10821, 11586)
UNTILED_BYTES_PER_PIXEL_16 = {2: 13500, 3: 13500, 4: 13500}
#: fixed bytes of any pass (oneDNN/cuDNN scratch, weight copies), added to every estimate
FIXED_BYTES = 64 << 20
#: extra factor for CUDA (allocator block rounding, cuDNN workspace), unmeasured there
CUDA_MARGIN = 1.25
#: tiles tried by the default policy, largest first (LR pixels per side)
TILE_CANDIDATES = (1024, 768, 512, 384, 256, 192, 128, 96, 64)
#: the smallest tile: below it the halo costs more than the core
MIN_TILE = 64
#: LR pixels of context of a window's whole-network pass beyond the stages' own halos
STAGE_HALO = 20

def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes the process's cgroup may still take (v2 ``memory.max - memory.current``, or
    v1 ``limit - usage``); None without a limit."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(root / limit_file), _read_int(root / usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            return max(0, limit - usage)
    return None


def host_available(meminfo: Path = Path("/proc/meminfo"), cgroup: Path | None = None) -> int:
    """Host memory available now: ``MemAvailable`` bounded by the cgroup's room (Linux), or
    the free physical pages (elsewhere)."""
    available = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 4 << 30  # unknown: assume a small machine
    room = _cgroup_room() if cgroup is None else _cgroup_room(cgroup)
    return available if room is None else min(available, room)


def available_memory(device) -> int:
    """Bytes a pass on ``device`` could take now: free device memory (plus what PyTorch's
    cache holds unused) on CUDA, :func:`host_available` otherwise."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    return host_available()


def default_budget(device) -> int:
    """:data:`DEFAULT_FRACTION` of :func:`available_memory`."""
    return int(available_memory(device) * DEFAULT_FRACTION)


def _per_pixel(scale: int, precision: str) -> int:
    table = UNTILED_BYTES_PER_PIXEL if precision == "32" else UNTILED_BYTES_PER_PIXEL_16
    return table[scale]


def _margin(device_type: str) -> float:
    return CUDA_MARGIN if device_type == "cuda" else 1.0


def _image_bytes(h: int, w: int, scale: int, outputs: int) -> int:
    """The float32 input and ``outputs`` float32 HR outputs (self-ensemble keeps two)."""
    return 4 * 3 * h * w * (1 + outputs * scale * scale)


def untiled_bytes(
    h: int,
    w: int,
    scale: int,
    precision: str = "32",
    *,
    device_type: str = "cpu",
    ensemble: bool = False,
) -> int:
    """Estimated peak bytes of one untiled pass over an ``h`` x ``w`` LR image."""
    extra = 4 * 3 * h * w * scale * scale if ensemble else 0  # the ensemble's accumulator
    need = _per_pixel(scale, precision) * h * w + extra + FIXED_BYTES
    return math.ceil(need * _margin(device_type))


def _window_bytes(side_h: int, side_w: int, scale: int, precision: str) -> int:
    return _per_pixel(scale, precision) * side_h * side_w


def stagewise_bytes(
    h: int,
    w: int,
    scale: int,
    tile: int,
    precision: str = "32",
    *,
    maps: int = 2,
    n_feats: int = 64,
    device_type: str = "cpu",
    ensemble: bool = False,
) -> int:
    """Estimated peak bytes of :func:`hdsr.inference.tiling.stagewise_forward` with ``tile``: the
    carried maps and two bands of them, one window's pass, input and output."""
    itemsize = 4 if precision == "32" else 2
    carried = maps * n_feats * itemsize * w * (h + 2 * min(tile, h))
    wh, ww = min(h, tile) + 2 * STAGE_HALO, min(w, tile) + 2 * STAGE_HALO
    need = (
        carried
        + _window_bytes(wh, ww, scale, precision)
        + _image_bytes(h, w, scale, 2 if ensemble else 1)
        + FIXED_BYTES
    )
    return math.ceil(need * _margin(device_type))


def windows_bytes(
    h: int,
    w: int,
    scale: int,
    tile: int,
    overlap: int,
    precision: str = "32",
    *,
    device_type: str = "cpu",
    ensemble: bool = False,
) -> int:
    """Estimated peak bytes of :func:`hdsr.inference.tiling.tiled_forward`: one window's pass (core
    ``tile`` and ``overlap`` px each side), input and output."""
    wh, ww = min(h, tile + 2 * overlap), min(w, tile + 2 * overlap)
    need = (
        _window_bytes(wh, ww, scale, precision)
        + _image_bytes(h, w, scale, 2 if ensemble else 1)
        + FIXED_BYTES
    )
    return math.ceil(need * _margin(device_type))


class BudgetTooSmall(ValueError):
    """No path fits the budget; the message says the least budget that would do."""


@dataclass(frozen=True)
class Plan:
    """How one image runs: ``mode`` (``untiled``, ``stagewise`` or ``windows``), the LR
    ``tile`` side (None untiled), the estimated peak ``need`` and the ``budget`` (bytes),
    and why (``reason``)."""

    mode: str
    tile: int | None
    need: int
    budget: int
    reason: str

    def describe(self) -> str:
        """One line for the progress output, e.g. ``untiled (needs ~2.6 GiB of 11 GiB)``."""
        what = "untiled" if self.tile is None else f"{self.mode} tiles of {self.tile} px"
        return (
            f"{what} (needs ~{format_memory(self.need)} of a {format_memory(self.budget)} "
            f"budget; {self.reason})"
        )


def plan(
    h: int,
    w: int,
    scale: int,
    *,
    budget: int,
    precision: str = "32",
    tile: int | None = None,
    overlap: int = 32,
    maps: int | None = 2,
    n_feats: int = 64,
    device_type: str = "cpu",
    ensemble: bool = False,
) -> Plan:
    """The path for an ``h`` x ``w`` LR image within ``budget`` bytes.

    Args:
        tile: None lets the budget decide; 0 runs untiled whatever the budget; N forces
            tiles of N px (stage-wise if its maps fit, else windows).
        overlap: the windows path's context per side.
        maps: whole-image maps the stage-wise path keeps for this network
            (:func:`hdsr.inference.tiling.stagewise_maps`), or None where it cannot run (the
            network is not an HDSRNet, or the windows path is asked for).
        ensemble: self-ensemble, which keeps a second output.

    Raises:
        BudgetTooSmall: nothing fits; the message names the least budget that would.
    """
    kw = {"device_type": device_type, "ensemble": ensemble}
    untiled = untiled_bytes(h, w, scale, precision, **kw)
    if tile == 0:
        return Plan("untiled", None, untiled, budget, "--tile 0")
    if tile is None:
        if untiled <= budget:
            return Plan("untiled", None, untiled, budget, "fits")
        why = f"untiled needs ~{format_memory(untiled)}"
        candidates = [t for t in TILE_CANDIDATES if t < max(h, w)] or [MIN_TILE]
    else:
        why = f"--tile {tile}"
        candidates = [tile]
    options = []  # (mode, tile, need), in order of preference
    if maps is not None:
        for t in candidates:
            sw = stagewise_bytes(h, w, scale, t, precision, maps=maps, n_feats=n_feats, **kw)
            options.append(("stagewise", t, sw))
    options += [
        ("windows", t, windows_bytes(h, w, scale, t, overlap, precision, **kw)) for t in candidates
    ]
    for mode, t, need in options:
        if need <= budget:
            return Plan(mode, t, need, budget, why)
    mode, t, need = min(options, key=lambda o: o[2])
    if tile is None and untiled < need:
        mode, t, need = "untiled", None, untiled
    how = "untiled" if t is None else f"{mode} tiles of {t} px"
    raise BudgetTooSmall(
        f"a {format_memory(budget)} memory budget is too small for a {w}x{h} image at "
        f"x{scale}: the least it can run in is ~{format_memory(need)} ({how}); "
        "raise the budget (hdsr-upscale --max-memory, hdsr-eval max_memory=)"
    )
