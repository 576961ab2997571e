"""hdsr: HDSRNet (Tian et al., arXiv 2402.15704) for single-image super-resolution.

A folder is a job; layers from the top (``lint-imports`` checks them, contracts in
pyproject.toml): ``hdsr.cli`` (the commands: arguments and ``main()`` only);
``hdsr.search`` (hyperparameter search over runs); ``hdsr.export`` (ONNX) beside
``hdsr.training`` (the LightningModule, optimizers, callbacks, EMA, checkpoint files,
loggers, the run); ``hdsr.evaluation`` (scoring through ``Trainer.test``, the bicubic
baseline, result tables, the paper's figures, the sweep report, complexity);
``hdsr.inference`` (loading a network from a file, upscaling, the memory plan, tiles,
image files); ``hdsr.models`` (the network and its variants), ``hdsr.data`` (caches,
datasets, the DataModule) and ``hdsr.metrics``, which do not import each other; and the
leaves (``checkpoint_io``, ``devices``, ``imaging``, ``imresize``, ``runtime``,
``console``, ``run_dirs``, ``sizes``) over ``hdsr.errors``.
"""

__version__ = "0.1.0"
