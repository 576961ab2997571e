"""hdsr: HDSRNet (Tian et al., arXiv 2402.15704) for single-image super-resolution.

Subpackages: ``hdsr.models`` (the network and the official-checkpoint loader),
``hdsr.data`` (MATLAB-compatible bicubic, datasets, the DataModule), ``hdsr.metrics``
(paper-protocol PSNR/SSIM on Y), ``hdsr.module`` (the LightningModule), ``hdsr.train``
(the ``hdsr-train`` Hydra task).
"""

__version__ = "0.1.0"
