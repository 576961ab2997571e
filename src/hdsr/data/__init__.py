"""Data: MATLAB-compatible bicubic, image pairs, patch datasets and the DataModule.

Heavy modules (Lightning) are imported on first use of the names that need them.
"""

from hdsr.imresize import imresize, modcrop

__all__ = ["SRDataModule", "imresize", "modcrop"]


def __getattr__(name: str):
    if name == "SRDataModule":
        # Lightning: loaded by the DataModule's users only, so hdsr.data stays light
        from hdsr.data.datamodule import SRDataModule

        return SRDataModule
    raise AttributeError(f"module 'hdsr.data' has no attribute {name!r}")
