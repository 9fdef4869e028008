#!/usr/bin/env bash
# luksforge against the stock tools, in one run: format, bind, pass, seal, stamp (N x SIZE and 1 x BIG, dense),
# the data path's MB/s against cp + fsync and `openssl speed -evp aes-256-xts` (one core, all cores), and the
# peak RSS of every timed command. Each case runs ROUNDS pairs (luksforge, stock) and reports medians; every
# timed command's result is checked afterwards (bindings open, build passphrases are gone, volume keys differ,
# sampled plaintext is unchanged), so a broken run cannot look fast. Prints a table and writes JSON.
# The tpm2 pin's cases (tpm2 and sss tang+tpm2 bind/pass against one swtpm) are in bench/tpm2-bench.sh.
#
# Usage: bench/bench.sh LUKSFORGE_BINARY [JSON_OUT]      (root; tang, socat, clevis, cryptsetup, openssl)
# Environment: BENCH_ROUNDS (3), BENCH_MIB (1024), BENCH_BIG_MIB (4096, 0 = skip), BENCH_COUNT (3),
#              BENCH_BIG_ROUNDS (BENCH_ROUNDS), BENCH_DIR (/var/tmp: the images need ~(COUNT+4) x MIB + 3 x BIG),
#              BENCH_ONLY (unset = everything; "sparse" = only the sparse-base case and what it needs: Tang, the
#              sealed dense base, then the report, whose other goals then read "not measured")
set -euo pipefail
luksforge=$(readlink -f "${1:?usage: $0 LUKSFORGE_BINARY [JSON_OUT]}")
json_out=${2:-}
rounds=${BENCH_ROUNDS:-3}
mib=${BENCH_MIB:-1024}
big_mib=${BENCH_BIG_MIB:-4096}
count=${BENCH_COUNT:-3}
big_rounds=${BENCH_BIG_ROUNDS:-$rounds}
here=$(cd "$(dirname "$0")" && pwd)
only=${BENCH_ONLY:-}
case "$only" in
    "" | sparse) ;;
    *) echo "BENCH_ONLY=$only: only 'sparse' is known" >&2; exit 2;;
