"""Tests of result_analysis/compare_runs.py: statistics, Welch test, skipped methods, CLI and errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # importable also when pytest is run without a root conftest
    sys.path.insert(0, str(REPO))

from core.schema import PAPER_METHODS as METHOD_NAMES  # noqa: E402
from result_analysis.compare_runs import compare, main, read_runs  # noqa: E402

PAPER_FILE = (REPO.parent / "shared" / "paper_results" / "best_hyperparameter_multiple"
              / "fried_best_hyperparameter_test_multiple.csv")
BITS = (2, 3)
RUNS = 10
SAME, SHIFTED, OTHER_ID, ONLY_OURS = "FP", "Bw-SQ", "SQ", "LSQ"


def losses(seed: int, shift: float = 0.0) -> np.ndarray:
    """Test losses of RUNS runs per bit width, rows ordered as in synthetic_frame."""
    return np.random.default_rng(seed).normal(0.2 + shift, 0.01, len(BITS) * RUNS)


def synthetic_frame(values: dict[str, np.ndarray], ids: dict[str, int]) -> pd.DataFrame:
    """A best-setting frame with the full schema; methods not in values have empty cells."""
    n = len(BITS) * RUNS
    columns: dict[str, object] = {}
    for prefix in ("best_hyperparameter_id", "val_loss", "test_loss", "time"):
        for m in METHOD_NAMES:
            if m not in values:
                columns[f"{prefix}_{m}"] = np.full(n, np.nan)
            elif prefix == "best_hyperparameter_id":
                columns[f"{prefix}_{m}"] = np.full(n, ids.get(m, 7))
            else:
                columns[f"{prefix}_{m}"] = values[m] if prefix == "test_loss" else np.full(n, 1.0)
    columns["bits"] = np.repeat(BITS, RUNS)
    columns["step"] = np.tile(np.arange(RUNS), len(BITS))
    return pd.DataFrame(columns)


@pytest.fixture
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ours, theirs): SAME from one distribution, SHIFTED by 5 std, OTHER_ID with another id, ONLY_OURS."""
    ours = synthetic_frame({SAME: losses(1), SHIFTED: losses(2, 0.05), OTHER_ID: losses(3),
                            ONLY_OURS: losses(4)}, {OTHER_ID: 8})
    theirs = synthetic_frame({SAME: losses(5), SHIFTED: losses(6), OTHER_ID: losses(7)}, {})
    return ours, theirs


@pytest.fixture
def files(tmp_path: Path, frames: tuple[pd.DataFrame, pd.DataFrame]) -> tuple[Path, Path]:
    """The synthetic frames written as CSV files (empty cells for methods not run)."""
    paths = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    for frame, path in zip(frames, paths):
        frame.to_csv(path, index=False)
    return paths


def welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Welch's t and two-sided p from the formula, with the Welch–Satterthwaite degrees of freedom."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return t, 2 * stats.t.sf(abs(t), df)


def test_statistics_match_independent_computation(files: tuple[Path, Path]) -> None:
    """n, means, stds, difference, t and p equal numpy and the Welch formula, per (method, bits)."""
    ours, theirs = (read_runs(p) for p in files)
    table = compare(ours, theirs)
    assert list(zip(table["method"], table["bits"])) == [
        (m, b) for m in (SAME, OTHER_ID, SHIFTED) for b in BITS
    ]
    for row in table.itertuples():
        a = ours.loc[ours["bits"] == row.bits, f"test_loss_{row.method}"].to_numpy()
        b = theirs.loc[theirs["bits"] == row.bits, f"test_loss_{row.method}"].to_numpy()
        t, p = welch(a, b)
        assert (row.n_ours, row.n_theirs) == (RUNS, RUNS)
        np.testing.assert_allclose([row.mean_ours, row.std_ours, row.mean_theirs, row.std_theirs],
                                   [a.mean(), a.std(ddof=1), b.mean(), b.std(ddof=1)], rtol=1e-12)
        np.testing.assert_allclose(row.diff_pct, 100 * (a.mean() - b.mean()) / b.mean(), rtol=1e-12)
        np.testing.assert_allclose([row.t, row.p], [t, p], rtol=1e-9)


