#!/usr/bin/env bash
# The checks that need a GPU, as one command (a few minutes on an H200; each step has a time limit,
# 7 minutes in all at most):
#
#     bash benchmarks/gpu_check.sh DATA_DIR     # DATA_DIR holds MNIST/raw/, e.g. ../shared/mnist
#
# 1. the CUDA-relevant tests, on the real data too (MNIST_DATA_DIR=DATA_DIR); the CUDA ones run
#    because CUDA is there: graph vs eager weights bit for bit, a --lr on resume, each device's loaders
# 2. benchmarks/epoch_time.py --device cuda --rounds 3: eager, graph and floor epochs side by side
# 3. a default python train.py (30 epochs, into /tmp/gpu-run), timed end to end: target 15 s
#
# Everything it prints also goes into $OUT/gpu_check.log (/tmp/gpu_check.log when OUT is not set).
# It goes on after a failed step and ends with one line per step; the exit status is 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA_DIR="${1:?usage: bash benchmarks/gpu_check.sh DATA_DIR (a folder holding MNIST/raw/)}"
LOG="${OUT:-/tmp}/gpu_check.log"

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, say how it went and how long it took
  local name=$1 limit=$2 start ms status
  shift 2
  echo "=== $name: $*"
  start=$(date +%s%N)
  timeout "$limit" "$@"
  status=$?
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  SUMMARY+=("$(printf '%-10s exit %3d  %4d.%03d s' "$name" "$status" $((ms / 1000)) $((ms % 1000)))")
  [ "$status" -eq 0 ] || FAILED=1
}

checks() {
  SUMMARY=() FAILED=0
  git log -1 --format='commit %h' 2>/dev/null
  python -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "device",
             torch.cuda.get_device_name() if torch.cuda.is_available() else "none: the CUDA checks cannot run")'
  step tests 210 env MNIST_DATA_DIR="$DATA_DIR" python -m pytest -q -x -rs tests/test_cuda_graph.py \
    tests/test_data.py tests/test_train.py tests/test_evaluate.py
  step benchmark 150 python benchmarks/epoch_time.py --data-dir "$DATA_DIR" --device cuda --rounds 3
  rm -rf /tmp/gpu-run
  step train 60 python train.py --data-dir "$DATA_DIR" --out /tmp/gpu-run
  echo "=== summary (train: target 15 s end to end)"
  printf '%s\n' "${SUMMARY[@]}"
  return "$FAILED"
}

checks 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
echo "log: $LOG"
exit "$status"
