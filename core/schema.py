"""The result files: their names and columns, and the paper's methods and datasets as the files know them.

Torch-free, so the analysis reads result files without loading the models. The paper's columns come
first in every file; the columns of a method registered beyond the paper's follow
(``protocol.schema`` adds them from the registry, ``models.methods`` asserts that the registry
describes the paper's methods as this module does).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

# the paper's methods, in the column order of its result files
PAPER_METHODS: tuple[str, ...] = (
    "FP", "Po-MQ", "Po-QQ", "Pr-MQ", "Pr-QQ", "SQ", "SQplus", "Bw-MQ", "Bw-QQ", "Bw-SQ", "LLT9", "LLT4", "LSQ",
)
PAPER_POST_TRAINING: tuple[str, ...] = ("Po-MQ", "Po-QQ")  # evaluate FP's trained network: no training loss or time
PAPER_SOFT_EVALUATED: tuple[str, ...] = ("SQ", "SQplus", "Bw-SQ", "LLT9", "LLT4")  # also evaluated without rounding
PAPER_SOFT_ORDER: tuple[str, ...] = ("SQ", "SQplus", "LLT9", "LLT4", "Bw-SQ")  # their ``*_train`` columns' order
UNTIMED_IN_TUNING: tuple[str, ...] = ("Pr-QQ", "Bw-QQ")  # the paper's tuning files record no time for them
# the paper's datasets, in the order of its tables
PAPER_DATASETS: tuple[str, ...] = ("california", "fried", "superconduct", "cpu_act", "sulfur", "wine_quality")
# the hyperparameters of a setting (the paper's Table 3), as the tuning files name them
SETTING_COLUMNS: tuple[str, ...] = (
    "weight_decay", "learning_rate", "hidden_layers", "hidden_neurons", "num_epochs", "decrease_factor", "dropout_rate",
)
SPLITS: tuple[str, ...] = ("val", "test")

TUNING_KEYS: tuple[str, ...] = ("hyperparameter_setting_id", "kFold_id", "bits", *SETTING_COLUMNS)
TUNING_ROW_KEY: tuple[str, ...] = ("hyperparameter_setting_id", "kFold_id")
TUNING_PAPER_COLUMNS: tuple[str, ...] = (
    *TUNING_KEYS,
    *(f"{split}_loss_{m}" for split in SPLITS for m in PAPER_METHODS),
    *(f"train_loss_{m}" for m in PAPER_METHODS if m not in PAPER_POST_TRAINING),
    *(f"time_{m}" for m in PAPER_METHODS if m not in PAPER_POST_TRAINING and m not in UNTIMED_IN_TUNING),
    *(f"{split}_loss_{m}_train" for m in PAPER_SOFT_ORDER for split in SPLITS),
)
BEST_PREFIXES: tuple[str, ...] = ("best_hyperparameter_id", "val_loss", "test_loss", "time")
BEST_ROW_KEY: tuple[str, ...] = ("bits", "step")
BEST_PAPER_COLUMNS: tuple[str, ...] = (
    *(f"{prefix}_{m}" for prefix in BEST_PREFIXES for m in PAPER_METHODS),
    *BEST_ROW_KEY,
)
BEST_FOLDER = "best_hyperparameter_multiple"
# classification only: hard-mode accuracies per method, after all other columns (tuning and best-setting files);
# in a best-setting file val_accuracy_<m> is the tuning's mean over the folds of the selected setting
ACCURACY_PREFIXES: tuple[str, ...] = ("val_accuracy", "test_accuracy")


def accuracy_columns(methods: Iterable[str]) -> tuple[str, ...]:
    """``val_accuracy_<m>`` for every method, then ``test_accuracy_<m>``: the columns a classification adds."""
    methods = tuple(methods)
    return tuple(f"{prefix}_{m}" for prefix in ACCURACY_PREFIXES for m in methods)


def has_accuracy(columns: Iterable[str]) -> bool:
    """Whether a result file's ``columns`` are those of a classification (they hold accuracies)."""
    return any(c.startswith(tuple(f"{prefix}_" for prefix in ACCURACY_PREFIXES)) for c in columns)


def tuning_method_columns(method: str, trained: bool, soft_eval: bool) -> tuple[str, ...]:
    """A further method's tuning columns: losses, training loss and time if it trains, soft-mode losses if any."""
    return (
        f"val_loss_{method}", f"test_loss_{method}",
        *((f"train_loss_{method}", f"time_{method}") if trained else ()),
        *(f"{split}_loss_{method}_train" for split in SPLITS if soft_eval),
    )


def best_method_columns(method: str) -> tuple[str, ...]:
    """A further method's columns in a best-setting file."""
    return tuple(f"{prefix}_{method}" for prefix in BEST_PREFIXES)


def further_methods(columns: Iterable[str]) -> list[str]:
    """The methods beyond the paper's whose ``test_loss_<m>`` column a best-setting file's ``columns`` hold."""
    named = (c.removeprefix("test_loss_") for c in columns if c.startswith("test_loss_"))
    return [m for m in named if m not in PAPER_METHODS]


def tuning_path(result_folder: str | os.PathLike, dataset: str, bits: int, iterations: int) -> Path:
    """``{result_folder}/{dataset}/{dataset}_hyperparameter_tuning_{b}bits_{iterations}iterations.csv``."""
    return Path(result_folder) / dataset / f"{dataset}_hyperparameter_tuning_{bits}bits_{iterations}iterations.csv"


def best_file_name(dataset: str) -> str:
    """``{dataset}_best_hyperparameter_test_multiple.csv``."""
    return f"{dataset}_best_hyperparameter_test_multiple.csv"


def best_path(result_folder: str | os.PathLike, dataset: str) -> Path:
    """``{result_folder}/best_hyperparameter_multiple/{dataset}_best_hyperparameter_test_multiple.csv``."""
    return Path(result_folder) / BEST_FOLDER / best_file_name(dataset)
