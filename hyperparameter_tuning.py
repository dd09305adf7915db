"""Random-search hyperparameter tuning of every registered method (the paper's 13) for one dataset and bit width.

Writes ``{result_folder}/{dataset}/{dataset}_hyperparameter_tuning_{b}bits_{k*n_steps}iterations.csv``
(the paper's tuning files), one row per (setting, fold). The rows are kept in an optuna study in --storage
(default: a journal file beside the CSV) and the CSV is rewritten from it after every row.
Any number of workers started with the same arguments, on one machine or many, share the work;
run the same command again after an interruption and it continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from data import default_scratch
from models import METHOD_NAMES, SETTING_KEYS
from protocol.common import (
    MAX_STEPS,
    ProtocolError,
    add_data_arguments,
    add_runtime_arguments,
    apply_runtime,
    parse_bits,
    parse_positive,
    parse_steps,
    run_cli,
)
from protocol.search_space import load_search_space
from protocol.study import HEARTBEAT_SECONDS, STALE_BEATS
from protocol.tuning import DEFAULT_OBJECTIVE, SAMPLERS, export_tuning, plan_tuning, run_tuning


def build_parser() -> argparse.ArgumentParser:
    """The command line of the tuning script."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser, "tune on")
    parser.add_argument("--n_bits", required=True, type=parse_bits, help="bits per feature, 2..8")
    parser.add_argument("--n_steps", dest="n_settings", type=parse_steps, default=100, help=(
        f"number of settings drawn, at most {MAX_STEPS} (default: 100, the paper's)"))
    parser.add_argument("--scratch", default=None, help=(
        f"folder with <dataset>.csv.gz files, downloads go there (default: {default_scratch()})"))
    parser.add_argument("--result_folder", default="results", help="where the CSV goes (default: results)")
    parser.add_argument("--debug", action="store_true", help="2 folds and a tiny network space, for a quick check")
    add_runtime_arguments(parser)
    parser.add_argument("--search_space", default=None, help=(
        "JSON file of lists replacing the paper's search space (missing keys keep the paper's values)"))
    parser.add_argument("--list_settings", action="store_true", help=(
        "print the settings that would run as CSV and exit"))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--storage", metavar="URL", default=None, help=(
        "optuna storage the workers share: journal:PATH, sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DATABASE "
        "(default: a journal file beside the CSV, named like it)"))
    parser.add_argument("--sampler", choices=SAMPLERS, default="paper", help=(
        "paper: the paper's settings (default); random or tpe: optuna's samplers on the same lists, "
        "written to a CSV named after them"))
    parser.add_argument("--objective", metavar="METHOD", choices=METHOD_NAMES, default=DEFAULT_OBJECTIVE, help=(
        f"method whose mean validation loss over the folds is a trial's value (default: {DEFAULT_OBJECTIVE})"))
    parser.add_argument("--export_csv", action="store_true", help="rewrite the CSV from the storage and exit")
    parser.add_argument("--import_csv", action="store_true", help=(
        "continue from rows of the CSV that the storage lacks (a CSV without its journal), taking their "
        "results as they stand"))
    parser.add_argument("--heartbeat", metavar="SECONDS", type=parse_positive, default=HEARTBEAT_SECONDS, help=(
        f"seconds between a worker's heartbeats; the setting of a worker silent for {STALE_BEATS} goes to another "
        f"(default: {HEARTBEAT_SECONDS})"))
    return parser


def main_with_args(args: argparse.Namespace) -> int:
    """Run, list or export the tuning described by parsed arguments."""
    space = load_search_space(args.search_space) if args.search_space else None
    plan = plan_tuning(args.dataset, args.n_bits, args.n_settings, args.result_folder, args.debug, space, args.sampler,
                       args.objective, args.target, args.task)
    if plan.data is not None and plan.data.task_note:
        print(plan.data.task_note, file=sys.stderr)
    if args.list_settings:
        if args.sampler != "paper":
            raise ProtocolError("--list_settings needs --sampler paper: "
                                "the other samplers draw their settings as results come in")
        plan.settings.loc[:, list(SETTING_KEYS)].to_csv(sys.stdout, lineterminator="\n")
        return 0
    if args.export_csv:
        path = export_tuning(plan, args.storage)
    else:
        path = run_tuning(plan, args.scratch, apply_runtime(args), not args.quiet, args.storage, args.heartbeat,
                          args.import_csv)
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return run_cli(main_with_args, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
