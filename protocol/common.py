"""What both protocol scripts share: errors, devices and the command-line wrapper."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from core.checks import MAX_BITS, MIN_BITS, check_bits, whole_number
from data import DATASETS, MAX_CLASS_CODES, TASKS, DatasetError

BASE_SEED = 42  # the protocol's seeds are offsets from it (tuning rows and best-setting runs)
MAX_STEPS = 10**6  # --n_steps: far beyond any run (the paper: 100 settings, 10 runs), small enough to draw at once


class ProtocolError(ValueError):
    """Bad input to the protocol scripts; the message is one sentence that says what to do."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ProtocolError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def add_data_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--dataset``, ``--target`` and ``--task``, shared by the protocol scripts."""
    parser.add_argument("--dataset", required=True, metavar="NAME_OR_FILE", help=(
        f"dataset to {what}: one of {', '.join(DATASETS)}, or a table of your own (.csv, .csv.gz or .parquet; "
        "numeric features; results are filed under the file's stem)"))
    parser.add_argument("--target", default=None, metavar="COLUMN", help=(
        "a table file's target column (default: its last column)"))
    parser.add_argument("--task", choices=TASKS, default=None, help=(
        "a table file's task (default: classification where the target holds text, or whole numbers with at most "
        f"{MAX_CLASS_CODES} distinct values; else regression)"))


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--threads``, shared by the protocol scripts."""
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help=(
        "training device (default: auto, CUDA when present)"))
    parser.add_argument("--threads", type=parse_positive, default=None, help=(
        "CPU threads of this process (default: torch's choice, one per core); "
        "with several workers on one machine give each cores / workers, e.g. 1"))


def apply_runtime(args: argparse.Namespace) -> torch.device:
    """Set the thread count and return the training device of parsed arguments."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def parse_bits(text: str) -> int:
    """argparse type for a bit width in 2..8 (``core.checks.check_bits``)."""
    try:
        return check_bits(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {text!r}") from None


def parse_positive(text: str) -> int:
    """argparse type for an integer >= 1."""
    try:
        return whole_number("value", int(text), minimum=1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 1, got {text!r}") from None


def parse_steps(text: str) -> int:
    """argparse type for ``--n_steps``: an integer from 1 to ``MAX_STEPS``."""
    value = parse_positive(text)
    if value > MAX_STEPS:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {MAX_STEPS}, got {text!r}")
    return value


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """A scheduler's SIGTERM (a time limit, a pre-emption) stops the work as Ctrl-C does: the setting
    being tuned is released at once rather than after its heartbeats lapse."""
    raise KeyboardInterrupt


@contextmanager
def _sigterm_stops_as_ctrl_c() -> Iterator[None]:
    """While the block runs, SIGTERM raises KeyboardInterrupt (where SIGTERM has its default action)."""
    install = (signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
               and threading.current_thread() is threading.main_thread())
    if install:
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        yield
    finally:
        if install:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_cli(
    main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: Sequence[str] | None,
) -> int:
    """Parse ``argv`` and run ``main``; bad input, unusable paths and Ctrl-C end with one line, not a traceback."""
    args = parser.parse_args(argv)
    try:
        with _sigterm_stops_as_ctrl_c():
            return main(args)
    except (ProtocolError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the output went to a reader that stopped early (| head): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flush must not fail too
        return 141
    except OSError as error:  # a file where a folder should be, no permission, a full disk
        where = f"cannot use {error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}; "
              "check that the paths given are folders you can write to", file=sys.stderr)
        return 2
    except json.JSONDecodeError:  # optuna replaying a journal that a worker's crash left broken while this one ran
        print("error: the tuning's journal became unreadable while this worker ran (another worker died mid-write?); "
              "every row stored before is in the CSV: move the journal away and run the same command again",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every finished row is saved; run the same command again to continue", file=sys.stderr)
        return 130
