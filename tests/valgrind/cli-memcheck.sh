#!/usr/bin/env bash
# valgrind memcheck over the luksforge CLI paths (docs/hardening.md): format, bind against a real Tang (tangd on
# a free 127.0.0.1 port), unlock --test, list, inspect, unbind, policy check, seal of a small image, audit.
# Every run must end with zero memcheck errors and no definite or indirect leak; memcheck.supp holds only
# documented third-party leaks. Usage: cli-memcheck.sh LUKSFORGE_CLI SUPPRESSIONS
set -euo pipefail
cli=$1 supp=$2
tmp=$(mktemp -d /tmp/luksforge-memcheck.XXXXXX)
tang_pid=
cleanup() {
  [[ -n $tang_pid ]] && kill "$tang_pid" 2>/dev/null && wait "$tang_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir "$tmp/db"
/usr/libexec/tangd-keygen "$tmp/db"
socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" "EXEC:/usr/libexec/tangd $tmp/db" &
tang_pid=$!
url=http://127.0.0.1:$port
for _ in $(seq 100); do curl -sf -o /dev/null "$url/adv" && break; sleep 0.05; done
for key in "$tmp"/db/*.jwk; do
  jose jwk use -i "$key" -u verify && thp=$(jose jwk thp -i "$key")
done

runs=0
vg() {
  runs=$((runs + 1))
  echo "memcheck: luksforge $*"
  # --errors-for-leak-kinds: a definite or indirect leak fails like an invalid read.
  valgrind --quiet --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite,indirect --suppressions="$supp" --num-callers=30 "$cli" "$@"
}

printf 'memcheck build passphrase' >"$tmp/pass"
chmod 600 "$tmp/pass"
fast=(--pbkdf pbkdf2 --pbkdf-iterations 1000)
img=$tmp/disk.img
vg format "$img" --size 24M --passphrase-file "$tmp/pass" "${fast[@]}" >/dev/null
vg bind "$img" tang "{\"url\":\"$url\",\"thp\":\"$thp\"}" --passphrase-file "$tmp/pass" >/dev/null
vg unlock "$img" --test
vg list "$img"
vg inspect "$img" --json >/dev/null
slot=$("$cli" list "$img" | head -1 | cut -d: -f1)
vg unbind "$img" -s "$slot"

cat >"$tmp/policy.toml" <<POLICY
[[tang]]
url = "$url"
thp = "$thp"
POLICY
vg policy check "$tmp/policy.toml" >/dev/null
sealed=$tmp/sealed.img
vg format "$sealed" --size 24M --passphrase-file "$tmp/pass" "${fast[@]}" >/dev/null
vg seal "$sealed" --policy "$tmp/policy.toml" --build-passphrase-file "$tmp/pass" --no-ledger -q >/dev/null
vg unlock "$sealed" --test
vg audit "$img" "$sealed" --tang-key-dir "$tmp/db" >/dev/null
echo "memcheck: $runs CLI runs, 0 errors"
