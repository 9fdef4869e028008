#!/usr/bin/env bash
# luksforge end to end on a built-in default: start a real Tang server on 127.0.0.1, forge an image with a build
# passphrase, seal it (fresh volume key, Tang binding verified through the server, build passphrase removed), and
# prove that STOCK Clevis and cryptsetup unlock it. Needs root. DEMO_DIR chooses where the files go (default ./demo);
# LUKSFORGE_BIN=/usr/bin/luksforge runs an installed luksforge instead of building one (packaging/test_deb.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
bash tools/deps.sh >/dev/null
if [[ -n ${LUKSFORGE_BIN:-} ]]; then
  lf=$LUKSFORGE_BIN
else
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build -j"$(nproc)" --target luksforge-cli >/dev/null
  lf=$top/build/cli/luksforge
fi

work=$(realpath -m "${DEMO_DIR:-$top/demo}")
umask 077
rm -rf "$work" && mkdir -p "$work"
tang_pid=
cleanup() {
  [ -n "$tang_pid" ] && kill "$tang_pid" 2>/dev/null && wait "$tang_pid" 2>/dev/null
  rm -f "$work"/*.pass   # secrets never outlive the demo
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Tang server on 127.0.0.1"
mkdir -p "$work/tang-db"
/usr/libexec/tangd-keygen "$work/tang-db"
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" EXEC:"/usr/libexec/tangd $work/tang-db" 2>"$work/tang.log" &
tang_pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/adv" >/dev/null && break; sleep 0.1; done
thp=
for key in "$work"/tang-db/*.jwk; do
  grep -q '"verify"' "$key" && thp=$(jose jwk thp -i "$key")
done
echo "url http://127.0.0.1:$port, signing key thumbprint $thp"

step "Policy pinning that key"
cat > "$work/policy.toml" <<EOP
max_instances_per_key = 1

[[tang]]
url = "http://127.0.0.1:$port"
thp = "$thp"
EOP
cat "$work/policy.toml"
"$lf" policy check "$work/policy.toml"

step "Forge a 64 MiB LUKS2 image with a build passphrase (as an installer would)"
head -c 24 /dev/urandom | base64 | tr -d '\n' > "$work/build.pass"
"$lf" format "$work/demo.img" --size 64M --passphrase-file "$work/build.pass" \
      --pbkdf argon2id --pbkdf-memory 65536 --pbkdf-iterations 4 --pbkdf-parallel 1
before=$("$lf" inspect "$work/demo.img" --json | jose fmt -j- -g fingerprint -u-)
echo "volume-key fingerprint: $before"

step "Seal: re-key, bind the policy's Tang pin, verify through Tang, remove the build passphrase"
"$lf" seal "$work/demo.img" --policy "$work/policy.toml" --build-passphrase-file "$work/build.pass" \
      --report "$work/seal-report.json"
after=$("$lf" inspect "$work/demo.img" --json | jose fmt -j- -g fingerprint -u-)
[ "$before" != "$after" ] || { echo "FAIL: the volume key did not change" >&2; exit 1; }
echo "fingerprint before $before"
echo "fingerprint after  $after"

step "luksforge inspect and list"
"$lf" inspect "$work/demo.img"
"$lf" list "$work/demo.img"

step "Stock Clevis recovers the passphrase through Tang; stock cryptsetup accepts it"
slot=$(clevis luks list -d "$work/demo.img" | head -n1 | cut -d: -f1)
clevis luks pass -d "$work/demo.img" -s "$slot" > "$work/clevis.pass"
cryptsetup open --test-passphrase --key-slot "$slot" --key-file "$work/clevis.pass" "$work/demo.img"
echo "clevis luks pass + cryptsetup --test-passphrase on slot $slot: OK"
"$lf" unlock "$work/demo.img" --test && echo "luksforge unlock --test: OK"

step "The build passphrase no longer opens the image"
# Passphrase only: with luksforge's Clevis token handler installed (packaging/test_deb.sh), cryptsetup would
# first try the image's token, which Tang still unlocks, whatever the key file says.
if cryptsetup open --test-passphrase --disable-external-tokens --key-file "$work/build.pass" "$work/demo.img" 2>/dev/null; then
  echo "FAIL: the build passphrase still opens the image" >&2; exit 1
fi
echo "build passphrase refused: OK"

step "Without Tang nothing unlocks"
kill "$tang_pid"; wait "$tang_pid" 2>/dev/null || true; tang_pid=
if "$lf" unlock "$work/demo.img" --test 2>"$work/no-tang.err"; then
  echo "FAIL: unlocked without Tang" >&2; exit 1
fi
echo "luksforge unlock without Tang: $(head -n1 "$work/no-tang.err")"

printf '\n\033[1mPASS\033[0m demo image %s (report %s)\n' "$work/demo.img" "$work/seal-report.json"
