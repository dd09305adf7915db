"""The paper's datasets: registry, loading (local cache or OpenML), splits and scaling."""

from .datasets import (
    DATASETS,
    PAPER_DATASETS,
    Dataset,
    DatasetError,
    DatasetInfo,
    default_scratch,
    get_info,
    load_dataset,
)
from .splits import ScaledSplits, device_precision, holdout_split, standardize, tuning_folds

__all__ = [
    "DATASETS",
    "PAPER_DATASETS",
    "Dataset",
    "DatasetError",
    "DatasetInfo",
    "ScaledSplits",
    "default_scratch",
    "device_precision",
    "get_info",
    "holdout_split",
    "load_dataset",
    "standardize",
    "tuning_folds",
]
