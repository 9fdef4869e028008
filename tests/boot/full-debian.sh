#!/usr/bin/env bash
# The long boot proof (issue 7, item 2): a Debian 12 system whose root file system lives on LUKS2, built with
# mmdebstrap (cryptsetup-initramfs, clevis-initramfs), sealed by `luksforge seal`, boots unattended through
# Debian's own kernel and initramfs: clevis in the initramfs reaches Tang (tang1 = 10.0.2.100 through qemu's
# guestfwd), unlocks the root volume, and the real root's /usr/local/sbin/lfb-proof (booted as init) reports.
# Runs only with LUKSFORGE_BOOT_FULL=1 (else exits 77 = skipped).
# Usage: full-debian.sh --cli PATH [--keep] [--unlock clevis|token --token-handler PATH]
# --unlock token: the same sealed root, but its initramfs is rebuilt (update-initramfs in the copied root) without
# Clevis's initramfs scripts and with luksforge's token handler and hooks (token-plugin/): Debian's own cryptroot
# runs `cryptsetup open`, libcryptsetup asks libcryptsetup-token-clevis.so, which reaches Tang. crypttab:
# `root /dev/vda none luks,initramfs,keyscript=/bin/true,tries=30` (see token-plugin/README.md).
# The root file system image (and the kernel and initramfs made inside it) is cached in
# $LUKSFORGE_BOOT_CACHE/debian-root/<recipe hash>/; each run copies it, encrypts it in place with
# `cryptsetup reencrypt --encrypt` under a build passphrase (what an image pipeline leaves), seals and boots it.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

if [[ ${LUKSFORGE_BOOT_FULL:-0} != 1 ]]; then
  echo "boot_debian_root: skipped (set LUKSFORGE_BOOT_FULL=1 to run the Debian root-on-LUKS boot, ~10 min first time)"
  exit 77
fi

# ---- the cached Debian root (needs the package mirror: built before entering the private network) --------------------
packages=linux-image-amd64,cryptsetup,cryptsetup-initramfs,clevis,clevis-luks,clevis-initramfs,initramfs-tools,e2fsprogs,kmod,udev,curl,dmsetup
build_root() {  # DIR
  local cache dir key tmp
  cache=$(boot_cache_dir)
  mkdir -p "$cache/debian-root"
  key=$( { echo "$packages"; declare -f customize; } | sha256sum | cut -c1-16)
  dir="$cache/debian-root/$key"
  exec 8>"$cache/.lock-debian-root"
  flock 8
  if [[ ! -f $dir/.done ]]; then
    log "building the Debian root file system with mmdebstrap (several minutes)"
    tmp=$(mktemp -d /tmp/luksforge-debroot.XXXXXX)
    { declare -f customize; echo 'customize "$1"'; } >"$tmp/customize.sh"
    # mmdebstrap hands apt a pipe by number to `sh -c 'cat >&N'`; dash only understands N <= 9, so the pipe must
    # not land above fd 9 behind descriptors this shell inherited (the cache lock, a CI runner's, a job wrapper's).
    ( close_inherited_fds
      exec mmdebstrap --variant=minbase --mode=root --include="$packages" \
        --customize-hook="bash $tmp/customize.sh \"\$1\"" \
        bookworm "$tmp/root" "$(apt_sources)" ) >&2 || { rm -rf "$tmp"; boot_die "mmdebstrap failed"; }
    rm -rf "$dir"; mkdir -p "$dir"
    cp "$tmp"/root/boot/vmlinuz-* "$dir/vmlinuz"
    cp "$tmp"/root/boot/initrd.img-* "$dir/initrd.img"
    local size
    size=$(du -sm "$tmp/root" | cut -f1)
    mkfs.ext4 -q -L debroot -d "$tmp/root" "$dir/root.ext4" "$((size * 13 / 10 + 64))M" >&2 || { rm -rf "$tmp"; boot_die "mkfs.ext4 -d failed"; }
    rm -rf "$tmp"
    touch "$dir/.done"
  fi
  exec 8>&-
  echo "$dir"
}
# Close every descriptor above stderr in this (sub)shell.
close_inherited_fds() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null || true
  done
}

