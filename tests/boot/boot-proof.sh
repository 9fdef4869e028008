#!/usr/bin/env bash
# Boot proof: luksforge-made volumes opened by dm-crypt and unlocked by stock Clevis and by luksforge itself in a
# real guest kernel (Debian's), with Tang reachable only through qemu's user-mode network.
#
# Bindings name their Tang servers http://tang1, http://tang2, http://tang3. In the guest these resolve to
# 10.0.2.100..102 inside qemu's user network (guestfwd runs tangd per connection; nothing leaves qemu). On the host
# every step after the artifact download runs in a private network namespace where the same names resolve to
# 127.0.0.1..3 and socat serves the same Tang databases, so bind/seal/stamp verify through the real servers and no
# host packet can ever go to any other address.
#
# Two boots:
#   1 "write": every volume is opened with its build passphrase, gets ext4 and a random payload (no network).
#   2 "read":  tang1 and tang2 are served, tang3 is not (a Tang that is down).
#      a  the luksforge-formatted volume opens with its passphrase; the payload written on boot 1 reads back;
#      b  a luksforge tang binding: stock `clevis luks unlock` and `luksforge unlock --name` open it;
#      c  a luksforge sss 2-of-3 binding (tang1..3) opens with tang3 missing, by clevis and by luksforge;
#      d  a sealed base and two stamped instances each open through Tang to the same payload, with volume keys
#         that differ (compared by digests of the keys dm-crypt holds, taken in the guest);
#      e  a volume bound only to the missing tang3 does NOT open (clevis and luksforge both report failure).
#      f  with Clevis, jose and curl deleted from the guest, `cryptsetup open --token-only` opens b and c through
#         luksforge's token handler (libcryptsetup-token-clevis.so) and refuses e; systemd-cryptsetup (Debian's
#         systemd 252, staged from the host) opens b through it with no key file.
# Cases whose luksforge capability has not landed yet are reported as SKIP, never as passed.
#
# Usage: boot-proof.sh --cli PATH [--token-handler PATH] [--cases abcdef] [--keep]
#   LUKSFORGE_BOOT_STOCK=1  harness self-test: the host-side steps use stock cryptsetup/clevis instead of luksforge
#   LUKSFORGE_BOOT_KEEP=1   keep the work directory (images, serial logs, tangd logs) for inspection
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

if [[ -z ${LUKSFORGE_BOOT_NETNS:-} ]]; then
  [[ $(id -u) == 0 ]] || boot_die "needs root (network namespace, artifact cache in /var/cache)"
  # The only step that needs the real network: fetching Debian's kernel package into the cache.
  artifacts=$(bash "$here/build-artifacts.sh") || boot_die "could not prepare kernel and initramfs"
  eval "$artifacts"
  export KERNEL KVER BASE_INITRD BASE_MANIFEST
  export LUKSFORGE_BOOT_NETNS=1
  exec unshare --net --mount --propagation private -- bash "$0" "$@"
fi

CLI=""
HANDLER=""
cases=abcdef
keep=${LUKSFORGE_BOOT_KEEP:-0}
stock=${LUKSFORGE_BOOT_STOCK:-0}
while (($#)); do
  case $1 in
    --cli) CLI=$2; shift 2 ;;
    --token-handler) HANDLER=$2; shift 2 ;;
    --cases) cases=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) boot_die "unknown argument $1" ;;
  esac
done
[[ $stock == 1 || -x $CLI ]] || boot_die "--cli PATH: the luksforge CLI to test"

