"""The errors hdsr raises for bad input, each naming the key or the file at fault."""

from __future__ import annotations

import sys
from pathlib import Path


def command_name() -> str:
    """The name the command was typed as (``hdsr-train``), for its one-line messages."""
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "hdsr"


class UsageError(SystemExit):
    """Exit with status 2 and ``<command>: error: <message>`` on stderr, like argparse:
    a bad argument or config value, said in one line."""

    def __init__(self, message: str) -> None:
        print(f"{command_name()}: error: {message}", file=sys.stderr)
        super().__init__(2)


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key."""


class UnreadableCheckpoint(ValueError):
    """A file that a weights-only load cannot read as a checkpoint: ``<path> is not a
    readable checkpoint: <reason>`` (torn or cut short, not a checkpoint, or Python
    objects that would need unpickling)."""

    def __init__(self, path: object, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path} is not a readable checkpoint: {reason}")


class UntrustedConfigError(ValueError):
    """A network config from a file that would build something other than an hdsr network,
    or with arguments that are not plain data; the message names the file and the key."""


class StoppedRun(RuntimeError):
    """A run stopped by a signal that will not be resumed automatically (a submitit job
    that SLURM is not requeueing); the message says where its checkpoint is."""


class NonFiniteWeights(ValueError):
    """A checkpoint whose weights hold NaN or Inf values; the message names the file and
    the first such tensor. Such weights can only produce broken images and scores."""


class NonFiniteOutput(ValueError):
    """A network output holding NaN or Inf values: never written as an image or scored."""


class OutputWriteError(OSError):
    """A file of a run could not be written (a full disk, a quota, a read-only file
    system); the message names the file and the free space left."""

    def __str__(self) -> str:
        return str(self.strerror)


def write_failed(path: object, err: BaseException) -> OutputWriteError:
    """The ``OutputWriteError`` of a failed write of ``path``."""
    import errno
    import shutil
    from pathlib import Path

    reason = getattr(err, "strerror", None)
    if not reason:
        text = str(err).strip()
        reason = text.splitlines()[0] if text else type(err).__name__
    free = ""
    folder = Path(str(path)).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = f"; {shutil.disk_usage(folder).free / 2**20:.0f} MiB free there"
    except OSError:
        pass
    code = getattr(err, "errno", None) or errno.EIO
    return OutputWriteError(code, f"writing {path} failed: {reason}{free}")


class StartupInterrupted(Exception):
    """Ctrl-C that reached a job as ``KeyboardInterrupt``: while it started (imports,
    config, data), before training's own stop handler took over. An ordinary error
    for Hydra, so that its job-end callbacks remove the run folder it made and say so in
    one line (a KeyboardInterrupt would skip them and print a traceback)."""
