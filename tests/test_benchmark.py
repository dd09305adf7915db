"""The speed benchmark's bookkeeping: FLOP counts by hand, the matmul timer, ratios, a tiny run."""

from __future__ import annotations

import pytest
import torch

from benchmarks import bench_methods
from models import PAPER_METHODS, QuantizerContext, Setting

SETTING = Setting(0.0, 1e-3, 1, 4, 2, 1e-3, 0.0)  # one hidden layer of 4, two epochs


@pytest.mark.parametrize("method,expected", [
    # 3 -> 4 -> 1: forward 2 (3 4 + 4 1) = 32 per row; backward 2 x 32 less the first layer's input gradient (24)
    ("FP", 10 * 2 * (32 + 40) + 5 * 32),
    ("Po-MQ", 5 * 32),  # evaluates FP's network, trains nothing
    ("LLT4", 10 * 2 * (32 + 64) + 2 * 5 * 32),  # the input gradient reaches the quantizer; soft and hard evaluation
    # Bw-SQ at 3 bits sees 3 x 7 = 21 inputs: forward 2 (21 4 + 4 1) = 176, backward 2 x 176
    ("Bw-SQ", 10 * 2 * (176 + 352) + 2 * 5 * 176),
])
def test_workload_flops_hand_cases(method, expected):
    ctx = QuantizerContext.placeholder(3, 3)
    assert bench_methods.workload_flops(method, SETTING, ctx, n_train=10, n_eval=5) == expected


def test_matmul_seconds_counts_matmuls_only():
    a = torch.randn(300, 300)
    assert bench_methods.matmul_seconds(lambda: [a @ a for _ in range(3)]) > 0
    assert bench_methods.matmul_seconds(lambda: [a + a for _ in range(3)]) == 0


def test_time_ratio_is_the_median_of_paired_ratios():
    # paired ratios 1, 4, 1 -> median 1; ratio of medians 4 / 1 = 4, largest ratio 4,
    # ratio of means (14/3) / (11/3) = 14/11, mean of ratios 2
    report = {"methods": {"A": {"train_seconds_runs": [1.0, 4.0, 9.0]}, "B": {"train_seconds_runs": [1.0, 1.0, 9.0]}}}
    assert bench_methods.time_ratio(report, "A", "B") == 1.0
    # an even number of repeats: the mean of the two middle ratios (ratios 8, 1, 2, 3 -> 2.5;
    # ratio of medians 7 / 2.5 = 2.8)
    report = {"methods": {"A": {"train_seconds_runs": [8.0, 2.0, 6.0, 12.0]},
                          "B": {"train_seconds_runs": [1.0, 2.0, 3.0, 4.0]}}}
    assert bench_methods.time_ratio(report, "A", "B") == 2.5


def test_tiny_workload_reports_every_method():
    report = bench_methods.run_workload(400, 1, torch.device("cpu"), hidden_layers=1, hidden_neurons=4)
    assert list(report["methods"]) == list(PAPER_METHODS)
    assert 0 < report["matmul_seconds"] < report["seconds"] * 2  # one profiled row beside the timed one
    assert report["methods"]["Po-QQ"]["train_seconds_alone"] is None
    assert all(report["methods"][m]["train_seconds_alone"] > 0 for m in ("FP", "LLT4", "Bw-SQ"))
