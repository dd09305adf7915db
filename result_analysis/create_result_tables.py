"""Write the paper's Table 2, the ablation table and the confidence table from best-setting result files.

Usage (from the repository root): python -m result_analysis.create_result_tables [--results_dir DIR]
       [--out_dir OUT] [--datasets NAME ...] [--bits B ...]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from core.schema import PAPER_DATASETS
from result_analysis.analysis import BIT_RANGE, check_out_dir, exit_status, load_results, write_tables


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options shared by the table and figure scripts."""
    parser.add_argument("--results_dir", type=Path, default=Path("results/best_hyperparameter_multiple"),
                        help="folder with the {dataset}_best_hyperparameter_test_multiple.csv files "
                             "(default: %(default)s)")
    parser.add_argument("--out_dir", type=Path, default=Path("results/analysis"),
                        help="folder the outputs are written to, created if needed (default: %(default)s)")
    parser.add_argument("--datasets", nargs="+", default=list(PAPER_DATASETS), metavar="NAME",
                        help="datasets to include, any with a file in --results_dir "
                             f"(default: the paper's, {' '.join(PAPER_DATASETS)})")
    parser.add_argument("--bits", nargs="+", type=int, choices=list(BIT_RANGE), metavar="B",
                        help="bit widths to include (default: every bit width in the files)")


def load_and_write(args: argparse.Namespace,
                   write: Callable[[dict[str, pd.DataFrame], Path], list[Path]]) -> None:
    """Load the result files named by args, write(frames, out_dir) the outputs and print what was done."""
    check_out_dir(args.out_dir)
    frames, missing = load_results(args.results_dir, args.datasets, args.bits)
    if missing:
        print(f"missing in {args.results_dir}, skipped: {', '.join(missing)}")
    paths = write(frames, args.out_dir)
    print(f"wrote {len(paths)} files to {args.out_dir}: {', '.join(p.name for p in paths)}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    return exit_status(lambda: load_and_write(args, write_tables))


if __name__ == "__main__":
    sys.exit(main())
