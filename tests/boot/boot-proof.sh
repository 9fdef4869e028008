#!/usr/bin/env bash
# Boot proof: luksforge-made volumes opened by dm-crypt and unlocked by stock Clevis and by luksforge itself in a
# real guest kernel (Debian's), with Tang reachable only through qemu's user-mode network.
#
# Two boots:
#   1 "write": every volume is opened with its build passphrase, gets ext4 and a random payload (no network).
#   2 "read":  Tang servers at 10.0.2.100 and .101 are served, 10.0.2.102 is not (a Tang that is down).
#      a  the luksforge-formatted volume opens with its passphrase; the payload written on boot 1 reads back;
#      b  a luksforge tang binding: stock `clevis luks unlock` and `luksforge unlock --name` open it;
#      c  a luksforge sss 2-of-3 binding (.100, .101, .102) opens with .102 missing;
#      d  a sealed base and two stamped instances each open through Tang to the same payload, with volume keys
#         that differ (compared by their digests taken from dm-crypt's live table);
#      e  a volume bound only to the missing Tang does NOT open (clevis and luksforge both report failure).
# Cases whose luksforge capability has not landed yet are reported as SKIP, never as passed.
#
# Usage: boot-proof.sh --cli PATH [--cases abcde] [--keep]
#   LUKSFORGE_BOOT_STOCK=1  harness self-test: the host-side steps use stock cryptsetup/clevis instead of luksforge
#   LUKSFORGE_BOOT_KEEP=1   keep the work directory (images, serial logs, tangd logs) for inspection
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

CLI=""
cases=abcde
keep=${LUKSFORGE_BOOT_KEEP:-0}
stock=${LUKSFORGE_BOOT_STOCK:-0}
while (($#)); do
  case $1 in
    --cli) CLI=$2; shift 2 ;;
    --cases) cases=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) boot_die "unknown argument $1" ;;
  esac
done
[[ $stock == 1 || -x $CLI ]] || boot_die "--cli PATH: the luksforge CLI to test"
[[ $(id -u) == 0 ]] || boot_die "needs root (loop-free, but tangd keys and /var/cache)"

artifacts=$(bash "$here/build-artifacts.sh") || boot_die "could not prepare kernel and initramfs"
eval "$artifacts"

