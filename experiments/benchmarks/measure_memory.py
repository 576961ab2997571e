"""Peak host memory of one untiled HDSRNet inference pass on CPU, per LR pixel.

A model for a later untiled-vs-tiled policy: for each scale, precision and LR size, one
``hdsr.inference.forward.upscale(net, lr, s, tile=None, device="cpu", precision=p)`` call runs in
a fresh child process (so no two measurements share an allocator or a high-water mark),
with ``hdsr.runtime.retain_host_memory(True)`` applied first, as hdsr's command-line tools
do. glibc then keeps freed memory in the process, so the resident size never falls below
what a pass has touched and the high-water mark is the pass's real footprint.

In the child: build ``HDSRNet(scale=s)`` (random init, eval mode) and a random
``(1, 3, h, w)`` float LR image with integer values on 0..255, run one warm-up pass on a
16x16 crop (kernels, thread pools and the weights' first touches are then paid), read
``VmRSS`` from ``/proc/self/status`` as the baseline, run the real pass and read ``VmHWM``.
The measured quantity is

    peak_extra = VmHWM_after - VmRSS_before

i.e. what the pass needs on top of a process that already holds the network and the input
(the float32 output, ``3 * s^2 * 4`` bytes per LR pixel, is included). Where the kernel
allows it (Linux >= 4.0), the high-water mark is also reset to the current RSS just before
the pass (``echo 5 > /proc/self/clear_refs``), so an earlier transient peak (e.g. during
model construction) cannot mask a smaller pass; the quantity is the same either way.

The parent prints one row per measurement, then for each (scale, precision) the
least-squares line ``peak_extra = a * pixels + b`` and the largest ``peak_extra / pixels``.
Torch's thread count is left at its default (``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS``
are removed from the children's environment).

The peak is not deterministic: it depends on how glibc's heap fragments, which varies
from process to process even with one thread, a fixed ``PYTHONHASHSEED`` and no address
randomisation (seen on glibc / torch 2.13 CPU: x2 fp32 256x384 gives 261 or 338 MiB
extra, x2 bf16 256x384 from 439 to 1172 MiB). ``--repeats N`` measures each point in N
fresh processes; the fits and maxima then use every run, so the maxima are the bound to
budget with.

    python experiments/benchmarks/measure_memory.py [--quick] [--repeats N] [--json out.json]
        [--sizes 96x96 160x240 ...] [--scales 2 3 4] [--precisions 32 bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MiB = 2**20
SCALES = (2, 3, 4)
PRECISIONS = ("32", "bf16")
SIZES = ((96, 96), (160, 240), (256, 384), (384, 512))
QUICK_SIZES = ((48, 48), (64, 96), (96, 128))
WARMUP_SIDE = 16
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


# -- child ---------------------------------------------------------------------------------
def _proc_status() -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` (and the other ``Vm*`` fields) of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Vm"):
                key, value = line.split(":", 1)
                number, unit = value.split()
                assert unit == "kB", line
                out[key] = int(number) * 1024
    return out


def _reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS (``clear_refs`` 5); True if the kernel took it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    status = _proc_status()
    return status["VmHWM"] <= status["VmRSS"] + 64 * 1024


def child(scale: int, precision: str, h: int, w: int, seed: int) -> dict:
    from hdsr.runtime import retain_host_memory

    retained = retain_host_memory(True)  # before torch allocates anything

    import torch

    from hdsr.inference.forward import upscale
    from hdsr.models.hdsrnet import HDSRNet

    torch.manual_seed(seed)
    net = HDSRNet(scale=scale).eval()
    lr = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8).float()

    upscale(
        net,
        lr[:, :, :WARMUP_SIDE, :WARMUP_SIDE],
        scale,
        tile=None,
        device="cpu",
        precision=precision,
    )

    before = _proc_status()
    hwm_reset = _reset_hwm()
    rss_before = _proc_status()["VmRSS"] if hwm_reset else before["VmRSS"]
    t0 = time.perf_counter()
    out = upscale(net, lr, scale, tile=None, device="cpu", precision=precision)
    seconds = time.perf_counter() - t0
    after = _proc_status()

    assert out.shape == (1, 3, scale * h, scale * w), out.shape
    return {
        "scale": scale,
        "precision": precision,
        "h": h,
        "w": w,
        "pixels": h * w,
        "rss_before": rss_before,
        "hwm_before": before["VmHWM"],
        "hwm_after": after["VmHWM"],
        "rss_after": after["VmRSS"],
        "peak_extra": after["VmHWM"] - rss_before,
        "hwm_reset": hwm_reset,
        "retained": retained,
        "output_bytes": out.numel() * out.element_size(),
        "lr_bytes": lr.numel() * lr.element_size(),
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


# -- parent --------------------------------------------------------------------------------
def run_child(scale: int, precision: str, h: int, w: int, seed: int, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--scale",
        str(scale),
        "--precision",
        precision,
        "--size",
        f"{h}x{w}",
        "--seed",
        str(seed),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"child x{scale} {precision} {h}x{w} failed (rc {proc.returncode}):\n"
            f"{proc.stderr[-4000:]}"
        )
    return json.loads(lines[-1])


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a * x + b``; with one point, the line through it and 0."""
    n = len(xs)
    if n == 1:
        return ys[0] / xs[0], 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    a = sxy / sxx
    return a, my - a * mx


def parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) == 1:
        parts = parts * 2
    h, w = (int(p) for p in parts)
    if h < WARMUP_SIDE or w < WARMUP_SIDE:
        raise argparse.ArgumentTypeError(f"size must be at least {WARMUP_SIDE}x{WARMUP_SIDE}")
    return h, w


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"small sizes {QUICK_SIZES}")
    p.add_argument("--sizes", type=parse_size, nargs="+", help="LR sizes HxW")
    p.add_argument("--scales", type=int, nargs="+", default=list(SCALES))
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--repeats", type=int, default=1, help="fresh processes per point")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per child")
    p.add_argument("--json", help="write the measurements here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--scale", type=int, help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    p.add_argument("--size", type=parse_size, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        h, w = args.size
        print(json.dumps(child(args.scale, args.precision, h, w, args.seed)), flush=True)
        return 0

    import torch  # only for its version; the children do the work

    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    env_threads = {k: os.environ[k] for k in THREAD_ENV if k in os.environ}
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, cpus {os.cpu_count()}")
    if env_threads:
        print(f"removed from the children's environment: {env_threads}")

    t_start = time.perf_counter()
    rows = []
    header = (
        f"{'scale':>5} {'prec':>5} {'h':>5} {'w':>5} {'LR px':>8} {'peak_extra MiB':>15} "
        f"{'B/LR px':>9} {'out MiB':>8} {'reset':>5} {'pass s':>7}"
    )
    print(header)
    print("-" * len(header))
    for scale in args.scales:
        for precision in args.precisions:
            for h, w in [hw for hw in sizes for _ in range(args.repeats)]:
                r = run_child(scale, precision, h, w, args.seed, args.timeout)
                rows.append(r)
                print(
                    f"{r['scale']:>5} {r['precision']:>5} {r['h']:>5} {r['w']:>5} "
                    f"{r['pixels']:>8} {r['peak_extra'] / MiB:>15.2f} "
                    f"{r['peak_extra'] / r['pixels']:>9.1f} {r['output_bytes'] / MiB:>8.2f} "
                    f"{'yes' if r['hwm_reset'] else 'no':>5} {r['seconds']:>7.2f}",
                    flush=True,
                )
    wall = time.perf_counter() - t_start

    threads = sorted({r["threads"] for r in rows})
    retained = sorted({r["retained"] for r in rows})
    print(f"\ntorch threads (children, default): {threads}; retain_host_memory applied: {retained}")
    print("\nfit per (scale, precision): peak_extra = a * LR pixels + b")
    fit_header = (
        f"{'scale':>5} {'prec':>5} {'a B/px':>9} {'b MiB':>8} {'max B/px':>9} "
        f"{'max |resid| MiB':>16} {'out B/px':>9}"
    )
    print(fit_header)
    print("-" * len(fit_header))
    fits = []
    for scale in args.scales:
        for precision in args.precisions:
            group = [r for r in rows if r["scale"] == scale and r["precision"] == precision]
            xs = [float(r["pixels"]) for r in group]
            ys = [float(r["peak_extra"]) for r in group]
            a, b = fit_line(xs, ys)
            worst = max(y / x for x, y in zip(xs, ys, strict=True))
            resid = max(abs(y - (a * x + b)) for x, y in zip(xs, ys, strict=True))
            out_per_px = 3 * scale * scale * 4
            fits.append(
                {
                    "scale": scale,
                    "precision": precision,
                    "a": a,
                    "b": b,
                    "max_per_pixel": worst,
                    "max_abs_residual": resid,
                }
            )
            print(
                f"{scale:>5} {precision:>5} {a:>9.1f} {b / MiB:>8.2f} {worst:>9.1f} "
                f"{resid / MiB:>16.2f} {out_per_px:>9}"
            )
    print("(a, b: least squares over all runs; max B/px: max over all runs of peak_extra/pixels)")
    print(f"\nwall time {wall:.1f} s for {len(rows)} child processes")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "torch": torch.__version__,
                    "threads": threads,
                    "wall_s": wall,
                    "rows": rows,
                    "fits": fits,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
