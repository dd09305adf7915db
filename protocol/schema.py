"""The two result-file schemas (tuning and best-setting files), and their safe reading and writing.

A header is the paper's columns for its thirteen methods, then, per further registered method
(``models.METHODS``), that method's columns, and for a classification then every method's accuracy
columns (``core.schema.accuracy_columns``). The paper's part has two quirks: its tuning files
record no training time for ``*-QQ``, and list the soft-mode losses in the order SQ, SQplus,
LLT9, LLT4, Bw-SQ. Files written before a method was registered stay readable: its columns are
absent, which means "not computed".
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core.atomic import atomic_write_text
from core.schema import (
    BEST_PAPER_COLUMNS,
    BEST_ROW_KEY,
    SETTING_COLUMNS,
    TUNING_PAPER_COLUMNS,
    TUNING_ROW_KEY,
    accuracy_columns,
    best_method_columns,
    has_accuracy,
    tuning_method_columns,
)
from models import METHOD_NAMES, METHODS, PAPER_METHODS, SETTING_KEYS

from .common import ProtocolError

assert SETTING_KEYS == SETTING_COLUMNS, "a setting's keys are the tuning files' hyperparameter columns"
EXTRA_METHODS = tuple(m for m in METHOD_NAMES if m not in PAPER_METHODS)  # registered beyond the paper's

TRAINED = tuple(m for m in METHOD_NAMES if not METHODS[m].post_training)
SOFT_EVALUATED = tuple(m for m in METHOD_NAMES if METHODS[m].soft_eval)


@dataclass(frozen=True)
class Schema:
    """A result file's header: the paper's columns, then those of each further method."""

    paper_columns: tuple[str, ...]
    method_columns: Callable[[str], tuple[str, ...]]  # a further method's columns
    row_key: tuple[str, ...]  # the columns that identify a row, once per file

    def columns(self, extra_methods: Sequence[str] = EXTRA_METHODS, accuracy: bool = False) -> tuple[str, ...]:
        """The header of a file holding the paper's methods and ``extra_methods`` (all registered: the default);
        with ``accuracy`` (a classification) followed by their accuracy columns."""
        columns = self.paper_columns + tuple(c for m in extra_methods for c in self.method_columns(m))
        return columns + (accuracy_columns((*PAPER_METHODS, *extra_methods)) if accuracy else ())


def _tuning_method_columns(m: str) -> tuple[str, ...]:
    return tuning_method_columns(m, trained=not METHODS[m].post_training, soft_eval=METHODS[m].soft_eval)


TUNING = Schema(TUNING_PAPER_COLUMNS, _tuning_method_columns, TUNING_ROW_KEY)
BEST = Schema(BEST_PAPER_COLUMNS, best_method_columns, BEST_ROW_KEY)
BEST_COLUMNS = BEST.columns()
KEY_COLUMNS = (*TUNING_ROW_KEY, *BEST_ROW_KEY)  # what identifies a row (never empty)
INTEGER_COLUMNS = {*KEY_COLUMNS} | {f"best_hyperparameter_id_{m}" for m in METHOD_NAMES}


def read_results(path: str | os.PathLike, schema: Schema) -> pd.DataFrame:
    """Read a result CSV with ``schema``'s columns for the paper's methods and any further ones, in any order.

    The frame has the file's columns in the schema's order; ``has_method`` tells which further
    methods they cover, ``core.schema.has_accuracy`` whether it is a classification's (with accuracy columns).
    """
    try:
        content = Path(path).read_bytes()
        frame = pd.read_csv(io.BytesIO(content))
    except FileNotFoundError:
        raise ProtocolError(f"{path} does not exist") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]  # pandas' messages may span lines
        raise ProtocolError(f"{path} is not a readable CSV ({reason}); move it away or repair it") from None
    if not content.endswith(b"\n"):  # every file written here ends with one; a cut-off copy does not
        raise ProtocolError(
            f"{path} ends without a newline, so its last line may be cut short (a copy or write interrupted); "
            "check that line and end the file with a newline, or move it away"
        )
    present = [m for m in EXTRA_METHODS if set(schema.method_columns(m)) & set(frame.columns)]
    columns = schema.columns(present, has_accuracy(frame.columns))
    missing = [c for c in columns if c not in frame.columns]
    extra = [c for c in frame.columns if c not in columns]
    if missing or extra:
        raise ProtocolError(
            f"{path} does not have this project's schema (missing {missing[:3]}, unexpected {extra[:3]}); "
            "move it away or point --result_folder elsewhere"
        )
    frame = frame[list(columns)]  # the columns in this project's order (older files put further methods elsewhere)
    for column in frame.columns:
        if column in INTEGER_COLUMNS:
            frame[column] = _whole_numbers(frame[column], path)
        elif frame.empty:
            frame[column] = frame[column].astype(float)  # a header alone reads as text columns
        elif not pd.api.types.is_numeric_dtype(frame[column]):
            raise ProtocolError(f"{path} has non-numeric values in column {column}; move it away or repair it")
    for column in (c for c in KEY_COLUMNS if c in frame.columns):
        empty = frame[column].isna().to_numpy().nonzero()[0]
        if empty.size:
            raise ProtocolError(f"{path} has no {column} on line {empty[0] + 2}; move it away or repair it")
    twice = frame.duplicated(list(schema.row_key), keep=False).to_numpy().nonzero()[0]
    if twice.size:  # say, the CSVs of two machines pasted together
        key = ", ".join(f"{column} {frame.at[twice[0], column]}" for column in schema.row_key)
        same = [line for line in twice if all(frame.at[line, c] == frame.at[twice[0], c] for c in schema.row_key)]
        lines = f"lines {same[0] + 2} and {same[1] + 2}"
        raise ProtocolError(f"{path} holds the row of {key} twice ({lines}); keep one and run again")
    return frame


def _whole_numbers(column: pd.Series, path: str | os.PathLike) -> pd.Series:
    """An integer column as pandas' nullable Int64, or a ProtocolError naming the first value not a whole number."""
    numbers = pd.to_numeric(column, errors="coerce")
    wrong = (numbers.isna() & column.notna()) | (numbers.notna() & ((numbers % 1 != 0) | (numbers.abs() >= 2**63)))
    if wrong.any():
        line = int(wrong.to_numpy().nonzero()[0][0])
        raise ProtocolError(f"{path} has '{column.iloc[line]}' in column {column.name} on line {line + 2}, "
                            "where a whole number belongs; move it away or repair it")
    return numbers.astype("Int64")


def has_method(frame: pd.DataFrame, method: str) -> bool:
    """Whether a result frame has ``method``'s columns (a file written before it was registered has not)."""
    return f"test_loss_{method}" in frame.columns


def write_results(frame: pd.DataFrame, path: str | os.PathLike, schema: Schema, accuracy: bool = False) -> None:
    """Write ``frame`` with the header of all registered methods (absent ones empty), and with ``accuracy``
    their accuracy columns, atomically, so a kill never leaves half a file."""
    columns = schema.columns(accuracy=accuracy)
    frame = frame.reindex(columns=list(columns)).astype({c: "Int64" for c in columns if c in INTEGER_COLUMNS})
    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))
