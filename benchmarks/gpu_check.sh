#!/usr/bin/env bash
# One prepared run for a machine with a CUDA GPU: the CUDA variants of the tests, the benchmark
# on the GPU (its JSON written to $OUT when set, else to the current folder), and a --debug
# tuning and best-setting run of the protocol scripts on the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
python -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
python -m pytest -q -rs -k cuda tests/test_thresholds.py tests/test_quantizers.py tests/test_models.py tests/test_data.py
python -m benchmarks.bench_methods --device cuda --scaling --json "$out/bench_cuda.json"
scratch="$(mktemp -d)"
python hyperparameter_tuning.py --dataset friedman1 --n_bits 4 --debug --n_steps 4 --device cuda --quiet \
    --scratch "$scratch" --result_folder "$scratch/results" \
  && python best_hyperparameter_testing_multiple.py --dataset friedman1 --n_steps 2 --device cuda --quiet \
    --scratch "$scratch" --result_folder "$scratch/results" \
  && cp -r "$scratch/results" "$out/protocol_cuda" && find "$out/protocol_cuda" -type f
