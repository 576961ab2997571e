"""Devices and precision: ``"auto"`` devices, autocast for a ``precision`` option, and the
CUDA backend switches (TF32 while training, exact float32 while evaluating).

On Ampere and later GPUs, TF32 runs float32 matmuls and convolutions on tensor cores with
a 10-bit mantissa: several times faster, and accurate enough for training, but evaluated
PSNR then depends on the card (and on whether it has tensor cores). torch's defaults:
cuDNN convolutions may use TF32 (``torch.backends.cudnn.allow_tf32`` is True), cuBLAS
matmuls may not (``torch.backends.cuda.matmul.allow_tf32`` is False, float32 matmul
precision "highest"); Lightning changes neither (it only suggests
``torch.set_float32_matmul_precision``). So hdsr says what it wants explicitly:

* training on CUDA (``trainer_kwargs``, which ``hdsr-train`` builds its Trainer with):
  TF32 on for both (:func:`set_cuda_tf32`);
* ``hdsr-eval precision=32``: TF32 off for both while the models run
  (:func:`exact_float32`), so paper-protocol numbers are true float32 on any card.

These flags only concern CUDA: nothing here changes a CPU result. Both helpers use the
``allow_tf32`` attributes (legacy in torch >= 2.9, which also has per-backend
``fp32_precision`` strings and refuses to *read* the legacy flags once the two APIs have
been mixed inconsistently); :func:`exact_float32` also pins the new-API strings to
"ieee" where they exist, and restores every switch it touched on exit.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import torch

from hdsr.errors import ConfigError

#: ``precision`` option -> autocast dtype (None: float32, no autocast)
PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to torch."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``precision`` "bf16" or "16" on ``device``; a no-op for "32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


#: the per-backend float32 precision strings of torch >= 2.9 ("" is the global one), in
#: the order they are restored: a leaf that reads "none" inherits its parent's value
_FP32_PRECISION_SWITCHES = (
    "",
    "cudnn",
    "mkldnn",
    "cuda.matmul",
    "cudnn.conv",
    "cudnn.rnn",
    "mkldnn.matmul",
    "mkldnn.conv",
    "mkldnn.rnn",
)
#: the ones :func:`exact_float32` pins to "ieee": cuBLAS matmuls, cuDNN convs and RNNs
_CUDA_SWITCHES = ("cuda.matmul", "cudnn.conv", "cudnn.rnn")


def _backend(path: str) -> Any:
    obj: Any = torch.backends
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _fp32_precisions() -> dict[str, str]:
    """The new-API precision string of each switch this torch has ({} before 2.9)."""
    out = {}
    for path in _FP32_PRECISION_SWITCHES:
        obj = _backend(path)
        try:
            value = obj.fp32_precision if obj is not None else None
        except (AttributeError, RuntimeError):
            value = None
        if isinstance(value, str):
            out[path] = value
    return out


def _read(getter) -> Any:
    """A legacy flag, or None where torch refuses to read it (the APIs were mixed)."""
    try:
        return getter()
    except RuntimeError:
        return None


def tf32_state() -> dict[str, Any]:
    """The TF32 switches as they stand (for logs and tests): the legacy flags (None where
    unreadable) and, on torch >= 2.9, the ``fp32_precision`` strings ("" = global)."""
    return {
        "cuda.matmul.allow_tf32": _read(lambda: torch.backends.cuda.matmul.allow_tf32),
        "cudnn.allow_tf32": _read(lambda: torch.backends.cudnn.allow_tf32),
        "float32_matmul_precision": _read(torch.get_float32_matmul_precision),
        **{f"{k}.fp32_precision".lstrip("."): v for k, v in _fp32_precisions().items()},
    }


def set_cuda_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 in cuBLAS matmuls and cuDNN convolutions, CUDA only.

    Unlike ``torch.set_float32_matmul_precision("high")`` this leaves oneDNN (CPU) matmuls
    alone, so CPU numbers cannot change.
    """
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


