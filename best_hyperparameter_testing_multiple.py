"""Rerun every method's best tuned setting several times on fresh splits (the paper's best-setting protocol).

Reads ``{result_folder}/{dataset}/{dataset}_hyperparameter_tuning_{b}bits_*iterations.csv``,
picks per bit width and method the setting with the smallest mean validation loss, and writes
``{result_folder}/best_hyperparameter_multiple/{dataset}_best_hyperparameter_test_multiple.csv``,
one row per (bits, run), atomically after every row; rerun the same command to continue.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from data import dataset_name, default_scratch
from models import METHOD_NAMES
from protocol.best_settings import load_choices, print_source, run_best_settings, selection_frame
from protocol.common import (
    MAX_STEPS,
    add_data_arguments,
    add_runtime_arguments,
    apply_runtime,
    parse_bits,
    parse_steps,
    run_cli,
)
from protocol.tuning import check_registered_options


def parse_setting_of(text: str) -> tuple[str, str]:
    """argparse type for ``METHOD=OTHER``, two registered methods."""
    method, _, donor = text.partition("=")
    if method not in METHOD_NAMES or donor not in METHOD_NAMES or method == donor:
        raise argparse.ArgumentTypeError(f"expected METHOD=OTHER, two different methods of {' '.join(METHOD_NAMES)}; "
                                         f"got {text!r}")
    return method, donor


def build_parser() -> argparse.ArgumentParser:
    """The command line of the best-setting script."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser, "test on")
    parser.add_argument("--scratch", default=None, help=(
        f"folder with <dataset>.csv.gz files (default: {default_scratch()})"))
    parser.add_argument("--n_steps", dest="n_runs", type=parse_steps, default=10, help=(
        f"runs per bit width and method, at most {MAX_STEPS} (default: 10)"))
    parser.add_argument("--result_folder", default="results", help=(
        "holds the tuning files; the output goes below it (default: results)"))
    parser.add_argument("--bits", nargs="+", type=parse_bits, default=None, help=(
        "bit widths (default: every one with a tuning file)"))
    parser.add_argument("--methods", nargs="+", choices=list(METHOD_NAMES), default=None, metavar="METHOD", help=(
        f"methods to run, of {' '.join(METHOD_NAMES)} (default: every method of the tuning files)"))
    add_runtime_arguments(parser)
    parser.add_argument("--setting_of", nargs="+", type=parse_setting_of, default=None, metavar="METHOD=OTHER",
                        help="also run METHOD at the setting the tuning selects for OTHER, e.g. Bw-SQ-ST=Bw-SQ "
                             "(for a method the tuning files lack)")
    parser.add_argument("--select_only", action="store_true", help=(
        "print the selected settings as CSV and train nothing"))
    parser.add_argument("--save_models", default=None, metavar="DIR", help=(
        "keep every trained model in DIR (for deployment.export)"))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main_with_args(args: argparse.Namespace) -> int:
    """Select, and unless ``--select_only`` rerun, the best settings."""
    if args.select_only:
        check_registered_options(args.dataset, args.target, args.task)
        choices = load_choices(args.result_folder, dataset_name(args.dataset), args.bits, args.methods,
                               on_file=None if args.quiet else print_source,
                               setting_of=dict(args.setting_of or ()))
        selection_frame(choices).to_csv(sys.stdout, index=False, lineterminator="\n")
        return 0
    path = run_best_settings(
        args.dataset, args.result_folder, args.n_runs, args.bits, args.methods,
        args.scratch, apply_runtime(args), args.save_models, progress=not args.quiet,
        target=args.target, task=args.task,
        setting_of=dict(args.setting_of or ()),
    )
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return run_cli(main_with_args, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
