"""Trainable input-feature quantizers: thresholds, quantizer modules and the temperature schedule."""

from .quantizers import (
    BwSQQuantizer,
    LLTQuantizer,
    LSQQuantizer,
    MidpointQuantizer,
    Quantizer,
    SQplusQuantizer,
    SQQuantizer,
    ThresholdQuantizer,
)
from .schedule import TemperatureSchedule
from .thresholds import (
    check_bits,
    decode_midpoints,
    hard_index,
    midpoints,
    minmax_thresholds,
    n_thresholds,
    quantile_thresholds,
    steps_from_index,
    threshold_ranks,
)
from .wire import pack, payload_bytes, unpack, unpack_samples

__all__ = [
    "BwSQQuantizer",
    "LLTQuantizer",
    "LSQQuantizer",
    "MidpointQuantizer",
    "Quantizer",
    "SQQuantizer",
    "SQplusQuantizer",
    "TemperatureSchedule",
    "ThresholdQuantizer",
    "check_bits",
    "decode_midpoints",
    "hard_index",
    "midpoints",
    "minmax_thresholds",
    "pack",
    "payload_bytes",
    "n_thresholds",
    "quantile_thresholds",
    "steps_from_index",
    "threshold_ranks",
    "unpack",
    "unpack_samples",
]
