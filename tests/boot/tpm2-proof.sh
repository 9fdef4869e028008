#!/usr/bin/env bash
# Boot proof of the tpm2 pin (issue 16): volumes bound on the host to a software TPM are unlocked by stock
# `clevis luks unlock` in a qemu guest (Debian's kernel) whose vTPM (tpm-tis, /dev/tpmrm0) is that same TPM.
#
# The TPM is one swtpm state directory. The host binds through swtpm's TCP interface (TPM2TOOLS_TCTI=swtpm:...);
# that swtpm is then shut down and a new one on the same state serves the guest through qemu's tpm emulator
# backend: the seeds persist, so the guest's TPM re-creates the primary key the host sealed under. Tang (for the
# sss case) is served as in boot-proof.sh: host side in a private network namespace, guest side through guestfwd.
#
# One boot; cases (the binder is luksforge, or stock clevis with LUKSFORGE_BOOT_STOCK=1):
#   t  `bind IMG tpm2 '{}'`: stock clevis luks unlock opens it; data written through that mapping reads back
#      through the build passphrase's (same volume key); luksforge unlock opens it too where it has the pin
#   s  `bind IMG sss '{"t":2,"pins":{"tang":[tang1],"tpm2":{}}}'`: the same, both shares needed
#   p  `bind IMG tpm2 '{"pcr_ids":"23"}'` (PCR 23 as the host's TPM had it: all zeros after startup): clevis opens
#      it; after the guest extends PCR 23 it does not, and the pin says the TPM refused to unseal
#   o  `bind IMG tpm2 '{}'` against ANOTHER swtpm (a different TPM): the guest's clevis must NOT open it, and the
#      failure must come from the TPM step (so t and s were really opened by the guest's TPM)
#
# Usage: tpm2-proof.sh --cli PATH [--keep]
#   LUKSFORGE_BOOT_STOCK=1  harness self-test: stock cryptsetup/clevis make the volumes and bindings
#   LUKSFORGE_BOOT_KEEP=1   keep the work directory (images, serial log, swtpm and tangd logs)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

if [[ -z ${LUKSFORGE_BOOT_NETNS:-} ]]; then
  [[ $(id -u) == 0 ]] || boot_die "needs root (network namespace, artifact cache in /var/cache)"
  for p in swtpm swtpm_ioctl qemu-system-x86_64; do
    command -v "$p" >/dev/null || boot_die "$p is missing: run tools/deps.sh"
  done
  artifacts=$(bash "$here/build-artifacts.sh") || boot_die "could not prepare kernel and initramfs"
  eval "$artifacts"
  export KERNEL KVER BASE_INITRD BASE_MANIFEST
  export LUKSFORGE_BOOT_NETNS=1
  exec unshare --net --mount --propagation private -- bash "$0" "$@"
fi

CLI=""
keep=${LUKSFORGE_BOOT_KEEP:-0}
stock=${LUKSFORGE_BOOT_STOCK:-0}
while (($#)); do
  case $1 in
    --cli) CLI=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) boot_die "unknown argument $1" ;;
  esac
done
[[ $stock == 1 || -x $CLI ]] || boot_die "--cli PATH: the luksforge CLI to test"

work=$(mktemp -d /tmp/luksforge-boot-tpm2.XXXXXX)
chmod 700 "$work"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  if [[ $keep == 1 ]]; then log "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT

n_pass=0 n_fail=0
result_pass() { echo "PASS: $1"; n_pass=$((n_pass + 1)); }
result_fail() {  # WHAT WHY [SERIAL_LOG [CHECK]]
  echo "FAIL: $1 — $2"
  [[ -n ${3:-} && -f $3 ]] && boot_log_excerpt "$3" "${4:-}"
  n_fail=$((n_fail + 1))
}

binder=luksforge
[[ $stock == 1 ]] && binder=stock
luksforge_unlocks() { [[ $stock != 1 ]]; }

