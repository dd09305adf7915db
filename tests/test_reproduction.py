"""REPRODUCTION.md's comparison tables are what compare_runs.py prints for the committed CSVs."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from protocol.schema import BEST
from result_analysis.compare_runs import compare, read_runs, to_markdown

REPO = Path(__file__).resolve().parents[1]
RUNS = [REPO / "results" / "reproduction" / name for name in (
    "fried_best_hyperparameter_test_multiple.csv", "fried_3bits_stacked_engine.csv", "fried_2bits_float32_inputs.csv",
    "sulfur_2bits_h100.csv", "wine_quality_2bits_h100.csv", "california_2bits_h100.csv", "fried_8bits_13_methods.csv",
    "fried_6_7bits_13_methods.csv",
)]


def dataset_of(run: Path) -> str:
    """The dataset a reproduction file reruns: its name up to the first bit width or the standard suffix."""
    return re.split(r"_(?:\d|best_hyperparameter)", run.name)[0]


@pytest.mark.parametrize("ours", RUNS, ids=lambda path: path.name)
def test_committed_reproduction_has_the_paper_schema(ours: Path) -> None:
    frame = pd.read_csv(ours)
    assert tuple(frame.columns) == BEST.paper_columns  # written before further methods were registered
    assert frame.groupby("bits").size().to_dict() == {b: 10 for b in sorted(frame.bits.unique())}


@pytest.mark.parametrize("ours", RUNS, ids=lambda path: path.name)
def test_reproduction_document_shows_the_script_output(shared_dir: Path, ours: Path) -> None:
    theirs = shared_dir / "paper_results" / "best_hyperparameter_multiple" / f"{dataset_of(ours)}_best_hyperparameter_test_multiple.csv"
    table = to_markdown(compare(read_runs(ours), read_runs(theirs)))
    assert table in (REPO / "REPRODUCTION.md").read_text()
