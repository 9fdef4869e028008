"""lorax-templates/lmc-postbuild.py on a whole-disk GPT image like livemedia-creator --make-disk leaves it
(EFI partition + LUKS2 root formatted by cryptsetup): seal, report, stamp — checked with stock clevis and
cryptsetup on loop devices."""

import json
import os
import subprocess
import sys

import pytest

import luksforge
from conftest import FAST, SOURCE_DIR, run

SCRIPT = SOURCE_DIR / "lorax-templates/lmc-postbuild.py"
BUILD_PASSPHRASE = b"luksforge-build-only"


def make_disk(path):
    with open(path, "wb") as f:
        f.truncate(64 << 20)
    run("sfdisk", "--quiet", path, input=b"label: gpt\nsize=8MiB, type=U, name=EFI\ntype=L, name=root\n")
    part = [p for p in luksforge.probe_image(path).partitions if p.number == 2][0]
    with luksforge.attach_loop(path, offset_bytes=part.offset_bytes, size_bytes=part.size_bytes) as loop:
        run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
            "--pbkdf-force-iterations", "1000", "--key-file", "-", loop.device, input=BUILD_PASSPHRASE)
    return part


def partition_opens(image, passphrase: bytes, slot=None) -> bool:
    target = luksforge.select_luks_target(image)
    with luksforge.attach_target(target, read_only=True) as attached:
        with luksforge.Volume.open(attached.device, read_only=True) as volume:
            return volume.test_passphrase(passphrase, slot=-1 if slot is None else slot) is not None


def clevis_opens(image) -> bool:
    target = luksforge.select_luks_target(image)
    with luksforge.attach_target(target, read_only=True) as attached:
        with luksforge.Volume.open(attached.device, read_only=True) as volume:
            bindings = volume.bindings()
            assert len(bindings) == 1 and bindings[0].keyslot >= 0, "exactly one live clevis binding"
            slot = bindings[0].keyslot
        secret = run("clevis", "luks", "pass", "-d", attached.device, "-s", slot).stdout
        return run("cryptsetup", "open", "--test-passphrase", "--key-slot", slot, "--key-file", "-",
                   attached.device, input=secret, check=False).returncode == 0


@pytest.fixture
def policy(tang, tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(f'max_instances_per_key = 1\n\n[[tang]]\nurl = "{tang.url}"\nthp = "{tang.thp}"\n')
    return path


def postbuild(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)  # Python 3.6: no capture_output/text


def test_seal_with_the_build_passphrase_and_stamp(tmp_path, policy):
    disk = tmp_path / "disk.img"
    make_disk(disk)
    before = luksforge.audit([disk]).volumes[0].fingerprint
    key = tmp_path / "build.key"
    luksforge.write_secret_file(key, BUILD_PASSPHRASE)
    out = tmp_path / "instances"
    result = postbuild(disk, "--policy", policy, "--build-passphrase-file", key, "--count", 2, "--out", out,
                       "--ledger", tmp_path / "ledger.db")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "disk.img.seal.json").read_text())
    assert report["fingerprint_before"] == before != report["fingerprint_after"]
    assert not partition_opens(disk, BUILD_PASSPHRASE)
    assert clevis_opens(disk)
    instances = [line for line in result.stdout.splitlines() if line]
    assert len(instances) == 2 and sorted(os.listdir(out)) == sorted(os.path.basename(i) for i in instances)
    audit = luksforge.audit([disk, out])
    assert len({v.fingerprint for v in audit.volumes}) == 3 and audit.flagged_groups == 0
    for instance in instances:
        assert clevis_opens(instance)


def test_seal_a_disk_whose_post_already_bound_it(tmp_path, policy, tang):
    """The lmc kickstart's %post bound the volume and removed the build passphrase: recover through Tang."""
    disk = tmp_path / "disk.img"
    make_disk(disk)
    target = luksforge.select_luks_target(disk)
    with luksforge.attach_target(target) as attached, luksforge.Volume.open(attached.device) as volume:
        bound = volume.bind("tang", tang.config(), passphrase=BUILD_PASSPHRASE, pbkdf=FAST)
        volume.remove_keyslot(volume.test_passphrase(BUILD_PASSPHRASE))
        assert [k.id for k in volume.keyslots()] == [bound.keyslot]
        before = volume.fingerprint
    result = postbuild(disk, "--policy", policy, "--report", tmp_path / "report.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["fingerprint_before"] == before != report["fingerprint_after"]
    assert clevis_opens(disk)
    # Seal removed the %post binding's keyslot together with its token: no token is left assigned to no keyslot.
    with luksforge.attach_target(target, read_only=True) as attached:
        with luksforge.Volume.open(attached.device, read_only=True) as volume:
            slots = {k.id for k in volume.keyslots()}
            tokens = volume.tokens()
            assert len(tokens) == 1 and tokens[0].keyslots and set(tokens[0].keyslots) <= slots


def test_wrong_build_passphrase_fails_cleanly_and_changes_nothing(tmp_path, policy):
    disk = tmp_path / "disk.img"
    make_disk(disk)
    before = disk.read_bytes()
    key = tmp_path / "wrong.key"
    luksforge.write_secret_file(key, b"not the build passphrase")
    result = postbuild(disk, "--policy", policy, "--build-passphrase-file", key, "--quiet")
    assert result.returncode == 1 and result.stderr.startswith("lmc-postbuild: error:")
    assert disk.read_bytes() == before
