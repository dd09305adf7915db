"""REPRODUCTION.md's opening table is what compare_runs computes for the committed reruns."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from core.schema import BEST_PAPER_COLUMNS
from protocol.schema import BEST_COLUMNS
from result_analysis.compare_runs import compare, read_runs, to_markdown

REPO = Path(__file__).resolve().parents[1]
RERUNS = {  # file in results/reproduction -> its letter in REPRODUCTION.md
    "fried_best_hyperparameter_test_multiple.csv": "A", "fried_2bits_float32_inputs.csv": "B",
    "fried_3bits_stacked_engine.csv": "C", "fried_6_7bits_13_methods.csv": "D", "fried_8bits_13_methods.csv": "E",
    "sulfur_2bits_h100.csv": "F", "wine_quality_2bits_h100.csv": "F", "california_2bits_h100.csv": "F",
    "fried_4_5bits_llt_torch2_14.csv": "G",
}
RUNS = [REPO / "results" / "reproduction" / name for name in RERUNS]


def dataset_of(run: Path) -> str:
    """The dataset a reproduction file reruns: its name up to the first bit width or the standard suffix."""
    return re.split(r"_(?:\d|best_hyperparameter)", run.name)[0]


def opening_rows(ours: Path, theirs: Path) -> list[str]:
    """The opening table's rows for one rerun file: means with 4 significant digits, p with 3, bold below 0.05."""
    rows = []
    for row in compare(read_runs(ours), read_runs(theirs)).itertuples():
        p = format(row.p, ".3g")
        cells = [dataset_of(ours), str(row.bits), row.method, RERUNS[ours.name], format(row.mean_ours, ".4g"),
                 format(row.mean_theirs, ".4g"), format(row.diff_pct, "+.2f"), f"**{p}**" if row.significant else p]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


@pytest.mark.parametrize("ours", RUNS, ids=lambda path: path.name)
def test_committed_reproduction_has_the_paper_schema(ours: Path) -> None:
    frame = pd.read_csv(ours)
    assert tuple(frame.columns) == BEST_PAPER_COLUMNS
    assert frame.groupby("bits").size().to_dict() == {b: 10 for b in sorted(frame.bits.unique())}


def test_reproduction_document_opens_with_the_tools_numbers(shared_dir: Path) -> None:
    paper = shared_dir / "paper_results" / "best_hyperparameter_multiple"
    expected = [row for ours in RUNS
                for row in opening_rows(ours, paper / f"{dataset_of(ours)}_best_hyperparameter_test_multiple.csv")]
    text = (REPO / "REPRODUCTION.md").read_text()
    table = text[text.index("| dataset | bits | method | rerun |"):].split("\n\n")[0].splitlines()[2:]
    assert sorted(table) == sorted(expected)


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
