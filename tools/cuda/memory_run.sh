#!/usr/bin/env bash
# One device call for the memory issue: the tuned-op checks, then a whole generation in the
# low-VRAM mode (memory_bench), then optionally the transformer's memory modes (cuda_bench).
# Run on the GPU machine from the repository root after copying the release binaries
# (cuda_ops, memory_bench, cuda_bench; xz-compressed) into .device-bin/.
#   MEMORY_ARGS="--memory low-vram --seconds 1 --steps 10" MODES=1 bash tools/cuda/memory_run.sh
set -u
cd .device-bin
for f in *.xz; do [ -e "$f" ] || continue; python3 -c "import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[1][:-3],'wb'))" "$f" && chmod +x "${f%.xz}"; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
export RUST_BACKTRACE=1 CUBECL_AUTOTUNE_LEVEL=minimal
NV=$(python3 -c 'import nvidia,os;print(os.path.dirname(nvidia.__path__[0] if hasattr(nvidia,"__path__") else nvidia.__file__))' 2>/dev/null)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${NV:+$NV/nvidia/cu13/lib:}${LD_LIBRARY_PATH:-}
if [ "${OPS:-1}" = 1 ] && [ -x ./cuda_ops ]; then
  echo "== cuda_ops"; timeout "${OPS_TIMEOUT:-240}" ./cuda_ops --test-threads=1 --nocapture 2>&1 | grep -v "^\s*$" | tail -60; echo "cuda_ops exit: ${PIPESTATUS[0]}"
fi
if [ -n "${MEMORY_ARGS:-}" ]; then
  echo "== memory_bench $MEMORY_ARGS"; timeout "${MEMORY_TIMEOUT:-420}" ./memory_bench $MEMORY_ARGS 2>&1 | tail -60; echo "memory_bench exit: ${PIPESTATUS[0]}"
fi
if [ "${MODES:-0}" = 1 ]; then
  echo "== cuda_bench --memory-modes"; timeout "${MODES_TIMEOUT:-400}" ./cuda_bench --memory-modes --skip-ops --iters "${ITERS:-3}" 2>&1 | tail -20
fi
