"""Process-wide settings the command-line tools apply before they start work: the stop
signals, host memory retention, the W&B mode, and a job's own ``sys.argv`` for launchers
that re-run it.

``retain_host_memory``: glibc's ``malloc`` hands large freed blocks back to the OS (blocks
over its mmap threshold are unmapped; the top of the heap is trimmed). A network's
activations are freed and allocated again on every step, so each step then touches fresh
pages, and the page faults can cost a quarter of a CPU forward pass (measured in
``experiments/benchmarks/RESULTS.md``). Serving every block from the heap and never
trimming it keeps the freed memory in the process for the next step, as PyTorch's CUDA
caching allocator does on the GPU; the resident size stays at its peak instead of
shrinking between steps. (glibc still maps a block when the heap cannot grow, and for
threads other than the main one when a block exceeds their arena's 64 MiB heaps.)
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Iterator

from omegaconf import DictConfig, OmegaConf

from hdsr.errors import ConfigError

#: the signals that stop a run with a checkpoint: SIGTERM (kill, scancel), SIGINT (Ctrl-C),
#: and the pre-timeout signals SLURM sends with --signal: SIGUSR1 (sbatch --signal=USR1@120)
#: or SIGUSR2 (hydra-submitit-launcher); hdsr-train's GracefulStop and hdsr-search's
#: workers both handle these
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)

#: glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: never trim the heap top back to the OS (C int maximum)
NO_TRIM = 2**31 - 1

_applied: bool | None = None


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def retain_host_memory(enabled: bool = True) -> bool:
    """Keep freed host memory in the process (glibc ``mallopt``); True if it now applies.

    A no-op returning False off Linux, on a C library without ``mallopt``, or with
    ``enabled=False``. Idempotent; it cannot be undone in the same process.
    """
    global _applied
    if not enabled:
        return bool(_applied)
    if _applied is not None:
        return _applied
    libc = _libc()
    if libc is None:
        _applied = False
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1  # no block gets its own mapping
    ok = libc.mallopt(M_TRIM_THRESHOLD, NO_TRIM) == 1 and ok
    _applied = ok
    return ok


def apply_runtime_config(cfg: DictConfig) -> bool:
    """Apply a run config's ``runtime.retain_host_memory`` (on when the key is absent, as
    in configs saved before it existed); the result of ``retain_host_memory``."""
    return retain_host_memory(
        bool(OmegaConf.select(cfg, "runtime.retain_host_memory", default=True))
    )


def wandb_mode(cfg_mode: str | None) -> str:
    """online/offline/disabled: the configured mode, else WANDB_MODE, else by API key."""
    if cfg_mode:
        mode = str(cfg_mode)
    elif os.environ.get("WANDB_MODE"):
        mode = os.environ["WANDB_MODE"]
        mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    else:
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ConfigError(f"logger.wandb.mode must be online, offline or disabled, got {mode!r}")
    return mode


@contextlib.contextmanager
def single_job_argv() -> Iterator[None]:
    """Make ``sys.argv`` this job's own single-run command while the job trains or scores.

    Lightning's DDP launcher starts ranks > 0 by re-running ``sys.argv``; under ``-m``
    that is the whole sweep. With the job's own overrides each rank runs this job once.
    Environment variables the launcher sets (MASTER_PORT, ...) are undone afterwards so
    the next job of a sweep starts its own process group.
    """
    from hydra.core.hydra_config import HydraConfig

    saved_argv, saved_env = list(sys.argv), dict(os.environ)
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        sys.argv = [sys.argv[0], *hc.overrides.task]
    try:
        yield
    finally:
        sys.argv = saved_argv
        for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE"):
            if key in saved_env:
                os.environ[key] = saved_env[key]
            else:
                os.environ.pop(key, None)
        import torch.distributed as dist  # torch is loaded by then; kept off import time

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
