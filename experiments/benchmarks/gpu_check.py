"""One check of hdsr's CUDA paths on a GPU, in under 10 minutes (``make gpu-check``).

Steps (``--steps`` picks some; all by default), on generated data in hdsr's layouts:

  bench       ``bench_speed.py --gpu-only --quick``: training throughput at the paper's
              recipe, Table VI inference times, the device-resident loader (CUDA events)
  train       200 steps of ``hdsr-train experiment=paper_x4 trainer=gpu
              trainer.precision=bf16-mixed data.device_resident=true`` on a generated
              DIV2K tree; ``torch.cuda.set_sync_debug_mode("warn")`` over the steady-state
              steps counts the host syncs per step and names where they come from
  compile     the same with ``runtime.compile=true``: compiled frames and recompilations
              (with their reasons) in the training steps and in the final validation
  validation  whole-image validation (the benchmark sets' image sizes, so a new shape
              per image) timed with ``cudnn.benchmark`` off and on: the first pass (which
              tunes each new shape when on) and the second
  eval        ``hdsr-eval`` of the train step's checkpoint on the GPU (precision 32: TF32
              off; and bf16) against the same on the CPU, on a generated benchmark tree
  upscale     ``hdsr.inference.forward.upscale`` of a 1024x680 and a 4000x3000 image at x2:
              untiled, the memory-budget policy and ``tile=256`` (stage-wise): wall
              time, peak device memory against the policy's estimate, max difference

Then one summary, printed and written to ``runs/gpu_check/gpu_check_<UTC time>.json``
(the data and runs are in ``runs/gpu_check/<UTC time>/``).

Without a CUDA GPU it exits at once with status 2. ``--cpu-dry-run`` runs the same steps
on the CPU at tiny sizes and a few steps (no sync counting: that needs CUDA; the compile
step uses dynamo's "eager" backend, so no C++ toolchain is needed), to test the plumbing:

    python experiments/benchmarks/gpu_check.py [--steps train,eval] [--cpu-dry-run]

The train and compile steps run ``hdsr.training.run.train`` in this process (so a Lightning
callback can watch the steps): ``lightning.Trainer`` is swapped for a subclass that adds
that callback, for the duration of the step only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BENCH_SPEED = Path(__file__).resolve().parent / "bench_speed.py"
STEPS = ("bench", "train", "compile", "validation", "eval", "upscale")
#: exit status when there is no GPU to check
NO_GPU = 2

#: HR sizes (height, width) of Set5 and Set14's images: validation sees one shape per image
SET5_SIZES = [(512, 512), (288, 288), (256, 256), (280, 280), (344, 228)]
SET14_SIZES = [
    (480, 500),
    (576, 720),
    (512, 512),
    (288, 352),
    (361, 250),
    (276, 276),
    (362, 500),
    (288, 352),
    (512, 512),
    (512, 512),
    (512, 768),
    (512, 512),
    (529, 656),
    (391, 586),
]


@dataclass(frozen=True)
class Plan:
    """Sizes and step counts: the real check on a GPU, or the tiny CPU dry run."""

    dry: bool
    device: str
    train_images: int
    train_size: tuple[int, int]
    set5: list[tuple[int, int]]
    set14: list[tuple[int, int]]
    steps: int
    warmup_steps: int
    compile_steps: int
    overrides: tuple[str, ...]
    validation_precisions: tuple[str, ...] = ("bf16", "32")

    @classmethod
    def make(cls, dry: bool) -> Plan:
        if dry:
            return cls(
                dry=True,
                device="cpu",
                train_images=3,
                train_size=(64, 96),
                set5=[(48, 48), (40, 56)],
                set14=[(44, 36)],
                steps=3,
                warmup_steps=1,
                compile_steps=2,
                overrides=(
                    "trainer=cpu",
                    "data.batch_size=2",
                    "data.patch_size=32",
                    "trainer.enable_progress_bar=false",
                ),
                validation_precisions=("32",),
            )
        return cls(
            dry=False,
            device="cuda",
            train_images=24,
            train_size=(512, 768),
            set5=SET5_SIZES,
            set14=SET14_SIZES,
            steps=200,
            warmup_steps=20,
            compile_steps=60,
            overrides=("trainer=gpu",),
        )


# ------------------------------------------------------------------------- test data


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth, photo-like uint8 RGB image: waves, a ramp and a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for c in range(3):
        fy, fx = rng.uniform(0.02, 0.15, size=2)
        img = 128 + 60 * np.sin(fx * x + c) * np.cos(fy * y - c) + 40 * (x / w - y / h)
        chans.append(img + rng.normal(0, 4, size=(h, w)))
    return np.clip(np.stack(chans, axis=2), 0, 255).round().astype(np.uint8)


def make_data(root: Path, plan: Plan) -> dict[str, Path]:
    """DIV2K-layout HR images 0001.. (LR made and cached by hdsr) and Set5/Set14 HR trees."""
    from hdsr.imaging import write_png

    div2k, bench = root / "div2k", root / "benchmark"
    for i in range(1, plan.train_images + 1):
        write_png(div2k / "DIV2K_train_HR" / f"{i:04d}.png", photo(*plan.train_size, seed=i))
    for name, sizes in (("Set5", plan.set5), ("Set14", plan.set14)):
        for k, (h, w) in enumerate(sizes):
            write_png(bench / name / "HR" / f"img_{k:03d}.png", photo(h, w, seed=1000 + k))
    return {"div2k": div2k, "benchmark": bench}


# -------------------------------------------------------------------- train in-process


def compose_train(overrides: list[str]):
    from hydra import compose, initialize_config_module

    import hdsr.cli.train  # noqa: F401 - registers the resolvers

    with initialize_config_module(config_module="hdsr.conf", version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def train_overrides(plan: Plan, data: dict[str, Path], run_dir: Path, steps: int) -> list[str]:
    return [
        "experiment=paper_x4",
        *plan.overrides,
        "trainer.precision=bf16-mixed",
        "data.device_resident=true",
        f"data.root={data['div2k']}",
        f"data.benchmark_root={data['benchmark']}",
        f"data.train.ranges=[[1,{plan.train_images}]]",
        f"trainer.max_steps={steps}",
        "logger=csv",
        "resume=false",
        f"paths.run_dir={run_dir}",
    ]


#: the StepWatch callbacks of the runs in this process, by key: a run's config adds one as
#: ``+callbacks.step_watch={_target_: <this module>.watch_callback, key: ...}``
WATCHES: dict[str, Any] = {}


def watch_callback(key: str) -> Any:
    """The registered StepWatch ``key`` (the ``_target_`` of the callback override)."""
    return WATCHES[key]


def watch_overrides(watch: Any) -> list[str]:
    """The config overrides that add ``watch`` to hdsr-train's callbacks: the Trainer gets
    it from ``cfg.callbacks`` like any other callback (nothing of hdsr is patched)."""
    key = f"w{id(watch)}"
    WATCHES[key] = watch
    return [
        f"+callbacks.step_watch._target_={__name__}.watch_callback",
        f"+callbacks.step_watch.key={key}",
    ]


def _source(stack: traceback.StackSummary) -> str:
    """Where a sync came from: the innermost frame of hdsr, Lightning or torch's optimizers
    and utilities, else the innermost frame outside ``warnings`` and this script."""
    own = (Path(warnings.__file__).resolve(), Path(__file__).resolve())
    frames = [f for f in stack if Path(f.filename).resolve() not in own]
    if not frames:
        return "unknown"
    for frame in reversed(frames):
        f = frame.filename.replace(os.sep, "/")
        if any(k in f for k in ("/hdsr/", "/lightning/", "/torch/optim/", "/torch/nn/utils/")):
            short = f.split("/site-packages/")[-1].split("/src/")[-1]
            return f"{short}:{frame.lineno} {frame.name}"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno} {last.name}"


class StepWatch:
    """Lightning callback hooks (``step_watch`` makes the callback) over the steps
    ``[start, start + count)``: wall time per step and, on CUDA, the host syncs
    (``torch.cuda.set_sync_debug_mode("warn")``) with their sources. Also records the
    backend flags the Trainer left and dynamo's counters per phase."""

    SYNC_MESSAGE = "called a synchronizing CUDA operation"

    def __init__(self, start: int, count: int, cuda: bool) -> None:
        self.start, self.count, self.cuda = start, count, cuda
        self.syncs: Counter[str] = Counter()
        self.seconds: float | None = None
        self.flags: dict = {}
        self.dynamo: dict[str, dict] = {}
        self.watched = 0  # optimizer steps inside the window (fewer if validation cut it)
        self._t0 = 0.0
        self._step0 = 0
        self._warnings = None
        self._active = False

    # -- sync capture
    def _showwarning(self, message, category, filename, lineno, file=None, line=None):
        if self.SYNC_MESSAGE in str(message):
            self.syncs[_source(traceback.extract_stack())] += 1
        else:
            self._show(message, category, filename, lineno, file, line)

    def _begin(self, step: int = 0) -> None:
        import torch

        self._step0 = step
        if self.cuda:
            torch.cuda.synchronize()
            self._warnings = warnings.catch_warnings()
            self._warnings.__enter__()
            warnings.simplefilter("always")
            self._show = warnings.showwarning
            warnings.showwarning = self._showwarning
            torch.cuda.set_sync_debug_mode("warn")
        self._active = True
        self._t0 = time.perf_counter()

    def _end(self, step: int | None = None) -> None:
        import torch

        self.watched = self.count if step is None else step - self._step0
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
            warnings.showwarning = self._show
            self._warnings.__exit__(None, None, None)
        self.seconds = time.perf_counter() - self._t0
        self._active = False

    # -- Lightning hooks
    def on_train_start(self, trainer, pl_module) -> None:
        import torch

        from hdsr.devices import tf32_state

        self.flags = {"cudnn.benchmark": torch.backends.cudnn.benchmark, **tf32_state()}
        self.dynamo["start"] = dynamo_counts()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.start and not self._active and self.seconds is None:
            self._begin(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._active and trainer.global_step >= self.start + self.count:
            self._end(trainer.global_step)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self._active:
            self._end(trainer.global_step)
        self.dynamo.setdefault("before_validation", dynamo_counts())

    def on_validation_end(self, trainer, pl_module) -> None:
        self.dynamo["after_validation"] = dynamo_counts()

    def report(self) -> dict:
        steps = self.watched if self.seconds is not None else 0
        out: dict = {"steps_watched": steps, "flags": self.flags}
        if steps:
            out["ms_per_step"] = 1e3 * self.seconds / steps
        if self.cuda and steps:
            total = sum(self.syncs.values())
            out["syncs"] = total
            out["syncs_per_step"] = total / steps
            out["sync_sources"] = dict(self.syncs.most_common(8))
        else:
            out["syncs"] = None
        return out


def step_watch(start: int, count: int, cuda: bool) -> StepWatch:
    """A ``StepWatch`` that is a ``lightning.Callback`` (Lightning imported only here)."""
    import lightning

    return type("StepWatchCallback", (StepWatch, lightning.Callback), {})(start, count, cuda)


def dynamo_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "frames_compiled": int(counters["frames"]["ok"]),
        "graphs": int(counters["stats"]["unique_graphs"]),
    }


