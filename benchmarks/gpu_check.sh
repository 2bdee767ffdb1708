#!/usr/bin/env bash
# The GPU checks in one go, on a machine with a CUDA GPU, torch and triton (fairseq2 not
# needed, the package not installed): environment, the `gpu`-marked tests of
# tests/test_triton.py, the quantizer benchmark (benchmarks/quantizer.py), optionally the
# tile-size sweep (benchmarks/tile_sweep.py) and the kernels' register/spill report for
# the GPU's own Triton (kernels/aot.py).
#
#     OUT=/tmp/gpu-check [BENCH_ARGS="--workloads gumbel"] [SWEEP=1] bash benchmarks/gpu_check.sh
#
# Logs and results (8 files at most) land in $OUT. Each step has a timeout (TEST_TIMEOUT,
# BENCH_TIMEOUT, SWEEP_TIMEOUT, seconds); the benchmark rewrites its report after every
# case, so a timeout keeps what ran.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
pp=$(mktemp -d)
ln -s "$PWD/kernels" "$pp/birq_kernels"  # the import name the pyproject maps kernels/ to
export PYTHONPATH="$pp:$PWD/tests:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"

{
  nvidia-smi
  $PY -c "import sys, torch, triton, numpy, pytest
print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda,
      '| triton', triton.__version__, '| numpy', numpy.__version__, '| pytest', pytest.__version__)
print(torch.cuda.get_device_name(), 'cc', torch.cuda.get_device_capability())"
} 2>&1 | tee "$OUT/env.txt"

timeout "${TEST_TIMEOUT:-120}" $PY -m pytest -v -s -rfE -p no:cacheprovider -m gpu \
  tests/test_triton.py 2>&1 | tee "$OUT/gpu_tests.log"
test_rc=${PIPESTATUS[0]}

# shellcheck disable=SC2086  # BENCH_ARGS: several words
timeout "${BENCH_TIMEOUT:-220}" $PY benchmarks/quantizer.py --processes 1 --out "$OUT" \
  ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}

if [ "${SWEEP:-0}" = 1 ]; then
  timeout "${SWEEP_TIMEOUT:-120}" $PY benchmarks/tile_sweep.py --out "$OUT/tile_sweep.json" \
    2>&1 | tee "$OUT/tile_sweep.log"
fi

timeout 40 $PY -c "import torch
from birq_kernels.aot import compile_kernel
cc = 10 * torch.cuda.get_device_capability()[0] + torch.cuda.get_device_capability()[1]
for k, lp in [('rpq_labels', 'fp32'), ('gumbel_rpq_fwd', 'bf16'), ('gumbel_rpq_bwd', 'bf16')]:
    print(compile_kernel(k, cc, lp_dtype=lp))" 2>&1 | tee "$OUT/aot.txt"

echo "gpu_check: tests rc=$test_rc, benchmark rc=$bench_rc (124: timed out)"
