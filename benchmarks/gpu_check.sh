#!/usr/bin/env bash
# One prepared run for a machine with a CUDA GPU: the CUDA variants of the tests, then the
# benchmark on the GPU (with its JSON written to $OUT when set, else to the current folder).
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print(torch.cuda.get_device_name())"
python -m pytest -q -k cuda tests/test_thresholds.py tests/test_quantizers.py tests/test_models.py tests/test_data.py
python benchmarks/bench_methods.py --device cuda --scaling --json "${OUT:-.}/bench_cuda.json"
