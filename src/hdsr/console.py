"""What a run prints: each log line once, and no third-party tips.

Lightning gives its ``lightning`` logger a console handler of its own (``INFO: ...`` on
stderr) when it is imported, while its records also reach the root logger, where Hydra's
job logging prints them (stdout) and writes them to ``<run dir>/<job>.log``: every INFO
line appeared twice. It also logs advertisements for its cloud services with every
Trainer ("💡 Tip: ... install litlogger", "... litmodels").
"""

from __future__ import annotations

import logging

#: loggers to which Lightning adds a console handler when it is imported (the last two
#: only when the root logger had no handler yet), and stops propagation
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
#: the loggers Lightning's rank-zero messages, the tips among them, are logged to
RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)
#: how Lightning's tips begin
TIP_PREFIXES = ("💡 Tip", "Tip:")


class DropTips(logging.Filter):
    """Leave out the records that are third-party tips (Lightning's ``💡 Tip: ...``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot format is not ours to drop
            return True
        return not message.lstrip().startswith(TIP_PREFIXES)


def one_line_each() -> None:
    """Print each of Lightning's log lines once, and none of its tips.

    Call after Lightning is imported. When the root logger has handlers (Hydra's job
    logging: the console and the job's log file), Lightning's own console handlers are
    removed and its records propagate to them, so they are printed once and the log
    file stays complete. Without root handlers (Lightning used outside a Hydra job)
    Lightning keeps its handlers. Tips are dropped either way. Safe to call again.
    """
    if logging.getLogger().handlers:
        for name in LIGHTNING_LOGGERS:
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:  # not file or capture handlers
                    logger.removeHandler(handler)
            logger.propagate = True
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropTips) for f in logger.filters):
            logger.addFilter(DropTips())
