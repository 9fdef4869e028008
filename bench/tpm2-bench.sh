# shellcheck shell=bash disable=SC2154  # bench.sh's variables: work, rounds, pbkdf, luksforge, config
# The tpm2 pin in bench/bench.sh (issue 16, item 5), sourced by it: `luksforge bind IMG tpm2 '{}'` and
# `luksforge pass` against `clevis luks bind ... tpm2 '{}'` and `clevis luks pass`, and the same for sss over Tang
# and the TPM (t=2), all against one software TPM (swtpm on a loopback port, started and stopped here; it is
# killed with the bench however the bench ends). Uses bench.sh's measure, fail, check_clevis_opens, clevis_slot,
# $work (and its pass file), $pbkdf, $config, $rounds. Every bind is checked to open and to be a binding of the
# intended pin; both tools' recovered passphrases must be identical and open the keyslot.
# (Unlock proper needs device-mapper; the boot proof, tests/boot/tpm2-proof.sh, does that in a guest.)

tpm2_swtpm_pid=
tpm2_start_swtpm() {  # -> sets tpm2_swtpm_pid, exports TPM2TOOLS_TCTI
    local p
    mkdir -p "$work/tpm2-state"
    for _ in $(seq 20); do
        p=$(shuf -i 20000-60000 -n 1)
        setpriv --pdeathsig KILL -- swtpm socket --tpm2 --tpmstate "dir=$work/tpm2-state" \
            --server "type=tcp,port=$p,bindaddr=127.0.0.1" --ctrl "type=tcp,port=$((p + 1)),bindaddr=127.0.0.1" \
            --flags not-need-init,startup-clear >"$work/swtpm.log" 2>&1 </dev/null &
        tpm2_swtpm_pid=$!
        for _ in $(seq 50); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
                export TPM2TOOLS_TCTI="swtpm:host=127.0.0.1,port=$p"
                return 0
            fi
            kill -0 "$tpm2_swtpm_pid" 2>/dev/null || break
            sleep 0.05
        done
        kill "$tpm2_swtpm_pid" 2>/dev/null || true
        wait "$tpm2_swtpm_pid" 2>/dev/null || true
        tpm2_swtpm_pid=
    done
    cat "$work/swtpm.log" >&2
    fail "cannot start swtpm"
}
tpm2_stop_swtpm() {
    [ -n "$tpm2_swtpm_pid" ] || return 0
    kill "$tpm2_swtpm_pid" 2>/dev/null || true
    wait "$tpm2_swtpm_pid" 2>/dev/null || true
    tpm2_swtpm_pid=
    unset TPM2TOOLS_TCTI
}

# tpm2_check_pin IMG PIN: IMG's first Clevis binding opens and is one of PIN (as stock `clevis luks list` reads it)
tpm2_check_pin() {
    local slot
    check_clevis_opens "$1"
    slot=$(clevis_slot "$1")
    clevis luks list -d "$1" | grep -q "^$slot: $2 " || fail "$1: binding is not $2: $(clevis luks list -d "$1")"
}

# tpm2_case NAME PIN CONFIG: ROUNDS pairs of bind, then of pass, on fresh identical images
tpm2_case() {
    local name=$1 pin=$2 cfg=$3 s1 s2
    for _ in $(seq "$rounds"); do
        rm -f "$work"/t1.img "$work"/t2.img; truncate -s 64M "$work/t1.img" "$work/t2.img"
        for f in t1 t2; do cryptsetup luksFormat -q --type luks2 "${pbkdf[@]}" "$work/$f.img" "$work/pass" >/dev/null; done
        measure "$name bind" luksforge 0 "$luksforge" bind "$work/t1.img" "$pin" "$cfg" --passphrase-file "$work/pass"
        measure "$name bind" stock 0 clevis luks bind -y -d "$work/t2.img" -k "$work/pass" "$pin" "$cfg"
        tpm2_check_pin "$work/t1.img" "$pin"; tpm2_check_pin "$work/t2.img" "$pin"

        # Both tools recover luksforge's binding (timed) and clevis's (untimed): the formats must agree.
        s1=$(clevis_slot "$work/t1.img"); s2=$(clevis_slot "$work/t2.img")
        measure "$name pass" luksforge 0 bash -c "'$luksforge' pass '$work/t1.img' -s $s1 > '$work/tp1'"
        measure "$name pass" stock 0 bash -c "clevis luks pass -d '$work/t1.img' -s $s1 > '$work/tp2'"
        cmp -s "$work/tp1" "$work/tp2" || fail "$name: luksforge pass and clevis luks pass disagree"
        cryptsetup open --test-passphrase --key-slot "$s1" --key-file "$work/tp1" "$work/t1.img" || fail "$name: pass"
        "$luksforge" pass "$work/t2.img" -s "$s2" > "$work/tp1" || fail "$name: luksforge pass of clevis's binding"
        clevis luks pass -d "$work/t2.img" -s "$s2" > "$work/tp2"
        cmp -s "$work/tp1" "$work/tp2" || fail "$name: luksforge pass and clevis luks pass disagree on clevis's binding"
    done
    rm -f "$work"/t1.img "$work"/t2.img "$work"/tp1 "$work"/tp2
}

tpm2_bench() {
    if ! command -v swtpm >/dev/null || ! command -v clevis-encrypt-tpm2 >/dev/null; then
        echo "bench: tpm2 cases skipped (no swtpm or clevis-tpm2: run tools/deps.sh)"; return 0
    fi
    tpm2_start_swtpm
    # A luksforge built before the tpm2 pin says so on bind: skipped and said; any other failure fails the bench.
    truncate -s 32M "$work/t0.img"
    cryptsetup luksFormat -q --type luks2 "${pbkdf[@]}" "$work/t0.img" "$work/pass" >/dev/null
    if ! "$luksforge" bind "$work/t0.img" tpm2 '{}' --passphrase-file "$work/pass" >/dev/null 2>"$work/err"; then
        grep -q "unknown pin 'tpm2'" "$work/err" || { cat "$work/err" >&2; fail "luksforge bind tpm2 (probe)"; }
        echo "bench: tpm2 cases skipped (this luksforge has no tpm2 pin)"
        rm -f "$work/t0.img"; tpm2_stop_swtpm; return 0
    fi
    rm -f "$work/t0.img"
    tpm2_case tpm2 tpm2 '{}'
    tpm2_case "sss tang+tpm2" sss "{\"t\":2,\"pins\":{\"tang\":[$config],\"tpm2\":{}}}"
    tpm2_stop_swtpm
}