# The host's Debian sources (deb822 or one-line), as mmdebstrap takes them: a file name.
apt_sources() {
  local f
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    [[ -s $f ]] && { echo "$f"; return; }
  done
  echo http://deb.debian.org/debian
}
# Runs inside mmdebstrap with the new root's path as $1 (the chroot has /proc, /sys, /dev mounted).
customize() {
  local root=$1
  echo luksforge-full >"$root/etc/hostname"
  echo '/dev/mapper/root / ext4 defaults 0 1' >"$root/etc/fstab"
  # The root volume is the whole virtio disk; `initramfs` makes cryptsetup-initramfs include it without seeing it.
  echo 'root /dev/vda none luks,initramfs' >"$root/etc/crypttab"
  echo 'CRYPTSETUP=y' >>"$root/etc/cryptsetup-initramfs/conf-hook"
  printf 'virtio_pci\nvirtio_blk\nvirtio_net\ndm-crypt\n' >>"$root/etc/initramfs-tools/modules"
  # Bindings name their Tang server tang1; the initramfs resolves it from its own /etc/hosts.
  printf '127.0.0.1 localhost\n10.0.2.100 tang1\n' >"$root/etc/hosts"
  mkdir -p "$root/etc/initramfs-tools/hooks"
  cat >"$root/etc/initramfs-tools/hooks/luksforge-hosts" <<'HOOK'
#!/bin/sh
[ "$1" = prereqs ] && exit 0
cp /etc/hosts "$DESTDIR/etc/hosts"
echo 'hosts: files dns' >"$DESTDIR/etc/nsswitch.conf"
HOOK
  chmod 755 "$root/etc/initramfs-tools/hooks/luksforge-hosts"
  # Booted as init= once Debian's initramfs has mounted the root: report what is mounted as / and power off.
  mkdir -p "$root/usr/local/sbin"
  cat >"$root/usr/local/sbin/lfb-proof" <<'PROOF'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
echo
echo "LFB-VALUE root.source $(awk '$2 == "/" {print $1}' /proc/mounts | tail -n1)"
for d in /sys/block/dm-*; do
  [ -e "$d/dm/name" ] && echo "LFB-VALUE dm.$(cat "$d/dm/name") $(cut -c1-11 "$d/dm/uuid")"
done
echo "LFB-VALUE token $(cat /etc/luksforge-boot-token 2>/dev/null)"
echo "LFB-BOOT-END"
sync
echo o >/proc/sysrq-trigger
sleep 10
PROOF
  chmod 755 "$root/usr/local/sbin/lfb-proof"
  chroot "$root" update-initramfs -u -k all
}

CLI=""
HANDLER=""
unlock=clevis
keep=${LUKSFORGE_BOOT_KEEP:-0}
if [[ -z ${LUKSFORGE_BOOT_NETNS:-} ]]; then
  [[ $(id -u) == 0 ]] || boot_die "needs root"
  command -v mmdebstrap >/dev/null || boot_die "mmdebstrap is missing: run tools/deps.sh"
  DEBROOT=$(build_root) || exit 1
  export DEBROOT LUKSFORGE_BOOT_NETNS=1
  exec unshare --net --mount --propagation private -- bash "$0" "$@"
fi
while (($#)); do
  case $1 in
    --cli) CLI=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --unlock) unlock=$2; shift 2 ;;
    --token-handler) HANDLER=$2; shift 2 ;;
    *) boot_die "unknown argument $1" ;;
  esac
done
[[ -x $CLI ]] || boot_die "--cli PATH: the luksforge CLI to test"
[[ $unlock == clevis || ( $unlock == token && -f $HANDLER ) ]] || boot_die "--unlock clevis, or --unlock token --token-handler PATH"

