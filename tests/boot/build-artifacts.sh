#!/usr/bin/env bash
# Prepare the boot-proof artifacts, cached between runs on this machine:
#   * Debian's kernel (the linux-image-*-amd64 package that linux-image-amd64 depends on), unpacked, never installed;
#   * a minimal base initramfs (static busybox, bash, cryptsetup, dmsetup, clevis, jose, curl, luksmeta, mke2fs,
#     their shared libraries, the kernel modules for dm-crypt/virtio/ext4 and tests/boot/guest/init).
# The luksforge CLI is not part of the base: it changes with every build and travels in the per-run job archive.
# Prints shell assignments KERNEL=... KVER=... BASE_INITRD=... on stdout (for `eval`); progress goes to stderr.
# Usage: build-artifacts.sh            (cache dir: $LUKSFORGE_BOOT_CACHE or /var/cache/luksforge-boot)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

cache=$(boot_cache_dir)
mkdir -p "$cache"
# One builder at a time: concurrent test runs on this machine share the cache.
exec 9>"$cache/.lock"
flock 9

# ---- kernel ---------------------------------------------------------------------------------------------------
newest_cached_kernel() {
  local k
  k=$(ls -d "$cache"/kernel/*/.done 2>/dev/null | sort -V | tail -n1 || true)
  [[ -n $k ]] && dirname "$k"
}
kernel_pkg=""
kernel_ver=""
if dep=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1) \
   && [[ -n $dep ]]; then
  kernel_pkg=$dep
  kernel_ver=$(apt-cache show --no-all-versions "$kernel_pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
fi
if [[ -n $kernel_pkg && -n $kernel_ver ]]; then
  kdir="$cache/kernel/${kernel_pkg}_${kernel_ver}"
else
  # No apt lists (offline): fall back to the newest kernel already in the cache.
  kdir=$(newest_cached_kernel) || boot_die "cannot resolve linux-image-amd64's kernel package (run apt-get update) and none is cached"
fi
if [[ ! -f $kdir/.done ]]; then
  log "downloading $kernel_pkg $kernel_ver"
  tmp=$(mktemp -d)
  chown _apt "$tmp" 2>/dev/null || true  # apt-get download fetches as _apt where it can
  if ! (cd "$tmp" && apt-get download -q "$kernel_pkg=$kernel_ver" >&2); then
    # Stale apt lists or no mirror: a kernel cached earlier still proves the same thing.
    rm -rf "$tmp"
    kdir=$(newest_cached_kernel) || boot_die "cannot download $kernel_pkg $kernel_ver and no kernel is cached"
    log "download failed; using the cached $(basename "$kdir")"
  fi
fi
if [[ ! -f $kdir/.done ]]; then
  rm -rf "$kdir"; mkdir -p "$kdir"
  cp "$tmp"/*.deb "$kdir/"
  dpkg-deb -x "$tmp"/*.deb "$tmp/root"
  kver=$(ls "$tmp/root/lib/modules")
  depmod -b "$tmp/root" "$kver"
  mkdir -p "$kdir/root/lib"
  mv "$tmp/root/lib/modules" "$kdir/root/lib/"
  cp "$tmp/root/boot/vmlinuz-$kver" "$kdir/vmlinuz"
  echo "$kver" >"$kdir/kver"
  rm -rf "$tmp"
  touch "$kdir/.done"
fi
kver=$(cat "$kdir/kver")
kernel_id=$(basename "$kdir")

# ---- base initramfs -------------------------------------------------------------------------------------------
# Everything that goes into the image: a change to any of it yields a new cache key.
elf_programs=(/usr/bin/bash /usr/sbin/cryptsetup /usr/sbin/dmsetup /usr/bin/jose /usr/bin/curl /usr/bin/luksmeta
              /usr/sbin/mke2fs /usr/bin/clevis-decrypt-sss /usr/bin/clevis-encrypt-sss
              /usr/bin/tpm2)
# Clevis's tpm2 pin (boot_tpm2) runs tpm2-tools, one multi-call binary; libtss2-tctildr dlopen()s the TCTI for
# /dev/tpmrm0, so ldd cannot find it.
dlopened_libs=(/usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0)
# tpm2-tools' applets the tpm2 pin (and the vTPM checks) call, as links to /usr/bin/tpm2 like the package's.
tpm2_applets=(tpm2_createprimary tpm2_create tpm2_load tpm2_unseal tpm2_flushcontext tpm2_createpolicy tpm2_pcrread
              tpm2_pcrextend tpm2_getcap)
script_programs=(/usr/bin/clevis /usr/bin/clevis-decrypt /usr/bin/clevis-decrypt-null /usr/bin/clevis-decrypt-tang
                 /usr/bin/clevis-encrypt-null /usr/bin/clevis-encrypt-tang /usr/bin/clevis-luks-common-functions
                 /usr/bin/clevis-luks-bind /usr/bin/clevis-luks-list /usr/bin/clevis-luks-pass
                 /usr/bin/clevis-luks-unbind /usr/bin/clevis-luks-unlock /usr/bin/clevis-luks-report
                 /usr/bin/clevis-luks-regen /usr/bin/clevis-luks-edit /usr/bin/clevis-decrypt-tpm2
                 /usr/bin/clevis-encrypt-tpm2)
# tpm_tis (the vTPM of boot_tpm2) is built into Debian's kernel; listed so a modular build would still get it.
modules=(virtio_pci virtio_blk virtio_net virtio-rng dm-mod dm-crypt xts aesni-intel ext4 tpm_tis)
packages=(busybox-static bash cryptsetup-bin dmsetup clevis clevis-luks jose curl luksmeta e2fsprogs libc6
          libcryptsetup12 libjose0 libcurl4 libssl3 libjansson4 libdevmapper1.02.1
          clevis-tpm2 tpm2-tools libtss2-esys-3.0.2-0 libtss2-tctildr0 libtss2-tcti-device0)
pkg_versions=$(dpkg-query -W -f '${Package}=${Version}\n' "${packages[@]}" 2>/dev/null || true)
key=$( { echo "$kernel_id"; echo "$pkg_versions"; printf '%s\n' "${elf_programs[@]}" "${script_programs[@]}" "${dlopened_libs[@]}" "${tpm2_applets[@]}" "${modules[@]}";
         declare -f boot_stage_skeleton boot_canonical_path boot_stage_elf boot_pack_cpio;
         cat "$here/build-artifacts.sh" "$here/guest/init" "$here/guest/lib.sh"; } | sha256sum | cut -c1-16)
idir="$cache/initramfs/$kver-$key"
if [[ ! -f $idir/.done ]]; then
  log "building base initramfs $kver-$key"
  for p in "${elf_programs[@]}" "${script_programs[@]}" /usr/bin/busybox; do
    [[ -x $p ]] || boot_die "$p is missing: run tools/deps.sh"
  done
  for p in "${dlopened_libs[@]}"; do [[ -e $p ]] || boot_die "$p is missing: run tools/deps.sh"; done
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  boot_stage_skeleton "$stage"
  for p in "${elf_programs[@]}" "${dlopened_libs[@]}"; do boot_stage_elf "$stage" "$p"; done
  for p in "${script_programs[@]}"; do install -D -m 755 "$p" "$stage$p"; done
  for p in "${tpm2_applets[@]}"; do ln -s tpm2 "$stage/usr/bin/$p"; done
  # glibc dlopen()s libgcc_s for thread cancellation and unwinding; ldd cannot see that.
  boot_stage_elf "$stage" "$(ldconfig -p | sed -n 's/.*libgcc_s.so.1 (libc6,x86-64) => //p' | head -n1)"
  ln -s mke2fs "$stage/usr/sbin/mkfs.ext4"
  install -D -m 644 /etc/mke2fs.conf "$stage/etc/mke2fs.conf"
  # Tang URLs name their servers; the job supplies /etc/hosts (glibc's files backend is built into libc).
  echo 'hosts: files' >"$stage/etc/nsswitch.conf"
  # Busybox fills in every other tool (sh, mount, ip, insmod, sha256sum, ...) without shadowing the real ones.
  install -D -m 755 /usr/bin/busybox "$stage/usr/bin/busybox"
  /usr/bin/busybox --list-full | while read -r applet; do
    [[ -e $stage/$applet || -L $stage/$applet ]] || ln -s /usr/bin/busybox "$stage/$applet"
  done
  # Kernel modules in load order (dependencies first), resolved with the unpacked tree's modules.dep.
  : >"$stage/etc/boot-modules"
  for m in "${modules[@]}"; do
    modprobe -d "$kdir/root" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
  done | awk '!seen[$0]++' | while read -r ko; do
    rel=${ko#"$kdir/root"}
    install -D -m 644 "$ko" "$stage$rel"
    echo "$rel" >>"$stage/etc/boot-modules"
  done
  install -D -m 755 "$here/guest/init" "$stage/init"
  install -D -m 644 "$here/guest/lib.sh" "$stage/usr/lib/luksforge-boot/lib.sh"
  rm -rf "$idir"; mkdir -p "$idir"
  boot_pack_cpio "$stage" >"$idir/base.cpio"
  (cd "$stage" && find . -mindepth 1 | sed 's|^\.||' | sort) >"$idir/manifest"
  echo "$pkg_versions" >"$idir/packages"
  touch "$idir/.done"
  rm -rf "$stage"; trap - EXIT
  log "base initramfs: $(du -h "$idir/base.cpio" | cut -f1)"
fi
touch "$idir"
# Keep the three most recently used base images; older recipes are dead weight.
ls -dt "$cache"/initramfs/*/ 2>/dev/null | tail -n +4 | xargs -r rm -rf

printf 'KERNEL=%q\nKVER=%q\nBASE_INITRD=%q\nBASE_MANIFEST=%q\n' "$kdir/vmlinuz" "$kver" "$idir/base.cpio" "$idir/manifest"
