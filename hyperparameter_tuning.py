"""Random-search hyperparameter tuning of all 13 methods for one dataset and bit width.

Writes ``{result_folder}/{dataset}/{dataset}_hyperparameter_tuning_{b}bits_{k*n_steps}iterations.csv``
(SPEC section 5), one row per (setting, fold), rewritten atomically after every row; run the
same command again after an interruption and it continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from data import DATASETS, default_scratch
from models import SETTING_KEYS
from protocol.common import parse_bits, parse_positive, resolve_device, run_cli
from protocol.search_space import load_search_space
from protocol.tuning import plan_tuning, run_tuning


def build_parser() -> argparse.ArgumentParser:
    """The command line of the tuning script."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=list(DATASETS), help="dataset to tune on")
    parser.add_argument("--n_bits", required=True, type=parse_bits, help="bits per feature, 2..8")
    parser.add_argument("--n_steps", type=parse_positive, default=100, help="number of settings drawn (default: 100, the paper's)")
    parser.add_argument("--scratch", default=None, help=f"folder with <dataset>.csv.gz files, downloads go there (default: {default_scratch()})")
    parser.add_argument("--result_folder", default="results", help="where the CSV goes (default: results)")
    parser.add_argument("--debug", action="store_true", help="2 folds and a tiny network space, for a quick check")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="training device (default: auto)")
    parser.add_argument("--search_space", default=None, help="JSON file of lists replacing the paper's search space (missing keys keep the paper's values)")
    parser.add_argument("--list_settings", action="store_true", help="print the settings that would run as CSV and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main_with_args(args: argparse.Namespace) -> int:
    """Run (or list) the tuning described by parsed arguments."""
    space = load_search_space(args.search_space) if args.search_space else None
    plan = plan_tuning(args.dataset, args.n_bits, args.n_steps, args.result_folder, args.debug, space)
    if args.list_settings:
        plan.settings.loc[:, list(SETTING_KEYS)].to_csv(sys.stdout, lineterminator="\n")
        return 0
    path = run_tuning(plan, args.scratch, resolve_device(args.device), progress=not args.quiet)
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return run_cli(main_with_args, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
