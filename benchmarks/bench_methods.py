"""Time one tuning row of the paper's 13 methods against the workload's arithmetic floor.

Reference workload: Friedman #1 data (``make_friedman1(n_samples=20000, noise=1.0,
random_state=0)``), 4 bits, 60 % train / 20 % validation / 20 % test rows, an MLP with 3
hidden layers of 128, 10 epochs, batch 512. The floor is the workload's matmul FLOPs (forward
and backward of every trained network for every epoch, plus the evaluations) divided by the
float32 matmul rate measured on the same machine in the same run (the better of a measurement
before and one after the workloads, as the machine's speed drifts). Each time is the best of
``--repeats`` runs; a time ratio between two methods is the median of their ratios within a run.

From the repository root:

    python -m benchmarks.bench_methods                 # the reference workload
    python -m benchmarks.bench_methods --scaling       # plus rows 5k/20k/80k and epochs 5/10/20
    python -m benchmarks.bench_methods --processes 2   # plus 2 processes training the row at once
    python -m benchmarks.bench_methods --device cuda --json bench.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from sklearn.datasets import make_friedman1
from sklearn.model_selection import train_test_split

from data.splits import standardize
from models import METHODS, PAPER_METHODS, QuantizerContext, Setting, build_model, run_methods
from models.training import needs_input_grad
from protocol.common import ProtocolError, resolve_device

BITS = 4
MATMUL_OPERATORS = ("aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm")
TARGET_RATIOS = [("LLT4", "FP"), ("LLT9", "FP"), ("Bw-SQ", "Pr-QQ")]  # (method, reference) time ratios reported


def matmul_rate(device: torch.device, size: int = 2048, repeats: int = 20) -> float:
    """Best float32 GFLOP/s of a ``size``x``size`` matmul over ``repeats`` timed runs."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats + 2):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_seconds(run: Callable[[], object]) -> float:
    """CPU seconds that one call of ``run`` spends inside matmul operators, by torch.profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run()
    return sum(e.self_cpu_time_total for e in profile.key_averages() if e.key in MATMUL_OPERATORS) / 1e6


def workload_flops(method: str, setting: Setting, ctx: QuantizerContext, n_train: int, n_eval: int) -> float:
    """Matmul FLOPs of training ``method`` and evaluating it (hard, and soft where reported)."""
    model = build_model(METHODS[method], setting, ctx)
    linears = [m for m in model.mlp if isinstance(m, torch.nn.Linear)]
    forward = sum(2 * m.in_features * m.out_features for m in linears)
    first_input_grad = 2 * linears[0].in_features * linears[0].out_features if needs_input_grad(model.quantizer) else 0
    backward = 2 * forward - 2 * linears[0].in_features * linears[0].out_features + first_input_grad
    evaluations = 2 if METHODS[method].soft_eval else 1
    trained = 0 if METHODS[method].post_training else n_train * setting.num_epochs * (forward + backward)
    return trained + evaluations * n_eval * forward


def reference_data(rows: int, device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Friedman #1 rows split 60/20/20 and standardized on the training part."""
    x, y = make_friedman1(n_samples=rows, noise=1.0, random_state=0)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, random_state=0)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0)
    return standardize((x_train, y_train), val=(x_val, y_val), test=(x_test, y_test)).tensors(device)


