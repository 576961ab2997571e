"""Is the windows tiling path still needed? Peak memory and time of each tiling path.

``hdsr.inference.tiling`` has two tiled paths: stage-wise tiles (``stagewise_forward``,
HDSRNet only, exact, about one pass of work, but it keeps up to two whole-image
``n_feats`` maps) and overlapping windows (``tiled_forward``, any network, about two
passes with whole-image attention, holding one window at a time). This script measures,
for the cases that reach the windows path today, what each path costs:

* HDSRNet (random init, float32) untiled, stage-wise, windows with whole-image
  attention (``--tile-attention global``) and windows with local attention
  (``--tile-attention local``, which only the windows path implements);
* weights held in bfloat16 (``bf16-true`` checkpoints: ``ScoringNet`` casts them up per
  pass, so ``upscale`` runs them through the windows path);
* the bicubic baseline (``BicubicUpsampler``, not an HDSRNet) untiled and as windows;

and prints, from ``hdsr.inference.budget``'s estimates, the least budget each path
needs for larger images (where only the windows path fits small budgets).

Each measurement runs in a fresh child process with ``hdsr.runtime.retain_host_memory``
applied first (as hdsr's tools do), after a 16x16 warm-up pass; peak = ``VmHWM`` after the
pass minus ``VmRSS`` before it (the high-water mark reset with ``clear_refs`` where the
kernel allows), i.e. what the pass adds to a process holding the network and the input,
as in ``measure_memory.py``. Times are wall-clock seconds of that one pass. "max|d|" is
the largest difference from the same network's untiled pass on the 0..255 scale
(computed after the measurement).

    python experiments/benchmarks/tiling_paths.py [--small 128] [--large 512] [--tile 64]
        [--scale 2] [--skip-small] [--skip-large] [--cases CASE ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# the VmRSS/VmHWM readers of the memory benchmark (this script's folder is on sys.path)
from measure_memory import _proc_status, _reset_hwm

MiB = 2**20
WARMUP_SIDE = 16
#: (case, sizes it runs on): "small", "large"
CASES = {
    "untiled": ("small", "large"),
    "stagewise": ("small", "large"),
    "windows-global": ("small", "large"),
    "windows-local": ("small", "large"),
    "bf16-true-windows": ("small",),
    "bf16-true-stagewise-fp32-copy": ("small",),
    "bicubic-untiled": ("small",),
    "bicubic-windows": ("small",),
}


# -- child ---------------------------------------------------------------------------------
def child(case: str, side: int, tile: int, scale: int, overlap: int) -> dict:
    from hdsr.runtime import retain_host_memory

    retain_host_memory(True)

    import copy

    import torch

    from hdsr.inference.forward import ScoringNet, upscale
    from hdsr.inference.tiling import stagewise_forward, tiled_forward
    from hdsr.models.bicubic import BicubicUpsampler
    from hdsr.models.hdsrnet import HDSRNet

    torch.manual_seed(0)
    net = HDSRNet(scale=scale).eval()
    g = torch.Generator().manual_seed(1)
    lr = torch.randint(0, 256, (1, 3, side, side), generator=g, dtype=torch.uint8).float()
    big = 1 << 40  # a budget that never decides: the tile and the path are forced here

    if case.startswith("bicubic"):
        model: torch.nn.Module = BicubicUpsampler(scale)
    elif case.startswith("bf16-true"):
        model = ScoringNet(copy.deepcopy(net).to(torch.bfloat16), channels_last=True)
    else:
        model = net

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if case in ("untiled", "bicubic-untiled"):
                return model(x)
            if case == "stagewise":
                return stagewise_forward(net, x, tile)
            if case in ("windows-global", "windows-local", "bicubic-windows"):
                local = case == "windows-local"
                return tiled_forward(model, x, scale, tile, overlap, global_attention=not local)
            if case == "bf16-true-windows":  # what upscale does with such a network
                return upscale(model, x, scale, tile=tile, overlap=overlap, max_memory=big)
            if case == "bf16-true-stagewise-fp32-copy":  # what it could do instead
                fp32 = HDSRNet(scale=scale).eval()
                fp32.load_state_dict({k: v.float() for k, v in model.net.state_dict().items()})
                return stagewise_forward(fp32, x, tile)
        raise ValueError(case)

    run(lr[:, :, :WARMUP_SIDE, :WARMUP_SIDE])
    before = _proc_status()["VmRSS"]
    reset = _reset_hwm()
    before = _proc_status()["VmRSS"] if reset else before
    t0 = time.perf_counter()
    out = run(lr)
    seconds = time.perf_counter() - t0
    peak = _proc_status()["VmHWM"] - before
    with torch.inference_mode():
        ref = model(lr)  # the same network untiled (bf16-true: its bfloat16 weights)
    return {
        "case": case,
        "side": side,
        "tile": tile,
        "scale": scale,
        "peak_extra": peak,
        "hwm_reset": reset,
        "seconds": seconds,
        "max_diff": float((out - ref).abs().max()),
        "threads": torch.get_num_threads(),
    }


# -- parent --------------------------------------------------------------------------------
def run_child(case: str, side: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", case, "--side", str(side)]
    cmd += ["--tile", str(args.tile), "--scale", str(args.scale), "--overlap", str(args.overlap)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{case} {side}px failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def budget_table(scale: int, overlap: int) -> list[str]:
    """The least budget of each path per LR size, from hdsr.inference.budget's estimates."""
    from hdsr.inference import budget as b
    from hdsr.sizes import format_memory

    rows = [
        f"least budget per path (hdsr.inference.budget estimates, x{scale} float32, "
        f"tiles from {b.TILE_CANDIDATES[-1]} px, overlap {overlap}):",
        f"  {'LR size':>11}  {'untiled':>10}  {'stage-wise':>10}  {'windows':>10}",
    ]
    for side in (256, 512, 1024, 2048, 4096):
        tiles = [t for t in b.TILE_CANDIDATES if t < side] or [b.MIN_TILE]
        sw = min(b.stagewise_bytes(side, side, scale, t) for t in tiles)
        win = min(b.windows_bytes(side, side, scale, t, overlap) for t in tiles)
        un = b.untiled_bytes(side, side, scale)
        rows.append(
            f"  {f'{side}x{side}':>11}  {format_memory(un):>10}  {format_memory(sw):>10}  "
            f"{format_memory(win):>10}"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", type=int, default=128, help="LR side of the small image")
    p.add_argument("--large", type=int, default=512, help="LR side of the large image")
    p.add_argument("--skip-small", action="store_true")
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--cases", nargs="+", choices=list(CASES), help="only these cases")
    p.add_argument("--tile", type=int, default=64, help="LR tile side (budget.MIN_TILE)")
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--json", help="write the measurements here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--side", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.side, args.tile, args.scale, args.overlap)))
        return 0

    results = []
    print(f"x{args.scale}, tile {args.tile}, overlap {args.overlap}, one fresh process each")
    print(f"{'case':<31} {'LR':>9} {'peak MiB':>9} {'seconds':>8} {'max|d|':>9}")
    for size in ("small", "large"):
        if args.skip_large if size == "large" else args.skip_small:
            continue
        side = args.small if size == "small" else args.large
        for case, sizes in CASES.items():
            if size not in sizes or (args.cases and case not in args.cases):
                continue
            r = run_child(case, side, args)
            results.append(r)
            print(
                f"{case:<31} {f'{side}x{side}':>9} {r['peak_extra'] / MiB:>9.1f} "
                f"{r['seconds']:>8.2f} {r['max_diff']:>9.2g}",
                flush=True,
            )
    print()
    print("\n".join(budget_table(args.scale, args.overlap)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
