#!/usr/bin/env bash
# Checks the minimum versions README.md states (Requirements and limits) as far as this Debian 12 machine can:
#  1. the built binaries bind no libcryptsetup symbol newer than the minimum (ELF symbol versions: CRYPTSETUP_2.4
#     is the newest allowed), so a library linked here still loads against libcryptsetup 2.4;
#  2. configuring against an older libcryptsetup (a pkg-config file claiming RHEL 8's 2.3.7) fails at configure
#     time with the message that names the minimum, and so does a compiler older than the oldest tested one.
# Usage: packaging/test_minimums.sh WORK_DIR BINARY...   (ctest: minimum_versions)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
work=$(realpath -m "$1")
shift
min_cryptsetup=$(sed -n 's/^set(LUKSFORGE_MIN_CRYPTSETUP \(.*\))$/\1/p' "$top/CMakeLists.txt")
[[ -n $min_cryptsetup ]] || { echo "no LUKSFORGE_MIN_CRYPTSETUP in CMakeLists.txt"; exit 1; }
rm -rf "$work" && mkdir -p "$work"
failed=0

echo "== libcryptsetup symbol versions of the binaries (newest allowed: CRYPTSETUP_$min_cryptsetup)"
for bin in "$@"; do
  [[ -f $bin ]] || { echo "not built: $bin"; exit 1; }
  # Undefined dynamic symbols with their version node, e.g. "CRYPTSETUP_2.4 crypt_reencrypt_run".
  mapfile -t used < <(objdump -T "$bin" | awk '$0 ~ /\*UND\*/ && $(NF-1) ~ /^\(?CRYPTSETUP_/ {
                        v = $(NF-1); gsub(/[()]/, "", v); print v, $NF }' | sort -u)
  newest=$(printf '%s\n' "${used[@]}" | awk '{ sub(/^CRYPTSETUP_/, "", $1); print $1 }' | sort -V | tail -n1)
  echo "$(basename "$bin"): ${#used[@]} libcryptsetup symbols, newest version node ${newest:-none}"
  for u in "${used[@]}"; do
    v=${u%% *}; v=${v#CRYPTSETUP_}
    if [[ $(printf '%s\n%s\n' "$v" "$min_cryptsetup" | sort -V | tail -n1) != "$min_cryptsetup" ]]; then
      echo "  newer than $min_cryptsetup: $u"; failed=1
    fi
  done
done
# The check must see something: libluksforge itself calls libcryptsetup's 2.4 API (crypt_reencrypt_run).
grep -Eq 'CRYPTSETUP_2\.4\)? +crypt_reencrypt_run' <<<"$(objdump -T "$1")" ||
  { echo "$(basename "$1") does not bind crypt_reencrypt_run@CRYPTSETUP_2.4: the check sees nothing"; failed=1; }

# Configures the project itself: its checks run before any subdirectory, so a failing one stops there.
configure_fails_with() {  # NAME EXPECTED_REGEX CMAKE_ARGS...
  local name=$1 expected=$2 log="$work/$1.log"
  shift 2
  if cmake -S "$top" -B "$work/$name" -DBUILD_TESTING=OFF -DLUKSFORGE_BUILD_PYTHON=OFF "$@" >"$log" 2>&1; then
    echo "configure succeeded with $name"; failed=1
  elif tr -s ' \n' '  ' <"$log" | grep -Eq "$expected"; then   # CMake wraps messages: compare them unwrapped
    echo "$name: configure fails: $(tr -s ' \n' '  ' <"$log" | grep -Eo "$expected" | head -n1)"
  else
    echo "$name: configure failed without the expected message /$expected/:"; tail -n 20 "$log"; failed=1
  fi
}

echo "== configure against libcryptsetup 2.3.7 (RHEL 8)"
mkdir -p "$work/pc"
real_pc=$(pkg-config --variable=pcfiledir libcryptsetup)/libcryptsetup.pc
sed 's/^Version:.*/Version: 2.3.7/' "$real_pc" > "$work/pc/libcryptsetup.pc"
PKG_CONFIG_PATH="$work/pc" configure_fails_with cryptsetup-2.3.7 \
  "libcryptsetup 2\.3\.7 is older than $min_cryptsetup"

echo "== configure with a compiler that reports GCC 8 (RHEL 8's default)"
# A wrapper around the real g++ that answers the version probes as GCC 8.5 does: CMake reads __GNUC__ from a
# preprocessed probe, so the wrapper redefines it.
cat > "$work/g++-8" <<EOF
#!/bin/sh
exec g++ -U__GNUC__ -D__GNUC__=8 -U__GNUC_MINOR__ -D__GNUC_MINOR__=5 -Wno-builtin-macro-redefined "\$@"
EOF
chmod +x "$work/g++-8"
configure_fails_with gcc-8 "GCC 8\.5[.0-9]* \(GCC 12 is the oldest built and tested\)" \
  -DCMAKE_CXX_COMPILER="$work/g++-8"

((failed == 0)) && echo "minimum_versions: 1 passed, 0 failed"
exit "$failed"
