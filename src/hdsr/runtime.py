"""Process-wide settings the command-line tools apply before they start work.

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

import ctypes
import ctypes.util
import signal
import sys

from omegaconf import DictConfig, OmegaConf

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
