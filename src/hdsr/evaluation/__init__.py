"""Evaluation: scoring through ``Trainer.test`` (``module``, ``scoring``), the bicubic
baseline (``bicubic``), result tables and files (``tables``), the paper's figures
(``published``), the sweep report (``sweep_report``) and complexity (``complexity``)."""
