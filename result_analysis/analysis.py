"""Loading, validating and aggregating the best-setting result files, and writing the tables.

A library module, not a script: ``result_analysis.create_result_tables``, ``result_analysis.compare_runs``
and ``result_analysis.line_and_box_plot_cummulative`` import it; run those (``python -m ...``).
It reads CSV files only and loads neither torch nor the models.

Input: one ``{dataset}_best_hyperparameter_test_multiple.csv`` per dataset (a best-setting file),
one row per (bits, run), for the paper's datasets by default or any dataset with such a file.
The analysis reads the columns ``bits``, ``step`` and ``test_loss_<m>`` for the paper's thirteen
methods, and for any further method whose ``test_loss_<m>`` column a file has; the other columns
are not needed and not checked.

Missing values: an empty ``test_loss_<m>`` cell means that method or run was not computed
(``best_hyperparameter_testing_multiple.py --methods ...``, or a method with fewer runs), and so
does a further method's absent column. It is
read as NaN and left out: means, marks and the relative row use the present values only, a method
without any value for a (dataset, bits) is an empty cell (CSV: empty, LaTeX and Markdown: ``–``),
the confidence table has no row for it, and the figures leave it out. Any other non-numeric
value is an error.

Table 2, the ablation and the confidence table, each written as ``.csv`` (full precision), ``.tex`` (Styler,
booktabs rules, one ``\\multirow`` per dataset, three decimals) and ``.md`` (pandas
``to_markdown``, needs ``tabulate``):

- ``table2``: mean test loss over the runs per dataset and bits for FP, Pr-MQ, Pr-QQ, LLT4,
  LLT9, LSQ and Bw-SQ. Per row the minimum over the present quantized methods (all but FP) is
  bold and every other quantized value ``<= 1.025 * minimum`` is underlined (in markdown:
  ``**bold**`` and ``<u>underlined</u>``). Marks are decided on the unrounded means.
- ``ablation``: the same for SQ, Bw-MQ, Bw-QQ and Bw-SQ (marks over these four), plus, as the
  last row of every dataset (``bits`` = ``mean rel. to Bw-SQ (%)``), the mean over the bit
  widths where both are present of ``100 * loss_m(b) / loss_Bw-SQ(b)``: 100 for Bw-SQ, above 100
  where a method is worse on average, ``–`` (n/a) where no such bit width exists (always when
  Bw-SQ is absent). That row has one decimal and no marks.
- ``confidence``: per dataset, bits and method (the paper's and the files' further ones), the
  number ``n`` of runs with a test loss, the mean test loss, its standard error (std with ddof=1
  over sqrt(n)) and the 95 % t-interval ``mean ± t_{0.975, n-1} * sem`` (NaN where n = 1);
  combinations with n = 0 have no row. Long format; the LaTeX file is a longtable.

Classification: a file with ``test_accuracy_<m>`` columns is a classification's, whose
``test_loss_<m>`` is the mean cross-entropy. The tables above cover the regression datasets
(MSE); the classification datasets get their own, named after the metric: ``table2_accuracy``,
``ablation_accuracy``, ``confidence_accuracy`` (higher is better: bold marks the row maximum,
underlined values are within 2.5 % of it, ``>= maximum / 1.025``) and ``table2_cross_entropy``,
``ablation_cross_entropy``, ``confidence_cross_entropy`` (lower is better, as for MSE).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from core.atomic import atomic_write_text
from core.checks import MAX_BITS, MIN_BITS
from core.schema import BEST_ROW_KEY, PAPER_DATASETS, PAPER_METHODS, best_file_name, further_methods, has_accuracy

TABLE2_METHODS: tuple[str, ...] = ("FP", "Pr-MQ", "Pr-QQ", "LLT4", "LLT9", "LSQ", "Bw-SQ")
ABLATION_METHODS: tuple[str, ...] = ("SQ", "Bw-MQ", "Bw-QQ", "Bw-SQ")
REFERENCE_METHOD = "Bw-SQ"
RELATIVE_ROW = f"mean rel. to {REFERENCE_METHOD} (%)"
NEAR_MIN_FACTOR = 1.025
CONFIDENCE = 0.95
BIT_RANGE = range(MIN_BITS, MAX_BITS + 1)
KEY_COLUMNS: tuple[str, ...] = BEST_ROW_KEY
MISSING = "–"
# (file suffix, value column of the long frame, metric name, whether higher is better) per kind of dataset
REGRESSION_METRICS: tuple[tuple[str, str, str, bool], ...] = (("", "test_loss", "MSE", False),)
CLASSIFICATION_METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("_accuracy", "test_accuracy", "accuracy", True), ("_cross_entropy", "test_loss", "cross-entropy", False),
)


class ResultFileError(ValueError):
    """A result file, results folder or output folder that cannot be used, or a method no file has;
    the message says why."""


def exit_status(action: Callable[[], object]) -> int:
    """Run action and return 0; a ResultFileError is printed as one 'error:' line on stderr and gives 2."""
    try:
        action()
    except ResultFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def result_file(results_dir: Path, dataset: str) -> Path:
    """Return the path of a dataset's best-setting result file."""
    return Path(results_dir) / best_file_name(dataset)


