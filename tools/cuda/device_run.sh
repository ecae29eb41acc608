#!/usr/bin/env bash
# One device call: checks, op rates, our forward, the PyTorch reference forward, in one go.
# Run on the GPU machine from the repository root, after copying the release binaries
# (cuda_bench, cuda_ops) and ref_transformer.py into .device-bin/ and the diffusers wheel into
# .perf-wheels/ (see docs/performance.md). Prints a table last.
set -u
. "$(dirname "$0")/setup.sh"
ldd --version | head -1; ls /usr/local/cuda/lib64/libcublasLt.so* /usr/local/cuda/lib64/libnvrtc.so* 2>&1 | head -4
echo "== cuda_ops"; CUBECL_AUTOTUNE_LEVEL=minimal timeout 300 ./cuda_ops --test-threads=1 --nocapture 2>&1 | grep -v "^\s*$" | tail -45; echo "cuda_ops exit: ${PIPESTATUS[0]}"
echo "== reference (PyTorch)"; pip install -q --no-deps --target /tmp/dp ../.perf-wheels/*.whl 2>/dev/null
PYTHONPATH=/tmp/dp SAVE=/tmp/ref.safetensors timeout 300 python3 ref_transformer.py 2>&1 | tail -3
echo "== cuda_bench"; REF=""; [ -f /tmp/ref.safetensors.io.safetensors ] && REF="--reference /tmp/ref.safetensors"
timeout 400 ./cuda_bench --iters "${ITERS:-5}" $REF "$@" 2>&1 | tail -40
