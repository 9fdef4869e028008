#!/usr/bin/env bash
# Build luksforge and run the whole test suite (C++ doctest, Python pytest, interoperability, boot proof).
# Needs root (loop devices, /run locks). Usage: tools/test.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
bash tools/deps.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build" -j"$(nproc)"
ctest --test-dir "$build" --output-on-failure --timeout 1500
