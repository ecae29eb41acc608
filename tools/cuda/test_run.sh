#!/usr/bin/env bash
# One device call: the CUDA test binaries, each as a whole suite in one process, first with one
# test thread and then with the default test threads. Run on the GPU machine from the
# repository root, after building the test binaries here and copying them, xz-compressed, into
# .device-bin/ (docs/performance.md, "CUDA tests"):
#   cargo test --release -p framepack-models --features cuda --test cuda_ops --no-run
#   cargo test --release --features cuda --test cuda_threads --no-run
# Usage: bash tools/cuda/test_run.sh cuda_ops cuda_threads   (prints a table last)
set -u
cd .device-bin
for f in *.xz; do [ -e "$f" ] || continue; python3 -c "import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[1][:-3],'wb'))" "$f" && chmod +x "${f%.xz}"; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
export RUST_BACKTRACE=1
# cuBLASLt / NVRTC: the toolkit's and PyTorch's copies, whichever the loader finds first.
NV=$(python3 -c 'import nvidia,os;print(os.path.dirname(nvidia.__path__[0] if hasattr(nvidia,"__path__") else nvidia.__file__))' 2>/dev/null)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${NV:+$NV/nvidia/cu13/lib:}${LD_LIBRARY_PATH:-}
table=""
LOGS=${OUT:-/tmp}
for bin in "$@"; do
  for threads in 1 default; do
    flag=""; [ "$threads" = 1 ] && flag="--test-threads=1"
    echo "== $bin $flag"
    start=$(date +%s.%N)
    # Each line prefixed with the seconds since the binary started (where the time goes).
    timeout "${LIMIT:-280}" ./"$bin" $flag --nocapture 2>&1 | grep --line-buffered -v "^\s*$" \
      | python3 -u -c "import sys,time; t=time.time(); [print(f'{time.time()-t:6.1f} {l}', end='') for l in sys.stdin]" \
      | tee "$LOGS/$bin.$threads.log" | tail -"${TAIL:-60}"
    rc=${PIPESTATUS[0]}
    secs=$(python3 -c "import time;print(f'{time.time()-$start:.1f}')")
    result=$(grep -E "test result" "$LOGS/$bin.$threads.log" | tail -1 | sed "s/^ *[0-9.]* //")
    table="$table\n| $bin | $threads | $rc | $secs s | ${result:-no result line} |"
  done
done
echo; echo "| binary | test threads | exit | wall | result |"; echo "|---|---|---|---|---|"; printf "$table\n"
