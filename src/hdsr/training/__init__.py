"""Training: the LightningModule (``module``), optimizers and schedules (``optimizers``),
callbacks and EMA (``callbacks``, ``ema``), the run's checkpoint files
(``checkpoint_files``), loggers (``loggers``), the config checks (``config``) and the run
assembly that ``hdsr-train`` calls (``run``)."""