# ---- the private network: lo only, tang1 on 127.0.0.1; the host's swtpm on 127.0.0.1:2321/2322 ---------------------
ip link set lo up
printf '127.0.0.1 localhost\n127.0.0.1 tang1\n' >"$work/hosts.host"
mount --bind "$work/hosts.host" /etc/hosts
printf '10.0.2.100 tang1\n' >"$work/hosts.guest"
boot_tang_new "$work/tang1"
boot_tang_adv "$work/tang1" "$work/adv1.jws"
pids+=("$(boot_tang_serve 127.0.0.1 "$work/tang1" "$work/tangd-host.log")")
boot_wait_port 127.0.0.1 || boot_die "host-side tang1 did not start"

tpm_port=2321 other_port=2331
tpm_pid=$(boot_swtpm_host "$work/tpm" $tpm_port "$work/swtpm-host.log") || boot_die "swtpm (host side) did not start"
pids+=("$tpm_pid")
other_pid=$(boot_swtpm_host "$work/tpm-other" $other_port "$work/swtpm-other.log") || boot_die "second swtpm did not start"
pids+=("$other_pid")

# ---- host-side material -----------------------------------------------------------------------------------------------
pass="$work/build.pass"
head -c 24 /dev/urandom | base64 | tr -d '\n' >"$pass"
chmod 600 "$pass"
marker="LUKSFORGE-BOOT-TPM2-PLAINTEXT-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
{ echo "$marker"; head -c 1M /dev/urandom; } >"$work/payload.bin"
payload_size=$(stat -c %s "$work/payload.bin")
payload_sha=$(sha256sum "$work/payload.bin" | cut -d' ' -f1)

run_logged() {  # NAME CMD...: a host step, output to $work/NAME.host.log
  local name=$1; shift
  "$@" </dev/null >"$work/$name.host.log" 2>&1
}
make_volume() {  # IMG
  if [[ $stock == 1 ]]; then
    truncate -s 32M "$1" &&
      cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file "$pass" "$1"
  else
    "$CLI" format "$1" --size 32M --passphrase-file "$pass" --pbkdf pbkdf2 --pbkdf-iterations 1000
  fi
}
bind_pin() {  # PORT IMG PIN CONFIG: bound against the swtpm listening on PORT
  local tcti="swtpm:host=127.0.0.1,port=$1"
  if [[ $stock == 1 ]]; then
    TPM2TOOLS_TCTI=$tcti clevis luks bind -y -k "$pass" -d "$2" "$3" "$4"
  else
    TPM2TOOLS_TCTI=$tcti "$CLI" bind "$2" "$3" "$4" --passphrase-file "$pass"
  fi
}
tang1_cfg=$(printf '{"url":"http://tang1","adv":"%s"}' "$work/adv1.jws")
declare -A cfg=(
  [t]="tpm2 {}"
  [s]="sss {\"t\":2,\"pins\":{\"tang\":[$tang1_cfg],\"tpm2\":{}}}"
  [p]='tpm2 {"pcr_ids":"23"}'
  [o]="tpm2 {}"
)
declare -A what=(
  [t]="t: $binder tpm2 binding unlocked in the guest by stock clevis luks unlock through its vTPM"
  [s]="s: $binder sss t=2 tang+tpm2 binding unlocked in the guest by stock clevis luks unlock (Tang and vTPM)"
  [p]="p: $binder tpm2 binding to PCR 23 unlocked in the guest by stock clevis, refused once the guest extends PCR 23"
  [o]="o: a tpm2 binding sealed to another TPM is refused by the guest's clevis, by the TPM step"
)
vols=(t s p o)
for v in "${vols[@]}"; do
  img="$work/$v.img" port=$tpm_port
  [[ $v == o ]] && port=$other_port
  if ! run_logged "format-$v" make_volume "$img"; then
    result_fail "${what[$v]}" "could not make the volume: $(tail -n 3 "$work/format-$v.host.log" | tr '\n' ' ')"; exit 1
  fi
  if ! run_logged "bind-$v" bind_pin "$port" "$img" "${cfg[$v]%% *}" "${cfg[$v]#* }"; then
    # A CLI built before the tpm2 pin: skipped, never passed (any other bind failure is a failure).
    if [[ $stock != 1 ]] && grep -q "unknown pin 'tpm2'" "$work/bind-$v.host.log"; then
      echo "SKIP: tpm2 bindings unlocked in the guest — this luksforge has no tpm2 pin"
      echo "boot tpm2 proof: 0 passed, 0 failed, 1 skipped"
      exit 77
    fi
    result_fail "${what[$v]}" "bind on the host failed: $(tail -n 3 "$work/bind-$v.host.log" | tr '\n' ' ')"; exit 1
  fi
