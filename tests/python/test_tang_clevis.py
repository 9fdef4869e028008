"""Tang advertisements, Clevis pins and LUKS2 clevis bindings through the Python module, against a real Tang
server (tangd behind socat on loopback) and stock clevis/cryptsetup/jose."""

import json
import socket
import subprocess
import threading
import time

import pytest

import luksforge
from conftest import FAST, cryptsetup_accepts, free_port, run


def test_fetch_advertisement_is_verified_and_shows_the_thumbprints(tang):
    adv = luksforge.fetch_advertisement(tang.url)
    assert adv.signed and tang.thp in adv.signing_thumbprints
    assert adv.has_signing_key(tang.thp) and not adv.has_signing_key("A" * 43)
    assert {k["kty"] for k in adv.keys["keys"]} == {"EC"}
    client = luksforge.TangClient(tang.url + "/")
    assert client.fetch_advertisement(thp=tang.thp).signing_thumbprints == adv.signing_thumbprints


def test_jwk_thumbprint_matches_jose(tang):
    for jwk in tang.keydir.glob("*.jwk"):
        expected = run("jose", "jwk", "thp", "-i", jwk).stdout.decode().strip()
        assert luksforge.jwk_thumbprint(jwk.read_text()) == expected
        assert luksforge.jwk_thumbprint(json.loads(jwk.read_text())) == expected


def test_trust_by_pin_offline_advertisement_or_explicit_tofu(tang, tmp_path):
    pinned = luksforge.trusted_advertisement({"url": tang.url, "thp": tang.thp})
    assert pinned.source == "pinned_thumbprint"
    with pytest.raises(luksforge.TangError) as untrusted:
        luksforge.trusted_advertisement({"url": tang.url})
    assert tang.thp in str(untrusted.value)  # the error shows what to pin
    assert luksforge.trusted_advertisement({"url": tang.url}, trust_on_first_use=True).source == "trust_on_first_use"
    with pytest.raises(luksforge.TangError):
        luksforge.trusted_advertisement({"url": tang.url, "thp": "x5j47HARIeE6pkZckMW8Z7dvFQ8XWCRdQ_5UlETyj4I"})
    adv_file = tmp_path / "adv.jws"
    adv_file.write_bytes(run("curl", "-sf", f"{tang.url}/adv").stdout)
    offline = luksforge.trusted_advertisement({"url": tang.url, "adv": str(adv_file)})
    assert offline.source == "offline_advertisement"
    assert luksforge.parse_advertisement(adv_file.read_text()).signing_thumbprints == pinned.advertisement.signing_thumbprints


def test_garbage_advertisement_is_refused():
    with pytest.raises(luksforge.Error):
        luksforge.parse_advertisement('{"payload":"e30","signatures":[]}')
    with pytest.raises(luksforge.FormatError):
        luksforge.parse_advertisement("not json")


def test_clevis_encrypt_decrypt_interoperates_with_stock_clevis(tang):
    secret = b"secret \x00 bytes"
    jwe = luksforge.clevis_encrypt("tang", tang.config(), secret)
    assert jwe.count(".") == 4
    assert run("clevis", "decrypt", input=jwe.encode()).stdout == secret
    theirs = run("clevis", "encrypt", "tang", json.dumps(tang.config()), input=b"from clevis").stdout
    recovered = luksforge.clevis_decrypt(theirs.decode())
    assert isinstance(recovered, luksforge.Secret) and recovered == b"from clevis"
    assert luksforge.clevis_decrypt(theirs) == b"from clevis"  # bytes-like JWE too
    assert luksforge.describe_jwe(jwe) == ("tang", json.dumps({"url": tang.url}, separators=(",", ":")))


def test_tampered_jwe_is_an_auth_error(tang):
    jwe = luksforge.clevis_encrypt("tang", tang.config(), b"x")
    parts = jwe.split(".")
    parts[3] = parts[3][:-2] + ("AA" if not parts[3].endswith("AA") else "BB")
    with pytest.raises(luksforge.AuthError):
        luksforge.clevis_decrypt(".".join(parts))


def test_tang_down_is_a_tang_error(tmp_path):
    port = free_port()  # nothing listens there
    with pytest.raises(luksforge.TangError) as down:
        luksforge.fetch_advertisement(f"http://127.0.0.1:{port}")
    assert down.value.errno is not None and str(port) in str(down.value)