work=$(mktemp -d /tmp/luksforge-boot.XXXXXX)
chmod 700 "$work"
cleanup() {
  if [[ $keep == 1 ]]; then log "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

n_pass=0 n_fail=0 n_skip=0
declare -A status=()
result_pass() { echo "PASS: $1"; ((n_pass++)); }
result_skip() { echo "SKIP: $1 — $2"; ((n_skip++)); }
result_fail() {
  echo "FAIL: $1 — $2"
  [[ -n ${3:-} && -f $3 ]] && boot_log_excerpt "$3" "${4:-}"
  ((n_fail++))
}
wants() { [[ $cases == *"$1"* ]]; }

# ---- capabilities ---------------------------------------------------------------------------------------------
has_cmd() { [[ $stock == 1 ]] || "$CLI" "$1" --help >/dev/null 2>&1; }
cap_format=0 cap_tang=0 cap_sss=0 cap_seal=0
has_cmd format && cap_format=1
has_cmd bind && has_cmd unlock && cap_tang=1
if [[ $stock == 1 ]] || { ((cap_tang)) && "$CLI" bind --help 2>&1 | grep -qi sss; }; then cap_sss=1; fi
has_cmd seal && has_cmd stamp && cap_seal=1
[[ $stock == 1 ]] && cap_seal=0  # seal/stamp have no stock equivalent

# ---- host-side material ---------------------------------------------------------------------------------------
pass="$work/build.pass"
head -c 24 /dev/urandom | base64 | tr -d '\n' >"$pass"
chmod 600 "$pass"
for i in 1 2 3; do boot_tang_new "$work/tang$i"; boot_tang_adv "$work/tang$i" "$work/adv$i.jws"; done
# A random payload with a recognisable plaintext line: the host checks the line never appears in an image.
marker="LUKSFORGE-BOOT-PLAINTEXT-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
{ echo "$marker"; head -c 1M /dev/urandom; } >"$work/payload.bin"
payload_sha=$(sha256sum "$work/payload.bin" | cut -d' ' -f1)

lf() { "$CLI" "$@"; }
run_logged() {  # NAME CMD...: run a host step, output to $work/NAME.host.log
  local name=$1; shift
  "$@" >"$work/$name.host.log" 2>&1
}
make_volume() {  # IMG
  if [[ $stock == 1 ]]; then
    truncate -s 64M "$1" &&
      cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file "$pass" "$1"
  else
    lf format "$1" --size 64M --passphrase-file "$pass" --pbkdf pbkdf2 --pbkdf-iterations 1000
  fi
}
bind_pin() {  # IMG PIN CONFIG
  if [[ $stock == 1 ]]; then
    clevis luks bind -y -k "$pass" -d "$1" "$2" "$3" </dev/null
  else
    lf bind "$1" "$2" "$3" --passphrase-file "$pass"
  fi
}
tang_cfg() { printf '{"url":"http://%s","adv":"%s"}' "$1" "$2"; }

# Volumes: name -> image. Boot 1 writes all of them.
declare -A img=()
vols=()
add_vol() { img[$1]="$work/$1.img"; vols+=("$1"); }

if wants a; then
  if ((cap_format)); then add_vol a; else result_skip "a: luksforge format + dm-crypt, two boots" "no 'luksforge format'"; fi
fi
if wants b; then
  if ((cap_format && cap_tang)); then add_vol b; else result_skip "b: tang binding unlocked by clevis and luksforge" "no 'luksforge bind'/'unlock'"; fi
fi
if wants c; then
  if ((cap_format && cap_sss)); then add_vol c; else result_skip "c: sss 2-of-3 with one Tang missing" "'luksforge bind' has no sss pin"; fi
fi
if wants d; then
  if ((cap_format && cap_seal)); then add_vol d; else result_skip "d: sealed and stamped instances" "no 'luksforge seal'/'stamp'"; fi
fi
if wants e; then
  if ((cap_format && cap_tang)); then add_vol e; else result_skip "e: no Tang reachable, no unlock" "no 'luksforge bind'/'unlock'"; fi
fi
if ((${#vols[@]} == 0)); then
  echo "boot proof: 0 passed, 0 failed, $n_skip skipped (nothing to boot)"
  exit 77  # ctest's SKIP_RETURN_CODE
fi

for v in "${vols[@]}"; do
  run_logged "format-$v" make_volume "${img[$v]}" || { result_fail "$v: format" "could not make the volume" "$work/format-$v.host.log"; exit 1; }
done
bind_ok() {  # NAME IMG PIN CONFIG
  run_logged "bind-$1" bind_pin "$2" "$3" "$4" && return 0
  result_fail "$1: bind" "luksforge bind $3 failed on the host"
  sed 's/^/    /' "$work/bind-$1.host.log"
  return 1
}
[[ -n ${img[b]:-} ]] && { bind_ok b "${img[b]}" tang "$(tang_cfg 10.0.2.100 "$work/adv1.jws")" || unset 'img[b]'; }
if [[ -n ${img[c]:-} ]]; then
  cfg=$(printf '{"t":2,"pins":{"tang":[%s,%s,%s]}}' "$(tang_cfg 10.0.2.100 "$work/adv1.jws")" \
        "$(tang_cfg 10.0.2.101 "$work/adv2.jws")" "$(tang_cfg 10.0.2.102 "$work/adv3.jws")")
  bind_ok c "${img[c]}" sss "$cfg" || unset 'img[c]'
fi
# e is bound to the Tang at 10.0.2.102, which boot 2 never serves.
[[ -n ${img[e]:-} ]] && { bind_ok e "${img[e]}" tang "$(tang_cfg 10.0.2.102 "$work/adv3.jws")" || unset 'img[e]'; }

# ---- boot 1: write ----------------------------------------------------------------------------------------------
letters=(a b c d e f g h i j k l m n o p)
job1="$work/job1"; mkdir -p "$job1"
cp "$work/payload.bin" "$pass" "$job1/"
{
  echo '. /usr/lib/luksforge-boot/lib.sh'
  echo 'write_volume() {  # NAME DEV'
  echo '  cryptsetup open --key-file /job/build.pass "$2" "w_$1" &&'
  echo '  mkfs.ext4 -q -F "/dev/mapper/w_$1" && mkdir -p "/mnt/$1" && mount "/dev/mapper/w_$1" "/mnt/$1" &&'
  echo '  cp /job/payload.bin "/mnt/$1/payload.bin" && umount "/mnt/$1" && cryptsetup close "w_$1"'
  echo '}'
  disks1=()
  i=0
  for v in "${vols[@]}"; do
    [[ -n ${img[$v]:-} ]] || continue
    dev=/dev/vd${letters[$i]}; ((i++)); disks1+=(--disk "${img[$v]}")
    echo "lfb_wait_block $dev; lfb_check write.$v ok write_volume $v $dev"
  done
  echo 'lfb_finish'
} >"$job1/run.sh"
printf '%s\n' "${disks1[@]}" >"$work/disks1"
mapfile -t disks1 <"$work/disks1"
boot_run write "$work" "$job1" 300 ${CLI:+--cli "$CLI"} "${disks1[@]}"
boot1_ok=$?
for v in "${vols[@]}"; do
  [[ -n ${img[$v]:-} ]] || continue
  if [[ $(boot_check_status "$work/write.log" "write.$v") != PASS ]]; then
    result_fail "$v: boot 1 could not open the volume with its passphrase and write the payload" "serial log:" "$work/write.log" "write.$v"
    unset "img[$v]"
  elif grep -qaF "$marker" "${img[$v]}"; then
    result_fail "$v: payload written on boot 1 is readable in plaintext in the image" ""
    unset "img[$v]"
  fi
done
((boot1_ok == 0)) || result_fail "boot 1 (write) did not finish" "serial log tail:" "$work/write.log"

# ---- between the boots: seal the written base and stamp instances from it --------------------------------------
stamped=()
if [[ -n ${img[d]:-} ]]; then
  # The policy names the three Tang servers as the guest sees them, with their advertisements supplied offline:
  # the host cannot reach 10.0.2.x (it exists only inside qemu).
  cat >"$work/policy.toml" <<POLICY
threshold = 1
[[tang]]
url = "http://10.0.2.100"
adv = "$work/adv1.jws"
POLICY
  if ! run_logged seal lf seal "${img[d]}" --policy "$work/policy.toml" --build-passphrase-file "$pass" --report "$work/seal.json"; then
    result_fail "d: luksforge seal failed on the host" ""; sed 's/^/    /' "$work/seal.host.log"; unset 'img[d]'
  elif ! run_logged stamp lf stamp "${img[d]}" --count 2 --out "$work/stamped" --ledger "$work/ledger.db"; then
    result_fail "d: luksforge stamp failed on the host" ""; sed 's/^/    /' "$work/stamp.host.log"; unset 'img[d]'
  else
    mapfile -t stamped < <(find "$work/stamped" -maxdepth 1 -type f | sort)
    ((${#stamped[@]} == 2)) || { result_fail "d: stamp --count 2 made ${#stamped[@]} images" ""; unset 'img[d]'; }
  fi
fi

# ---- boot 2: read ----------------------------------------------------------------------------------------------
job2="$work/job2"; mkdir -p "$job2"
cp "$pass" "$job2/"
disks2=()
{
  echo '. /usr/lib/luksforge-boot/lib.sh'
  # A Tang that is down must cost seconds, not the kernel's two-minute SYN retry budget.
  echo 'sysctl -qw net.ipv4.tcp_syn_retries=2'
  echo 'read_back() {  # NAME MAPPING: mount, report the payload digest and the volume key digest, close'
  echo '  mkdir -p "/mnt/$1" && mount -o ro "/dev/mapper/$2" "/mnt/$1" || return 1'
  echo '  lfb_value "sha.$1" "$(sha256sum "/mnt/$1/payload.bin" | cut -d" " -f1)"'
  echo '  lfb_value "vk.$1" "$(lfb_key_digest "$2")"'
  echo '  umount "/mnt/$1"; cryptsetup close "$2"'
  echo '}'
  echo 'clevis_unlock() { clevis luks unlock -d "$1" -n "$2"; }'
  echo 'luksforge_unlock() { luksforge unlock "$1" --name "$2"; }'
  echo 'not_mapped() { [ ! -e "/dev/mapper/$1" ]; }'
  i=0
  next_dev() { dev=/dev/vd${letters[$i]}; ((i++)); disks2+=(--disk "$1"); echo "lfb_wait_block $dev"; }
  if [[ -n ${img[a]:-} ]]; then
    next_dev "${img[a]}"
    echo "lfb_check a.open ok cryptsetup open --key-file /job/build.pass $dev a_pass && lfb_check a.read ok read_back a a_pass"
  fi
  if [[ -n ${img[b]:-} ]]; then
    next_dev "${img[b]}"
    echo "lfb_check b.clevis ok clevis_unlock $dev b_clevis && lfb_check b.clevis.read ok read_back b.clevis b_clevis"
    if [[ $stock != 1 ]]; then
      echo "lfb_check b.luksforge ok luksforge_unlock $dev b_lf && lfb_check b.luksforge.read ok read_back b.luksforge b_lf"
    fi
  fi
  if [[ -n ${img[c]:-} ]]; then
    next_dev "${img[c]}"
    echo "lfb_check c.clevis ok clevis_unlock $dev c_clevis && lfb_check c.clevis.read ok read_back c.clevis c_clevis"
    if [[ $stock != 1 ]]; then
      echo "lfb_check c.luksforge ok luksforge_unlock $dev c_lf && lfb_check c.luksforge.read ok read_back c.luksforge c_lf"
    fi
  fi
  if [[ -n ${img[e]:-} ]]; then
    next_dev "${img[e]}"
    echo "lfb_check e.clevis fail clevis_unlock $dev e_clevis; lfb_check e.clevis.unmapped ok not_mapped e_clevis"
    if [[ $stock != 1 ]]; then
      echo "lfb_check e.luksforge fail luksforge_unlock $dev e_lf; lfb_check e.luksforge.unmapped ok not_mapped e_lf"
    fi
  fi
  if [[ -n ${img[d]:-} ]]; then
    k=0
    for im in "${img[d]}" "${stamped[@]}"; do
      next_dev "$im"
      echo "lfb_check d$k.clevis ok clevis_unlock $dev d${k}_clevis && lfb_check d$k.clevis.read ok read_back d$k.clevis d${k}_clevis"
      ((k++))
    done
    # luksforge's own unlock on one stamped instance as well.
    echo "lfb_check d1.luksforge ok luksforge_unlock $dev d1_lf && lfb_check d1.luksforge.read ok read_back d1.luksforge d1_lf"
  fi
  echo 'lfb_finish'
} >"$job2/run.sh"
boot_run read "$work" "$job2" 400 ${CLI:+--cli "$CLI"} "${disks2[@]}" \
  --tang "10.0.2.100=$work/tang1" --tang "10.0.2.101=$work/tang2"
boot2_ok=$?
log2="$work/read.log"

# ---- verdicts ---------------------------------------------------------------------------------------------------
expect_read() {  # CASE CHECK...: every check passed and every read returned the payload written on boot 1
  local case=$1 c sha; shift
  for c in "$@"; do
    if [[ $(boot_check_status "$log2" "$c") != PASS ]]; then
      result_fail "$case" "guest check $c did not pass" "$log2" "$c"; return 1
    fi
    if [[ $c == *.read ]]; then
      sha=$(boot_value "$log2" "sha.${c%.read}")
      if [[ $sha != "$payload_sha" ]]; then
        result_fail "$case" "$c read ${sha:-nothing}, boot 1 wrote $payload_sha" "$log2"; return 1
      fi
    fi
  done
  result_pass "$case"
}
if [[ -n ${img[a]:-} ]]; then
  expect_read "a: luksforge-formatted volume, dm-crypt in the guest, written on boot 1 and read on boot 2" a.open a.read
fi
if [[ -n ${img[b]:-} ]]; then
  checks=(b.clevis b.clevis.read); [[ $stock == 1 ]] || checks+=(b.luksforge b.luksforge.read)
  expect_read "b: tang binding unlocked through Tang by stock clevis luks unlock${stock:+}$([[ $stock == 1 ]] || echo ' and luksforge unlock --name')" "${checks[@]}"
fi
if [[ -n ${img[c]:-} ]]; then
  checks=(c.clevis c.clevis.read); [[ $stock == 1 ]] || checks+=(c.luksforge c.luksforge.read)
  expect_read "c: sss 2-of-3 unlocked with the Tang at 10.0.2.102 down" "${checks[@]}"
fi
if [[ -n ${img[e]:-} ]]; then
  ok=1
  for c in e.clevis e.clevis.unmapped $([[ $stock == 1 ]] || echo e.luksforge e.luksforge.unmapped); do
    if [[ $(boot_check_status "$log2" "$c") != PASS ]]; then
      result_fail "e: no Tang reachable" "guest check $c did not pass" "$log2" "$c"; ok=0; break
    fi
  done
  # The refusal must come from the unreachable Tang, not from a broken tool: the same boot unlocked b through
  # Tang with the same tools, and clevis names the server it could not reach.
  if ((ok)) && ! tr -d '\r' <"$log2" | grep -q '^LFB-LOG e.clevis| .*Error communicating with server http://10.0.2.102'; then
    result_fail "e: no Tang reachable" "clevis failed for another reason than the missing server" "$log2" e.clevis; ok=0
  fi
  if ((ok)) && [[ $(boot_check_got "$log2" e.clevis) == fail ]]; then
    result_pass "e: volume bound to an unreachable Tang is not unlocked (guest reported the failure)"
  fi
fi
if [[ -n ${img[d]:-} ]]; then
  checks=(d0.clevis d0.clevis.read d1.clevis d1.clevis.read d2.clevis d2.clevis.read d1.luksforge d1.luksforge.read)
  if expect_read "d: sealed base and 2 stamped instances unlock to the payload" "${checks[@]}" >/dev/null; then
    vk=$(for k in 0 1 2; do boot_value "$log2" "vk.d$k.clevis"; done | sort -u | grep -c .)
    if ((vk == 3)); then
      ((n_pass--)); result_pass "d: sealed base and 2 stamped instances unlock to identical data with 3 different volume keys"
    else
      ((n_pass--)); result_fail "d: sealed/stamped" "only $vk distinct volume keys among 3 instances" "$log2"
    fi
  else
    result_fail "d: sealed and stamped instances" "see above" "$log2"
  fi
fi
((boot2_ok == 0)) || result_fail "boot 2 (read) did not finish" "serial log tail:" "$log2"

echo "boot proof: $n_pass passed, $n_fail failed, $n_skip skipped$([[ $stock == 1 ]] && echo ' (stock self-test)')"
((n_fail == 0))