def run_workload(rows: int, epochs: int, device: torch.device, per_method: bool = True,
                 hidden_layers: int = 3, hidden_neurons: int = 128, repeats: int = 1) -> dict[str, object]:
    """Time one tuning row of all methods (as the tuning runs it) and each method trained alone.

    Each time is the best of ``repeats`` runs; the runs of the row and of the methods alternate,
    so a slow spell of the machine does not fall on one of them only. Every run of a method
    alone is kept (``train_seconds_runs``) for ratios between methods run close in time.
    """
    parts = reference_data(rows, device)
    setting = Setting(0.0, 1e-3, hidden_layers, hidden_neurons, epochs, 1e-3, 0.0)
    evaluations = {"val": parts["val"], "test": parts["test"]}
    trained = [name for name in PAPER_METHODS if per_method and not METHODS[name].post_training]

    def row() -> dict:
        settings = {m: setting for m in PAPER_METHODS}
        return run_methods(PAPER_METHODS, settings, parts["train"], evaluations, BITS, seed=42)

    total, alone = float("inf"), {name: [] for name in trained}
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        results = row()
        _sync(device)
        total = min(total, time.perf_counter() - start)
        for name in trained:
            seconds = run_methods([name], {name: setting}, parts["train"], evaluations, BITS, seed=42)[name].seconds
            alone[name].append(seconds)
    ctx = QuantizerContext.from_training_rows(parts["train"][0], BITS)
    n_train, n_eval = parts["train"][0].shape[0], parts["val"][0].shape[0] + parts["test"][0].shape[0]
    methods = {}
    for name in PAPER_METHODS if per_method else ():
        seconds = min(alone[name]) if name in alone else None
        methods[name] = {
            "train_seconds_alone": seconds,
            "train_seconds_runs": alone.get(name),
            "samples_per_second_alone": n_train * epochs / seconds if seconds else None,
            "gflop": workload_flops(name, setting, ctx, n_train, n_eval) / 1e9,
            "test_loss": results[name].losses["test"],
        }
    gflop = sum(workload_flops(m, setting, ctx, n_train, n_eval) for m in PAPER_METHODS) / 1e9
    # on CUDA the matmuls run inside graphs, out of the profiler's view of operators
    in_matmuls = matmul_seconds(row) if per_method and device.type == "cpu" else None
    return {"rows": rows, "epochs": epochs, "hidden_layers": hidden_layers, "hidden_neurons": hidden_neurons,
            "repeats": repeats, "seconds": total, "matmul_seconds": in_matmuls, "gflop": gflop, "methods": methods}


def _row_seconds_in_worker(threads: int) -> float:
    """Seconds of one whole row in a fresh process with ``threads`` threads (after a warm-up row)."""
    torch.set_num_threads(threads)
    run_workload(5000, 2, torch.device("cpu"), per_method=False)
    return run_workload(20000, 10, torch.device("cpu"), per_method=False)["seconds"]