@contextlib.contextmanager
def restoring_tf32() -> Iterator[None]:
    """Give every TF32 switch its value back on exit (also when the block raises)."""
    matmul_precision = _read(torch.get_float32_matmul_precision)
    matmul_tf32 = _read(lambda: torch.backends.cuda.matmul.allow_tf32)
    cudnn_tf32 = _read(lambda: torch.backends.cudnn.allow_tf32)
    precisions = _fp32_precisions()
    try:
        yield
    finally:
        parents = [p for p in precisions if p in ("", "cudnn", "mkldnn")]
        for path in parents:
            _backend(path).fp32_precision = precisions[path]
        # then the legacy flags (their setters also write leaf strings), then the leaves
        if matmul_precision is not None and matmul_precision != "highest":
            torch.set_float32_matmul_precision(matmul_precision)
        elif matmul_tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        if cudnn_tf32 is not None:
            torch.backends.cudnn.allow_tf32 = cudnn_tf32
        for path, value in precisions.items():
            if path not in parents:
                _backend(path).fp32_precision = value


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off for CUDA matmuls and convolutions inside the block; restored on exit.

    Inside, ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``
    read False and the float32 matmul precision reads "highest" (full float32 for oneDNN
    matmuls too, which is already the CPU default); on torch >= 2.9 the CUDA
    ``fp32_precision`` strings read "ieee" (pinned explicitly, so a global
    ``torch.backends.fp32_precision = "tf32"`` set elsewhere cannot leak in). On exit every
    switch gets its previous value back, even when the block raises.
    """
    with restoring_tf32():
        precisions = _fp32_precisions()
        torch.set_float32_matmul_precision("highest")  # cuBLAS (and oneDNN) matmuls
        torch.backends.cudnn.allow_tf32 = False
        for path in _CUDA_SWITCHES:
            if path in precisions:
                _backend(path).fp32_precision = "ieee"
        yield


def uses_cuda(accelerator: Any) -> bool:
    """Whether a Trainer ``accelerator`` setting will train on CUDA."""
    name = str(accelerator).lower()
    if name in ("gpu", "cuda"):
        return True
    return name == "auto" and torch.cuda.is_available()


#: what ``trainer`` configs build when they name no ``_target_`` (hdsr 0.1's configs)
TRAINER_TARGET = "lightning.pytorch.Trainer"


def trainer_kwargs(trainer_cfg: Any) -> dict[str, Any]:
    """The ``trainer`` config group as a plain dict for ``instantiate`` (its ``_target_``,
    ``lightning.pytorch.Trainer`` when it names none; a ``strategy`` node with a
    ``_target_`` stays a node, built with the Trainer). When the run will train on CUDA,
    TF32 is allowed explicitly (:func:`set_cuda_tf32`), whatever torch's defaults are.
    """
    from omegaconf import DictConfig, OmegaConf

    kwargs = (
        OmegaConf.to_container(trainer_cfg, resolve=True)
        if isinstance(trainer_cfg, DictConfig)
        else dict(trainer_cfg)
    )
    kwargs.setdefault("_target_", TRAINER_TARGET)
    if uses_cuda(kwargs.get("accelerator", "auto")):
        set_cuda_tf32(True)
    return kwargs


def build_trainer(trainer_cfg: Any, **extra: Any) -> Any:
    """The Lightning Trainer of a ``trainer`` config (:func:`trainer_kwargs`), built by
    hydra's ``instantiate`` with ``extra`` arguments (callbacks, loggers, plugins...).
    A value Lightning refuses (``trainer.devices=0``) raises ``ConfigError`` with its
    reason."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate  # with Lightning: only when a Trainer is built
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(trainer_kwargs(trainer_cfg), **extra)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, MisconfigurationException | TypeError | ValueError):
            # a value Lightning refuses (trainer.devices=0, -1 on the CPU, ...): one line
            raise ConfigError(f"the trainer config is refused by Lightning: {cause}") from None
        raise


#: how a rank other than 0 finds out that the rendezvous address cannot be reached: a
#: connection attempt that times out (or finds no route) this many times in a row, each
#: given ``RENDEZVOUS_CONNECT_S`` seconds. A refused connection is not counted: the host
#: answers, and rank 0 has not opened its store yet (it may still be starting).
RENDEZVOUS_ATTEMPTS = 3
RENDEZVOUS_CONNECT_S = 5.0


def check_rendezvous(address: str, port: int, rank: int) -> None:
    """Fail at once, naming the address and port, where torch's process group would hang.

    ``MASTER_ADDR``/``MASTER_PORT`` of a multi-process run: torch's TCP store retries a
    name that does not resolve (IPv6 warnings) or a host that does not answer until its
    timeout (30 minutes), saying nothing clear. Here a name that does not resolve raises
    at once on every rank, and on ranks other than 0 a host that does not answer raises
    after ``RENDEZVOUS_ATTEMPTS`` x ``RENDEZVOUS_CONNECT_S`` seconds (15 s).

    Raises:
        RuntimeError: what failed, with the address and port.
    """
    where = f"{address}:{port} (MASTER_ADDR:MASTER_PORT)"
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise RuntimeError(
            f"the DDP rendezvous address {where} does not resolve on {socket.gethostname()}:"
            f" {err.strerror or err}; under SLURM it is the first node's name "
            "(its hosts must resolve each other's names), elsewhere set MASTER_ADDR"
        ) from None
    if rank == 0:
        return  # rank 0 opens the store itself
    failures, last = 0, ""
    patience = time.monotonic() + 600  # then torch's own timeout takes over
    while failures < RENDEZVOUS_ATTEMPTS and time.monotonic() < patience:
        for family, kind, proto, _, sockaddr in infos:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(RENDEZVOUS_CONNECT_S)
                try:
                    sock.connect(sockaddr)
                    return
                except ConnectionRefusedError:
                    last = ""
                except OSError as err:  # timed out, no route, network unreachable
                    last = str(err) or type(err).__name__
        if last:
            failures += 1
        else:
            time.sleep(0.5)  # refused: rank 0 is not listening yet; wait for it
    if failures < RENDEZVOUS_ATTEMPTS:
        return
    raise RuntimeError(
        f"rank {rank} cannot reach the DDP rendezvous at {where} from "
        f"{socket.gethostname()}: {last} ({RENDEZVOUS_ATTEMPTS} tries of "
        f"{RENDEZVOUS_CONNECT_S:g} s); check that rank 0's node is reachable from this one"
    )
