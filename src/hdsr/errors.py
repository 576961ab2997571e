"""The errors hdsr raises for bad input, each naming the key or the file at fault."""

from __future__ import annotations

import sys
from pathlib import Path


class UsageError(SystemExit):
    """Exit with status 2 and ``<command>: error: <message>`` on stderr, like argparse:
    a bad argument or config value, said in one line."""

    def __init__(self, message: str) -> None:
        prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "hdsr"
        print(f"{prog}: error: {message}", file=sys.stderr)
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