def concurrent_rows(processes: int) -> list[float]:
    """Each of ``processes`` CPU processes, started together, times the reference row with cores / processes threads."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return pool.map(_row_seconds_in_worker, [threads] * processes)


def time_ratio(report: dict, method: str, reference: str) -> float:
    """Median over the repeats of ``method``'s training time over ``reference``'s in the same repeat."""
    runs = report["methods"]
    pairs = zip(runs[method]["train_seconds_runs"], runs[reference]["train_seconds_runs"])
    return statistics.median(m / r for m, r in pairs)


def print_workload(report: dict, rate: float) -> None:
    """A table per method (trained alone) and the whole row against its floor."""
    network = f"{report['hidden_layers']} x {report['hidden_neurons']} network"
    print(f"\n{report['rows']} rows, {report['epochs']} epochs, {network}, "
          f"{BITS} bits, best of {report['repeats']} runs; per method trained alone:")
    print(f"{'method':8} {'train s':>8} {'samples/s':>10} {'GFLOP':>7} {'floor s':>8} {'x floor':>8}")
    for name, m in report["methods"].items():
        if m["train_seconds_alone"] is None:
            print(f"{name:8} {'(evaluates the FP network)':>28} {m['gflop']:7.2f} {m['gflop'] / rate:8.3f}")
            continue
        floor = m["gflop"] / rate
        seconds = m["train_seconds_alone"]
        print(f"{name:8} {seconds:8.3f} {m['samples_per_second_alone']:10.0f} {m['gflop']:7.2f} {floor:8.3f} "
              f"{seconds / floor:8.2f}")
    for method, reference in TARGET_RATIOS:
        m, r = report["methods"][method], report["methods"][reference]
        print(f"{method} / {reference}: time {time_ratio(report, method, reference):.2f} (best runs "
              f"{m['train_seconds_alone'] / r['train_seconds_alone']:.2f}), "
              f"matmul FLOPs {m['gflop'] / r['gflop']:.2f}")
    floor = report["gflop"] / rate
    print(f"whole row of {len(PAPER_METHODS)} methods (grouped as the tuning runs it): {report['seconds']:.3f} s, "
          f"{report['gflop']:.1f} GFLOP, floor {floor:.3f} s, ratio to floor {report['seconds'] / floor:.2f}")
    if report.get("matmul_seconds") is not None:
        print(f"  of which in matmul operators (one profiled row): {report['matmul_seconds']:.3f} s, "
              f"{report['matmul_seconds'] / floor:.2f}x the floor")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print (and optionally save) its tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                        help="where to train (default: cpu)")
    parser.add_argument("--rows", type=int, default=20000,
                        help="Friedman #1 rows, 60 %% of them for training (default: 20000)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default: 10)")
    parser.add_argument("--hidden_layers", type=int, default=3, help="network depth (default: the reference 3)")
    parser.add_argument("--hidden_neurons", type=int, default=128, help="network width (default: the reference 128)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="report the best of this many runs of each timing (default 5)")
    parser.add_argument("--scaling", action="store_true", help="also rows 5k/20k/80k and epochs 5/10/20")
    parser.add_argument("--processes", type=int, default=0,
                        help="also time this many CPU processes training the row at once, "
                             "cores / processes threads each")
    parser.add_argument("--json", default=None, help="write the measurements to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    try:
        device = resolve_device(args.device)
    except ProtocolError as error:
        parser.error(str(error))
    rate_before = matmul_rate(device)
    run_workload(5000, 2, device, per_method=False)  # warm-up: first-call costs are not the workload's
    reports = [run_workload(args.rows, args.epochs, device, hidden_layers=args.hidden_layers,
                            hidden_neurons=args.hidden_neurons, repeats=args.repeats)]
    for rows, epochs in [(5000, 10), (80000, 10), (20000, 5), (20000, 20)] if args.scaling else ():
        reports.append(run_workload(rows, epochs, device, per_method=False, repeats=args.repeats))
    rate = max(rate_before, matmul_rate(device))  # the machine's speed drifts: the better of before and after
    machine = platform.processor() or platform.machine()
    print(f"{machine}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {device}: 2048x2048 float32 matmul at {rate:.1f} GFLOP/s (before the runs {rate_before:.1f})")
    print_workload(reports[0], rate)
    if args.scaling:
        print(f"\nscaling (whole row of {len(PAPER_METHODS)} methods)")
        print(f"{'rows':>6} {'epochs':>6} {'seconds':>8} {'us per sample-epoch':>20} {'ratio to floor':>15}")
        for r in sorted(reports, key=lambda r: (r["epochs"], r["rows"])):
            per = r["seconds"] / (r["rows"] * 0.6 * r["epochs"]) * 1e6
            floor = r["gflop"] / rate
            print(f"{r['rows']:6} {r['epochs']:6} {r['seconds']:8.2f} {per:20.2f} {r['seconds'] / floor:15.2f}")
    measured = {"device": str(device), "threads": torch.get_num_threads(), "matmul_gflops": rate,
                "matmul_gflops_before": rate_before, "workloads": reports}
    if args.processes:
        seconds = concurrent_rows(args.processes)
        per_row = max(seconds) / len(seconds)
        print(f"\n{args.processes} processes at once: {', '.join(f'{t:.2f}' for t in seconds)} s per row each, "
              f"one row per {per_row:.2f} s, {per_row / (reports[0]['gflop'] / rate):.2f}x the floor")
        measured["concurrent_rows"] = {"processes": args.processes, "seconds": seconds}
    if args.json:
        Path(args.json).write_text(json.dumps(measured, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
