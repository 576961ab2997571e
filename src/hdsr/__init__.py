"""hdsr: HDSRNet (Tian et al., arXiv 2402.15704) for single-image super-resolution.

Layers, from the bottom: ``hdsr.imaging`` and ``hdsr.imresize`` (leaves: image conversion
and I/O, devices, precision, sizes; MATLAB-compatible bicubic); ``hdsr.models`` (the
network, its variants, the official-checkpoint loader) and ``hdsr.data`` (caches,
datasets, the DataModule), which do not import each other; the library that uses them
(``hdsr.metrics``, ``hdsr.module`` the LightningModule, ``hdsr.inference``,
``hdsr.scoring``, ``hdsr.results``, ``hdsr.checkpoints``, ``hdsr.callbacks``, ...); and
``hdsr.cli``, the commands, which only handle arguments and orchestrate.
"""

__version__ = "0.1.0"
