"""Compare the test losses of two best-setting result files (a reproduction and the paper's) per bits and method.

Usage (from the repository root): python -m result_analysis.compare_runs --ours FILE --theirs FILE
       [--methods M ...] [--bits B ...] [--alpha A] [--out FILE.md] [--csv FILE.csv] [--against M] [--paired]

Both files are best-setting files (one row per (bits, run); a method that was not run has empty
cells). For every (bits, method) with test losses in both files the table holds, per file, the
number of runs, the mean and the standard deviation (ddof=1) of ``test_loss_<m>``; the difference
of the means in % of theirs; Welch's t-test (statistic, p-value, ``significant`` = p < alpha); and
the best_hyperparameter_id(s) of both files with whether they agree. t and p are NaN where a file
has a single run or both files have zero spread.

``--against M`` compares every method of ``--ours`` with method M of ``--theirs`` (which defaults to
``--ours``: two methods of one file); the table gains the column ``against``. ``--paired`` adds
``n_pairs`` and ``p_paired``, the paired t-test over the runs both files hold (the same ``step``:
the same split and seed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from core.atomic import atomic_write_text
from core.schema import PAPER_METHODS, further_methods
from result_analysis.analysis import BIT_RANGE, ResultFileError, exit_status, read_result_file

COLUMNS: tuple[str, ...] = (
    "method", "bits", "n_ours", "mean_ours", "std_ours", "n_theirs", "mean_theirs", "std_theirs",
    "diff_pct", "t", "p", "significant", "id_ours", "id_theirs", "ids_agree",
)
PREFIXES: tuple[str, ...] = ("best_hyperparameter_id", "test_loss")  # the columns compared, per method


def methods_of(ours: pd.DataFrame, theirs: pd.DataFrame, methods: Sequence[str] | None = None) -> list[str]:
    """The paper's methods, then the further ones either frame has a test loss column of, in that order;
    only the requested ``methods`` among them, if given, and a ResultFileError naming any other."""
    known = [*PAPER_METHODS, *dict.fromkeys([*further_methods(ours.columns), *further_methods(theirs.columns)])]
    unknown = [m for m in methods or () if m not in known]
    if unknown:
        raise ResultFileError(
            f"unknown method {unknown[0]!r}: neither file has its columns; choose from {', '.join(known)}."
        )
    return [m for m in known if methods is None or m in methods]


def read_runs(path: Path, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Read and validate a best-setting file; return bits, step and the id and test-loss columns of the
    paper's ``methods`` (default: all thirteen) and of every further method the file has.

    Empty cells become NaN (a method that was not run); any other non-numeric value is an error.
    """
    columns = [f"{prefix}_{m}" for m in PAPER_METHODS if methods is None or m in methods for prefix in PREFIXES]
    return read_result_file(path, columns, further=PREFIXES)


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Welch's t statistic and two-sided p-value; NaN where it is undefined."""
    if min(len(a), len(b)) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return float("nan"), float("nan")
    result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def _ids(frame: pd.DataFrame, method: str, rows: pd.Series) -> str:
    """The distinct best_hyperparameter_id values of the selected rows, joined by '/'."""
    ids = frame.loc[rows, f"best_hyperparameter_id_{method}"].dropna().unique()
    return "/".join(str(int(i)) if float(i).is_integer() else str(i) for i in sorted(ids))


def _paired(ours: pd.DataFrame, theirs: pd.DataFrame, loss: str, their_loss: str) -> tuple[int, float]:
    """The number of runs (``step``) both selections hold and the two-sided p of the paired t-test over them."""
    pairs = ours[["step", loss]].merge(theirs[["step", their_loss]].rename(columns={their_loss: "theirs"}), on="step")
    a, c = pairs[loss].to_numpy(dtype=float), pairs["theirs"].to_numpy(dtype=float)
    if len(a) < 2 or np.ptp(a - c) == 0:
        return len(a), float("nan")
    return len(a), float(stats.ttest_rel(a, c).pvalue)


