"""Start-up time: from a fresh ``hdsr-train`` process to its first training step.

What a SLURM job pays at every start and every requeue, split into its phases:

* imports:  Python, torch, Lightning, torchmetrics, hdsr (``hdsr.training.run``);
* config:   Hydra composing the config tree (twice: to find the mode, then the job's);
* build:    ``train()`` up to ``trainer.fit``: config checks, data module, network, loggers;
* W&B init: ``wandb.init`` (offline here: the service process, the run folder);
* data:     the data module's ``prepare_data`` and ``setup``: decoding the embedded demo
  images, or checking the decoded-image cache of a DIV2K tree;
* rest:     Lightning up to the first ``training_step``.

Two data sets: the embedded demo (the default) and a DIV2K-layout tree of ``--images``
2040x1356 photographs (x2, cache built beforehand and dated back a minute, as a cache
built by an earlier job is). Each case runs ``--repeats`` times in fresh processes; the
table shows the best. ``--old REV`` runs the same cases on the code of a git revision (a
temporary worktree) for a before/after.

    python experiments/benchmarks/bench_startup.py [--images 100] [--repeats 2] [--old REV]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

#: run in the measured process: marks the phases, then stops at the first training step
PROBE = r"""
import json, os, sys, time
T0 = time.perf_counter()
marks = {}
def mark(name):
    marks.setdefault(name, time.perf_counter() - T0)
def timed(owner, attr, name):
    orig = getattr(owner, attr)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return orig(*args, **kwargs)
        finally:
            marks[name] = marks.get(name, 0.0) + time.perf_counter() - start
    setattr(owner, attr, wrapper)
from hdsr.cli.train import hydra_main
import hdsr.training.run as run
mark("imported")
import wandb
from hdsr.data.datamodule import SRDataModule
from hdsr.training.module import SRModule
import lightning.pytorch as lp
timed(wandb, "init", "wandb")
timed(SRDataModule, "prepare_data", "data")
timed(SRDataModule, "setup", "data")
train = run.train
def train_marked(cfg):
    mark("configured")
    return train(cfg)
run.train = train_marked
fit = lp.Trainer.fit
def fit_marked(self, *args, **kwargs):
    mark("built")
    return fit(self, *args, **kwargs)
lp.Trainer.fit = fit_marked
def first_step(self, *args, **kwargs):
    mark("first step")
    with open(os.environ["HDSR_BENCH_OUT"], "w") as f:
        json.dump(marks, f)
    os._exit(0)
SRModule.training_step = first_step
sys.argv = ["hdsr-train", *sys.argv[1:]]
hydra_main()
"""

COMMON = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "data.batch_size=2",
    "data.patch_size=32",
    "logger=default",  # W&B (offline here) and CSV
]


def phases(marks: dict) -> dict[str, float]:
    imported, configured = marks["imported"], marks["configured"]
    built, first = marks["built"], marks["first step"]
    wandb, data = marks.get("wandb", 0.0), marks.get("data", 0.0)
    return {
        "imports": imported,
        "config": configured - imported,
        "build": built - configured,
        "W&B init": wandb,
        "data": data,
        "rest": first - built - wandb - data,
        "total": first,
    }


def measure(code: Path, args: list[str], work: Path) -> dict[str, float]:
    out = work / "marks.json"
    out.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(code), HDSR_BENCH_OUT=str(out), WANDB_MODE="offline")
    run_dir = tempfile.mkdtemp(dir=work, prefix="run_")
    cmd = [sys.executable, "-c", PROBE, f"hydra.run.dir={run_dir}", *COMMON, *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=work)
    if not out.exists():
        sys.exit(f"no first step:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return phases(json.loads(out.read_text()))


def make_tree(work: Path, n: int) -> list[str]:
    """A DIV2K tree of ``n`` photo-sized images (x2 LR) and a one-image Set5; cache built."""
    from helpers.datatrees import make_benchmark, make_div2k

    root, bench = work / "DIV2K", work / "benchmark"
    if not (root / "DIV2K_train_HR").is_dir():
        print(f"writing {n} 2040x1356 DIV2K-layout images ...", flush=True)
        make_div2k(root, range(1, n + 1), size=(1356, 2040))
        make_benchmark(bench, "Set5", 1, scales=(2,))
    args = [
        "data=div2k",
        f"data.root={root}",
        f"data.benchmark_root={bench}",
        f"data.train.ranges=[[1,{n}]]",
        "data.val_sets=[Set5]",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), WANDB_MODE="offline")
    prep = [str(Path(sys.executable).parent / "hdsr-prepare"), f"hydra.run.dir={work}/prep", *args]
    subprocess.run(prep, env=env, check=True, capture_output=True, cwd=work)
    old = time.time_ns() - 60 * 10**9
    for entry in (root / ".hdsr_cache").rglob("*.npy"):
        os.utime(entry, ns=(old, old))
    return args


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=100, help="DIV2K-layout images (2040x1356)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--old", help="also run the code of this git revision")
    p.add_argument("--work", type=Path, help="keep the data tree here (default: a temp dir)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="hdsr_bench_startup_") as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        codes = {"new": ROOT / "src"}
        if args.old:
            tree = Path(tmp) / "old"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.old],
                check=True,
                capture_output=True,
            )
            codes["old"] = tree / "src"
        try:
            cases = {"demo": [], f"DIV2K {args.images}": make_tree(work, args.images)}
            rows = []
            for case, case_args in cases.items():
                for _ in range(args.repeats):  # interleaved, so drift hits both alike
                    for name, code in codes.items():
                        t = measure(code, case_args, work)
                        rows.append((case, name, t))
                        print(f"  {case:>10} {name:>3}: {t['total']:.2f} s", flush=True)
        finally:
            if args.old:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)])
        cols = list(rows[0][2])
        print("\nbest of", args.repeats, "(seconds):")
        print(f"{'case':>12} {'code':>4} " + " ".join(f"{c:>9}" for c in cols))
        for case in cases:
            for name in codes:
                best = min(
                    (t for c, n, t in rows if c == case and n == name), key=lambda t: t["total"]
                )
                print(f"{case:>12} {name:>4} " + " ".join(f"{best[c]:9.2f}" for c in cols))


if __name__ == "__main__":
    main()
