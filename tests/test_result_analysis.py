"""Tests of result_analysis/: tables, figures, validation and the two command lines."""

from __future__ import annotations

import csv
import subprocess
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
from result_analysis import analysis, plots  # noqa: E402
from result_analysis.analysis import (  # noqa: E402
    ABLATION_METHODS,
    RELATIVE_ROW,
    TABLE2_METHODS,
    ResultFileError,
)
from result_analysis.create_result_tables import main as tables_main  # noqa: E402
from result_analysis.line_and_box_plot_cummulative import main as figures_main  # noqa: E402

SHARED = REPO.parent / "shared"
PAPER = SHARED / "paper_results" / "best_hyperparameter_multiple"
PRESENT = ["california", "fried", "superconduct", "sulfur", "wine_quality"]
needs_paper = pytest.mark.skipif(
    not PAPER.is_dir(), reason=f"the paper's result files are not available at {PAPER}"
)


def raw_losses(dataset: str) -> dict[tuple[int, str], np.ndarray]:
    """Test losses per (bits, method) read with the csv module, independently of the package."""
    out: dict[tuple[int, str], list[float]] = {}
    with open(PAPER / f"{dataset}_best_hyperparameter_test_multiple.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            for m in METHOD_NAMES:
                out.setdefault((int(row["bits"]), m), []).append(float(row[f"test_loss_{m}"]))
    return {k: np.array(v) for k, v in out.items()}


def write_synthetic(path: Path, bits: tuple[int, ...] = (2, 3), runs: int = 3, seed: int = 0) -> Path:
    """Write a small result file with the full schema and random losses."""
    rng = np.random.default_rng(seed)
    n = len(bits) * runs
    columns: dict[str, object] = {}
    for prefix in ("best_hyperparameter_id", "val_loss", "test_loss", "time"):
        for m in METHOD_NAMES:
            columns[f"{prefix}_{m}"] = rng.integers(0, 100, n) if prefix.endswith("id") else rng.random(n)
    columns["bits"] = np.repeat(bits, runs)
    columns["step"] = np.tile(np.arange(runs), len(bits))
    pd.DataFrame(columns).to_csv(path, index=False)
    return path


def tex_cells(tex: str, dataset: str, bits: int | str) -> list[str]:
    """The method cells of the LaTeX row for (dataset, bits)."""
    current = None
    for line in tex.splitlines():
        cells = [c.strip() for c in line.removesuffix("\\\\").split(" & ")]
        if len(cells) < 3:
            continue
        if cells[0].startswith("\\multirow"):
            current = cells[0].rsplit("{", 1)[1].rstrip("}").replace("\\_", "_")
        if current == dataset and cells[1] == str(bits):
            return cells[2:]
    raise AssertionError(f"no LaTeX row for {dataset}, {bits}")


@pytest.fixture(scope="module")
def paper_frames() -> dict[str, pd.DataFrame]:
    """The paper's files, loaded."""
    if not PAPER.is_dir():
        pytest.skip(f"the paper's result files are not available at {PAPER}")
    frames, missing = analysis.load_results(PAPER)
    assert missing == ["cpu_act"]
    return frames


@pytest.fixture(scope="module")
def tables_dir(paper_frames, tmp_path_factory) -> Path:
    """A folder with the tables written from the paper's files."""
    out = tmp_path_factory.mktemp("tables")
    analysis.write_tables(paper_frames, out)
    return out


@needs_paper
def test_datasets_in_paper_order(paper_frames):
    assert list(paper_frames) == PRESENT


@needs_paper
def test_table2_means_equal_raw_means(tables_dir):
    table = pd.read_csv(tables_dir / "table2.csv")
    assert list(table.columns) == ["dataset", "bits", "FP", "Pr-MQ", "Pr-QQ", "LLT4", "LLT9", "LSQ", "Bw-SQ"]
    assert table["dataset"].unique().tolist() == PRESENT
    for dataset in PRESENT:
        raw = raw_losses(dataset)
        rows = table[table["dataset"] == dataset]
        assert rows["bits"].tolist() == list(range(2, 9))
        for _, row in rows.iterrows():
            for m in TABLE2_METHODS:
                assert row[m] == pytest.approx(raw[(row["bits"], m)].mean(), rel=1e-12)


@needs_paper
@pytest.mark.parametrize("dataset,bits", [("california", 2), ("fried", 4), ("fried", 8),
                                          ("superconduct", 7), ("sulfur", 2), ("wine_quality", 5)])
def test_table2_latex_marks(tables_dir, dataset, bits):
    raw = raw_losses(dataset)
    means = {m: raw[(bits, m)].mean() for m in TABLE2_METHODS}
    best = min(means[m] for m in TABLE2_METHODS[1:])
    cells = tex_cells((tables_dir / "table2.tex").read_text(), dataset, bits)
    assert len(cells) == len(TABLE2_METHODS)
    for m, cell in zip(TABLE2_METHODS, cells):
        text = f"{means[m]:.3f}"
        if m != "FP" and means[m] == best:
            assert cell == f"\\textbf{{{text}}}", m
        elif m != "FP" and means[m] <= 1.025 * best:
            assert cell == f"\\underline{{{text}}}", m
        else:
            assert cell == text, m


@needs_paper
def test_table2_latex_layout(tables_dir):
    tex = (tables_dir / "table2.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex
    assert "\\multirow[c]{7}{*}{wine\\_quality}" in tex
    assert tex.count("\\multirow") == len(PRESENT)
    md = (tables_dir / "table2.md").read_text()
    assert md.count("\n") == 2 + 7 * len(PRESENT)
    assert "**" in md and "<u>" in md


@needs_paper
def test_ablation_table(tables_dir):
    table = pd.read_csv(tables_dir / "ablation.csv", dtype={"bits": str})
    assert list(table.columns) == ["dataset", "bits", *ABLATION_METHODS]
    tex = (tables_dir / "ablation.tex").read_text()
    for dataset in PRESENT:
        raw = raw_losses(dataset)
        rows = table[table["dataset"] == dataset]
        assert rows["bits"].tolist() == [str(b) for b in range(2, 9)] + [RELATIVE_ROW]
        relative = rows.iloc[-1]
        for m in ABLATION_METHODS:
            expected = np.mean([100 * raw[(b, m)].mean() / raw[(b, "Bw-SQ")].mean() for b in range(2, 9)])
            assert relative[m] == pytest.approx(expected, rel=1e-12)
        cells = tex_cells(tex, dataset, RELATIVE_ROW.replace("%", "\\%"))
        assert cells == [f"{relative[m]:.1f}" for m in ABLATION_METHODS]
        assert cells[-1] == "100.0"
    cells = tex_cells(tex, "california", 2)
    means = [raw_losses("california")[(2, m)].mean() for m in ABLATION_METHODS]
    assert cells[int(np.argmin(means))].startswith("\\textbf{")


@needs_paper
def test_confidence_against_scipy(tables_dir):
    table = pd.read_csv(tables_dir / "confidence.csv")
    assert list(table.columns) == ["dataset", "bits", "method", "n", "mean", "sem", "ci_low", "ci_high"]
    assert len(table) == len(PRESENT) * 7 * len(METHOD_NAMES)
    for dataset in PRESENT:
        raw = raw_losses(dataset)
        for row in table[table["dataset"] == dataset].itertuples():
            values = raw[(row.bits, row.method)]
            half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
            assert row.n == len(values) == 10
            assert row.ci_low == pytest.approx(values.mean() - half, rel=1e-10)
            assert row.ci_high == pytest.approx(values.mean() + half, rel=1e-10)
    assert "\\begin{longtable}" in (tables_dir / "confidence.tex").read_text()


def test_confidence_degenerate_cases(tmp_path):
    path = write_synthetic(tmp_path / "fried_best_hyperparameter_test_multiple.csv", bits=(2, 3), runs=2)
    data = pd.read_csv(path)
    data["test_loss_FP"] = 0.5
    data = data.drop(index=3)  # 3 bits keeps a single run
    data.to_csv(path, index=False)
    frames, _ = analysis.load_results(tmp_path)
    table = analysis.confidence_table(analysis.long_losses(frames)).set_index(["bits", "method"])
    assert table.loc[(2, "FP"), ["ci_low", "ci_high"]].tolist() == [0.5, 0.5]
    assert table.loc[(3, "SQ"), "n"] == 1
    assert np.isnan(table.loc[(3, "SQ"), "ci_low"])


@needs_paper
def test_lineplot_figure(paper_frames):
    fig = plots.plot_lines(analysis.long_losses(paper_frames))
    try:
        assert [ax.get_title() for ax in fig.axes] == PRESENT
        for ax in fig.axes:
            lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
            assert list(lines) == list(TABLE2_METHODS)
            assert lines["FP"].get_linestyle() == "--"
            assert lines["Bw-SQ"].get_linewidth() > lines["LSQ"].get_linewidth()
            assert list(lines["Bw-SQ"].get_xdata()) == list(range(2, 9))
            raw = raw_losses(ax.get_title())
            for method, line in lines.items():  # every point is the mean over the runs
                expected = [raw[(int(b), method)].mean() for b in line.get_xdata()]
                np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12, err_msg=f"{ax.get_title()} {method}")
        assert len(fig.legends) == 1
        assert [t.get_text() for t in fig.legends[0].get_texts()] == list(TABLE2_METHODS)
    finally:
        plots.plt.close(fig)


@needs_paper
def test_lineplot_of_all_methods(paper_frames):
    # more methods than the palette's nine colours (and, with a fourteenth, than the thirteen markers)
    colors = plots.method_colors([*METHOD_NAMES, "a fourteenth"])
    assert len(colors) == 14 and colors["FP"] == (0.45, 0.45, 0.45)
    fig = plots.plot_lines(analysis.long_losses(paper_frames), METHOD_NAMES)
    try:
        labels = [line.get_label() for line in fig.axes[0].get_lines()]
        assert labels == list(METHOD_NAMES)
        assert len({line.get_marker() for line in fig.axes[0].get_lines()}) == 13
    finally:
        plots.plt.close(fig)


@needs_paper
def test_boxplot_figure(paper_frames):
    long = analysis.long_losses(paper_frames)
    fig = plots.plot_boxes(long, 3)
    try:
        assert [ax.get_title() for ax in fig.axes] == PRESENT
        for ax, dataset in zip(fig.axes, PRESENT):
            assert len(ax.patches) == len(TABLE2_METHODS)  # one PathPatch per box
            assert len(ax.collections) == len(TABLE2_METHODS)  # one point cloud per method
            assert [t.get_text() for t in ax.get_xticklabels()] == list(TABLE2_METHODS)
            fp_median = np.median(raw_losses(dataset)[(3, "FP")])
            dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
            assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(fp_median)
    finally:
        plots.plt.close(fig)


@needs_paper
def test_write_figures(tmp_path):
    frames, _ = analysis.load_results(PAPER, bits=[2, 8])
    paths = plots.write_figures(frames, tmp_path)
    names = {p.name for p in paths}
    assert names == {f"{stem}.{ext}" for stem in ("lineplot", "boxplot_2bits", "boxplot_8bits")
                     for ext in ("png", "pdf")}
    assert {p.name for p in tmp_path.iterdir()} == names  # no temporary files left behind
    assert all(p.stat().st_size > 1000 for p in paths)


def _bad_missing_column(path: Path) -> str:
    pd.read_csv(write_synthetic(path)).drop(columns="test_loss_LSQ").to_csv(path, index=False)
    return "test_loss_LSQ"


def _bad_empty(path: Path) -> str:
    path.write_text("")
    return "empty"


def _bad_header_only(path: Path) -> str:
    pd.read_csv(write_synthetic(path)).iloc[:0].to_csv(path, index=False)
    return "no rows"


def _bad_non_numeric(path: Path) -> str:
    data = pd.read_csv(write_synthetic(path)).astype({"test_loss_FP": object})
    data.loc[1, "test_loss_FP"] = "abc"
    data.to_csv(path, index=False)
    return "'abc'"


def _bad_empty_bits(path: Path) -> str:
    data = pd.read_csv(write_synthetic(path)).astype({"bits": object})
    data.loc[2, "bits"] = ""  # an empty loss is a method not run, an empty bits cell is an error
    data.to_csv(path, index=False)
    return "'' in column bits (line 4)"


BAD_FILES = [_bad_missing_column, _bad_empty, _bad_header_only, _bad_non_numeric, _bad_empty_bits]


@pytest.mark.parametrize("make_bad", BAD_FILES, ids=lambda f: f.__name__.removeprefix("_bad_"))
def test_bad_files_raise_and_exit_2(tmp_path, capsys, make_bad):
    path = tmp_path / "sulfur_best_hyperparameter_test_multiple.csv"
    problem = make_bad(path)
    with pytest.raises(ResultFileError) as info:
        analysis.load_results(tmp_path)
    assert str(path) in str(info.value) and problem in str(info.value)
    for main in (tables_main, figures_main):
        assert main(["--results_dir", str(tmp_path), "--out_dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {info.value}\n"


def test_no_files_exit_2(tmp_path, capsys):
    assert tables_main(["--results_dir", str(tmp_path), "--out_dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path} contains no ")
    assert not (tmp_path / "out").exists()


def run_script(*args: str) -> subprocess.CompletedProcess:
    """Run a command with the current interpreter from the repository root."""
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@needs_paper
def test_cli_tables(tmp_path):
    done = run_script("-m", "result_analysis.create_result_tables", "--results_dir", str(PAPER),
                      "--out_dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "cpu_act" in done.stdout.splitlines()[0]
    assert {p.name for p in tmp_path.iterdir()} == {
        f"{n}.{e}" for n in ("table2", "ablation", "confidence") for e in ("csv", "tex", "md")
    }


@needs_paper
def test_cli_figures_as_module(tmp_path):
    done = run_script("-m", "result_analysis.line_and_box_plot_cummulative", "--results_dir", str(PAPER),
                      "--out_dir", str(tmp_path), "--no-boxplot", "--datasets", "fried", "sulfur")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1  # nothing missing among the requested datasets
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lineplot.pdf", "lineplot.png"]


def test_bit_widths_a_file_lacks_are_left_out_and_named(tmp_path):
    # sulfur's run has only reached 2 bits, fried has 2 and 3
    fried = pd.read_csv(write_synthetic(tmp_path / "fried_best_hyperparameter_test_multiple.csv", bits=(2, 3)))
    write_synthetic(tmp_path / "sulfur_best_hyperparameter_test_multiple.csv", bits=(2,), seed=1)
    frames, missing = analysis.load_results(tmp_path, ["fried", "sulfur"])
    assert missing == ["sulfur at 3 bits"] and sorted(frames["sulfur"]["bits"].unique()) == [2]
    done = run_script("-m", "result_analysis.create_result_tables", "--results_dir", str(tmp_path),
                      "--out_dir", str(tmp_path / "out"), "--datasets", "fried", "sulfur")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"missing in {tmp_path}, skipped: sulfur at 3 bits\n")
    table = pd.read_csv(tmp_path / "out" / "table2.csv")
    assert table[["dataset", "bits"]].values.tolist() == [["fried", 2], ["fried", 3], ["sulfur", 2]]
    assert table.loc[1, "FP"] == pytest.approx(fried.loc[fried.bits == 3, "test_loss_FP"].mean(), rel=1e-12)


def test_cli_error_without_traceback(tmp_path):
    (tmp_path / "fried_best_hyperparameter_test_multiple.csv").write_text("")
    done = run_script("-m", "result_analysis.line_and_box_plot_cummulative", "--results_dir", str(tmp_path),
                      "--out_dir", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr


# Hand-made files with empty cells (methods or runs not computed). Rows: (2, 0), (2, 1), (3, 0), (3, 1).
GAP_BITS = (2, 2, 3, 3)
GAP_FRIED = {
    "FP": ["0.1", "0.3", "0.2", "0.2"],        # means 0.2 | 0.2
    "Pr-MQ": ["0.5", "", "0.6", "0.8"],        # 0.5 (one run) | 0.7
    "Pr-QQ": ["", "", "", ""],                 # not run
    "LLT4": ["0.405", "0.405", "", ""],        # 0.405 (within 2.5 % of 0.4) | -
    "SQ": ["0.8", "0.8", "0.8", "0.8"],        # 0.8 | 0.8
    "Bw-MQ": ["0.2", "0.2", "0.5", "0.5"],     # 0.2 | 0.5
    "Bw-QQ": ["", "", "", ""],                 # not run
    "Bw-SQ": ["0.4", "0.4", "", ""],           # 0.4 | -
}
GAP_SULFUR = {"Bw-SQ": ["", "", "", ""]}       # everything else 1.0


def write_gap_file(path: Path, losses: dict[str, list[str]]) -> Path:
    """Write a result file with the analysed columns; methods not in losses get 1.0 in every row."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*(f"test_loss_{m}" for m in METHOD_NAMES), "bits", "step"])
        for row, bits in enumerate(GAP_BITS):
            writer.writerow([*(losses.get(m, ["1.0"] * 4)[row] for m in METHOD_NAMES), bits, row % 2])
    return path


@pytest.fixture
def gap_dir(tmp_path) -> Path:
    """A results folder with the hand-made fried and sulfur files that have empty cells."""
    write_gap_file(tmp_path / "fried_best_hyperparameter_test_multiple.csv", GAP_FRIED)
    write_gap_file(tmp_path / "sulfur_best_hyperparameter_test_multiple.csv", GAP_SULFUR)
    return tmp_path


def test_empty_cells_are_missing_in_table2(gap_dir):
    assert tables_main(["--results_dir", str(gap_dir), "--out_dir", str(gap_dir / "out")]) == 0
    table = pd.read_csv(gap_dir / "out" / "table2.csv").set_index(["dataset", "bits"])
    expected = {2: [0.2, 0.5, np.nan, 0.405, 1.0, 1.0, 0.4], 3: [0.2, 0.7, np.nan, np.nan, 1.0, 1.0, np.nan]}
    for bits, means in expected.items():
        assert table.loc[("fried", bits)].tolist() == pytest.approx(means, nan_ok=True)
    assert np.isnan(table.loc[("sulfur", 2), "Bw-SQ"])
    tex = (gap_dir / "out" / "table2.tex").read_text()
    # bits 2: Bw-SQ 0.4 is the minimum of the present quantized methods, LLT4 0.405 is within 2.5 %
    assert tex_cells(tex, "fried", 2) == ["0.200", "0.500", "–", "\\underline{0.405}", "1.000", "1.000",
                                          "\\textbf{0.400}"]
    # bits 3: only Pr-MQ, LLT9 and LSQ are present among the quantized methods
    assert tex_cells(tex, "fried", 3) == ["0.200", "\\textbf{0.700}", "–", "–", "1.000", "1.000", "–"]
    md = (gap_dir / "out" / "table2.md").read_text().splitlines()
    fried_3 = [c.strip() for c in md[3].strip("|").split("|")]
    assert fried_3 == ["fried", "3", "0.200", "**0.700**", "–", "–", "1.000", "1.000", "–"]


def test_empty_cells_relative_row_uses_present_bits(gap_dir):
    assert tables_main(["--results_dir", str(gap_dir), "--out_dir", str(gap_dir / "out")]) == 0
    table = pd.read_csv(gap_dir / "out" / "ablation.csv", dtype={"bits": str}).set_index(["dataset", "bits"])
    # fried: Bw-SQ only at 2 bits, so SQ 100 * 0.8 / 0.4 and Bw-MQ 100 * 0.2 / 0.4; Bw-QQ not run
    assert table.loc[("fried", RELATIVE_ROW)].tolist() == pytest.approx([200.0, 50.0, np.nan, 100.0],
                                                                        nan_ok=True)
    assert table.loc[("sulfur", RELATIVE_ROW)].isna().all()  # no Bw-SQ: n/a
    tex = (gap_dir / "out" / "ablation.tex").read_text()
    assert tex_cells(tex, "fried", RELATIVE_ROW.replace("%", "\\%")) == ["200.0", "50.0", "–", "100.0"]
    assert tex_cells(tex, "sulfur", RELATIVE_ROW.replace("%", "\\%")) == ["–"] * 4
    assert tex_cells(tex, "fried", 3) == ["0.800", "\\textbf{0.500}", "–", "–"]


def test_empty_cells_confidence_counts_present_runs(gap_dir):
    frames, _ = analysis.load_results(gap_dir)
    table = analysis.confidence_table(analysis.long_losses(frames)).set_index(["dataset", "bits", "method"])
    # fried lacks Pr-QQ and Bw-QQ (4 cells each), LLT4 and Bw-SQ at 3 bits; sulfur lacks Bw-SQ
    assert len(table) == 2 * 2 * len(METHOD_NAMES) - 4 - 2 - 2
    assert ("fried", 2, "Pr-QQ") not in table.index and ("sulfur", 3, "Bw-SQ") not in table.index
    row = table.loc[("fried", 2, "Pr-MQ")]
    assert row["n"] == 1 and row["mean"] == 0.5 and np.isnan(row["ci_low"])
    row = table.loc[("fried", 3, "Pr-MQ")]
    half = stats.t.ppf(0.975, 1) * np.std([0.6, 0.8], ddof=1) / np.sqrt(2)
    assert row["n"] == 2 and row["ci_high"] == pytest.approx(0.7 + half)


def test_empty_cells_figures_skip_missing(gap_dir):
    frames, _ = analysis.load_results(gap_dir)
    long = analysis.long_losses(frames)
    fig = plots.plot_lines(long)
    try:
        fried, sulfur = fig.axes
        lines = {ln.get_label(): ln for ln in fried.get_lines()}
        assert list(lines) == ["FP", "Pr-MQ", "LLT4", "LLT9", "LSQ", "Bw-SQ"]
        assert list(lines["LLT4"].get_xdata()) == [2]
        assert [ln.get_label() for ln in sulfur.get_lines()] == list(TABLE2_METHODS[:-1])
        assert [t.get_text() for t in fig.legends[0].get_texts()] == list(TABLE2_METHODS)
    finally:
        plots.plt.close(fig)
    fig = plots.plot_boxes(long, 3)
    try:
        fried, sulfur = fig.axes
        assert [t.get_text() for t in fried.get_xticklabels()] == ["FP", "Pr-MQ", "LLT9", "LSQ"]
        assert len(fried.patches) == 4
        assert [t.get_text() for t in sulfur.get_xticklabels()] == list(TABLE2_METHODS[:-1])
    finally:
        plots.plt.close(fig)
    write_gap_file(gap_dir / "fried_best_hyperparameter_test_multiple.csv", {"FP": [""] * 4})
    fig = plots.plot_boxes(analysis.long_losses(analysis.load_results(gap_dir)[0]), 2)
    try:
        assert not [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"]  # no FP median
    finally:
        plots.plt.close(fig)


REPRODUCTION = REPO / "results" / "reproduction"


@pytest.mark.skipif(not (REPRODUCTION / "fried_best_hyperparameter_test_multiple.csv").is_file(),
                    reason="the reproduction file is not in this checkout")
def test_cli_on_reproduction_file_with_methods_not_run(tmp_path):
    common = ["--results_dir", str(REPRODUCTION), "--out_dir", str(tmp_path), "--datasets", "fried"]
    for command in (["-m", "result_analysis.create_result_tables", *common],
                    ["-m", "result_analysis.line_and_box_plot_cummulative", *common, "--no-boxplot"]):
        done = run_script(*command)
        assert done.returncode == 0, done.stderr
    # the reproduction ran no Po-* and no SQplus: they have no row in the confidence table
    methods = set(pd.read_csv(tmp_path / "confidence.csv")["method"])
    assert methods == set(METHOD_NAMES) - {"Po-MQ", "Po-QQ", "SQplus"}
    assert (tmp_path / "lineplot.png").is_file()


def test_registry_dataset_friedman1(tmp_path, capsys):
    write_gap_file(tmp_path / "friedman1_best_hyperparameter_test_multiple.csv", GAP_SULFUR)
    out = tmp_path / "out"
    assert tables_main(["--results_dir", str(tmp_path), "--out_dir", str(out), "--datasets", "friedman1"]) == 0
    assert pd.read_csv(out / "table2.csv")["dataset"].unique().tolist() == ["friedman1"]
    capsys.readouterr()
    assert tables_main(["--results_dir", str(tmp_path), "--out_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path} contains no ") and err.count("\n") == 1
    assert "has files of the dataset(s) friedman1; pass --datasets friedman1 to analyse them." in err
    assert tables_main(["--results_dir", str(tmp_path), "--out_dir", str(out), "--datasets", "no_such_dataset"]) == 2
    err = capsys.readouterr().err
    assert "no_such_dataset" in err and "pass --datasets friedman1 to analyse them." in err


@pytest.mark.parametrize("below", ["", "sub"], ids=["file", "below_file"])
def test_out_dir_is_a_file_exit_2(tmp_path, capsys, below):
    write_gap_file(tmp_path / "fried_best_hyperparameter_test_multiple.csv", GAP_FRIED)
    blocker = tmp_path / "taken"
    blocker.write_text("keep")
    out = blocker / below if below else blocker
    for main in (tables_main, figures_main):
        assert main(["--results_dir", str(tmp_path), "--out_dir", str(out)]) == 2
        assert capsys.readouterr().err == (f"error: the output folder {out} cannot be created because "
                                           f"{blocker} is a file; choose another --out_dir.\n")
    assert blocker.read_text() == "keep"


@pytest.mark.parametrize("main", [tables_main, figures_main], ids=["tables", "figures"])
def test_help_shows_defaults(capsys, main):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: results/best_hyperparameter_multiple)" in text
    assert "(default: results/analysis)" in text
    assert "(default: the paper's, california fried superconduct cpu_act sulfur wine_quality)" in text


def test_underline_rule_includes_exactly_two_and_a_half_percent() -> None:
    """'within 2.5 %' is inclusive: 1.025 times the minimum is underlined, just above it is not."""
    table = pd.DataFrame({"FP": [0.5], "A": [1.0], "B": [1.025], "C": [1.0251]})
    marks = analysis.row_marks(table, ["A", "B", "C"])
    assert marks.iloc[0].tolist() == ["", "min", "near", ""]


def test_cli_bits_option_limits_the_bit_widths(tmp_path):
    """``--bits 3`` gives the tables and the box plots of 3 bits only, though the file has 2, 3 and 4."""
    write_synthetic(tmp_path / "fried_best_hyperparameter_test_multiple.csv", bits=(2, 3, 4), runs=2)
    common = ["--results_dir", str(tmp_path), "--datasets", "fried", "--bits", "3"]
    assert tables_main([*common, "--out_dir", str(tmp_path / "tables")]) == 0
    table = pd.read_csv(tmp_path / "tables" / "table2.csv")
    assert table[["dataset", "bits"]].values.tolist() == [["fried", 3]]
    assert figures_main([*common, "--out_dir", str(tmp_path / "figures"), "--no-lineplot"]) == 0
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["boxplot_3bits.pdf", "boxplot_3bits.png"]


def test_a_further_method_is_found_from_the_files_columns(tmp_path):
    """A method beyond the paper's is analysed where a file has its test_loss column, without any registry."""
    fried = write_synthetic(tmp_path / "fried_best_hyperparameter_test_multiple.csv", bits=(2,), runs=2)
    frame = pd.read_csv(fried)
    frame["test_loss_MyQ"] = [0.25, 0.75]
    frame.to_csv(fried, index=False)
    write_synthetic(tmp_path / "sulfur_best_hyperparameter_test_multiple.csv", bits=(2,), runs=2)  # without it
    frames, missing = analysis.load_results(tmp_path, ["fried", "sulfur"])
    assert missing == [] and "test_loss_MyQ" not in frames["sulfur"]
    confidence = analysis.confidence_table(analysis.long_losses(frames))
    row = confidence[confidence["method"] == "MyQ"]
    assert row[["dataset", "bits", "n"]].values.tolist() == [["fried", 2, 2]] and row["mean"].item() == 0.5
    assert list(confidence["method"].cat.categories) == [*METHOD_NAMES, "MyQ"]