esac
whole() { [ -z "$only" ]; }  # the whole run, not a BENCH_ONLY subset

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/luksforge-bench.XXXXXX")
socat_pid=
cleanup() {
    if [ -n "$socat_pid" ]; then kill "$socat_pid" 2>/dev/null || true; wait "$socat_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
results=$work/results.tsv
: > "$results"
fail() { echo "bench: CHECK FAILED: $*" >&2; exit 1; }

# --- a real Tang on a free loopback port ------------------------------------------------------------------------
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
printf 'max_instances_per_key = 1\n[[tang]]\nurl = "%s"\nthp = "%s"\n' "$url" "$thp" > "$work/policy.toml"
printf 'bench build passphrase' > "$work/pass"
pbkdf=(--pbkdf pbkdf2 --pbkdf-force-iterations 1000)   # build keyslots: cheap for both sides alike

# --- measuring -------------------------------------------------------------------------------------------------
# measure CASE TOOL BYTES CMD...: wall seconds and peak RSS (largest process of the command, /usr/bin/time %M).
measure() {
    local case=$1 tool=$2 bytes=$3; shift 3
    local t0 t1
    t0=$(date +%s%N)
    /usr/bin/time -f '%M' -o "$work/rss" "$@" > "$work/cmd.out" 2> "$work/err" || {
        cat "$work/err" >&2; fail "$case/$tool: command failed: $*"; }
    t1=$(date +%s%N)
    printf '%s\t%s\t%s\t%s\t%s\n' "$case" "$tool" "$(( (t1 - t0) / 1000 ))" "$(tail -1 "$work/rss")" "$bytes" >> "$results"
}

# fingerprint IMG: the volume-key fingerprint (public header data)
fingerprint() { "$luksforge" inspect "$1" --json | sed -n 's/.*"fingerprint": *"\([0-9a-f]*\)".*/\1/p' | tail -1; }
# A dense LUKS2 image of MIB MiB: the data area filled with random ciphertext.
make_dense() {  # $1 path $2 MiB
    rm -f "$1"; truncate -s "$2M" "$1"
    cryptsetup luksFormat -q --type luks2 "${pbkdf[@]}" "$1" "$work/pass" >/dev/null
    dd if=/dev/urandom of="$1" bs=4M seek=4 count=$(( ($2 - 16) / 4 )) conv=notrunc status=none
}
# sample IMG PASSFILE: SHA-256 of three decrypted sectors (first, middle, last; bench/sample_plain.py) —
# plaintext must survive every re-key, whoever did it.
sample() {
    local img=$1 passfile=$2 offset sector out
    rm -f "$work/vk"
    cryptsetup luksDump -q --dump-volume-key --volume-key-file "$work/vk" --key-file "$passfile" "$img" >/dev/null 2>&1 ||
        fail "cannot read the volume key of $img"
    offset=$(cryptsetup luksDump "$img" | sed -n 's/^\toffset: \([0-9]*\) \[bytes\]/\1/p' | head -1)
    sector=$(cryptsetup luksDump "$img" | sed -n 's/^\tsector: \([0-9]*\) \[bytes\]/\1/p' | head -1)
    out=$(/usr/bin/python3 "$here/sample_plain.py" "$img" "$work/vk" "$offset" "$sector") || fail "cannot sample $img"
    rm -f "$work/vk"
    [ ${#out} -eq 16 ] || fail "no plaintext sample of $img"
    echo "$out"
}
# clevis_pass IMG SLOT OUTFILE
clevis_pass() { clevis luks pass -d "$1" -s "$2" > "$3"; }
clevis_slot() { clevis luks list -d "$1" | head -1 | cut -d: -f1; }
check_clevis_opens() {  # IMG
    local slot; slot=$(clevis_slot "$1"); [ -n "$slot" ] || fail "$1 has no clevis binding"
    clevis_pass "$1" "$slot" "$work/check.pass"
    cryptsetup open --test-passphrase --key-slot "$slot" --key-file "$work/check.pass" "$1" || fail "binding of $1 does not open"
}
check_build_gone() { ! cryptsetup open --test-passphrase --key-file "$work/pass" "$1" 2>/dev/null || fail "build passphrase still opens $1"; }

echo "bench: $rounds round(s), ${mib} MiB images, stamp $count x, big ${big_mib} MiB, $(nproc) CPU(s), Tang at $url, in $work"

# --- format and bind, pass ---------------------------------------------------------------------------------------
if whole; then
    for i in $(seq "$rounds"); do
        rm -f "$work"/f1.img "$work"/f2.img; truncate -s 64M "$work/f1.img" "$work/f2.img"
        measure format luksforge 0 "$luksforge" format "$work/f1.img" --passphrase-file "$work/pass" --pbkdf pbkdf2 --pbkdf-iterations 1000
        measure format stock 0 cryptsetup luksFormat -q --type luks2 "${pbkdf[@]}" "$work/f2.img" "$work/pass"
        for f in f1 f2; do cryptsetup open --test-passphrase --key-file "$work/pass" "$work/$f.img" || fail "format $f"; done

        measure bind luksforge 0 "$luksforge" bind "$work/f1.img" tang "$config" --passphrase-file "$work/pass"
        measure bind stock 0 clevis luks bind -y -d "$work/f2.img" -k "$work/pass" tang "$config"
        check_clevis_opens "$work/f1.img"; check_clevis_opens "$work/f2.img"

        s1=$(clevis_slot "$work/f1.img")
        measure pass luksforge 0 bash -c "'$luksforge' pass '$work/f1.img' -s $s1 > '$work/p1'"
        measure pass stock 0 bash -c "clevis luks pass -d '$work/f1.img' -s $s1 > '$work/p2'"
        cmp -s "$work/p1" "$work/p2" || fail "luksforge pass and clevis luks pass disagree"
        cryptsetup open --test-passphrase --key-slot "$s1" --key-file "$work/p1" "$work/f1.img" || fail "pass"
    done
fi

# --- tpm2 pin (issue 16 item 5): bind and pass against one swtpm, in bench/tpm2-bench.sh ---------------------------
. "$here/tpm2-bench.sh"
whole && tpm2_bench

# --- seal --------------------------------------------------------------------------------------------------------
seal_copy=()
"$luksforge" seal --help | grep -q -- '--copy' && seal_copy=(--copy)
seal_case() {  # $1 case name, $2 MiB, $3 rounds
    local name=$1 size=$2 n=$3
    make_dense "$work/master.img" "$size"
    local before plain
    before=$(fingerprint "$work/master.img")
    plain=$(sample "$work/master.img" "$work/pass")
    for i in $(seq "$n"); do
        local variants=(inplace)
        [ ${#seal_copy[@]} -gt 0 ] && variants+=(copy)
        for v in "${variants[@]}"; do
            cp --sparse=never "$work/master.img" "$work/ours.img"; sync
            local extra=(); [ "$v" = copy ] && extra=("${seal_copy[@]}")
            measure "$name" "luksforge-$v" $((size << 20)) "$luksforge" seal "$work/ours.img" --policy "$work/policy.toml" \
                --build-passphrase-file "$work/pass" --no-ledger -q "${extra[@]}"
            check_build_gone "$work/ours.img"; check_clevis_opens "$work/ours.img"
            [ "$(fingerprint "$work/ours.img")" != "$before" ] || fail "seal kept the volume key"
            [ "$(sample "$work/ours.img" "$work/check.pass")" = "$plain" ] || fail "seal changed the plaintext"
        done
        cp --sparse=never "$work/master.img" "$work/stock.img"; sync
        measure "$name" stock $((size << 20)) bash -c "cryptsetup reencrypt -q --force-offline-reencrypt --key-file '$work/pass' '$work/stock.img' &&
            clevis luks bind -y -d '$work/stock.img' -k '$work/pass' tang '$config' &&
            cryptsetup luksRemoveKey -q '$work/stock.img' '$work/pass'"
        check_build_gone "$work/stock.img"; check_clevis_opens "$work/stock.img"
        [ "$(fingerprint "$work/stock.img")" != "$before" ] || fail "stock seal kept the volume key"
        [ "$(sample "$work/stock.img" "$work/check.pass")" = "$plain" ] || fail "stock seal changed the plaintext"
    done
    rm -f "$work/ours.img" "$work/stock.img"
}
whole && seal_case "seal ${mib}M" "$mib" "$rounds"

# --- stamp -------------------------------------------------------------------------------------------------------
sealed_base() {  # $1 path $2 MiB: a dense image, sealed (the base stamp_case and sparse_case stamp from)
    make_dense "$1" "$2"
    "$luksforge" seal "$1" --policy "$work/policy.toml" --build-passphrase-file "$work/pass" --no-ledger -q
}
stamp_case() {  # $1 case name, $2 MiB, $3 count, $4 rounds
    local name=$1 size=$2 n_inst=$3 n=$4
    sealed_base "$work/base.img" "$size"
    local base_slot base_fp plain
    base_slot=$(clevis_slot "$work/base.img"); base_fp=$(fingerprint "$work/base.img")
    clevis_pass "$work/base.img" "$base_slot" "$work/base.pass"
    plain=$(sample "$work/base.img" "$work/base.pass")
    sync
    for i in $(seq "$n"); do
        rm -rf "$work/out" "$work/stock"; mkdir "$work/out" "$work/stock"; sync  # freed blocks (discard) outside the timing
        measure "$name" luksforge $((size * n_inst << 20)) "$luksforge" stamp "$work/base.img" --count "$n_inst" \
            --out "$work/out" --ledger "$work/ledger.db" --policy "$work/policy.toml"
        local script=""
        for k in $(seq "$n_inst"); do
            local inst="$work/stock/i$k.img"
            script+="cp '$work/base.img' '$inst' && clevis luks pass -d '$work/base.img' -s $base_slot > '$work/stock/p$k' &&
                cryptsetup reencrypt -q --force-offline-reencrypt --key-file '$work/stock/p$k' '$inst' &&
                old=\$(clevis luks list -d '$inst' | head -1 | cut -d: -f1) &&
                clevis luks bind -y -d '$inst' -k '$work/stock/p$k' tang '$config' &&
                clevis luks unbind -f -d '$inst' -s \$old && sync '$inst' && "
        done
        measure "$name" stock $((size * n_inst << 20)) bash -c "${script}true"
        local fps=" $base_fp "
        for inst in "$work"/out/*.img "$work"/stock/i*.img; do
            check_clevis_opens "$inst"
            cryptsetup open --test-passphrase --key-file "$work/base.pass" "$inst" 2>/dev/null && fail "$inst opens with the base passphrase"
            local fp; fp=$(fingerprint "$inst")
            case "$fps" in *" $fp "*) fail "$inst shares a volume key";; esac
            fps+="$fp "
            [ "$(sample "$inst" "$work/check.pass")" = "$plain" ] || fail "$inst has other plaintext than the base"
        done
        [ "$(ls "$work/out" | wc -l)" -eq "$n_inst" ] || fail "stamp made the wrong number of instances"
    done
    rm -rf "$work/out" "$work/stock"
}
if whole; then
    stamp_case "stamp ${count}x${mib}M" "$mib" "$count" "$rounds"
else
    sealed_base "$work/base.img" "$mib"  # sparse_case's dense base, made by stamp_case in the whole run
fi

# stamp_one CASE BYTES BASE: one instance from BASE, timed, then opened with stock clevis
stamp_one() {
    local inst
    rm -rf "$work/out"; mkdir "$work/out"; sync  # freed blocks (discard) outside the timing
    measure "$1" luksforge "$2" "$luksforge" stamp "$3" --count 1 \
        --out "$work/out" --ledger "$work/ledger.db" --policy "$work/policy.toml"
    for inst in "$work"/out/*.img; do check_clevis_opens "$inst"; done
}
# A sparse base (a tenth of its data area written) costs time in proportion to its allocated bytes. An empty base
# (LUKS2 header only, sealed the same way) measures the fixed per-instance cost (start-up, header, Tang binding and
# proof, ledger commit, fsync, rename), so report.py can set it aside and compare the data-dependent part alone.
# The three run interleaved in every round (empty, sparse, dense), so a drifting machine hits them alike.
sparse_case() {
    local kind
    for kind in empty sparse; do
        rm -f "$work/$kind.img"; truncate -s "${mib}M" "$work/$kind.img"
        cryptsetup luksFormat -q --type luks2 "${pbkdf[@]}" "$work/$kind.img" "$work/pass" >/dev/null
        if [ "$kind" = sparse ]; then
            dd if=/dev/urandom of="$work/sparse.img" bs=4M seek=4 count=$(( (mib - 16) / 40 )) conv=notrunc status=none
        fi
        "$luksforge" seal "$work/$kind.img" --policy "$work/policy.toml" --build-passphrase-file "$work/pass" --no-ledger -q ${seal_copy[@]+"${seal_copy[@]}"}
    done
    local empty_allocated sparse_allocated
    empty_allocated=$(( $(stat -c %b "$work/empty.img") * 512 ))
    sparse_allocated=$(( $(stat -c %b "$work/sparse.img") * 512 ))
    for i in $(seq "$rounds"); do
        stamp_one "stamp 1x${mib}M empty" "$empty_allocated" "$work/empty.img"
        stamp_one "stamp 1x${mib}M sparse" "$sparse_allocated" "$work/sparse.img"
        stamp_one "stamp 1x${mib}M dense" $((mib << 20)) "$work/base.img"
    done
    rm -rf "$work/out" "$work/empty.img" "$work/sparse.img"
}
sparse_case

# --- the data path against the disk and the cipher ----------------------------------------------------------------
if whole; then
    for i in $(seq "$rounds"); do
        measure "cp+fsync ${mib}M" cp $((mib << 20)) bash -c "cp --sparse=never '$work/base.img' '$work/copy.img' && sync '$work/copy.img'"
        cmp -s "$work/base.img" "$work/copy.img" || fail "cp made a different file"
        rm -f "$work/copy.img"; sync
    done
    openssl_mbs() {  # $@ extra openssl speed args → MB/s on 4 KiB blocks (the 16384-byte column scaled alike)
        openssl speed -evp aes-256-xts -bytes 4096 -seconds 2 "$@" 2>/dev/null | awk '/^(evp|aes-256-xts|AES-256-XTS)/ {v=$NF} END {sub("k","",v); printf "%.0f", v * 1000 / 1e6}'
    }
    ossl_one=$(openssl_mbs)
    ossl_all=$(openssl_mbs -multi "$(nproc)")
    [ "${ossl_one:-0}" -gt 0 ] || fail "openssl speed gave no number"
    printf 'openssl 1 core\topenssl\t0\t0\t%s\n' "$ossl_one" >> "$results"
    printf 'openssl %s cores\topenssl\t0\t0\t%s\n' "$(nproc)" "$ossl_all" >> "$results"

    if [ "$big_mib" -gt 0 ]; then
        rm -f "$work/base.img" "$work/master.img"
        stamp_case "stamp 1x${big_mib}M" "$big_mib" 1 "$big_rounds"
        seal_case "seal ${big_mib}M" "$big_mib" "$big_rounds"
    fi
fi

/usr/bin/python3 "$here/report.py" "$results" "$mib" "$count" "$big_mib" "$(nproc)" ${json_out:+"$json_out"}