@contextlib.contextmanager
def recompile_log() -> Iterator[list[str]]:
    """Dynamo's recompilation messages (``TORCH_LOGS=recompiles``) while inside."""
    import torch

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage().strip())

    handler = Keep()
    logger = logging.getLogger("torch._dynamo.guards.__recompiles")
    torch._logging.set_logs(recompiles=True)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        torch._logging.set_logs()


def run_train(plan: Plan, data: dict[str, Path], work: Path, compile_: bool) -> dict:
    """hdsr-train in this process with a StepWatch over the steady-state steps."""
    import torch

    from hdsr.training.run import train

    steps = plan.compile_steps if compile_ else plan.steps
    name = "compile" if compile_ else "train"
    overrides = train_overrides(plan, data, work / name, steps)
    if compile_:
        overrides.append("runtime.compile=true")
    start = plan.warmup_steps if not compile_ else min(plan.warmup_steps, steps - 1)
    watch = step_watch(start, steps - start, cuda=not plan.dry)
    cfg = compose_train([*overrides, *watch_overrides(watch)])
    stack = contextlib.ExitStack()
    recompiles: list[str] = []
    if compile_:
        torch._dynamo.reset()
        from torch._dynamo.utils import counters

        counters.clear()
        recompiles = stack.enter_context(recompile_log())
        if plan.dry:  # dynamo traces and guards as on the GPU; no C++ toolchain needed
            compile_fn = torch.compile
            stack.enter_context(_patched(torch, "compile", _eager(compile_fn)))
    t0 = time.perf_counter()
    with stack:
        result = train(cfg)
    out = {
        "command": "hdsr-train " + " ".join(overrides),
        "wall_s": time.perf_counter() - t0,
        "checkpoint": result.get("checkpoint"),
        "metrics": result.get("metrics"),
        **watch.report(),
    }
    batch = int(cfg.data.batch_size)
    if out.get("ms_per_step"):
        out["images_per_s"] = batch / (out["ms_per_step"] / 1e3)
    if compile_:
        d = watch.dynamo
        zero = {"frames_compiled": 0, "graphs": 0}
        before = d.get("before_validation", d.get("after_validation", zero))
        after = d.get("after_validation", before)
        out["dynamo"] = {
            "training": before,
            "validation": {k: after[k] - before[k] for k in after},
            "recompilations": len(recompiles),
            "recompile_reasons": [r.splitlines()[-1][:300] for r in recompiles[:12]],
        }
    return out


