# Host-side helpers of the boot proof (sourced by build-artifacts.sh, boot-proof.sh and full-debian.sh).
# Nothing here touches the network: the guest reaches Tang only through qemu's user-mode guestfwd, which runs
# tests/boot/tang-fwd (tangd on stdin/stdout) per connection inside the qemu process's own address space.

log() { echo "[boot] $*" >&2; }
boot_die() { echo "[boot] ERROR: $*" >&2; exit 1; }

boot_cache_dir() { echo "${LUKSFORGE_BOOT_CACHE:-/var/cache/luksforge-boot}"; }

# The directory layout of a merged-/usr Debian system: /bin, /sbin, /lib, /lib64 are links into /usr.
boot_stage_skeleton() {
  local stage=$1 d
  mkdir -p "$stage"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc,proc,sys,dev,run,tmp,root,mnt,job}
  for d in bin sbin lib lib64; do ln -s "usr/$d" "$stage/$d"; done
}

# Where a host file lives once symlinked directories are resolved (/lib/x/libc.so.6 -> /usr/lib/x/libc.so.6),
# keeping the file's own name (sonames are links to versioned files: the soname is what the loader asks for).
boot_canonical_path() { echo "$(realpath "$(dirname "$1")")/$(basename "$1")"; }

# Copy an ELF program or library and every shared library ldd finds for it into STAGE at canonical paths.
# With SKIP_LIST (a file of canonical paths already present in the base image) those are left out.
boot_stage_elf() {
  local stage=$1 file=$2 dest=${3:-} skip=${4:-} lib canon
  [[ -n $dest ]] || dest=$(boot_canonical_path "$file")
  install -D -m 755 "$file" "$stage$dest"
  while read -r lib; do
    [[ -n $lib ]] || continue
    canon=$(boot_canonical_path "$lib")
    # A library from the build tree (libluksforge) is found on the host through the program's RUNPATH, which
    # may lie under /tmp — hidden in the guest by a tmpfs. Put such libraries where the loader always looks.
    case $canon in /usr/*|/lib/*|/lib64/*) ;; *) canon=/usr/lib/$(basename "$lib") ;; esac
    [[ -e $stage$canon ]] && continue
    if [[ -n $skip ]] && grep -qxF "$canon" "$skip"; then continue; fi
    install -D -m 755 "$(realpath "$lib")" "$stage$canon"
  done < <(ldd "$file" | awk '/=>/ && $3 ~ /^\// {print $3} !/=>/ && $1 ~ /^\// {print $1}')
}

boot_pack_cpio() {
  (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet)
}

# Real KVM only when its module is loaded: /dev/kvm alone may be a stand-in that hangs a stock kernel.
boot_accel() {
  if grep -qE '^kvm_(intel|amd) ' /proc/modules 2>/dev/null || [[ -d /sys/module/kvm_intel || -d /sys/module/kvm_amd ]]; then
    echo kvm
  else
    echo tcg
  fi
}

# A fresh Tang key database in DIR.
boot_tang_new() {
  mkdir -p "$1"
  /usr/libexec/tangd-keygen "$1" >/dev/null
}

# The advertisement of the Tang database DIR, produced offline: tangd answers one GET /adv on stdin, exactly as it
# would to a client, so the host never needs a socket to make an offline "adv" for a binding.
boot_tang_adv() {
  local db=$1 out=$2 response
  response=$(printf 'GET /adv HTTP/1.1\r\nHost: tang\r\nConnection: close\r\n\r\n' | /usr/libexec/tangd "$db" 2>/dev/null) \
    || boot_die "tangd could not produce the advertisement of $db"
  # The body follows the first empty line of the HTTP response.
  printf '%s' "$response" | tr -d '\r' | awk 'body {print} /^$/ {body=1}' >"$out"
  jose fmt -j- -Og payload -u- <"$out" >/dev/null || boot_die "tangd returned no JWS advertisement for $db: $response"
}

# libcryptsetup's token handler directory (compiled in; cryptsetup --help prints it).
boot_token_dir() {
  cryptsetup --help | sed -n 's/^LUKS2 external token plugin path: \(.*\)\.$/\1/p'
}

# Boot the guest once.
#   boot_run NAME WORKDIR JOBDIR TIMEOUT [--cli PATH] [--token-handler PATH] [--hosts FILE] [--disk IMG]... [--tang IP=DB]...
#            [--tpm SOCKET]
# JOBDIR (run.sh and its files) becomes /job in the guest; --token-handler adds libcryptsetup-token-clevis.so (and
# libraries not in the base) to libcryptsetup's token directory, and the host's systemd-cryptsetup; --cli adds the luksforge CLI (and libraries not in the
# base image) as /usr/bin/luksforge; --hosts becomes the guest's /etc/hosts; disks appear as /dev/vda, /dev/vdb,
# ... in order; each --tang makes a Tang server with database DB reachable at http://IP (port 80) from the guest
# (IP in qemu's user network 10.0.2.0/24: it exists only inside the qemu process); --tpm gives the guest a TPM 2.0
# (tpm-tis, /dev/tpmrm0) backed by the swtpm whose control socket is SOCKET (boot_swtpm_guest). The serial log is
# WORKDIR/NAME.log.
# Returns 0 when the guest reached its end marker; the caller checks the individual markers.
boot_run() {
  local name=$1 workdir=$2 jobdir=$3 timeout=$4
  shift 4
  local cli="" handler="" hosts="" tpm="" disks=() tangs=() here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  while (($#)); do
    case $1 in
      --cli) cli=$2; shift 2 ;;
      --token-handler) handler=$2; shift 2 ;;
      --hosts) hosts=$2; shift 2 ;;
      --disk) disks+=("$2"); shift 2 ;;
      --tang) tangs+=("$2"); shift 2 ;;
      --tpm) tpm=$2; shift 2 ;;
      *) boot_die "boot_run: unknown option $1" ;;
    esac
  done
  [[ -n ${KERNEL:-} && -n ${BASE_INITRD:-} ]] || boot_die "boot_run: run build-artifacts.sh first (KERNEL/BASE_INITRD unset)"
  local stage="$workdir/$name.stage" initrd="$workdir/$name.initrd" serial="$workdir/$name.log"
  rm -rf "$stage"; mkdir -p "$stage/job"
  cp -a "$jobdir/." "$stage/job/"
  [[ -z $hosts ]] || install -D -m 644 "$hosts" "$stage/etc/hosts"
  if [[ -n $cli ]]; then
    boot_stage_elf "$stage" "$cli" /usr/bin/luksforge "$BASE_MANIFEST"
  fi
  if [[ -n $handler ]]; then
    # Where the guest's libcryptsetup (the host's, copied into the base) loads token handlers from.
    boot_stage_elf "$stage" "$handler" "$(boot_canonical_path "$(boot_token_dir)")/libcryptsetup-token-clevis.so" "$BASE_MANIFEST"
    # The other consumer of token handlers: systemd-cryptsetup (systemd 252 tries every token before a passphrase).
    if [[ -x /lib/systemd/systemd-cryptsetup ]]; then
      boot_stage_elf "$stage" /lib/systemd/systemd-cryptsetup /usr/lib/systemd/systemd-cryptsetup "$BASE_MANIFEST"
    fi
  fi
  # Concatenated newc archives: the kernel unpacks the cached base, then this run's job over it.
  { cat "$BASE_INITRD"; boot_pack_cpio "$stage"; } >"$initrd"
  rm -rf "$stage"

  local netdev="user,id=net0,restrict=on" t ip db
  for t in "${tangs[@]}"; do
    ip=${t%%=*}; db=${t#*=}
    [[ $db != *,* && $workdir != *,* ]] || boot_die "no commas allowed in paths handed to qemu: $db"
    netdev+=",guestfwd=tcp:$ip:80-cmd:$here/tang-fwd $db $workdir/tangd-$ip.log"
  done
  local accel cpu
  accel=$(boot_accel)
  if [[ $accel == kvm ]]; then cpu=host; else cpu=max; fi
  # no_timer_check: on a loaded host the emulated CPU can miss the kernel's early IO-APIC timer check ("IO-APIC +
  # timer doesn't work!" panic at 0.05 s, seen under TCG while other jobs compiled); virtual machines skip it.
  local args=(-machine "q35,accel=$accel" -cpu "$cpu" -m 1024 -smp 1 -nographic -no-reboot -nodefaults
              -serial stdio -monitor none
              -kernel "$KERNEL" -initrd "$initrd"
              -append "console=ttyS0 panic=-1 loglevel=1 edd=off no_timer_check rdinit=/init ${LUKSFORGE_BOOT_APPEND:-}"
              -netdev "$netdev" -device virtio-net-pci,netdev=net0,romfile=
              -device virtio-rng-pci)
  if [[ -n $tpm ]]; then
    [[ $tpm != *,* ]] || boot_die "no commas allowed in paths handed to qemu: $tpm"
    args+=(-chardev "socket,id=chrtpm,path=$tpm" -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0)
  fi
  local d
  for d in "${disks[@]}"; do
    args+=(-drive "file=$d,format=raw,if=virtio,cache=unsafe")
  done
  log "booting $name ($accel, ${#disks[@]} disk(s), ${#tangs[@]} tang server(s)${tpm:+, vTPM})"
  local start=$SECONDS rc=0
  timeout --kill-after=10 "$timeout" qemu-system-x86_64 "${args[@]}" </dev/null >"$serial" 2>"$workdir/$name.qemu.err" || rc=$?
  rm -f "$initrd"
  log "$name finished in $((SECONDS - start)) s (qemu exit $rc)"
  if ((rc == 124 || rc == 137)); then
    log "$name: TIMEOUT after $timeout s"
  fi
  if ! grep -q '^LFB-BOOT-END' <(tr -d '\r' <"$serial"); then
    [[ -s $workdir/$name.qemu.err ]] && sed 's/^/[boot] qemu: /' "$workdir/$name.qemu.err" >&2
    return 1
  fi
}

# Marker lookups in a serial log (carriage returns stripped).
boot_check_status() {  # LOG NAME -> PASS, FAIL or MISSING
  local s
  s=$(tr -d '\r' <"$1" | awk -v n="$2" '$1 == "LFB-CHECK" && $2 == n {print $3; exit}')
  echo "${s:-MISSING}"
}
boot_check_got() {  # LOG NAME -> ok, fail or nothing
  tr -d '\r' <"$1" | awk -v n="$2" '$1 == "LFB-CHECK" && $2 == n {sub("got=", "", $5); print $5; exit}'
}
boot_value() {  # LOG NAME -> value
  tr -d '\r' <"$1" | awk -v n="$2" '$1 == "LFB-VALUE" && $2 == n {print $3; exit}'
}
boot_log_excerpt() {  # LOG [NAME]: what a failure report shows
  local lines
  if [[ -n ${2:-} ]]; then
    lines=$(tr -d '\r' <"$1" | grep -E "^LFB-(CHECK|LOG) $2[ |]" || true)
    [[ -n $lines ]] && { echo "$lines" | sed 's/^/    /'; return; }
  fi
  tr -d '\r' <"$1" | tail -n 40 | sed 's/^/    /'
}

# Host-side Tang for the host steps (bind's and seal's verification through the real server). Only ever inside the
# private network namespace boot-proof.sh runs in, on a loopback address: the guest's names tang1..3 resolve to
# 127.0.0.1..3 there (a private /etc/hosts), and to 10.0.2.100..102 in the guest.
boot_tang_serve() {  # ADDRESS DB LOG -> prints the socat pid
  socat "TCP-LISTEN:80,bind=$1,reuseaddr,fork" EXEC:"/usr/libexec/tangd $2" </dev/null >/dev/null 2>>"$3" &
  echo $!
}
boot_wait_port() {  # ADDRESS: wait (5 s at most) until something listens on ADDRESS:80
  local i
  for i in $(seq 50); do
    (exec 3<>"/dev/tcp/$1/80") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# ---- vTPM (boot_tpm2) ---------------------------------------------------------------------------------------------
# One TPM state directory, two lives: first the host binds against it through swtpm's TCP interface (TPM2TOOLS_TCTI
# swtpm:host=127.0.0.1,port=PORT; the control channel is PORT+1), then that swtpm is shut down (the state is saved)
# and a new one on the same directory serves the guest through qemu's control socket. The TPM's seeds live in its
# persistent state, so the guest's TPM re-creates the very primary key the host sealed under. Only ever inside the
# private network namespace: the ports are the namespace's own.
boot_swtpm_host() {  # STATEDIR PORT LOG -> prints the swtpm pid once it answers
  local pid i
  mkdir -p "$1"
  swtpm socket --tpm2 --tpmstate "dir=$1" --server "type=tcp,port=$2,bindaddr=127.0.0.1" \
    --ctrl "type=tcp,port=$(($2 + 1)),bindaddr=127.0.0.1" --flags not-need-init,startup-clear \
    --log "file=$3,level=1" </dev/null >>"$3" 2>&1 &
  pid=$!
  for i in $(seq 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then echo "$pid"; return 0; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$pid" 2>/dev/null
  return 1
}
boot_swtpm_stop() {  # PID PORT: orderly shutdown through the control channel (state written), then reap
  local i
  swtpm_ioctl --tcp "127.0.0.1:$(($2 + 1))" -s >/dev/null 2>&1 || kill "$1" 2>/dev/null
  for i in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null
  return 1
}
boot_swtpm_guest() {  # STATEDIR SOCKET LOG -> prints the swtpm pid once the control socket exists
  local pid i
  swtpm socket --tpm2 --tpmstate "dir=$1" --ctrl "type=unixio,path=$2" --terminate \
    --log "file=$3,level=1" </dev/null >>"$3" 2>&1 &
  pid=$!
  for i in $(seq 50); do
    if [[ -S $2 ]]; then echo "$pid"; return 0; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$pid" 2>/dev/null
  return 1
}
