"""REPRODUCTION.md's comparison tables are what compare_runs.py prints for the committed CSVs."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from protocol.schema import BEST, BEST_COLUMNS
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


def test_straight_through_comparison_is_in_the_document() -> None:
    """Bw-SQ-ST against Bw-SQ at Bw-SQ's selected settings: the file has the current schema, and the
    document shows what compare_runs prints for it."""
    path = REPO / "results" / "reproduction" / "fried_2_4bits_bw_sq_st.csv"
    frame = pd.read_csv(path)
    assert tuple(frame.columns) == BEST_COLUMNS
    assert frame.groupby("bits").size().to_dict() == {2: 10, 3: 10, 4: 10}
    assert (frame["best_hyperparameter_id_Bw-SQ-ST"] == frame["best_hyperparameter_id_Bw-SQ"]).all()
    runs = read_runs(path)
    table = to_markdown(compare(runs, runs, ["Bw-SQ-ST"], against="Bw-SQ", paired=True))
    assert table in (REPO / "REPRODUCTION.md").read_text()


@pytest.mark.parametrize("ours", RUNS, ids=lambda path: path.name)
def test_reproduction_document_shows_the_script_output(shared_dir: Path, ours: Path) -> None:
    theirs = shared_dir / "paper_results" / "best_hyperparameter_multiple" / f"{dataset_of(ours)}_best_hyperparameter_test_multiple.csv"
    table = to_markdown(compare(read_runs(ours), read_runs(theirs)))
    assert table in (REPO / "REPRODUCTION.md").read_text()
