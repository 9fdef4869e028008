#!/usr/bin/env bash
# Build the libFuzzer targets (clang-14, ASan+UBSan) and fuzz each one. Usage:
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]        (default 25 s each, every fuzz/fuzz_*.cpp)
# tools/test.sh runs the short default in CI; a longer run (e.g. `fuzz/run.sh 1800`) is documented in
# docs/hardening.md. New inputs go to build-fuzz/corpus/NAME (not into the repo); a crash writes
# build-fuzz/artifacts/NAME/crash-* and fails the run: add that file to fuzz/corpus/NAME/ once fixed, so
# fuzz_replay_NAME replays it in every normal test run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-25}
shift || true
build=${LUKSFORGE_FUZZ_BUILD:-build-fuzz}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
  -DLUKSFORGE_FUZZ=ON -DBUILD_TESTING=OFF -DLUKSFORGE_BUILD_CLI=OFF >/dev/null
targets=("$@")
if ((${#targets[@]} == 0)); then
  for src in fuzz/fuzz_*.cpp; do targets+=("$(basename "$src" .cpp)"); done
fi
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1
export LSAN_OPTIONS=suppressions=$PWD/tests/sanitizers/lsan.supp
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
failed=()
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t" artifacts="$build/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  # -timeout: one input taking > 10 s is a hang; -rss_limit_mb: > 1 GiB is unbounded memory.
  if "$build/fuzz/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -max_len=65536 -print_final_stats=1 \
       -artifact_prefix="$artifacts/" "$corpus" "fuzz/corpus/$t" >"$build/$t.log" 2>&1; then
    echo "fuzz $t: ok ($(grep -o 'stat::number_of_executed_units: *[0-9]*' "$build/$t.log" | grep -o '[0-9]*$') runs in ${seconds}s)"
  else
    echo "fuzz $t: FAILED, see $build/$t.log and $artifacts/"; tail -40 "$build/$t.log"; failed+=("$t")
  fi
done
((${#failed[@]} == 0)) || { echo "fuzz targets failed: ${failed[*]}"; exit 1; }