def test_network_wait_releases_the_gil():
    """A server that accepts and never answers: the client waits out its timeout with the GIL released."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    count = 0
    stop = False

    def spin():
        nonlocal count
        while not stop:
            count += 1

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    time.sleep(0.05)
    before = count
    started = time.monotonic()
    with pytest.raises(luksforge.TangError):
        luksforge.fetch_advertisement(f"http://127.0.0.1:{port}",
                                      network=luksforge.NetworkOptions(total_timeout_ms=600))
    elapsed = time.monotonic() - started
    advanced = count - before
    stop = True
    spinner.join()
    listener.close()
    assert 0.5 <= elapsed < 5
    assert advanced > 10_000


def test_bind_verifies_and_stock_clevis_unlocks_it(tang, luks_image, passphrase):
    with luksforge.Volume.open(luks_image) as volume:
        bound = volume.bind("tang", tang.config(), passphrase=passphrase)
        assert bound.verified and bound.verification == "verified" and bound.keyslot != 0
        bindings = volume.bindings()
        assert [(b.keyslot, b.pin) for b in bindings] == [(bound.keyslot, "tang")]
        assert str(bindings[0]).startswith(f"{bound.keyslot}: tang")
        assert bindings[0].config_data["url"] == tang.url
        unlocked = volume.unlock()
        assert unlocked.keyslot == bound.keyslot and isinstance(unlocked.passphrase, luksforge.Secret)
        assert cryptsetup_accepts(luks_image, bytes(unlocked.passphrase), bound.keyslot)
    listed = run("clevis", "luks", "list", "-d", luks_image).stdout.decode()
    assert f"{bound.keyslot}: tang" in listed and tang.url in listed
    clevis_pass = run("clevis", "luks", "pass", "-d", luks_image, "-s", bound.keyslot).stdout
    assert cryptsetup_accepts(luks_image, clevis_pass, bound.keyslot)


def test_bind_right_after_format_and_unbind(tang, image):
    with luksforge.Volume.format(image, pbkdf=FAST, passphrase=b"build") as volume:
        bound = volume.bind("tang", json.dumps(tang.config()))  # volume key still in memory: no PBKDF
        assert bound.verified
        with pytest.raises(luksforge.Error):
            volume.unbind(0)  # keyslot 0 has no clevis token
        volume.unbind(bound.keyslot)
        assert volume.bindings() == [] and volume.keyslot(bound.keyslot) is None
        with pytest.raises(luksforge.NotFoundError):
            volume.unlock()


def test_luksforge_unlocks_a_stock_clevis_binding(tang, luks_image, passphrase, tmp_path):
    key_file = tmp_path / "pass"
    key_file.write_bytes(passphrase)
    run("clevis", "luks", "bind", "-y", "-d", luks_image, "-k", key_file, "tang", json.dumps(tang.config()))
    with luksforge.Volume.open(luks_image, read_only=True) as volume:
        unlocked = volume.unlock()
        assert cryptsetup_accepts(luks_image, bytes(unlocked.passphrase), unlocked.keyslot)


def test_bind_with_wrong_thumbprint_changes_nothing(tang, luks_image, passphrase):
    before = luks_image.read_bytes()[: 1 << 20]
    with luksforge.Volume.open(luks_image) as volume:
        with pytest.raises(luksforge.TangError):
            volume.bind("tang", {"url": tang.url, "thp": "x5j47HARIeE6pkZckMW8Z7dvFQ8XWCRdQ_5UlETyj4I"},
                        passphrase=passphrase)
        with pytest.raises(luksforge.TangError):
            volume.bind("tang", {"url": tang.url}, passphrase=passphrase)  # no TOFU unless asked
    assert luks_image.read_bytes()[: 1 << 20] == before


@pytest.mark.parametrize("pin_new_key", [False, True], ids=["trust-through-old-key", "explicit-config"])
def test_regen_after_key_rotation(fresh_tang, luks_image, passphrase, pin_new_key):
    with luksforge.Volume.open(luks_image) as volume:
        old = volume.bind("tang", fresh_tang.config(), passphrase=passphrase)
    old_thp = fresh_tang.thp
    # Rotate: new keys, old ones hidden (still usable for recovery, as tangd-rotate-keys does).
    old_files = list(fresh_tang.keydir.glob("*.jwk"))
    run("/usr/libexec/tangd-keygen", fresh_tang.keydir)
    for f in old_files:
        f.rename(f.with_name("." + f.name))
    with luksforge.Volume.open(luks_image) as volume:
        assert volume.unlock().keyslot == old.keyslot  # old binding still unlocks
        new_thp = fresh_tang.thp
        assert new_thp != old_thp
        # Either pin the new signing key explicitly, or let regen trust the new keys through the old one
        # (tangd signs /adv/{old thp} with the old key too).
        regen = volume.regen(old.keyslot, config=fresh_tang.config() if pin_new_key else None)
        assert regen.old_keyslot == old.keyslot and regen.bound.verified
        assert [b.keyslot for b in volume.bindings()] == [regen.bound.keyslot]
        assert volume.unlock().keyslot == regen.bound.keyslot


def test_sss_two_of_three_with_one_server_down(tmp_path, luks_image, passphrase):
    from conftest import start_tang
    servers = [start_tang(tmp_path / f"tang{i}") for i in range(3)]
    try:
        config = {"t": 2, "pins": {"tang": [s.config() for s in servers]}}
        with luksforge.Volume.open(luks_image) as volume:
            bound = volume.bind("sss", config, passphrase=passphrase)
            assert bound.verified
        servers[0].stop()
        with luksforge.Volume.open(luks_image, read_only=True) as volume:
            unlocked = volume.unlock(network=luksforge.NetworkOptions(connect_timeout_ms=500, total_timeout_ms=2000))
            assert cryptsetup_accepts(luks_image, bytes(unlocked.passphrase), bound.keyslot)
        servers[1].stop()
        with luksforge.Volume.open(luks_image, read_only=True) as volume:
            with pytest.raises(luksforge.Error):
                volume.unlock(network=luksforge.NetworkOptions(connect_timeout_ms=500, total_timeout_ms=2000))
    finally:
        for s in servers:
            s.stop()