work=$(mktemp -d /tmp/luksforge-boot.XXXXXX)
chmod 700 "$work"
tang_pids=()
cleanup() {
  local p
  for p in "${tang_pids[@]}"; do kill "$p" 2>/dev/null; done
  if [[ $keep == 1 ]]; then log "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT  # still runs the EXIT trap: no tangd/socat left behind

n_pass=0 n_fail=0 n_skip=0
result_pass() { echo "PASS: $1"; n_pass=$((n_pass + 1)); }
result_skip() { echo "SKIP: $1 — $2"; n_skip=$((n_skip + 1)); }
result_fail() {  # WHAT WHY [SERIAL_LOG [CHECK]]
  echo "FAIL: $1 — $2"
  [[ -n ${3:-} && -f $3 ]] && boot_log_excerpt "$3" "${4:-}"
  n_fail=$((n_fail + 1))
}
wants() { [[ $cases == *"$1"* ]]; }

# ---- the private network: lo only, tang1..3 on 127.0.0.1..3 -------------------------------------------------------
ip link set lo up
printf '127.0.0.1 localhost\n127.0.0.1 tang1\n127.0.0.2 tang2\n127.0.0.3 tang3\n' >"$work/hosts.host"
mount --bind "$work/hosts.host" /etc/hosts
printf '10.0.2.100 tang1\n10.0.2.101 tang2\n10.0.2.102 tang3\n' >"$work/hosts.guest"
for i in 1 2 3; do
  boot_tang_new "$work/tang$i"
  boot_tang_adv "$work/tang$i" "$work/adv$i.jws"
  tang_pids+=("$(boot_tang_serve "127.0.0.$i" "$work/tang$i" "$work/tangd-host.log")")
  boot_wait_port "127.0.0.$i" || boot_die "host-side tang$i did not start"
done

# ---- capabilities: a subcommand exists when its own help names it --------------------------------------------------
has_cmd() { [[ $stock == 1 ]] || "$CLI" "$1" --help 2>/dev/null | grep -q "^Usage: [^ ]*luksforge $1 "; }
cap_format=0 cap_tang=0 cap_sss=0 cap_seal=0
has_cmd format && cap_format=1
has_cmd bind && has_cmd unlock && cap_tang=1
if [[ $stock == 1 ]] || { ((cap_tang)) && "$CLI" bind --help 2>&1 | grep -qi sss; }; then cap_sss=1; fi
[[ $stock != 1 ]] && has_cmd seal && has_cmd stamp && cap_seal=1  # no stock equivalent

# ---- host-side material ---------------------------------------------------------------------------------------------
pass="$work/build.pass"
head -c 24 /dev/urandom | base64 | tr -d '\n' >"$pass"
chmod 600 "$pass"
# A random payload with a recognisable plaintext line: the host checks the line never appears in an image.
marker="LUKSFORGE-BOOT-PLAINTEXT-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
{ echo "$marker"; head -c 1M /dev/urandom; } >"$work/payload.bin"
payload_sha=$(sha256sum "$work/payload.bin" | cut -d' ' -f1)

run_logged() {  # NAME CMD...: run a host step, output to $work/NAME.host.log
  local name=$1; shift
  "$@" </dev/null >"$work/$name.host.log" 2>&1
}
make_volume() {  # IMG
  if [[ $stock == 1 ]]; then
    truncate -s 64M "$1" &&
      cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file "$pass" "$1"
  else
    "$CLI" format "$1" --size 64M --passphrase-file "$pass" --pbkdf pbkdf2 --pbkdf-iterations 1000
  fi
}
# What an image pipeline (anaconda, livemedia-creator, virt-install) leaves: a volume cryptsetup formatted with a
# build passphrase. Case d seals such an image.
make_pipeline_volume() {  # IMG
  truncate -s 64M "$1" &&
    cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file "$pass" "$1"
}
bind_pin() {  # IMG PIN CONFIG
  if [[ $stock == 1 ]]; then
    clevis luks bind -y -k "$pass" -d "$1" "$2" "$3"
  else
    "$CLI" bind "$1" "$2" "$3" --passphrase-file "$pass"
  fi
}
tang_cfg() { printf '{"url":"http://tang%s","adv":"%s"}' "$1" "$work/adv$1.jws"; }

# Volumes: name -> image.
declare -A img=()
vols=()
add_vol() { img[$1]="$work/$1.img"; vols+=("$1"); }
luksforge_unlocks() { [[ $stock != 1 ]]; }

if wants a; then
  if ((cap_format)); then add_vol a; else result_skip "a: luksforge format + dm-crypt over two boots" "no 'luksforge format'"; fi
fi
if wants b; then
  if ((cap_format && cap_tang)); then add_vol b; else result_skip "b: tang binding unlocked by clevis and luksforge" "no 'luksforge bind'/'unlock'"; fi
fi
if wants c; then
  if ((cap_format && cap_sss)); then add_vol c; else result_skip "c: sss 2-of-3 with one Tang missing" "'luksforge bind' has no sss pin"; fi
fi
if wants d; then
  if ((cap_seal)); then add_vol d; else result_skip "d: sealed and stamped instances" "no 'luksforge seal'/'stamp'"; fi
fi
if wants e; then
  if ((cap_format && cap_tang)); then add_vol e; else result_skip "e: no Tang reachable, no unlock" "no 'luksforge bind'/'unlock'"; fi
fi
token_case=0
if wants f; then
  if [[ $stock == 1 || -z $HANDLER ]]; then
    result_skip "f: cryptsetup --token-only through the clevis token handler, no Clevis in the guest" "no --token-handler"
  elif [[ -z ${img[b]:-} || -z ${img[c]:-} || -z ${img[e]:-} ]]; then
    result_skip "f: cryptsetup --token-only through the clevis token handler, no Clevis in the guest" "needs cases b, c and e"
  else
    token_case=1
  fi
fi
if ((${#vols[@]} == 0)); then
  echo "boot proof: 0 passed, 0 failed, $n_skip skipped (nothing to boot)"
  exit 77  # ctest's SKIP_RETURN_CODE
fi

for v in "${vols[@]}"; do
  maker=make_volume; [[ $v == d ]] && maker=make_pipeline_volume
  if ! run_logged "format-$v" "$maker" "${img[$v]}"; then
    result_fail "$v: format" "could not make the volume"; sed 's/^/    /' "$work/format-$v.host.log"; exit 1
  fi
done
bind_or_drop() {  # VOLUME PIN CONFIG
  run_logged "bind-$1" bind_pin "${img[$1]}" "$2" "$3" && return 0
  result_fail "$1: bind $2 on the host" "$(tail -n 3 "$work/bind-$1.host.log" | tr '\n' ' ')"
  unset "img[$1]"
}
[[ -n ${img[b]:-} ]] && bind_or_drop b tang "$(tang_cfg 1)"
[[ -n ${img[c]:-} ]] && bind_or_drop c sss "$(printf '{"t":2,"pins":{"tang":[%s,%s,%s]}}' "$(tang_cfg 1)" "$(tang_cfg 2)" "$(tang_cfg 3)")"
# e is bound to tang3, which boot 2 never serves.
[[ -n ${img[e]:-} ]] && bind_or_drop e tang "$(tang_cfg 3)"

letters=(a b c d e f g h i j k l m n o p)

# ---- boot 1: write --------------------------------------------------------------------------------------------------
job1="$work/job1"; mkdir -p "$job1"
cp "$work/payload.bin" "$pass" "$job1/"
disks1=()
{
  echo '. /usr/lib/luksforge-boot/lib.sh'
  echo 'write_volume() {  # NAME DEV'
  echo '  cryptsetup open --key-file /job/build.pass "$2" "w_$1" &&'
  echo '  mkfs.ext4 -q -F "/dev/mapper/w_$1" && mkdir -p "/mnt/$1" && mount "/dev/mapper/w_$1" "/mnt/$1" &&'
  echo '  cp /job/payload.bin "/mnt/$1/payload.bin" && umount "/mnt/$1" && cryptsetup close "w_$1"'
  echo '}'
  i=0
  for v in "${vols[@]}"; do
    [[ -n ${img[$v]:-} ]] || continue
    dev=/dev/vd${letters[$i]}; i=$((i + 1)); disks1+=(--disk "${img[$v]}")
    echo "lfb_wait_block $dev; lfb_check write.$v ok write_volume $v $dev"
  done
  echo 'lfb_finish'
} >"$job1/run.sh"
boot_run write "$work" "$job1" 300 "${disks1[@]}"
boot1_ok=$?
for v in "${vols[@]}"; do
  [[ -n ${img[$v]:-} ]] || continue
  if [[ $(boot_check_status "$work/write.log" "write.$v") != PASS ]]; then
    result_fail "$v: boot 1 could not open the volume with its passphrase and write the payload" "serial log:" "$work/write.log" "write.$v"
    unset "img[$v]"
  elif grep -qaF "$marker" "${img[$v]}"; then
    result_fail "$v: the payload written on boot 1 lies in plaintext in the image" "dm-crypt did not encrypt"
    unset "img[$v]"
  fi
done
((boot1_ok == 0)) || result_fail "boot 1 (write) did not finish" "serial log tail:" "$work/write.log"

# The digest of IMG's volume key (never the key itself), recovered on the host by stock clevis through the same
# Tang database the guest used (tang1 is served on 127.0.0.1 in this namespace) and cryptsetup.
host_key_digest() {  # IMG
  local slot digest=""
  slot=$(clevis luks list -d "$1" 2>/dev/null | head -n1 | cut -d: -f1)
  if [[ -n $slot ]] && clevis luks pass -d "$1" -s "$slot" >"$work/vk.pass" 2>/dev/null &&
     cryptsetup luksDump --dump-volume-key --batch-mode --volume-key-file "$work/vk.bin" --key-file "$work/vk.pass" "$1" >/dev/null 2>&1; then
    digest=$(sha256sum "$work/vk.bin" | cut -d' ' -f1)
  fi
  rm -f "$work/vk.bin" "$work/vk.pass"
  echo "$digest"
}

# ---- between the boots: seal the written base and stamp two instances from it ----------------------------------------
stamped=()
if [[ -n ${img[d]:-} ]]; then
  cat >"$work/policy.toml" <<POLICY
# Boot proof: one Tang, named as the guest sees it, with its advertisement supplied offline.
threshold = 1
max_instances_per_key = 1
[[tang]]
url = "http://tang1"
adv = "$work/adv1.jws"
POLICY
  if ! run_logged seal "$CLI" seal "${img[d]}" --policy "$work/policy.toml" --build-passphrase-file "$pass" \
         --report "$work/seal.json" --ledger "$work/ledger.db"; then
    result_fail "d: luksforge seal on the host" "$(tail -n 3 "$work/seal.host.log" | tr '\n' ' ')"; unset 'img[d]'
  elif ! run_logged stamp "$CLI" stamp "${img[d]}" --count 2 --out "$work/stamped" --ledger "$work/ledger.db" \
           --policy "$work/policy.toml"; then
    result_fail "d: luksforge stamp on the host" "$(tail -n 3 "$work/stamp.host.log" | tr '\n' ' ')"; unset 'img[d]'
  else
    mapfile -t stamped < <(find "$work/stamped" -maxdepth 1 -type f | sort)
    if ((${#stamped[@]} != 2)); then
      result_fail "d: luksforge stamp --count 2" "made ${#stamped[@]} images"; unset 'img[d]'
    elif cryptsetup open --test-passphrase --key-file "$pass" "${img[d]}" 2>/dev/null; then
      result_fail "d: luksforge seal" "the build passphrase still opens the sealed base"; unset 'img[d]'
    fi
  fi
fi

# ---- boot 2: read ---------------------------------------------------------------------------------------------------
job2="$work/job2"; mkdir -p "$job2"
cp "$pass" "$job2/"
disks2=()
i=0
declare -A dev_of=()
next_dev() { dev=/dev/vd${letters[$i]}; i=$((i + 1)); disks2+=(--disk "$1"); echo "lfb_wait_block $dev"; }
{
  echo '. /usr/lib/luksforge-boot/lib.sh'
  # A Tang that is down must cost seconds, not the kernel's two-minute SYN retry budget.
  echo 'sysctl -qw net.ipv4.tcp_syn_retries=1'
  echo 'read_back() {  # NAME MAPPING: mount, report the payload digest, close'
  echo '  mkdir -p "/mnt/$1" && mount -o ro "/dev/mapper/$2" "/mnt/$1" || return 1'
  echo '  lfb_value "sha.$1" "$(sha256sum "/mnt/$1/payload.bin" | cut -d" " -f1)"'
  echo '  umount "/mnt/$1" && cryptsetup close "$2"'
  echo '}'
  echo 'clevis_unlock() { clevis luks unlock -d "$1" -n "$2"; }'
  echo 'luksforge_unlock() { luksforge unlock "$1" --name "$2"; }'
  echo 'not_mapped() { [ ! -e "/dev/mapper/$1" ]; }'
  if [[ -n ${img[a]:-} ]]; then
    next_dev "${img[a]}"
    echo "lfb_check a.open ok cryptsetup open --key-file /job/build.pass $dev a_pass && lfb_check a.read ok read_back a a_pass"
  fi
  for v in b c; do
    [[ -n ${img[$v]:-} ]] || continue
    next_dev "${img[$v]}"; dev_of[$v]=$dev
    echo "lfb_check $v.clevis ok clevis_unlock $dev ${v}_clevis && lfb_check $v.clevis.read ok read_back $v.clevis ${v}_clevis"
    luksforge_unlocks &&
      echo "lfb_check $v.luksforge ok luksforge_unlock $dev ${v}_lf && lfb_check $v.luksforge.read ok read_back $v.luksforge ${v}_lf"
  done
  if [[ -n ${img[e]:-} ]]; then
    next_dev "${img[e]}"; dev_of[e]=$dev
    echo "lfb_check e.clevis fail clevis_unlock $dev e_clevis; lfb_check e.clevis.unmapped ok not_mapped e_clevis"
    luksforge_unlocks &&
      echo "lfb_check e.luksforge fail luksforge_unlock $dev e_lf; lfb_check e.luksforge.unmapped ok not_mapped e_lf"
  fi
  if [[ -n ${img[d]:-} ]]; then
    # The stamped instances (the product) by stock clevis; the sealed base by luksforge where it can unlock (each
    # stock clevis unlock costs ~12 s of emulated process start-ups), else by clevis too.
    next_dev "${img[d]}"
    if ((cap_tang)); then
      echo "lfb_check d0.luksforge ok luksforge_unlock $dev d0_lf && lfb_check d0.luksforge.read ok read_back d0.luksforge d0_lf"
    else
      echo "lfb_check d0.clevis ok clevis_unlock $dev d0_clevis && lfb_check d0.clevis.read ok read_back d0.clevis d0_clevis"
    fi
    k=1
    for im in "${stamped[@]}"; do
      next_dev "$im"
      echo "lfb_check d$k.clevis ok clevis_unlock $dev d${k}_clevis && lfb_check d$k.clevis.read ok read_back d$k.clevis d${k}_clevis"
      k=$((k + 1))
    done
  fi
  if ((token_case)) && [[ -n ${img[b]:-} && -n ${img[c]:-} && -n ${img[e]:-} ]]; then
    # Last, because it deletes Clevis: only libcryptsetup and the token handler can open the volumes now.
    echo 'rm -f /usr/bin/clevis* /usr/bin/jose /usr/bin/curl /usr/bin/luksforge'
    echo 'token_open() { cryptsetup open --token-only "$1" "$2"; }'
    echo "lfb_check f.b ok token_open ${dev_of[b]} f_b && lfb_check f.b.read ok read_back f.b f_b"
    echo "lfb_check f.c ok token_open ${dev_of[c]} f_c && lfb_check f.c.read ok read_back f.c f_c"
    echo "lfb_check f.e fail token_open ${dev_of[e]} f_e; lfb_check f.e.unmapped ok not_mapped f_e"
    if [[ -x /lib/systemd/systemd-cryptsetup ]]; then
      # No key file, headless: systemd-cryptsetup opens b only if it asks the token handlers.
      echo 'sd_attach() { SYSTEMD_LOG_TARGET=console SYSTEMD_LOG_LEVEL=info /usr/lib/systemd/systemd-cryptsetup attach "$2" "$1" none headless; }'
      echo "lfb_check f.systemd ok sd_attach ${dev_of[b]} f_sd && lfb_check f.systemd.read ok read_back f.systemd f_sd"
    fi
  fi
  echo 'lfb_finish'
} >"$job2/run.sh"
cli_opt=(); luksforge_unlocks && cli_opt=(--cli "$CLI")
((token_case)) && cli_opt+=(--token-handler "$HANDLER")
boot_run read "$work" "$job2" 500 "${cli_opt[@]}" --hosts "$work/hosts.guest" "${disks2[@]}" \
  --tang "10.0.2.100=$work/tang1" --tang "10.0.2.101=$work/tang2"
boot2_ok=$?
log2="$work/read.log"

binder=luksforge; [[ $stock == 1 ]] && binder=stock
# ---- verdicts -------------------------------------------------------------------------------------------------------
checks_pass() {  # CASE CHECK...: every check passed, and every read returned the payload boot 1 wrote
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
}
if [[ -n ${img[a]:-} ]]; then
  what="a: $binder-formatted volume opened by dm-crypt in the guest, written on boot 1, read back on boot 2"
  checks_pass "$what" a.open a.read && result_pass "$what"
fi
if [[ -n ${img[b]:-} ]]; then
  what="b: $binder tang binding unlocked through Tang in the guest by stock clevis luks unlock"
  checks=(b.clevis b.clevis.read)
  luksforge_unlocks && { checks+=(b.luksforge b.luksforge.read); what+=" and by luksforge unlock --name"; }
  checks_pass "$what" "${checks[@]}" && result_pass "$what"
fi
if [[ -n ${img[c]:-} ]]; then
  what="c: $binder sss 2-of-3 binding unlocked with tang3 down, by stock clevis"
  checks=(c.clevis c.clevis.read)
  luksforge_unlocks && { checks+=(c.luksforge c.luksforge.read); what+=" and by luksforge"; }
  checks_pass "$what" "${checks[@]}" && result_pass "$what"
fi
if [[ -n ${img[e]:-} ]]; then
  what="e: volume bound to an unreachable Tang is not unlocked"
  checks=(e.clevis e.clevis.unmapped)
  luksforge_unlocks && checks+=(e.luksforge e.luksforge.unmapped)
  if checks_pass "$what" "${checks[@]}"; then
    # The refusal must come from the missing server, not from a broken tool: clevis names the server it could not
    # reach (and the same boot unlocked b and c through Tang with the same tools).
    if [[ $(boot_check_got "$log2" e.clevis) != fail ]]; then
      result_fail "$what" "the guest did not report the failed unlock" "$log2" e.clevis
    elif ! tr -d '\r' <"$log2" | grep -q '^LFB-LOG e.clevis| .*Error communicating with server http://tang3'; then
      result_fail "$what" "clevis failed for another reason than the unreachable tang3" "$log2" e.clevis
    elif luksforge_unlocks && ! tr -d '\r' <"$log2" | grep -q '^LFB-LOG e.luksforge| .*tang3'; then
      result_fail "$what" "luksforge's error does not name the unreachable tang3" "$log2" e.luksforge
    else
      result_pass "$what (the guest reported the failure$(luksforge_unlocks && echo ' for clevis and luksforge'))"
    fi
  fi
fi
if [[ -n ${img[d]:-} ]]; then
  what="d: sealed base and 2 stamped instances unlock through Tang to identical data with 3 different volume keys"
  checks=(d1.clevis d1.clevis.read d2.clevis d2.clevis.read)
  if ((cap_tang)); then
    checks+=(d0.luksforge d0.luksforge.read); what+=" (instances by stock clevis, the base by luksforge)"
  else
    checks+=(d0.clevis d0.clevis.read)
  fi
  if checks_pass "$what" "${checks[@]}"; then
    distinct=$(for im in "${img[d]}" "${stamped[@]}"; do host_key_digest "$im"; done | grep -E '^[0-9a-f]{64}$' | sort -u | wc -l)
    if ((distinct == 3)); then
      result_pass "$what"
    else
      result_fail "$what" "only $distinct distinct volume keys among the 3 images" "$log2"
    fi
  fi
fi
if ((token_case)) && [[ -n ${img[b]:-} && -n ${img[c]:-} && -n ${img[e]:-} ]]; then
  what="f: with Clevis deleted from the guest, cryptsetup open --token-only opens the tang and sss bindings (tang3 down) through libcryptsetup-token-clevis.so and refuses the one bound to tang3"
  checks=(f.b f.b.read f.c f.c.read f.e f.e.unmapped)
  if [[ -x /lib/systemd/systemd-cryptsetup ]]; then
    checks+=(f.systemd f.systemd.read); what+="; systemd-cryptsetup attach (no key file, headless) opens the tang binding through it too"
  fi
  if checks_pass "$what" "${checks[@]}"; then
    if ! tr -d '\r' <"$log2" | grep -q '^LFB-LOG f.e| .*Token 0 (clevis): Tang unavailable.*tang3'; then
      result_fail "$what" "the handler's error for e does not name the unreachable tang3" "$log2" f.e
    else
      result_pass "$what"
    fi
  fi
fi
((boot2_ok == 0)) || result_fail "boot 2 (read) did not finish" "serial log tail:" "$log2"

echo "boot proof: $n_pass passed, $n_fail failed, $n_skip skipped$([[ $stock == 1 ]] && echo ' (stock self-test)')"
((n_fail == 0))
