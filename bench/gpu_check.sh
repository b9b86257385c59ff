#!/bin/sh
# The GPU checks in one run on a machine with a CUDA GPU and a Python whose torch has CUDA:
# tests/test_gpu.py (every engine against the CPU float64 loop, TF32 and bf16 bounds), then the
# benchmark's GPU target (10,000 MNIST test images, 51×51 grid, (a) and (c)/(d) on the same GPU).
#
#   PY=python3 OUT=/some/folder sh bench/gpu_check.sh
#
# Environment: PY (default python3), OUT (where logs and JSON go; default bench/results),
# LOSSMAP_BENCH_MNIST (the MNIST IDX folder; default ../shared/data/mnist, then .data/mnist).
# Pure-Python dependencies that Python lacks (e.g. h5netcdf, plotly, meshio) may sit as wheels in
# .whl/; they are installed into /tmp/site first. bench/cache/ may carry the trained checkpoint.
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:src
else
    PYTHONPATH=src
fi
export PYTHONPATH PYTHONUNBUFFERED=1
if [ -z "${LOSSMAP_BENCH_MNIST:-}" ] && [ ! -d ../shared/data/mnist ] && [ -d .data/mnist ]; then
    export LOSSMAP_BENCH_MNIST=.data/mnist
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
# each step's log is written, then shown; its exit status (not tee's) decides
step() {
    log=$1
    shift
    rc=0
    "$@" > "$OUT/$log" 2>&1 || rc=$?
    cat "$OUT/$log"
    return "$rc"
}
tests_rc=0
step gpu-tests.log "$PY" -m pytest -q -p no:cacheprovider -o addopts= tests/test_gpu.py || tests_rc=$?
step gpu-bench.log "$PY" bench/run.py --device cuda --samples 10000 --grid 51 --skip b,levers,memory,cli \
    --out "$OUT/gpu-51x51.json"
exit "$tests_rc"
