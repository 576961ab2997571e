"""HDSRNet, its parts and the loader for the authors' released checkpoints."""

from hdsr.imaging import SCALES, check_scale
from hdsr.models.hdsrnet import (
    ConstructionBlock,
    HDSRNet,
    HeterogeneousBlock,
    LowerNet,
    UpperNet,
    Upsampler,
    count_parameters,
)
from hdsr.models.layers import ConvReLU, DynamicConv2d, MeanShift
from hdsr.models.official import convert_official_state_dict, hdsr_to_official_key, load_official

__all__ = [
    "SCALES",
    "ConstructionBlock",
    "ConvReLU",
    "DynamicConv2d",
    "HDSRNet",
    "HeterogeneousBlock",
    "LowerNet",
    "MeanShift",
    "UpperNet",
    "Upsampler",
    "check_scale",
    "convert_official_state_dict",
    "hdsr_to_official_key",
    "count_parameters",
    "load_official",
]
