"""The paper's datasets: registry, loading (local cache or OpenML), splits and scaling."""

from .datasets import (
    DATASETS,
    MAX_CLASS_CODES,
    PAPER_DATASETS,
    TASKS,
    Dataset,
    DatasetError,
    DatasetInfo,
    dataset_name,
    default_scratch,
    get_info,
    is_table_file,
    load_dataset,
    load_table,
)
from .splits import ScaledSplits, device_precision, holdout_split, standardize, tuning_folds

__all__ = [
    "DATASETS",
    "PAPER_DATASETS",
    "Dataset",
    "DatasetError",
    "DatasetInfo",
    "MAX_CLASS_CODES",
    "TASKS",
    "ScaledSplits",
    "dataset_name",
    "default_scratch",
    "device_precision",
    "get_info",
    "holdout_split",
    "is_table_file",
    "load_dataset",
    "load_table",
    "standardize",
    "tuning_folds",
]
