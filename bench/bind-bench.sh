#!/usr/bin/env bash
# Time `luksforge bind` against stock `clevis luks bind` on identical prepared images, against one real Tang
# on a loopback port, for two build-slot PBKDFs (pbkdf2 at 1000 iterations, and cryptsetup's argon2id
# default). Prints per-run times, the medians and the ratio. Needs root (like the tests), tang, socat, clevis.
# Usage: bench/bind-bench.sh LUKSFORGE_BINARY [ROUNDS]
set -euo pipefail
luksforge=${1:?usage: $0 LUKSFORGE_BINARY [ROUNDS]}
rounds=${2:-3}

work=$(mktemp -d /tmp/luksforge-bench.XXXXXX)
socat_pid=
cleanup() {
    if [ -n "$socat_pid" ]; then kill "$socat_pid" 2>/dev/null || true; wait "$socat_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# A real Tang on a free loopback port.
mkdir "$work/db"
/usr/libexec/tangd-keygen "$work/db"
for attempt in $(seq 20); do
    port=$(shuf -i 20000-60000 -n 1)
    socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" "EXEC:/usr/libexec/tangd $work/db" 2>/dev/null &
    socat_pid=$!
    for _ in $(seq 50); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/adv" && break 2
        kill -0 "$socat_pid" 2>/dev/null || break
        sleep 0.05
    done
    kill "$socat_pid" 2>/dev/null || true
    socat_pid=
done
[ -n "$socat_pid" ] || { echo "cannot start Tang" >&2; exit 1; }
url="http://127.0.0.1:$port"
for key in "$work"/db/*.jwk; do
    jose jwk use -i "$key" -u verify && thp=$(jose jwk thp -i "$key")
done
config="{\"url\":\"$url\",\"thp\":\"$thp\"}"
printf 'bench build passphrase' > "$work/pass"

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

bench_one() {  # $1 label, $2.. luksFormat PBKDF arguments
    local label=$1; shift
    rm -f "$work/base.img"
    truncate -s 32M "$work/base.img"
    cryptsetup luksFormat --type luks2 --batch-mode "$@" "$work/base.img" "$work/pass" >/dev/null
    local ours=() unverified=() theirs=()
    for i in $(seq "$rounds"); do
        cp --sparse=always "$work/base.img" "$work/a.img"
        cp --sparse=always "$work/base.img" "$work/b.img"
        cp --sparse=always "$work/base.img" "$work/c.img"
        local t0 t1
        t0=$(now_ms)
        "$luksforge" bind "$work/a.img" tang "$config" --passphrase-file "$work/pass" >/dev/null
        t1=$(now_ms); ours+=($((t1 - t0)))
        # Clevis does not verify its binding; luksforge's extra proof round trip, measured apart.
        t0=$(now_ms)
        "$luksforge" bind "$work/c.img" tang "$config" --passphrase-file "$work/pass" --no-verify >/dev/null
        t1=$(now_ms); unverified+=($((t1 - t0)))
        t0=$(now_ms)
        clevis luks bind -y -d "$work/b.img" -k "$work/pass" tang "$config" >/dev/null 2>&1
        t1=$(now_ms); theirs+=($((t1 - t0)))
        # Both bindings must work, or the timing means nothing.
        clevis luks pass -d "$work/a.img" -s 1 | cryptsetup open --test-passphrase --key-slot 1 "$work/a.img" --key-file - ||
            { echo "luksforge binding does not open its keyslot" >&2; exit 1; }
        "$luksforge" unlock "$work/b.img" --test >/dev/null ||
            { echo "clevis binding does not unlock with luksforge" >&2; exit 1; }
    done
    local m_ours m_unverified m_theirs
    m_ours=$(printf '%s\n' "${ours[@]}" | median)
    m_unverified=$(printf '%s\n' "${unverified[@]}" | median)
    m_theirs=$(printf '%s\n' "${theirs[@]}" | median)
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", (b > 0) ? a / b : 0}'; }
    echo "$label:"
    printf '  luksforge bind (verified):  %6s ms  runs: %s\n' "$m_ours" "${ours[*]}"
    printf '  luksforge bind --no-verify: %6s ms  runs: %s\n' "$m_unverified" "${unverified[*]}"
    printf '  clevis luks bind -y:        %6s ms  runs: %s\n' "$m_theirs" "${theirs[*]}"
    printf '  ratio clevis/luksforge: %sx (verified), %sx (--no-verify, like for like)\n' \
        "$(ratio "$m_theirs" "$m_ours")" "$(ratio "$m_theirs" "$m_unverified")"
}

echo "bind benchmark: $rounds round(s) each, Tang at $url, 32 MiB images, $(nproc) CPU(s)"
bench_one "build slot pbkdf2-1000" --pbkdf pbkdf2 --pbkdf-force-iterations 1000
bench_one "build slot argon2id" --pbkdf argon2id