def compare(
    ours: pd.DataFrame,
    theirs: pd.DataFrame,
    methods: Sequence[str] | None = None,
    bits: Sequence[int] | None = None,
    alpha: float = 0.05,
    against: str | None = None,
    paired: bool = False,
) -> pd.DataFrame:
    """One row (COLUMNS) per (method, bits) with test losses in both frames, in ``methods_of`` then bits order.

    The frames need the columns bits, test_loss_<m> and best_hyperparameter_id_<m> (NaN where a
    method was not run) of the paper's methods, and have them of further methods where they were run,
    as read_runs or pd.read_csv return them. An empty frame means no overlap. With ``against`` each
    method of ``ours`` is compared with that method of ``theirs`` (column ``against`` after ``method``);
    with ``paired`` the columns ``n_pairs`` and ``p_paired`` follow ``p`` (the frames need ``step``).
    """
    wanted = set(ours["bits"]) | set(theirs["bits"])
    if bits is not None:
        wanted &= set(bits)
    columns = list(COLUMNS)
    if paired:
        columns[columns.index("p") + 1 : columns.index("p") + 1] = ["n_pairs", "p_paired"]
    if against is not None:
        columns.insert(1, "against")
    rows = []
    for method in methods_of(ours, theirs, methods):
        their_method = method if against is None else against
        loss, their_loss = f"test_loss_{method}", f"test_loss_{their_method}"
        if loss not in ours or their_loss not in theirs:  # a further method only one file has
            continue
        for b in sorted(wanted):
            ours_rows = (ours["bits"] == b) & ours[loss].notna()
            theirs_rows = (theirs["bits"] == b) & theirs[their_loss].notna()
            a = ours.loc[ours_rows, loss].to_numpy(dtype=float)
            c = theirs.loc[theirs_rows, their_loss].to_numpy(dtype=float)
            if not (len(a) and len(c)):
                continue
            t, p = _welch(a, c)
            id_ours, id_theirs = _ids(ours, method, ours_rows), _ids(theirs, their_method, theirs_rows)
            row = dict(zip(COLUMNS, (
                method, int(b), len(a), a.mean(), np.std(a, ddof=1) if len(a) > 1 else np.nan,
                len(c), c.mean(), np.std(c, ddof=1) if len(c) > 1 else np.nan,
                100 * (a.mean() - c.mean()) / c.mean(), t, p, bool(p < alpha),
                id_ours, id_theirs, id_ours == id_theirs,
            )))
            if paired:
                pairs = _paired(ours.loc[ours_rows], theirs.loc[theirs_rows], loss, their_loss)
                row["n_pairs"], row["p_paired"] = pairs
            rows.append({**row, "against": their_method})
    return pd.DataFrame(rows, columns=columns)


def to_markdown(table: pd.DataFrame) -> str:
    """Markdown table of a comparison: losses with 4 significant digits, p-values with 3."""
    def fmt(spec: str) -> Callable[[float], str]:
        """Formatter for one float column; NaN as 'n/a'."""
        return lambda v: "n/a" if pd.isna(v) else format(v, spec)

    formats = {"mean_ours": fmt(".4g"), "std_ours": fmt(".4g"), "mean_theirs": fmt(".4g"),
               "std_theirs": fmt(".4g"), "diff_pct": fmt("+.2f"), "t": fmt(".3f"), "p": fmt(".3g"),
               "p_paired": fmt(".3g"),
               "significant": lambda v: "yes" if v else "no", "ids_agree": lambda v: "yes" if v else "no"}
    texts = table.astype(object)
    for column, formatter in formats.items():
        if column in table:
            texts[column] = table[column].map(formatter)
    align = ["left" if column in ("method", "against") else "right" for column in texts.columns]
    return texts.to_markdown(index=False, colalign=align, disable_numparse=True) + "\n"


def _write(path: Path, text: str) -> None:
    """Write text to path atomically, creating the parent folder; OSErrors become ResultFileError."""
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise ResultFileError(f"{path} cannot be written ({exc.strerror or exc}).") from None


def _run(args: argparse.Namespace) -> None:
    """Compare the files named by args, write the requested outputs and print the markdown table."""
    if args.theirs is None and args.against is None:
        raise ResultFileError("name the file to compare with (--theirs), or a method of --ours (--against).")
    ours = read_runs(args.ours, args.methods)
    theirs = read_runs(args.theirs or args.ours, None if args.against else args.methods)
    if args.against is not None and f"test_loss_{args.against}" not in theirs:
        raise ResultFileError(f"{args.theirs or args.ours} has no column test_loss_{args.against}.")
    methods = methods_of(ours, ours if args.against else theirs, args.methods)
    table = compare(ours, theirs, methods, args.bits, args.alpha, args.against, args.paired)
    if table.empty:
        among = f" among {', '.join(map(str, sorted(set(args.bits))))} bits" if args.bits else ""
        raise ResultFileError(
            f"{args.ours} and {args.theirs} have no (bits, method) with test losses in both files{among}."
        )
    text = to_markdown(table)
    if args.out:
        _write(args.out, text)
    if args.csv:
        _write(args.csv, table.to_csv(index=False))
    print(text, end="", flush=True)  # the table first, then the note, also where both go to one terminal
    skipped = [m for m in methods if m not in set(table["method"])]
    if skipped:
        print(f"skipped, no runs in both files: {', '.join(skipped)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", type=Path, required=True, help="best-setting file of the reproduction")
    parser.add_argument("--theirs", type=Path,
                        help="best-setting file to compare with (the paper's; default with --against: --ours)")
    parser.add_argument("--methods", nargs="+", metavar="M",
                        help=f"methods to compare (default: the paper's, {' '.join(PAPER_METHODS)}, "
                             "and every further one a file has)")
    parser.add_argument("--bits", nargs="+", type=int, choices=list(BIT_RANGE), metavar="B",
                        help="bit widths to compare (default: every bit width in the files)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (default: 0.05)")
    parser.add_argument("--out", type=Path, help="also write the markdown table to this file")
    parser.add_argument("--csv", type=Path, help="also write the table, full precision, to this CSV file")
    parser.add_argument("--against", metavar="M",
                        help="compare every method of --ours with this method of --theirs, e.g. Bw-SQ")
    parser.add_argument("--paired", action="store_true",
                        help="add the paired t-test over the runs of the same step (the same split and seed)")
    args = parser.parse_args(argv)
    if not 0 < args.alpha < 1:
        parser.error("--alpha must lie strictly between 0 and 1")
    return exit_status(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
