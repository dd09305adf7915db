"""Estimate the CPU time of rerunning the paper's selected settings, per dataset and bit width.

For every paper tuning file, the settings that the paper's selection picks
are costed for ``--n_steps`` runs of every method, trained on 90 % of the rows: seconds =
matmul FLOPs / (measured matmul rate / overhead) + optimizer steps x a fixed cost per step,
where ``--overhead`` is the measured ratio of training time to the arithmetic floor for
networks large enough to be arithmetic-bound and ``--step_ms`` the measured time of one step
of a small network (see BENCHMARKS.md).

From the repository root (REPRODUCTION.md's table):

    python -m benchmarks.estimate_reproduction_cost --gflops 161 --overhead 3 --step_ms 1.5
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from data.datasets import DATASETS, PAPER_DATASETS
from models import METHODS, Setting
from protocol.best_settings import find_tuning_files, load_choices
from quantization import n_thresholds

REPRODUCED_METHODS = ("FP", "Pr-MQ", "Pr-QQ", "LLT4", "LLT9", "LSQ", "Bw-SQ", "SQ", "Bw-MQ", "Bw-QQ")


def training_seconds(
    method: str, setting: Setting, n_features: int, bits: int, n_train: int, rate: float, step_seconds: float
) -> float:
    """Matmul FLOPs (forward plus twice that backward) at ``rate``, plus a fixed cost per step."""
    width = n_features * n_thresholds(bits) if method.startswith("Bw-") else n_features
    sizes = [width] + [setting.hidden_neurons] * setting.hidden_layers + [1]
    forward = sum(2 * a * b for a, b in zip(sizes, sizes[1:]))
    steps = -(-n_train // 512) * setting.num_epochs
    return 3 * forward * n_train * setting.num_epochs / rate + steps * step_seconds


def estimate(tuning_folder: Path, n_runs: int, gflops: float, overhead: float, step_ms: float) -> pd.DataFrame:
    """Estimated CPU minutes per dataset (rows) and bit width (columns)."""
    minutes: dict[str, dict[int, float]] = {}
    for dataset in PAPER_DATASETS:
        if not find_tuning_files(tuning_folder, dataset):
            continue
        info = DATASETS[dataset]
        n_train = int(0.9 * info.n_rows)
        for bits, per_method in load_choices(tuning_folder, dataset, None, REPRODUCED_METHODS).items():
            networks = {(METHODS[m].network, c.setting) for m, c in per_method.items()}
            rate, step_seconds = gflops * 1e9 / overhead, step_ms / 1e3
            seconds = sum(training_seconds(m, s, info.n_features, bits, n_train, rate, step_seconds)
                          for m, s in networks)
            minutes.setdefault(dataset, {})[bits] = seconds * n_runs / 60
    return pd.DataFrame(minutes).T.rename_axis("dataset")


def main(argv: Sequence[str] | None = None) -> int:
    """Print the estimate as a markdown table of minutes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tuning_folder", type=Path, default=Path("../shared/paper_results"),
                        help="folder with the paper's tuning files, one subfolder per dataset (default: %(default)s)")
    parser.add_argument("--n_steps", dest="n_runs", type=int, default=10,
                        help="runs per method and bit width (default: %(default)s)")
    parser.add_argument("--gflops", type=float, required=True, help="measured float32 matmul GFLOP/s")
    parser.add_argument("--overhead", type=float, required=True, help="measured time / arithmetic floor of training")
    parser.add_argument("--step_ms", type=float, required=True,
                        help="measured milliseconds of one step of a small network")
    args = parser.parse_args(argv)
    table = estimate(args.tuning_folder, args.n_runs, args.gflops, args.overhead, args.step_ms)
    if table.empty:
        parser.error("no tuning files <dataset>/<dataset>_hyperparameter_tuning_*.csv of the paper's datasets in "
                     f"{args.tuning_folder}; point --tuning_folder at a results folder (e.g. ../shared/paper_results)")
    print(f"estimated CPU minutes for {args.n_runs} runs of {', '.join(REPRODUCED_METHODS)}")
    print(table.round(1).to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