done

# The host is done with both TPMs: shut them down in order (state saved); the guest's swtpm reopens "$work/tpm".
boot_swtpm_stop "$tpm_pid" $tpm_port || boot_die "swtpm (host side) did not shut down"
boot_swtpm_stop "$other_pid" $other_port || boot_die "second swtpm did not shut down"
pids=("${pids[0]}")  # only the host-side tangd's socat is still ours: no kill of a reused pid at cleanup
guest_pid=$(boot_swtpm_guest "$work/tpm" "$work/swtpm.sock" "$work/swtpm-guest.log") || boot_die "swtpm (guest side) did not start"
pids+=("$guest_pid")

# ---- the boot ---------------------------------------------------------------------------------------------------------
job="$work/job"; mkdir -p "$job"
cp "$work/payload.bin" "$pass" "$job/"
disks=()
{
  echo '. /usr/lib/luksforge-boot/lib.sh'
  echo 'sysctl -qw net.ipv4.tcp_syn_retries=1'
  # Written through the mapping clevis made, read back through the build passphrase's: one volume key.
  echo 'roundtrip() {  # NAME DEV MAPPING'
  echo '  dd if=/job/payload.bin of="/dev/mapper/$3" bs=64k conv=fsync 2>/dev/null && cryptsetup close "$3" &&'
  echo '  cryptsetup open --key-file /job/build.pass "$2" "$1_pass" || return 1'
  echo "  lfb_value \"sha.\$1\" \"\$(head -c $payload_size \"/dev/mapper/\$1_pass\" | sha256sum | cut -d' ' -f1)\""
  echo '  cryptsetup close "$1_pass"'
  echo '}'
  echo 'clevis_unlock() { clevis luks unlock -d "$1" -n "$2"; }'
  echo 'luksforge_unlock() { luksforge unlock "$1" --name "$2" && cryptsetup close "$2"; }'
  echo 'not_mapped() { [ ! -e "/dev/mapper/$1" ]; }'
  echo 'lfb_check tpm.device ok test -c /dev/tpmrm0'
  i=0 letters=(a b c d)
  for v in "${vols[@]}"; do
    dev=/dev/vd${letters[$i]}; i=$((i + 1)); disks+=(--disk "$work/$v.img")
    echo "lfb_wait_block $dev"
    if [[ $v == p ]]; then
      # Both banks: Clevis 19 seals to sha1 unless the config names pcr_bank.
      echo "lfb_check p.clevis ok clevis_unlock $dev p_c && cryptsetup close p_c"
      luksforge_unlocks && echo "lfb_check p.luksforge ok luksforge_unlock $dev p_lf"
      echo "lfb_check p.extend ok env TPM2TOOLS_TCTI=device:/dev/tpmrm0 tpm2_pcrextend 23:sha1=$(printf boot-tpm2 | sha1sum | cut -d' ' -f1),sha256=$(printf boot-tpm2 | sha256sum | cut -d' ' -f1)"
      echo "lfb_check p.extended fail clevis_unlock $dev p_x; lfb_check p.unmapped ok not_mapped p_x"
      luksforge_unlocks &&
        echo "lfb_check p.luksforge.extended fail luksforge_unlock $dev p_lx; lfb_check p.luksforge.unmapped ok not_mapped p_lx"
    elif [[ $v == o ]]; then
      echo "lfb_check o.clevis fail clevis_unlock $dev o_c; lfb_check o.unmapped ok not_mapped o_c"
      luksforge_unlocks &&
        echo "lfb_check o.luksforge fail luksforge_unlock $dev o_lf; lfb_check o.luksforge.unmapped ok not_mapped o_lf"
    else
      echo "lfb_check $v.clevis ok clevis_unlock $dev ${v}_c && lfb_check $v.data ok roundtrip $v $dev ${v}_c"
      luksforge_unlocks && echo "lfb_check $v.luksforge ok luksforge_unlock $dev ${v}_lf"
    fi
  done
  echo 'lfb_finish'
} >"$job/run.sh"
cli_opt=(); luksforge_unlocks && cli_opt=(--cli "$CLI")
boot_run tpm2 "$work" "$job" 600 "${cli_opt[@]}" --hosts "$work/hosts.guest" --tpm "$work/swtpm.sock" "${disks[@]}" \
  --tang "10.0.2.100=$work/tang1"