work=$(mktemp -d /tmp/luksforge-fullboot.XXXXXX)
tang_pid=""
mnt="$work/mnt"
cleanup() {
  [[ -n $tang_pid ]] && kill "$tang_pid" 2>/dev/null
  mountpoint -q "$mnt" 2>/dev/null && umount -R "$mnt"  # the loop device goes with it (autoclear)
  if [[ $keep == 1 ]]; then log "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT  # still runs the EXIT trap: no tangd/socat left behind
fail() { echo "FAIL: boot_debian_root ($unlock) — $*"; echo "boot proof (Debian root): 0 passed, 1 failed"; exit 1; }

# Private network: tang1 is 127.0.0.1 here (for seal's verification), 10.0.2.100 in the guest.
ip link set lo up
printf '127.0.0.1 localhost\n127.0.0.1 tang1\n' >"$work/hosts"
mount --bind "$work/hosts" /etc/hosts
boot_tang_new "$work/tang1"
boot_tang_adv "$work/tang1" "$work/adv1.jws"
tang_pid=$(boot_tang_serve 127.0.0.1 "$work/tang1" "$work/tangd-host.log")
boot_wait_port 127.0.0.1 || fail "host-side tang1 did not start"

# The disk as an image pipeline leaves it: the root file system encrypted in place under a build passphrase.
disk="$work/disk.img"
pass="$work/build.pass"
head -c 24 /dev/urandom | base64 | tr -d '\n' >"$pass"; chmod 600 "$pass"
token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
cp --sparse=always "$DEBROOT/root.ext4" "$disk" || fail "no cached root file system in $DEBROOT"
initrd="$DEBROOT/initrd.img"

# --unlock token: swap Clevis's initramfs integration for luksforge's token handler in the copied root and rebuild
# its initramfs there, as installing the handler and removing clevis-initramfs would.
make_token_initrd() {
  local i kver tokdir=/usr/lib/x86_64-linux-gnu/cryptsetup
  mkdir -p "$mnt"
  for i in 1 2 3 4 5; do  # loop devices are shared with other tests: retry briefly when none is free
    mount -o loop "$disk" "$mnt" 2>"$work/mount.err" && break
    sleep 2
  done
  mountpoint -q "$mnt" || { cat "$work/mount.err"; fail "could not loop-mount the root file system"; }
  install -D -m 644 "$HANDLER" "$mnt$tokdir/libcryptsetup-token-clevis.so"
  install -D -m 755 "$here/../../token-plugin/initramfs-tools/hooks/luksforge-token-clevis" \
    "$mnt/usr/share/initramfs-tools/hooks/luksforge-token-clevis"
  install -D -m 755 "$here/../../token-plugin/initramfs-tools/scripts/local-top/luksforge-token-clevis" \
    "$mnt/usr/share/initramfs-tools/scripts/local-top/luksforge-token-clevis"
  rm -f "$mnt"/usr/share/initramfs-tools/hooks/clevis "$mnt"/usr/share/initramfs-tools/scripts/local-*/clevis
  echo 'root /dev/vda none luks,initramfs,keyscript=/bin/true,tries=30' >"$mnt/etc/crypttab"
  for i in proc sys dev; do mount --bind "/$i" "$mnt/$i"; done
  # mkinitramfs works in and writes to a tmpfs: the root image has little free space, and its own /boot stays as is.
  mount -t tmpfs -o size=512M tmpfs "$mnt/var/tmp"
  kver=$(basename "$(ls "$mnt"/boot/vmlinuz-* | head -n1)"); kver=${kver#vmlinuz-}
  chroot "$mnt" env TMPDIR=/var/tmp mkinitramfs -o /var/tmp/initrd.img "$kver" >"$work/mkinitramfs.log" 2>&1 ||
    { cat "$work/mkinitramfs.log"; fail "mkinitramfs failed"; }
  chroot "$mnt" lsinitramfs /var/tmp/initrd.img >"$work/initrd.list"
  cp "$mnt/var/tmp/initrd.img" "$work/initrd.img"
  umount -R "$mnt"
  grep -q "cryptsetup/libcryptsetup-token-clevis.so$" "$work/initrd.list" || fail "the handler is not in the rebuilt initramfs"
  grep -q "scripts/local-top/luksforge-token-clevis$" "$work/initrd.list" || fail "the network script is not in the initramfs"
  if grep -v 'token-clevis' "$work/initrd.list" | grep -E 'clevis|/jose$|luksmeta'; then
    fail "Clevis is still in the rebuilt initramfs"
  fi
  initrd="$work/initrd.img"
}
if [[ $unlock == token ]]; then
  log "rebuilding the root's initramfs with the clevis token handler and without Clevis"
  make_token_initrd
fi
echo "$token" >"$work/token"
debugfs -w -R "write $work/token etc/luksforge-boot-token" "$disk" >/dev/null 2>&1 || fail "could not write the token"
truncate -s +32M "$disk"
log "encrypting the root file system in place (cryptsetup reencrypt --encrypt)"
cryptsetup reencrypt --encrypt --type luks2 --reduce-device-size 32M --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
  --key-file "$pass" -q "$disk" >"$work/encrypt.log" 2>&1 || { cat "$work/encrypt.log"; fail "cryptsetup reencrypt --encrypt failed"; }
grep -qaF "$token" "$disk" && fail "the token lies in plaintext in the encrypted disk"

cat >"$work/policy.toml" <<POLICY
threshold = 1
[[tang]]
url = "http://tang1"
adv = "$work/adv1.jws"
POLICY
log "sealing with luksforge"
"$CLI" seal "$disk" --policy "$work/policy.toml" --build-passphrase-file "$pass" --report "$work/seal.json" \
  --ledger "$work/ledger.db" </dev/null >"$work/seal.log" 2>&1 || { cat "$work/seal.log"; fail "luksforge seal failed"; }
cryptsetup open --test-passphrase --key-file "$pass" "$disk" 2>/dev/null && fail "the build passphrase still opens the sealed disk"

accel=$(boot_accel); cpu=max; [[ $accel == kvm ]] && cpu=host
log "booting Debian from the sealed disk ($accel)"
start=$SECONDS
timeout --kill-after=10 900 qemu-system-x86_64 -machine "q35,accel=$accel" -cpu "$cpu" -m 1024 -smp 1 -nographic \
  -no-reboot -nodefaults -serial stdio -monitor none \
  -kernel "$DEBROOT/vmlinuz" -initrd "$initrd" \
  -append "root=/dev/mapper/root ro console=ttyS0 panic=-1 ip=::::luksforge-full:eth0:dhcp net.ifnames=0 init=/usr/local/sbin/lfb-proof" \
  -netdev "user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:$here/tang-fwd $work/tang1 $work/tangd-guest.log" \
  -device virtio-net-pci,netdev=net0,romfile= -device virtio-rng-pci \
  -drive "file=$disk,format=raw,if=virtio,cache=unsafe" </dev/null >"$work/serial.log" 2>"$work/qemu.err"
log "boot finished in $((SECONDS - start)) s"
serial=$(tr -d '\r' <"$work/serial.log")
value() { awk -v n="$1" '$1 == "LFB-VALUE" && $2 == n {print $3; exit}' <<<"$serial"; }
if [[ $(value token) != "$token" || $(value root.source) != /dev/mapper/root || $(value dm.root) != CRYPT-LUKS2 ]]; then
  echo "serial log tail:"; tail -n 60 <<<"$serial" | sed 's/^/    /'
  fail "Debian did not boot from its sealed root (token '$(value token)', root '$(value root.source)', dm '$(value dm.root)')"
fi
grep -q 'POST /rec/' "$work/tangd-guest.log" || fail "the guest never asked tang1 to recover a key"
if [[ $unlock == token ]]; then
  # What opened the root: cryptroot's cryptsetup, whose only way in was the handler (the sealed disk has no
  # passphrase slot, the initramfs no Clevis); its success line is in the serial log.
  grep -q 'root: set up successfully' <<<"$serial" || fail "cryptroot did not report opening the root"
  echo "PASS: Debian 12 root on a luksforge-sealed LUKS2 volume booted unattended through Debian's cryptroot and libcryptsetup-token-clevis.so (no Clevis in the initramfs)"
else
  echo "PASS: Debian 12 root on a luksforge-sealed LUKS2 volume booted unattended through Debian's initramfs (clevis + Tang)"
fi
echo "boot proof (Debian root): 1 passed, 0 failed"
