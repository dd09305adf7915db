"""The two result-file schemas of SPEC sections 5 and 6, and their safe reading and writing.

Column lists derive from the method registry; the only fixed parts are two quirks of the
paper's files: they record no training time for ``*-QQ`` in the tuning files, and they list
the soft-mode losses in the order SQ, SQplus, LLT9, LLT4, Bw-SQ.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from data.atomic import atomic_write_text
from models import METHOD_NAMES, METHODS, SETTING_KEYS

from .common import ProtocolError

UNTIMED_IN_TUNING = ("Pr-QQ", "Bw-QQ")
PAPER_SOFT_ORDER = ("SQ", "SQplus", "LLT9", "LLT4", "Bw-SQ")

TRAINED = tuple(m for m in METHOD_NAMES if not METHODS[m].post_training)
SOFT_EVALUATED = tuple(m for m in PAPER_SOFT_ORDER if METHODS[m].soft_eval) + tuple(
    m for m in METHOD_NAMES if METHODS[m].soft_eval and m not in PAPER_SOFT_ORDER
)

TUNING_KEYS = ("hyperparameter_setting_id", "kFold_id", "bits", *SETTING_KEYS)
TUNING_COLUMNS: tuple[str, ...] = (
    *TUNING_KEYS,
    *(f"val_loss_{m}" for m in METHOD_NAMES),
    *(f"test_loss_{m}" for m in METHOD_NAMES),
    *(f"train_loss_{m}" for m in TRAINED),
    *(f"time_{m}" for m in TRAINED if m not in UNTIMED_IN_TUNING),
    *(f"{split}_loss_{m}_train" for m in SOFT_EVALUATED for split in ("val", "test")),
)
BEST_COLUMNS: tuple[str, ...] = (
    *(f"best_hyperparameter_id_{m}" for m in METHOD_NAMES),
    *(f"val_loss_{m}" for m in METHOD_NAMES),
    *(f"test_loss_{m}" for m in METHOD_NAMES),
    *(f"time_{m}" for m in METHOD_NAMES),
    "bits",
    "step",
)
INTEGER_COLUMNS = {"hyperparameter_setting_id", "kFold_id", "bits", "step"} | {f"best_hyperparameter_id_{m}" for m in METHOD_NAMES}


def tuning_path(result_folder: str | os.PathLike, dataset: str, bits: int, iterations: int) -> Path:
    """``{result_folder}/{dataset}/{dataset}_hyperparameter_tuning_{b}bits_{iterations}iterations.csv``."""
    return Path(result_folder) / dataset / f"{dataset}_hyperparameter_tuning_{bits}bits_{iterations}iterations.csv"


def best_path(result_folder: str | os.PathLike, dataset: str) -> Path:
    """``{result_folder}/best_hyperparameter_multiple/{dataset}_best_hyperparameter_test_multiple.csv``."""
    return Path(result_folder) / "best_hyperparameter_multiple" / f"{dataset}_best_hyperparameter_test_multiple.csv"


def read_results(path: str | os.PathLike, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read a result CSV and check that its header is exactly ``columns``."""
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise ProtocolError(f"{path} does not exist") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]  # pandas' messages may span lines
        raise ProtocolError(f"{path} is not a readable CSV ({reason}); move it away or repair it") from None
    if tuple(frame.columns) != columns:
        missing = [c for c in columns if c not in frame.columns]
        extra = [c for c in frame.columns if c not in columns]
        raise ProtocolError(
            f"{path} does not have this project's schema (missing {missing[:3]}, unexpected {extra[:3]}, "
            "or columns out of order); move it away or point --result_folder elsewhere"
        )
    for column in frame.columns:
        if column in INTEGER_COLUMNS:
            frame[column] = frame[column].astype("Int64")
        elif not pd.api.types.is_numeric_dtype(frame[column]):
            raise ProtocolError(f"{path} has non-numeric values in column {column}; move it away or repair it")
    return frame


def write_results(frame: pd.DataFrame, path: str | os.PathLike, columns: tuple[str, ...]) -> None:
    """Write ``frame`` with exactly ``columns``, atomically, so a kill never leaves half a file."""
    frame = frame.loc[:, list(columns)].astype({c: "Int64" for c in columns if c in INTEGER_COLUMNS})
    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))
