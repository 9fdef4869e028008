#!/usr/bin/env bash
# Install every Debian 12 package luksforge needs to build, test and demo. Idempotent; needs root.
set -euo pipefail
packages=(
  # build
  cmake g++ pkg-config make
  libcryptsetup-dev libblkid-dev libjose-dev libjansson-dev libcurl4-openssl-dev libssl-dev libluksmeta-dev
  libfmt-dev libcli11-dev libtomlplusplus-dev libsqlite3-dev libpq-dev doctest-dev pybind11-dev python3-dev python3-pybind11
  # tests and interoperability: real Tang, stock Clevis and cryptsetup
  python3-pytest python3-mako cryptsetup-bin cryptsetup tang socat clevis clevis-luks jose curl fdisk util-linux
  openssl sqlite3 e2fsprogs
  # the tpm2 pin: tpm2-tss (ESYS), a software TPM for the tests and the boot proof's vTPM, stock Clevis's tpm2
  # pin and its tpm2-tools
  libtss2-dev swtpm swtpm-tools tpm2-tools clevis-tpm2
  # hardening (docs/hardening.md): libFuzzer with clang under ASan+UBSan, valgrind memcheck of the CLI
  clang-14 libclang-rt-14-dev libfuzzer-14-dev valgrind
  # the PostgreSQL ledger's tests start their own server (initdb/pg_ctl from postgresql-15)
  postgresql
  # boot proof (qemu guest with Debian's kernel)
  qemu-system-x86 busybox-static cpio kmod xz-utils zstd
  # packages: Debian (debian/) and RPM (packaging/rpm/) builds and checks (LUKSFORGE_PACKAGING=1)
  debhelper dh-python lintian rpm rpmlint
  # long boot proof (LUKSFORGE_BOOT_FULL=1): a Debian root-on-LUKS system built with mmdebstrap
  mmdebstrap
  # bench/bench.sh: peak RSS of every timed command
  time
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
# Debian's tang package enables a systemd socket on port 80; luksforge's tests start their own on loopback.
