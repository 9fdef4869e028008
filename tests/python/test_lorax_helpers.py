"""luksforge.lorax called directly, as the Lorax templates call it, without Mako: so these run under every
interpreter Lorax uses (RHEL 8's 3.6, RHEL 9's 3.9, RHEL 10's 3.12 through compat_runner.py) as well as
Debian's 3.11. Policy files are read by the C++ library (no tomllib); the staged policy is re-read by it too."""

import json
import sys

import pytest

import luksforge
from conftest import FAST, cryptsetup_accepts


def test_runs_on_this_interpreter():
    assert sys.version_info >= (3, 6)
    assert luksforge.lorax.__file__.startswith(luksforge.__path__[0])


def test_policy_file_is_carried_over_with_verified_advertisements(tang, tmp_path):
    source = tmp_path / "site-policy.toml"
    source.write_text('max_instances_per_key = 3\n\n[[tang]]\nurl = "{}"\nthp = "{}"\n\n'
                      '[luks]\nkey_bits = 256\nmetadata_size = "32KiB"\n\n'
                      '[keyslot]\npbkdf = "pbkdf2"\nhash = "sha512"\niterations = 2000\n'.format(tang.url, tang.thp))
    root = tmp_path / "root"
    plan = luksforge.lorax.prepare_runtime(str(root), policy=str(source))
    staging = root / plan.staging
    policy = luksforge.Policy.load(staging / "policy.toml")
    assert policy.check() == []
    assert policy.max_instances_per_key == 3 and policy.key_bits == 256 and policy.metadata_bytes == 32 << 10
    assert policy.keyslot_pbkdf.hash == "sha512" and policy.keyslot_pbkdf.iterations == 2000
    assert policy.servers[0].thp == tang.thp and policy.servers[0].adv == staging / "tang-1.jws"
    assert {"/usr/share/luksforge/" + n for n in ("tang-1.jws", "policy.toml", "verified.json")} <= \
        {f.dest for f in plan.files}
    verified = json.loads((staging / "verified.json").read_text())
    assert verified["servers"][0]["thp"] == tang.thp and plan.pin == "tang"

    # What an install does with it: bind offline through the staged advertisement.
    image = tmp_path / "disk.img"
    with luksforge.Volume.format(image, size=32 << 20, pbkdf=FAST, passphrase=b"build") as volume:
        bound = policy.bind(volume, passphrase=b"build")
        assert bound.verified
    assert cryptsetup_accepts(image, bytes(luksforge.Volume.open(image).unlock().passphrase), bound.keyslot)


def test_tang_urls_with_pinned_thumbprints(tang, tmp_path):
    plan = luksforge.lorax.prepare_runtime(str(tmp_path), tang=tang.url, thp=tang.thp)
    policy = luksforge.Policy.load(tmp_path / plan.staging / "policy.toml")
    assert policy.check() == [] and policy.threshold == 1 and not policy.trust_on_first_use


def test_wrong_thumbprint_and_trust_on_first_use_are_refused(tang, tmp_path):
    with pytest.raises(luksforge.TangError):
        luksforge.lorax.prepare_runtime(str(tmp_path), tang=tang.url, thp="A" * 43)
    tofu = tmp_path / "tofu.toml"
    tofu.write_text('trust_on_first_use = true\n\n[[tang]]\nurl = "{}"\n'.format(tang.url))
    with pytest.raises(luksforge.lorax.TemplateVarError, match="neither thp nor adv"):
        luksforge.lorax.prepare_runtime(str(tmp_path), policy=str(tofu))


def test_a_policy_with_tpm2_is_refused(tang, tmp_path):
    with_tpm2 = tmp_path / "tpm2.toml"
    with_tpm2.write_text(f'threshold = 2\n[[tang]]\nurl = "{tang.url}"\nthp = "{tang.thp}"\n[tpm2]\npcr_ids = "7"\n')
    with pytest.raises(luksforge.lorax.TemplateVarError, match=r"\[tpm2\]"):
        luksforge.lorax.prepare_runtime(str(tmp_path), policy=str(with_tpm2))


def test_a_kickstart_without_encryption_is_refused():
    with pytest.raises(luksforge.lorax.TemplateVarError, match="--encrypted"):
        luksforge.lorax.check_kickstart("part / --size 1024\n")