@contextlib.contextmanager
def _patched(obj, name: str, value) -> Iterator[None]:
    saved = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, saved)


def _eager(compile_fn: Callable) -> Callable:
    @functools.wraps(compile_fn)
    def compile_eager(model=None, **kwargs):
        kwargs["backend"] = "eager"
        return compile_fn(model, **kwargs)

    return compile_eager


# ---------------------------------------------------------------- validation shapes


def run_validation(plan: Plan, data: dict[str, Path]) -> dict:
    """SRModule's own validation_step over Set5 + Set14 (a new shape per image), under the
    autocast Lightning's precision plugin wraps it in, timed with cudnn.benchmark off then
    on: pass 1 (which tunes each new shape when on) and pass 2, per precision. Weights are
    random: the time does not depend on them."""
    import torch

    from hdsr.data.benchmarks import BenchmarkImages
    from hdsr.data.datasets import WholeImages
    from hdsr.devices import autocast_context
    from hdsr.models import HDSRNet
    from hdsr.training.module import SRModule

    device = torch.device(plan.device)
    names = ["Set5", "Set14"]
    batches = []
    for k, name in enumerate(names):
        images = WholeImages(BenchmarkImages(data["benchmark"], name).load(4), name)
        for i in range(len(images)):
            item = images[i]
            batch = {"lr": item["lr"][None], "hr": item["hr"], "name": item["name"]}
            batches.append((k, i, {**batch, "index": item["index"]}))
    torch.manual_seed(0)
    module = SRModule(HDSRNet(4), scale=4, val_set_names=names, log_images=0).to(device).eval()
    shapes = {tuple(b["lr"].shape[-2:]) for _, _, b in batches}

    def one_pass(precision: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        module.on_validation_epoch_start()
        with torch.inference_mode(), autocast_context(device, precision):
            for k, i, batch in batches:
                on_device = {**batch, "lr": batch["lr"].to(device), "hr": batch["hr"].to(device)}
                module.validation_step(on_device, i, k)
        return time.perf_counter() - t

    saved = torch.backends.cudnn.benchmark
    rows = []
    try:
        with torch.inference_mode():  # CUDA context, kernels loaded: not in the first pass
            module(torch.rand(1, 3, 20, 24, device=device) * 255)
        for precision in plan.validation_precisions:
            for flag in (False, True):
                torch.backends.cudnn.benchmark = flag
                first, second = one_pass(precision), one_pass(precision)
                rows.append(
                    {"precision": precision, "benchmark": flag, "pass1_s": first, "pass2_s": second}
                )
    finally:
        torch.backends.cudnn.benchmark = saved
    return {"images": len(batches), "shapes": len(shapes), "passes": rows}


# --------------------------------------------------------------------- subprocesses


def run_command(cmd: list[str], log: Path, timeout: float) -> tuple[int, float]:
    """Run ``cmd`` from the repository root, output to ``log``; (status, seconds)."""
    t0 = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        try:
            rc = subprocess.run(
                cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, time.perf_counter() - t0


def run_bench(plan: Plan, work: Path) -> dict:
    out = work / "bench_speed.json"
    size = ["--tiny", "--in-process"] if plan.dry else ["--quick"]
    cmd = [sys.executable, str(BENCH_SPEED), "--gpu-only", "--device", plan.device, *size]
    rc, secs = run_command([*cmd, "--json", str(out)], work / "bench_speed.log", 420)
    res: dict = {"command": " ".join(cmd[1:]), "status": rc, "wall_s": secs}
    if rc == 0 and out.is_file():
        res.update(json.loads(out.read_text()))
    else:
        res["log"] = str(work / "bench_speed.log")
    return res


def hdsr_eval(work: Path, ckpt: str, bench: Path, device: str, precision: str) -> dict:
    exe = Path(sys.executable).with_name("hdsr-eval")
    run_dir = work / "eval" / f"{device.replace(':', '_')}_{precision}"
    cmd = [
        str(exe),
        f"ckpt={ckpt}",
        f"data.benchmark_root={bench}",
        "data.test_sets=[Set5,Set14]",
        f"device={device}",
        f"precision={precision}",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
    ]
    rc, secs = run_command(cmd, run_dir.with_suffix(".log"), 300)
    out: dict = {"device": device, "precision": precision, "status": rc, "wall_s": secs}
    per_image = run_dir / "per_image.csv"
    if rc == 0 and per_image.is_file():
        import csv

        with open(per_image) as f:
            out["psnr_y"] = {
                f"{r['set']}/{r['image']}": float(r["psnr_y"]) for r in csv.DictReader(f)
            }
    else:
        out["log"] = str(run_dir.with_suffix(".log"))
    return out


def run_eval(plan: Plan, data: dict[str, Path], work: Path, ckpt: str | None) -> dict:
    if not ckpt:
        return {"skipped": "no checkpoint: run the train step first"}
    runs = [("cpu", "32")] if plan.dry else [("cuda", "32"), ("cuda", "bf16"), ("cpu", "32")]
    results = [hdsr_eval(work, ckpt, data["benchmark"], d, p) for d, p in runs]
    out: dict = {"runs": results}
    ref = results[-1].get("psnr_y")  # the CPU run
    for r in results[:-1]:
        if ref and r.get("psnr_y"):
            diffs = [abs(r["psnr_y"][k] - ref[k]) for k in ref]
            r["max_abs_psnr_diff_vs_cpu"] = max(diffs)
    return out


def run_upscale(plan: Plan) -> dict:
    """``hdsr.inference.forward.upscale`` on the device: untiled, the budget policy and forced
    stage-wise tiles, on a 1024x680 and a 4000x3000 LR image at x2 (float32): wall time,
    the device's peak allocated bytes, and the policy's estimate beside them."""
    import torch

    from hdsr.inference.forward import upscale
    from hdsr.models import HDSRNet

    cuda = plan.device.startswith("cuda")
    torch.manual_seed(0)
    net = HDSRNet(scale=2).eval()
    sizes = [(24, 40), (48, 72)] if plan.dry else [(680, 1024), (3000, 4000)]
    variants = (("tile 0", {"tile": 0}), ("default", {}), ("tile 256", {"tile": 256}))
    upscale(net, torch.rand(1, 3, 32, 32) * 255, 2, device=plan.device, tile=0)  # warm-up
    runs = []
    ref = None
    for h, w in sizes:
        lr = torch.from_numpy(photo(h, w, 3)).permute(2, 0, 1)[None].float()
        for name, kw in variants:
            plans: list = []
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            sr = upscale(net, lr, 2, device=plan.device, on_plan=plans.append, **kw)
            if cuda:
                torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() - base if cuda else None
            if name == "tile 0":
                ref = sr
            diff = float((sr - ref).abs().max()) if ref is not None else None
            how = plans[0]
            runs.append(
                {
                    "size": f"{w}x{h}",
                    "variant": name,
                    "path": how.describe(),
                    "estimate_bytes": how.need,
                    "peak_bytes": peak,
                    "wall_s": secs,
                    "max_diff_vs_untiled": diff,
                }
            )
            del sr
        ref = None
    return {"runs": runs}


# --------------------------------------------------------------------------- summary


def summary_lines(res: dict) -> list[str]:
    took = ", ".join(f"{k} {v:.0f} s" for k, v in res.get("step_s", {}).items())
    lines = [f"gpu-check on {res['device']} ({res['mode']}), {res['wall_s']:.0f} s ({took})"]
    b = res.get("bench")
    if b:
        if b.get("status"):
            lines.append(f"bench: FAILED (status {b['status']}, log {b.get('log')})")
        for r in b.get("gpu_train", []):
            lines.append(
                f"bench train x4: {r['variant']:<38} {r['ms']:8.1f} ms/step "
                f"{r['images_per_s']:9.1f} img/s"
            )
        if "device_loader" in b:
            lines.append(f"bench loader: {b['device_loader']['patches_per_s']:,.0f} patches/s")
    for key in ("train", "compile"):
        t = res.get(key)
        if not t:
            continue
        if "error" in t:
            lines.append(f"{key}: FAILED {t['error']}")
            continue
        speed = (
            f"{t['ms_per_step']:.1f} ms/step ({t.get('images_per_s', 0):.1f} img/s) over "
            f"{t['steps_watched']} steady-state steps"
            if t.get("ms_per_step")
            else "no steady-state window"
        )
        lines.append(f"{key}: {speed}; cudnn.benchmark={t['flags'].get('cudnn.benchmark')}")
        if t.get("syncs") is not None:
            lines.append(f"  host syncs per step: {t['syncs_per_step']:.2f} ({t['syncs']} total)")
            for src, n in t.get("sync_sources", {}).items():
                lines.append(f"    {n:5d}  {src}")
        elif key == "train":
            lines.append("  host syncs: not counted (needs CUDA)")
        if "dynamo" in t:
            d = t["dynamo"]
            lines.append(
                f"  compiled frames: training {d['training']['frames_compiled']}, validation "
                f"+{d['validation']['frames_compiled']}; recompilations {d['recompilations']}"
            )
            for r in d["recompile_reasons"][:5]:
                lines.append(f"    {r}")
    v = res.get("validation")
    if v and "passes" in v:
        lines.append(f"validation: {v['images']} images, {v['shapes']} shapes (s per pass)")
        for r in v["passes"]:
            lines.append(
                f"  {r['precision']:>4} cudnn.benchmark={str(r['benchmark']):<5} "
                f"pass 1 {r['pass1_s']:7.3f}  pass 2 {r['pass2_s']:7.3f}"
            )
    e = res.get("eval")
    if e:
        for r in e.get("runs", []):
            state = f"{r['wall_s']:.1f} s" if r["status"] == 0 else f"FAILED ({r.get('log')})"
            diff = r.get("max_abs_psnr_diff_vs_cpu")
            note = f", max |PSNR - CPU| {diff:.4f} dB" if diff is not None else ""
            lines.append(f"eval {r['device']} precision={r['precision']}: {state}{note}")
        if "skipped" in e:
            lines.append(f"eval: skipped ({e['skipped']})")
    for r in (res.get("upscale") or {}).get("runs", []):
        peak = f"{r['peak_bytes'] / 2**30:.2f} GiB" if r["peak_bytes"] is not None else "-"
        lines.append(
            f"upscale {r['size']} {r['variant']:<8} {r['wall_s']:7.2f} s  peak {peak} "
            f"(estimate {r['estimate_bytes'] / 2**30:.2f} GiB)  max diff "
            f"{r['max_diff_vs_untiled']:.4f}  {r['path']}"
        )
    for step, err in res.get("errors", {}).items():
        lines.append(f"{step}: ERROR {err}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)}")
    ap.add_argument("--cpu-dry-run", action="store_true", help="tiny run on the CPU (plumbing)")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check"), help="results folder")
    args = ap.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        ap.error(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")

    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        print(
            f"gpu-check: no CUDA GPU here (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}, torch.cuda.is_available() is False). This "
            "check measures hdsr on a GPU; --cpu-dry-run runs its steps on the CPU at tiny "
            "sizes to test the script.",
            file=sys.stderr,
        )
        return NO_GPU
    plan = Plan.make(args.cpu_dry_run)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = (args.out / stamp).resolve()
    work.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name(0) if not plan.dry else "cpu"
    res: dict = {
        "device": device_name,
        "mode": "cpu dry run" if plan.dry else "gpu",
        "torch": torch.__version__,
        "steps": steps,
        "work_dir": str(work),
        "errors": {},
    }
    t0 = time.perf_counter()
    data = make_data(work / "data", plan)
    ckpt = None
    res["step_s"] = {}
    for step in steps:
        print(f"== gpu-check: {step}", flush=True)
        t_step = time.perf_counter()
        try:
            if step == "bench":
                res["bench"] = run_bench(plan, work)
            elif step in ("train", "compile"):
                res[step] = run_train(plan, data, work, compile_=step == "compile")
                ckpt = ckpt or res[step].get("checkpoint")
            elif step == "validation":
                res["validation"] = run_validation(plan, data)
            elif step == "eval":
                res["eval"] = run_eval(plan, data, work, ckpt)
            elif step == "upscale":
                res["upscale"] = run_upscale(plan)
        except Exception as err:  # noqa: BLE001 - one failing step must not hide the rest
            res["errors"][step] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        res["step_s"][step] = round(time.perf_counter() - t_step, 1)
    res["wall_s"] = time.perf_counter() - t0
    lines = summary_lines(res)
    res["summary"] = lines
    path = args.out.resolve() / f"gpu_check_{stamp}.json"
    path.write_text(json.dumps(res, indent=1, default=str))
    print("\n".join(["", "== gpu-check summary", *lines, f"written: {path}"]))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
