"""Speed benchmarks and cost estimates; run each as a module from the repository root
(``python -m benchmarks.bench_methods``, ``python -m benchmarks.estimate_reproduction_cost``)."""