def datasets_in(results_dir: Path) -> list[str]:
    """The datasets with a result file in results_dir: the paper's in its order, then the others by name."""
    suffix = best_file_name("")
    found = {p.name.removesuffix(suffix) for p in Path(results_dir).glob(f"?*{suffix}") if p.is_file()}
    return [d for d in PAPER_DATASETS if d in found] + sorted(found - set(PAPER_DATASETS))


def check_out_dir(out_dir: Path) -> None:
    """Raise a ResultFileError if out_dir cannot be a folder because it, or a folder above it, is a file."""
    existing = next(p for p in (Path(out_dir), *Path(out_dir).parents) if p.exists())
    if not existing.is_dir():
        raise ResultFileError(
            f"the output folder {out_dir} cannot be created because {existing} is a file; "
            f"choose another --out_dir."
        )


def read_result_file(
    path: Path,
    columns: Sequence[str],
    further: Sequence[str] = (),
) -> pd.DataFrame:
    """Read and validate a result file; return bits, step (integers) and the given numeric columns.

    An empty cell of the given columns becomes NaN (a method that was not run); any other
    non-numeric value, and any empty bits or step, is an error naming column and line. Per prefix
    in ``further``, the columns ``<prefix>_<m>`` of every method beyond the paper's whose
    ``test_loss_<m>`` column the file has are read too where the file has them, else they are NaN.
    """
    path = Path(path)
    if not path.is_file():
        raise ResultFileError(f"{path} does not exist or is not a file.")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ResultFileError(f"{path} is empty.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ResultFileError(f"{path} is not a readable CSV file ({exc}).") from None
    optional = [f"{prefix}_{m}" for m in further_methods(raw.columns) for prefix in further]
    absent_optional = [c for c in optional if c not in raw.columns]
    columns = [*columns, *(c for c in optional if c in raw.columns)]
    needed = [*KEY_COLUMNS, *columns]
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise ResultFileError(f"{path} lacks the column(s) {', '.join(missing)}.")
    if raw.empty:
        raise ResultFileError(f"{path} has a header but no rows.")
    text = raw[needed].apply(lambda column: column.str.strip())
    data = text.apply(pd.to_numeric, errors="coerce")
    bad = data.isna()
    bad[list(columns)] &= text[list(columns)] != ""
    if bad.to_numpy().any():
        row, col = (int(i[0]) for i in np.nonzero(bad.to_numpy()))
        raise ResultFileError(
            f"{path} has a non-numeric or empty value {text.iat[row, col]!r} in column "
            f"{needed[col]} (line {row + 2})."
        )
    for column in KEY_COLUMNS:
        if not (data[column] == data[column].round()).all():
            raise ResultFileError(f"{path} has non-integer values in column {column}.")
        data[column] = data[column].astype(int)
    if data.duplicated(list(KEY_COLUMNS)).any():
        raise ResultFileError(f"{path} has more than one row for the same (bits, step).")
    return data.assign(**{c: np.nan for c in absent_optional})


def load_results(
    results_dir: Path,
    datasets: Sequence[str] = PAPER_DATASETS,
    bits: Sequence[int] | None = None,
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Load the result files present in results_dir; return {dataset: frame} and what is missing:
    the datasets without a file, and ``"<dataset> at <b>, ... bits"`` for bit widths a file lacks.

    Datasets come in the paper's order, then the others in the given order; a frame has the test
    losses of the paper's methods and of the file's further ones; empty cells are NaN (not computed).
    The bit widths analysed are ``bits`` or, by default, every bit width found in any file
    (only bit widths in BIT_RANGE); a file without rows for some of them has no rows there in
    the tables and no points in the figures.
    """
    others = dict.fromkeys(d for d in datasets if d not in PAPER_DATASETS)
    order = [*(d for d in PAPER_DATASETS if d in datasets), *others]
    frames = {d: _read_losses(result_file(results_dir, d)) for d in order if result_file(results_dir, d).is_file()}
    missing = [d for d in order if d not in frames]
    if not frames:
        raise ResultFileError(no_files_message(results_dir, order))
    wanted = sorted(set(bits)) if bits else sorted(set().union(*(set(f["bits"]) for f in frames.values())))
    for dataset, frame in frames.items():
        outside = sorted(set(frame["bits"]) - set(BIT_RANGE))
        if outside:
            raise ResultFileError(
                f"{result_file(results_dir, dataset)} has bit widths {outside} outside {MIN_BITS}..{MAX_BITS}."
            )
        absent = [b for b in wanted if b not in set(frame["bits"])]
        if absent:  # a run still going, or one of some bit widths only: those cells stay empty
            missing.append(f"{dataset} at {', '.join(map(str, absent))} bits")
        frames[dataset] = frame[frame["bits"].isin(wanted)].reset_index(drop=True)
    return frames, missing


def _read_losses(path: Path) -> pd.DataFrame:
    """A best-setting file's bits, step and test losses, and a classification's test accuracies."""
    losses = [f"test_loss_{m}" for m in PAPER_METHODS]
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        header = pd.Index([])  # read_result_file names the problem
    if not has_accuracy(header):
        return read_result_file(path, losses, further=("test_loss",))
    accuracies = [f"test_accuracy_{m}" for m in PAPER_METHODS]
    return read_result_file(path, [*losses, *accuracies], further=("test_loss", "test_accuracy"))


def is_classification(frame: pd.DataFrame) -> bool:
    """Whether a frame of :func:`load_results` is a classification's (it has test accuracies)."""
    return has_accuracy(frame.columns)


def no_files_message(results_dir: Path, datasets: Sequence[str]) -> str:
    """The error for a results_dir without files for datasets; it names the datasets whose files are there."""
    message = (f"{results_dir} contains no {{dataset}}_best_hyperparameter_test_multiple.csv file "
               f"for the dataset(s) {', '.join(datasets)}")
    others = [d for d in datasets_in(results_dir) if d not in datasets]
    if others:
        return (f"{message} but has files of the dataset(s) {', '.join(others)}; "
                f"pass --datasets {' '.join(others)} to analyse them.")
    return f"{message}."


def long_losses(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Stack the files into one frame: dataset, bits, step, method, test_loss (NaN: not computed),
    and where any file is a classification's, test_accuracy (NaN for the regression datasets)."""
    parts = []
    for dataset, frame in frames.items():
        values = {}
        for prefix in ("test_loss", "test_accuracy"):
            columns = ["bits", "step", *(c for c in frame.columns if c.startswith(f"{prefix}_"))]
            if len(columns) > 2:
                melted = frame[columns].melt(id_vars=["bits", "step"], var_name="method", value_name=prefix)
                melted["method"] = melted["method"].str.removeprefix(f"{prefix}_")
                values[prefix] = melted.set_index(["bits", "step", "method"])
        part = pd.concat(values.values(), axis=1).reset_index()
        part.insert(0, "dataset", dataset)
        parts.append(part)
    long = pd.concat(parts, ignore_index=True)
    long["dataset"] = pd.Categorical(long["dataset"], categories=list(frames))
    further = dict.fromkeys(m for frame in frames.values() for m in further_methods(frame.columns))
    long["method"] = pd.Categorical(long["method"], categories=[*PAPER_METHODS, *further])
    return long


def mean_table(long: pd.DataFrame, methods: Sequence[str], value: str = "test_loss") -> pd.DataFrame:
    """Mean test loss (or another ``value`` column) over the present runs, index (dataset, bits), one column
    per method (NaN: none)."""
    means = long.groupby(["dataset", "bits", "method"], observed=True)[value].mean()
    return means.unstack("method").reindex(columns=list(methods)).rename_axis(columns=None)


def relative_means(table: pd.DataFrame, reference: str = REFERENCE_METHOD) -> pd.DataFrame:
    """Per dataset, the mean over the bits where both are present of 100 * loss / loss of the reference."""
    ratios = table.div(table[reference], axis=0) * 100
    return ratios.groupby(level="dataset", observed=True).mean()


def with_relative_rows(table: pd.DataFrame, reference: str = REFERENCE_METHOD) -> pd.DataFrame:
    """Append one RELATIVE_ROW row per dataset (see relative_means) after that dataset's bit rows."""
    rel = relative_means(table, reference)
    rel.index = pd.MultiIndex.from_arrays([rel.index, [RELATIVE_ROW] * len(rel)], names=table.index.names)
    blocks = [pd.concat([table.loc[[d]], rel.loc[[d]]]) for d in table.index.unique("dataset")]
    return pd.concat(blocks)


def row_marks(table: pd.DataFrame, among: Sequence[str], higher_is_better: bool = False) -> pd.DataFrame:
    """Per cell 'min' (row minimum over the present `among`), 'near' (<= 1.025 * minimum, not it) or '';
    with ``higher_is_better`` (accuracy) 'min' marks the row maximum and 'near' values >= maximum / 1.025."""
    values = table[list(among)]
    minimum = values.max(axis=1) if higher_is_better else values.min(axis=1)
    marks = pd.DataFrame("", index=table.index, columns=table.columns)
    near = (values.ge(minimum / NEAR_MIN_FACTOR, axis=0) if higher_is_better
            else values.le(minimum * NEAR_MIN_FACTOR, axis=0)) & values.ne(minimum, axis=0)
    marks[list(among)] = np.where(values.eq(minimum, axis=0), "min", np.where(near, "near", ""))
    return marks


def confidence_table(long: pd.DataFrame, confidence: float = CONFIDENCE, value: str = "test_loss") -> pd.DataFrame:
    """Per dataset, bits and method with n >= 1 runs: n, mean, sem and the t-interval of the mean test loss
    (or of another ``value`` column)."""
    present = long.dropna(subset=[value])
    grouped = present.groupby(["dataset", "bits", "method"], observed=True)[value]
    table = grouped.agg(n="count", mean="mean", sem="sem").reset_index()
    low_q, high_q = stats.t.interval(confidence, df=(table["n"] - 1).where(table["n"] > 1))
    table["ci_low"] = table["mean"] + low_q * table["sem"]
    table["ci_high"] = table["mean"] + high_q * table["sem"]
    return table


def _relative_rows(table: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the RELATIVE_ROW rows of a mean table."""
    return np.asarray(table.index.get_level_values("bits") == RELATIVE_ROW)


def to_latex(table: pd.DataFrame, marks: pd.DataFrame) -> str:
    """LaTeX tabular of a mean table: \\multirow datasets, bold minima, underlined near-minima, NaN MISSING."""
    relative = table.index[_relative_rows(table)]
    return (
        table.style
        .format(precision=3, na_rep=MISSING)
        .format(precision=1, na_rep=MISSING, subset=(relative, table.columns))
        .format_index(escape="latex", axis=0)
        .format_index(escape="latex", axis=1)
        .apply(lambda _: marks.replace({"min": "textbf:--rwrap;", "near": "underline:--rwrap;"}),
               axis=None)
        .to_latex(hrules=True, multirow_align="c", clines="skip-last;data",
                  column_format="ll" + "r" * table.shape[1])
    )


def to_markdown(table: pd.DataFrame, marks: pd.DataFrame) -> str:
    """Markdown table of a mean table: minima **bold**, near-minima <u>underlined</u>, NaN as MISSING."""
    relative = _relative_rows(table)
    texts = table.map(lambda v: f"{v:.3f}")
    texts[relative] = table[relative].map(lambda v: f"{v:.1f}")
    texts = texts.where(table.notna(), MISSING)
    texts = texts.where(marks != "min", "**" + texts + "**")
    texts = texts.where(marks != "near", "<u>" + texts + "</u>")
    texts = texts.reset_index()
    align = ["left"] + ["right"] * (texts.shape[1] - 1)
    return texts.to_markdown(index=False, colalign=align, disable_numparse=True) + "\n"


def confidence_to_latex(confidence: pd.DataFrame) -> str:
    """LaTeX longtable of a confidence table, four decimals, \\multirow datasets and bit widths."""
    return (
        confidence.set_index(["dataset", "bits", "method"]).style
        .format(precision=4)
        .format("{:d}", subset=["n"])
        .format_index(escape="latex", axis=0)
        .to_latex(environment="longtable", hrules=True, multirow_align="t",
                  clines="skip-last;data", column_format="lll" + "r" * 5)
    )


def _write_table(out_dir: Path, name: str, table: pd.DataFrame, marks: pd.DataFrame) -> list[Path]:
    """Write one mean table as name.csv, name.tex and name.md; return the paths."""
    paths = [out_dir / f"{name}.{ext}" for ext in ("csv", "tex", "md")]
    atomic_write_text(paths[0], table.reset_index().to_csv(index=False))
    atomic_write_text(paths[1], to_latex(table, marks))
    atomic_write_text(paths[2], to_markdown(table, marks))
    return paths


def write_tables(frames: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """Write table2, ablation and confidence (.csv, .tex, .md) into out_dir, for classification datasets
    the same per metric (``_accuracy``, ``_cross_entropy``); return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for classification, metrics in ((False, REGRESSION_METRICS), (True, CLASSIFICATION_METRICS)):
        kind = {d: f for d, f in frames.items() if is_classification(f) == classification}
        for suffix, value, _, higher in metrics if kind else ():
            paths += _write_metric_tables(long_losses(kind), out_dir, suffix, value, higher)
    return paths


def _write_metric_tables(long: pd.DataFrame, out_dir: Path, suffix: str, value: str, higher: bool) -> list[Path]:
    """table2, ablation and confidence of one metric (``value``), named with ``suffix``."""
    table2 = mean_table(long, TABLE2_METHODS, value)
    paths = _write_table(out_dir, f"table2{suffix}", table2, row_marks(table2, TABLE2_METHODS[1:], higher))
    ablation = mean_table(long, ABLATION_METHODS, value)
    marks = row_marks(ablation, ABLATION_METHODS, higher).reindex(with_relative_rows(ablation).index, fill_value="")
    paths += _write_table(out_dir, f"ablation{suffix}", with_relative_rows(ablation), marks)
    confidence = confidence_table(long, value=value)
    paths += [out_dir / f"confidence{suffix}.{ext}" for ext in ("csv", "tex", "md")]
    atomic_write_text(paths[-3], confidence.to_csv(index=False))
    atomic_write_text(paths[-2], confidence_to_latex(confidence))
    atomic_write_text(paths[-1], confidence.to_markdown(index=False, floatfmt=".4f") + "\n")
    return paths
