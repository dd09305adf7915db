"""Draw the paper's Figure 4 (line plot) and Figure 6 (box plots per bit width) from best-setting result files.

Usage (from the repository root): python -m result_analysis.line_and_box_plot_cummulative
       [--results_dir DIR] [--out_dir OUT] [--datasets NAME ...] [--bits B ...]
       [--lineplot/--no-lineplot] [--boxplot/--no-boxplot]
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

from result_analysis.analysis import exit_status
from result_analysis.create_result_tables import add_common_arguments, load_and_write
from result_analysis.plots import write_figures


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--lineplot", action=argparse.BooleanOptionalAction, default=True,
                        help="write lineplot.png/.pdf (Figure 4; default: on)")
    parser.add_argument("--boxplot", action=argparse.BooleanOptionalAction, default=True,
                        help="write boxplot_{b}bits.png/.pdf per bit width (Figure 6; default: on)")
    args = parser.parse_args(argv)
    write = partial(write_figures, lineplot=args.lineplot, boxplot=args.boxplot)
    return exit_status(lambda: load_and_write(args, write))


if __name__ == "__main__":
    sys.exit(main())
