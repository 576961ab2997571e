"""Inference: a network from a checkpoint file (``loading``), upscaling with
self-ensemble (``forward``), the memory plan (``budget``), windowed and stage-wise tiles
(``tiling``), and the image files of ``hdsr-upscale`` (``files``)."""
