"""The tpm2 pin through the Python module, against a real software TPM (swtpm) and stock Clevis 19: JWEs both
ways, a changed PCR raising PcrMismatchError, no TPM raising TpmError, and a LUKS2 tpm2 binding (bind, unlock,
bindings, regen) that stock `clevis luks pass` opens."""

import json

import pytest

import luksforge
from conftest import FAST, cryptsetup_accepts, run

PCR16 = {"pcr_ids": "16", "pcr_bank": "sha256"}


def test_clevis_encrypt_decrypt_tpm2_both_ways(swtpm):
    secret = b"tpm2 \x00 secret"
    jwe = luksforge.clevis_encrypt("tpm2", PCR16, secret)
    header = json.loads(run("jose", "b64", "dec", "-i-", input=jwe.split(".")[0].encode()).stdout)
    assert header["clevis"]["pin"] == "tpm2"
    assert sorted(header["clevis"]["tpm2"]) == ["hash", "jwk_priv", "jwk_pub", "key", "pcr_bank", "pcr_ids"]
    assert swtpm.tool("clevis", "decrypt", input=jwe.encode()).stdout == secret
    theirs = swtpm.tool("clevis", "encrypt", "tpm2", json.dumps({"pcr_ids": "7"}), input=b"from clevis").stdout.decode()
    assert bytes(luksforge.clevis_decrypt(theirs)) == b"from clevis"

    swtpm.extend_pcr(16)
    with pytest.raises(luksforge.PcrMismatchError) as changed:
        luksforge.clevis_decrypt(jwe)
    assert "sha256:16" in str(changed.value)
    assert isinstance(changed.value, luksforge.AuthError)


def test_bad_config_and_no_tpm(swtpm):
    with pytest.raises(luksforge.FormatError, match="not a PCR number"):
        luksforge.clevis_encrypt("tpm2", {"pcr_ids": "24"}, b"x")
    jwe = luksforge.clevis_encrypt("tpm2", {}, b"x")
    swtpm.stop()
    with pytest.raises(luksforge.TpmError):
        luksforge.clevis_decrypt(jwe)


def test_tpm2_binding_bind_unlock_bindings_regen(swtpm, luks_image, passphrase):
    with luksforge.Volume.open(luks_image) as volume:
        bound = volume.bind("tpm2", PCR16, passphrase=passphrase, pbkdf=FAST)
        slot = bound.keyslot
        assert [b.pin for b in volume.bindings()] == ["tpm2"]
        assert json.loads(volume.bindings()[0].config) == {"hash": "sha256", "key": "ecc", **PCR16}
        unlocked = volume.unlock()
        assert unlocked.keyslot == slot
    stock = swtpm.tool("clevis", "luks", "pass", "-d", luks_image, "-s", slot).stdout
    assert stock == bytes(unlocked.passphrase)
    assert cryptsetup_accepts(luks_image, stock, slot)

    swtpm.extend_pcr(16)
    with luksforge.Volume.open(luks_image) as volume:
        with pytest.raises(luksforge.AuthError, match="PCR"):
            volume.unlock()
        volume.regen(slot, passphrase=passphrase, pbkdf=FAST)
        assert volume.unlock().keyslot == slot
    assert cryptsetup_accepts(luks_image, swtpm.tool("clevis", "luks", "pass", "-d", luks_image, "-s", slot).stdout, slot)
