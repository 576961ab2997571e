"""hdsr-upscale wall time and peak RSS: untiled, the default policy, forced tiles.

    python experiments/benchmarks/bench_upscale.py [--repeats 2] [--old REV] [--big]

Each run is a whole ``hdsr-upscale`` command in a fresh process (reading the image, the
network, writing the PNG), timed from outside; the child reports its own peak RSS
(VmHWM). Runs are interleaved (every variant once per round), and each variant's best
and median wall times are printed, with its ratio to ``--tile 0`` of the same code.

The input is a 1024x680 crop of ``skimage.data.retina()`` (a photograph) and an HDSRNet x2
checkpoint with random weights (speed and memory do not depend on the values). With
``--old REV`` the same commands also run on the code of a git revision (a temporary
worktree), for before/after tables. ``--big`` adds a 4000x3000 input (minutes per run;
one run per variant) with the default policy. Outputs of the tiled runs are compared with
the untiled one (max difference in grey levels).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def child(argv: list[str]) -> None:
    """Run hdsr-upscale in this process; print its exit status and peak RSS as JSON."""
    from hdsr.cli.upscale import main

    rc = main(argv)
    hwm = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    print(json.dumps({"rc": rc, "peak_rss": hwm}))


def make_inputs(folder: Path) -> tuple[Path, Path, Path]:
    """The checkpoint, the 1024x680 photo and a 4000x3000 image (tiled photos)."""
    import numpy as np
    import skimage.data
    import torch
    from PIL import Image

    from hdsr.models import HDSRNet

    torch.manual_seed(0)
    config = {"_target_": "hdsr.models.HDSRNet", "scale": 2}
    net = HDSRNet(scale=2)
    ckpt = folder / "hdsrnet_x2_random.ckpt"
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    hyper = {"net_config": config, "scale": 2, "model_name": "hdsrnet"}
    torch.save({"state_dict": state, "hyper_parameters": hyper}, ckpt)
    retina = skimage.data.retina()
    photo = folder / "photo_1024x680.png"
    Image.fromarray(np.ascontiguousarray(retina[365 : 365 + 680, 193 : 193 + 1024])).save(photo)
    big = folder / "big_4000x3000.png"
    mosaic = np.tile(retina, (3, 3, 1))[:3000, :4000]
    Image.fromarray(np.ascontiguousarray(mosaic)).save(big)
    return ckpt, photo, big


def run(src: Path, image: Path, ckpt: Path, out: Path, flags: list[str]) -> dict:
    argv = [str(image), "-o", str(out), "--ckpt", str(ckpt), "--device", "cpu", *flags]
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(argv)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({flags}):\n{proc.stdout}\n{proc.stderr}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    paths = [line for line in proc.stderr.splitlines() if "budget;" in line]
    return {**info, "wall": wall, "plan": paths[-1].strip() if paths else ""}


def max_diff(a: Path, b: Path) -> int:
    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(a)).astype(int)
    y = np.asarray(Image.open(b)).astype(int)
    return int(np.abs(x - y).max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--old", help="also run the code of this git revision")
    p.add_argument("--big", action="store_true", help="add the 4000x3000 input")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus")
    with tempfile.TemporaryDirectory(prefix="bench_upscale_") as tmp:
        tmp_path = Path(tmp)
        ckpt, photo, big = make_inputs(tmp_path)
        codes = {"new": ROOT / "src"}
        if args.old:
            tree = tmp_path / "old"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.old],
                check=True,
                capture_output=True,
            )
            codes["old"] = tree / "src"
        variants = {"--tile 0": ["--tile", "0"], "default": [], "--tile 256": ["--tile", "256"]}
        results: dict[tuple[str, str], list[dict]] = {}
        try:
            for rnd in range(args.repeats):
                for code, src in codes.items():
                    for name, flags in variants.items():
                        out = tmp_path / "out" / code / name.replace(" ", "_")
                        r = run(src, photo, ckpt, out, flags)
                        results.setdefault((code, name), []).append(r)
                        print(
                            f"round {rnd + 1} {code:3} {name:10} {r['wall']:7.1f} s "
                            f"{r['peak_rss'] / 2**30:5.2f} GiB  {r['plan']}",
                            flush=True,
                        )
            print("\n1024x680 x2 (best / median wall s, ratio of best to --tile 0, peak RSS)")
            for code in codes:
                base = min(r["wall"] for r in results[(code, "--tile 0")])
                ref = tmp_path / "out" / code / "--tile_0" / "photo_1024x680_x2.png"
                for name in variants:
                    runs = results[(code, name)]
                    best = min(r["wall"] for r in runs)
                    med = statistics.median(r["wall"] for r in runs)
                    rss = max(r["peak_rss"] for r in runs) / 2**30
                    png = tmp_path / "out" / code / name.replace(" ", "_") / ref.name
                    print(
                        f"  {code:3} {name:10} {best:6.1f} / {med:6.1f}  {best / base:4.2f}x  "
                        f"{rss:5.2f} GiB  max diff vs untiled {max_diff(ref, png)}"
                    )
            if args.big:
                print("\n4000x3000 x2, default policy")
                for code, src in codes.items():
                    r = run(src, big, ckpt, tmp_path / "big" / code, [])
                    print(
                        f"  {code:3} {r['wall']:7.1f} s  {r['peak_rss'] / 2**30:5.2f} GiB  "
                        f"{r['plan']}",
                        flush=True,
                    )
        finally:
            if args.old:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                    check=False,
                    capture_output=True,
                )


if __name__ == "__main__":
    main()
