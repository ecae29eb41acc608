#!/usr/bin/env bash
# One device call: the CUDA test binaries, each as a whole suite in one process, first with one
# test thread and then with the default test threads. Run on the GPU machine from the
# repository root, after building the test binaries here and copying them, xz-compressed, into
# .device-bin/ (docs/performance.md, "CUDA tests"):
#   cargo test --release -p framepack-models --features cuda --test cuda_ops --no-run
#   cargo test --release --features cuda --test cuda_threads --no-run
# Usage: bash tools/cuda/test_run.sh cuda_ops cuda_threads   (prints a table last)
set -u
. "$(dirname "$0")/setup.sh"
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
