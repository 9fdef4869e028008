#!/usr/bin/env bash
# Build luksforge and run the whole test suite (C++ doctest, Python pytest, interoperability, boot proof,
# valgrind memcheck of the CLI, then a short libFuzzer run).
# Needs root (loop devices, /run locks). Usage: tools/test.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
bash tools/deps.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build" -j"$(nproc)"
# The whole suite includes the long boot case (a Debian root-on-LUKS system booting through its own initramfs):
# ~7 minutes the first time on a machine, ~1 minute once /var/cache/luksforge-boot holds its image.
# LUKSFORGE_BOOT_FULL=0 leaves it out.
export LUKSFORGE_BOOT_FULL=${LUKSFORGE_BOOT_FULL:-1}
ctest --test-dir "$build" --output-on-failure --timeout 3600
# Hardening (docs/hardening.md): a short libFuzzer run of every fuzz target under ASan+UBSan
# (LUKSFORGE_FUZZ_SECONDS per target, default 20; 0 leaves it out).
if [[ ${LUKSFORGE_FUZZ_SECONDS:-20} != 0 ]]; then
  LUKSFORGE_FUZZ_BUILD="$build-fuzz" bash fuzz/run.sh "${LUKSFORGE_FUZZ_SECONDS:-20}"
fi