boot_ok=$?
log="$work/tpm2.log"

# ---- verdicts ---------------------------------------------------------------------------------------------------------
checks_pass() {  # WHAT CHECK...
  local w=$1 c; shift
  for c in "$@"; do
    if [[ $(boot_check_status "$log" "$c") != PASS ]]; then
      result_fail "$w" "guest check $c did not pass" "$log" "$c"; return 1
    fi
  done
}
if checks_pass "the guest has a TPM 2.0 at /dev/tpmrm0" tpm.device; then
  for v in t s; do
    checks=("$v.clevis" "$v.data")
    w=${what[$v]}
    luksforge_unlocks && { checks+=("$v.luksforge"); w+="; luksforge unlock opens it too"; }
    checks_pass "$w" "${checks[@]}" || continue
    sha=$(boot_value "$log" "sha.$v")
    if [[ $sha != "$payload_sha" ]]; then
      result_fail "$w" "data written through clevis's mapping read back as ${sha:-nothing} through the passphrase's, expected $payload_sha"
    elif [[ $v == s ]] && ! grep -q 'POST /rec/.* => 200' "$work/tangd-10.0.2.100.log" 2>/dev/null; then
      result_fail "$w" "the guest's Tang (tang1) saw no key recovery"
    elif grep -qaF "$marker" "$work/$v.img"; then
      result_fail "$w" "the payload lies in plaintext in the image"
    else
      result_pass "$w"
    fi
  done
  checks=(p.clevis p.extend p.extended p.unmapped) w=${what[p]}
  luksforge_unlocks && { checks+=(p.luksforge p.luksforge.extended p.luksforge.unmapped); w+=" (and by luksforge unlock)"; }
  if checks_pass "$w" "${checks[@]}"; then
    # The policy session's PCR digest no longer matches: tpm2_unseal fails, not an earlier step; luksforge's error
    # says a PCR changed.
    if ! tr -d '\r' <"$log" | grep -q '^LFB-LOG p.extended| Unsealing jwk from TPM failed!'; then
      result_fail "$w" "clevis's tpm2 pin failed for another reason than the changed PCR" "$log" p.extended
    elif luksforge_unlocks && ! tr -d '\r' <"$log" | grep -q '^LFB-LOG p.luksforge.extended| .*PCR'; then
      result_fail "$w" "luksforge's error does not say that a PCR changed" "$log" p.luksforge.extended
    else
      result_pass "$w"
    fi
  fi
  checks=(o.clevis o.unmapped) w=${what[o]}
  luksforge_unlocks && { checks+=(o.luksforge o.luksforge.unmapped); w+=" (and luksforge's)"; }
  if checks_pass "$w" "${checks[@]}"; then
    # The guest's TPM refuses to load a key another TPM wrapped (TPM_RC_INTEGRITY) and the pin says so.
    if ! tr -d '\r' <"$log" | grep -q '^LFB-LOG o.clevis| Loading jwk to TPM2 failed!'; then
      result_fail "$w" "clevis's tpm2 pin failed for another reason than the foreign TPM" "$log" o.clevis
    elif luksforge_unlocks && ! tr -d '\r' <"$log" | grep -q '^LFB-LOG o.luksforge| .*tpm2'; then
      result_fail "$w" "luksforge's error does not come from its tpm2 pin" "$log" o.luksforge
    else
      result_pass "$w"
    fi
  fi
fi
((boot_ok == 0)) || result_fail "the boot did not finish" "serial log tail:" "$log"

echo "boot tpm2 proof: $n_pass passed, $n_fail failed, 0 skipped$([[ $stock == 1 ]] && echo ' (stock self-test)')"
((n_fail == 0))
