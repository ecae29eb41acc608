#!/usr/bin/env bash
# One device call for the memory issue: the tuned-op checks, then a whole generation in the
# low-VRAM mode (memory_bench), then optionally the transformer's memory modes (cuda_bench).
# Run on the GPU machine from the repository root after copying the release binaries
# (cuda_ops, memory_bench, cuda_bench; xz-compressed) into .device-bin/.
#   MEMORY_ARGS="--memory low-vram --seconds 1 --steps 10" MODES=1 bash tools/cuda/memory_run.sh
set -u
. "$(dirname "$0")/setup.sh"
export CUBECL_AUTOTUNE_LEVEL=minimal
if [ "${OPS:-1}" = 1 ] && [ -x ./cuda_ops ]; then
  echo "== cuda_ops"; timeout "${OPS_TIMEOUT:-240}" ./cuda_ops --test-threads=1 --nocapture 2>&1 | grep -v "^\s*$" | tail -60; echo "cuda_ops exit: ${PIPESTATUS[0]}"
fi
if [ -n "${MEMORY_ARGS:-}" ]; then
  echo "== memory_bench $MEMORY_ARGS"; timeout "${MEMORY_TIMEOUT:-420}" ./memory_bench $MEMORY_ARGS 2>&1 | tail -60; echo "memory_bench exit: ${PIPESTATUS[0]}"
fi
if [ "${MODES:-0}" = 1 ]; then
  echo "== cuda_bench --memory-modes"; timeout "${MODES_TIMEOUT:-400}" ./cuda_bench --memory-modes --skip-ops --iters "${ITERS:-3}" 2>&1 | tail -20
fi
