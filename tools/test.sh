#!/usr/bin/env bash
# Build luksforge and run the whole test suite (C++ doctest, Python pytest, interoperability, boot proof,
# valgrind memcheck of the CLI, then a short libFuzzer run).
# Needs root (loop devices, /run locks). Usage: tools/test.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
bash tools/deps.sh
# The Python module and its tests also for RHEL's Pythons (8: 3.6, 9: 3.9, 10: 3.12), from pyenv where the machine
# has it (CI does): ~2 min of build and ~2 min of tests each on 2 cores. LUKSFORGE_PYTHON_VERSIONS="3.6 3.12"
# picks fewer; LUKSFORGE_EXTRA_PYTHONS="path;path" names interpreters instead, "" none.
if [[ -z ${LUKSFORGE_EXTRA_PYTHONS+set} ]]; then
  pyenv_root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
  extra=()
  for v in ${LUKSFORGE_PYTHON_VERSIONS:-3.6 3.9 3.12}; do
    p=$(ls -d "$pyenv_root"/versions/"$v".*/bin/python"$v" 2>/dev/null | sort -V | tail -n1 || true)
    if [[ -n $p ]]; then
      extra+=("$p")
    elif [[ ${CI:-} == true ]]; then
      echo "tools/test.sh: no Python $v under $pyenv_root/versions (CI tests the module under each of: ${LUKSFORGE_PYTHON_VERSIONS:-3.6 3.9 3.12})" >&2
      exit 1
    else
      echo "tools/test.sh: no Python $v under $pyenv_root/versions: its module tests are left out" >&2
    fi
  done
  LUKSFORGE_EXTRA_PYTHONS=$(IFS=';'; echo "${extra[*]}")
fi
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DLUKSFORGE_EXTRA_PYTHONS=$LUKSFORGE_EXTRA_PYTHONS"
cmake --build "$build" -j"$(nproc)"
# The whole suite includes the long boot case (a Debian root-on-LUKS system booting through its own initramfs):
# ~7 minutes the first time on a machine, ~1 minute once /var/cache/luksforge-boot holds its image.
# LUKSFORGE_BOOT_FULL=0 leaves it out.
export LUKSFORGE_BOOT_FULL=${LUKSFORGE_BOOT_FULL:-1}
ctest --test-dir "$build" --output-on-failure --timeout 3600
# Hardening (docs/hardening.md): the C++ suite and the fuzz corpora again in a second build under ASan+UBSan
# (LUKSFORGE_SANITIZE=0 leaves it out: ~10-20 min of build and ~11 min of tests on 2 cores); then a short libFuzzer
# run of every fuzz target under ASan+UBSan (LUKSFORGE_FUZZ_SECONDS per target, default 20; 0 leaves it out).
if [[ ${LUKSFORGE_SANITIZE:-1} == 1 ]]; then
  cmake -S . -B "$build-asan" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" -DLUKSFORGE_SANITIZE=ON
  cmake --build "$build-asan" -j"$(nproc)"
  ctest --test-dir "$build-asan" --output-on-failure --timeout 3600 -R '^(test_|fuzz_replay_)'
fi
if [[ ${LUKSFORGE_FUZZ_SECONDS:-20} != 0 ]]; then
  LUKSFORGE_FUZZ_BUILD="$build-fuzz" bash fuzz/run.sh "${LUKSFORGE_FUZZ_SECONDS:-20}"
fi