def test_significance_and_id_agreement(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """The shifted method is significant, the same-distribution one not; differing ids are flagged."""
    table = compare(*frames).set_index(["method", "bits"])
    assert table.loc[SHIFTED, "significant"].all()
    assert not table.loc[SAME, "significant"].any()
    assert (table.loc[SAME, "p"] > 0.05).all()
    assert table.loc[[SAME, SHIFTED], "ids_agree"].all()
    assert not table.loc[OTHER_ID, "ids_agree"].any()
    assert (table.loc[OTHER_ID, "id_ours"] == "8").all() and (table.loc[OTHER_ID, "id_theirs"] == "7").all()
    assert not compare(*frames, alpha=1e-300)["significant"].any()


def test_method_and_bits_selection(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """methods and bits restrict the rows; the order stays registry order, not argument order."""
    table = compare(*frames, methods=[SHIFTED, SAME, ONLY_OURS], bits=[3])
    assert list(zip(table["method"], table["bits"])) == [(SAME, 3), (SHIFTED, 3)]
    with pytest.raises(ValueError, match="unknown method"):
        compare(*frames, methods=["nope"])


def test_cli_writes_markdown_and_csv(files: tuple[Path, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI prints the markdown table, writes it and the CSV, and names the skipped method."""
    md, csv = tmp_path / "out" / "cmp.md", tmp_path / "out" / "cmp.csv"
    argv = ["--ours", str(files[0]), "--theirs", str(files[1]), "--out", str(md), "--csv", str(csv),
            "--methods", SAME, SHIFTED, OTHER_ID, ONLY_OURS]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err.strip() == f"skipped, no runs in both files: {ONLY_OURS}"
    assert md.read_text() == out
    lines = out.splitlines()
    assert lines[0].startswith("| method") and len(lines) == 2 + 3 * len(BITS)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    rows = [dict(zip(cells[0], row)) for row in cells[2:]]
    assert {(r["method"], r["significant"]) for r in rows} == {(SAME, "no"), (SHIFTED, "yes"), (OTHER_ID, "no")}
    written = pd.read_csv(csv, dtype={"id_ours": str, "id_theirs": str})
    expected = compare(read_runs(files[0]), read_runs(files[1]), [SAME, SHIFTED, OTHER_ID])
    pd.testing.assert_frame_equal(written, expected, check_dtype=False)


def test_cli_errors(files: tuple[Path, Path], frames: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    """A missing file, a missing column, a non-numeric value and no overlap exit 2 naming the file."""
    ours, theirs = files
    missing, no_column, bad_value, only3 = (tmp_path / f"{name}.csv"
                                            for name in ("missing", "no_column", "bad_value", "only3"))
    frames[1].drop(columns=f"test_loss_{SHIFTED}").to_csv(no_column, index=False)
    text = frames[1].astype(object)
    text.loc[3, f"test_loss_{SAME}"] = "abc"
    text.to_csv(bad_value, index=False)
    frames[1][frames[1]["bits"] == 3].to_csv(only3, index=False)
    cases = [
        (["--theirs", str(missing)], [str(missing), "does not exist"]),
        (["--theirs", str(no_column)], [str(no_column), f"test_loss_{SHIFTED}"]),
        (["--theirs", str(bad_value)], [str(bad_value), "'abc'", f"test_loss_{SAME}", "line 5"]),
        (["--theirs", str(only3), "--bits", "2"], [str(ours), str(only3), "no (bits, method)"]),
    ]
    for extra, needles in cases:
        assert main(["--ours", str(ours), *extra]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1
        for needle in needles:
            assert needle in err


@pytest.mark.skipif(not PAPER_FILE.is_file(), reason=f"the paper's result file is not at {PAPER_FILE}")
def test_paper_file_against_itself() -> None:
    """Comparing the paper's fried file with itself: every method and bits, p = 1, nothing significant."""
    runs = read_runs(PAPER_FILE)
    table = compare(runs, runs)
    assert len(table) == len(METHOD_NAMES) * runs["bits"].nunique()
    np.testing.assert_array_equal(table["p"], 1.0)
    np.testing.assert_array_equal(table["diff_pct"], 0.0)
    assert not table["significant"].any() and table["ids_agree"].all()


def test_further_methods_come_from_the_files(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """A method beyond the paper's is compared where both frames have it, skipped where one has it, and
    unknown where neither has it."""
    ours, theirs = (frame.copy() for frame in frames)
    for frame, shift in ((ours, 0.0), (theirs, 1.0)):
        frame["best_hyperparameter_id_MyQ"] = 3
        frame["test_loss_MyQ"] = frame["test_loss_FP"] + shift
    ours["test_loss_Ours"] = 0.5
    table = compare(ours, theirs)
    assert table["method"].drop_duplicates().tolist() == [SAME, OTHER_ID, SHIFTED, "MyQ"]
    got = table[table["method"] == "MyQ"].set_index("bits")
    for b in BITS:
        a, c = (f.loc[f["bits"] == b, "test_loss_MyQ"].to_numpy() for f in (ours, theirs))
        np.testing.assert_allclose(got.loc[b, "diff_pct"], 100 * (a.mean() - c.mean()) / c.mean(), rtol=1e-12)
    assert compare(ours, theirs, methods=["Ours", "MyQ"])["method"].unique().tolist() == ["MyQ"]
    with pytest.raises(ValueError, match="unknown method 'Theirs'"):
        compare(ours, theirs, methods=["Theirs"])


def test_against_compares_two_methods_of_one_file_paired_by_run(files: tuple[Path, Path],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--against M compares a method with M of the same file (by default); --paired adds the paired t-test
    over the runs of the same step, worked out from its formula."""
    ours = read_runs(files[0])
    table = compare(ours, ours, [SHIFTED], against=SAME, paired=True).set_index("bits")
    assert list(table.columns[:2]) == ["method", "against"] and (table["against"] == SAME).all()
    for b in BITS:
        rows = ours[ours["bits"] == b].sort_values("step")
        a, c = rows[f"test_loss_{SHIFTED}"].to_numpy(), rows[f"test_loss_{SAME}"].to_numpy()
        diff = a - c
        t = diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff)))
        assert table.loc[b, "n_pairs"] == RUNS
        np.testing.assert_allclose(table.loc[b, "p_paired"], 2 * stats.t.sf(abs(t), len(diff) - 1), rtol=1e-9)
        np.testing.assert_allclose(table.loc[b, "p"], welch(a, c)[1], rtol=1e-9)
        assert table.loc[b, "mean_theirs"] == pytest.approx(c.mean(), rel=1e-12)
    assert main(["--ours", str(files[0]), "--against", SAME, "--methods", SHIFTED, "--paired"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")][:3] == ["method", "against", "bits"]
    assert "p_paired" in header
    assert main(["--ours", str(files[0]), "--against", "Nope"]) == 2
    assert "has no column test_loss_Nope" in capsys.readouterr().err
    assert main(["--ours", str(files[0])]) == 2  # neither --theirs nor --against
    assert "--theirs" in capsys.readouterr().err
    assert list(compare(ours, ours).columns)[:2] == ["method", "bits"]  # without them, the columns as before
