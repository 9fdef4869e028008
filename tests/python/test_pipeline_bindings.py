"""Policy, disk images, ledger and the image pipeline through the Python module: error mapping, context
managers, and callbacks whose exceptions stop the work cleanly."""

import errno
import json
import os
import stat

import pytest

import luksforge
from conftest import FAST, cryptsetup_accepts, run


def write_policy(path, tang, extra=""):
    path.write_text(f'{extra}[[tang]]\nurl = "{tang.url}"\nthp = "{tang.thp}"\n')
    return path


def test_policy_problems_carry_line_numbers(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('threshold = 3\n\n[[tang]]\nurl = "http://127.0.0.1:1"\nthp = "x"\nbogus = 1\n')
    policy = luksforge.Policy.load(path)
    problems = policy.check()
    assert problems and all(p.source == str(path) for p in problems)
    assert any(p.line == 1 for p in problems)  # threshold larger than the number of servers
    assert any(p.line == 6 for p in problems)  # unknown key
    assert all(str(p).startswith(f"{path}:") for p in problems)
    with pytest.raises(luksforge.FormatError) as info:
        policy.require_valid()
    assert info.value.errno == errno.EINVAL
    with pytest.raises(luksforge.FormatError, match="p2.toml:1"):
        luksforge.Policy.parse("threshold = = 1\n", source="p2.toml")
    with pytest.raises(luksforge.NotFoundError):
        luksforge.Policy.load(tmp_path / "missing.toml")


def test_policy_pin_and_bind(tang, luks_image, passphrase, tmp_path):
    policy = luksforge.Policy.load(write_policy(tmp_path / "p.toml", tang))
    assert policy.check() == [] and policy.pin == "tang"
    assert json.loads(policy.pin_config)["url"] == tang.url
    assert policy.estimate_token().token_bytes > 0
    with luksforge.Volume.open(luks_image) as volume:
        assert policy.binding_fits(volume) is None
        bound = policy.bind(volume, passphrase=passphrase)
        assert bound.verified
        assert policy.verify_volume(volume) == []


def test_probe_gpt_image_and_loop_context_manager(tmp_path, passphrase):
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(48 << 20)
    run("sfdisk", "--quiet", disk, input=b"label: gpt\nsize=4MiB, type=U\ntype=L\n")
    probe = luksforge.probe_image(disk)
    assert probe.table == "gpt" and [p.number for p in probe.partitions] == [1, 2]
    assert luksforge.luks_targets(probe) == []
    assert luksforge.detect_content(disk) == "gpt partition table"
    part = probe.partitions[1]
    with luksforge.attach_loop(disk, offset_bytes=part.offset_bytes, size_bytes=part.size_bytes) as loop:
        device = loop.device
        assert loop.attached and str(device).startswith("/dev/loop")
        assert stat.S_ISBLK(os.stat(device).st_mode)
        luksforge.Volume.format(device, pbkdf=FAST, passphrase=passphrase).close()
    assert not loop.attached
    attached = run("losetup", "-j", disk).stdout.decode()
    assert attached == "", f"loop device left behind: {attached}"
    blank = tmp_path / "blank.img"
    with open(blank, "wb") as f:
        f.truncate(1 << 20)
    assert luksforge.detect_content(blank) is None
    target = luksforge.select_luks_target(disk)
    assert target.partition == 2 and str(target) == f"{disk} partition 2"
    with luksforge.attach_target(target) as attached:
        assert cryptsetup_accepts(attached.device, passphrase, 0)
    assert run("losetup", "-j", disk).stdout == b""
    with pytest.raises(luksforge.FormatError):
        luksforge.select_luks_target(disk, partition=1)


def test_ledger_limits_map_to_limit_error(tmp_path):
    path = tmp_path / "ledger.db"
    with luksforge.Ledger(path) as ledger:
        first = ledger.reserve(luksforge.LedgerRecord(fingerprint="ab" * 32, image="/a.img", event="stamped"),
                               max_instances=1)
        assert first > 0 and ledger.count_instances("ab" * 32) == 1
        with pytest.raises(luksforge.LimitError) as info:
            ledger.reserve(luksforge.LedgerRecord(fingerprint="ab" * 32, image="/b.img"), max_instances=1)
        assert info.value.errno == errno.EDQUOT and isinstance(info.value, luksforge.Error)
        ledger.release(first)
        assert ledger.count_instances("ab" * 32) == 0
        ledger.record(luksforge.LedgerRecord(fingerprint="cd" * 32, image="/c.img", event="cloned"))
        records = ledger.records()
        assert [r.image for r in records] == ["/c.img"] and records[0].time.endswith("Z")
    with pytest.raises(ValueError, match="closed"):
        ledger.records()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_seal_reports_steps_and_progress(tang, luks_image, passphrase, tmp_path):
    policy = write_policy(tmp_path / "p.toml", tang)
    steps, progress = [], []
    report = luksforge.seal(luks_image, passphrase, policy=policy, on_step=steps.append,
                            progress=lambda done, total: progress.append((done, total)))
    assert steps == ["rekey", "bind", "verify", "remove-build-passphrase"]
    assert progress and progress[-1][0] == progress[-1][1]
    assert report.fingerprint_before != report.fingerprint_after
    assert report.to_dict()["fingerprint_after"] == report.fingerprint_after
    assert not cryptsetup_accepts(luks_image, passphrase, 0)
    again = luksforge.seal(luks_image, b"gone", policy=policy)
    assert again.already_sealed


def test_exception_in_a_seal_callback_stops_it_and_a_rerun_finishes(tang, luks_image, passphrase, tmp_path):
    policy = write_policy(tmp_path / "p.toml", tang)

    class Stop(Exception):
        pass

    def stop_at_bind(step):
        if step == "bind":
            raise Stop(step)

    with pytest.raises(Stop):
        luksforge.seal(luks_image, passphrase, policy=policy, on_step=stop_at_bind)
    # Stopped between steps: re-keyed but not yet bound; the build passphrase still opens the volume.
    with luksforge.Volume.open(luks_image, read_only=True) as volume:
        assert volume.test_passphrase(passphrase) is not None and volume.bindings() == []
    report = luksforge.seal(luks_image, passphrase, policy=policy)
    assert report.resumed_from and not report.already_sealed and report.checks_passed
    with luksforge.Volume.open(luks_image, read_only=True) as volume:
        assert volume.test_passphrase(passphrase) is None and len(volume.bindings()) == 1


def test_stamp_clone_audit(tang, luks_image, passphrase, tmp_path):
    policy = write_policy(tmp_path / "p.toml", tang)
    luksforge.seal(luks_image, passphrase, policy=policy)
    seen = []
    report = luksforge.stamp(luks_image, 2, tmp_path / "out", policy=policy,
                             on_instance=lambda path, i, n: seen.append((path.name, i, n)))
    assert [(i, n) for _, i, n in seen] == [(0, 2), (1, 2)]
    assert len({i.fingerprint for i in report.instances} | {report.base_fingerprint}) == 3
    assert report.data_path == "one-pass" and report.data_bytes > 0
    dense = luksforge.stamp(luks_image, 1, tmp_path / "dense", policy=policy, dense=True, one_pass=False)
    assert dense.data_path == "libcryptsetup" and dense.data_bytes == 0
    ledger = tmp_path / "ledger.db"
    clone = luksforge.clone_image(luks_image, tmp_path / "clone.img", max_instances_per_key=2, ledger=ledger)
    assert clone.fingerprint == report.base_fingerprint
    with pytest.raises(luksforge.LimitError):
        luksforge.clone_image(luks_image, tmp_path / "clone2.img", max_instances_per_key=2, ledger=ledger)
    assert not (tmp_path / "clone2.img").exists()
    audit = luksforge.audit([luks_image, tmp_path / "clone.img", tmp_path / "out"])
    assert audit.flagged_groups == 1 and len(audit.volumes) == 4
    assert {m.image for m in audit.groups[0].members} == {str(luks_image), str(tmp_path / "clone.img")}
    assert "clone.img" in audit.to_text()
    (binding,) = [m for m in audit.groups[0].members if m.image == str(luks_image)][0].clevis
    assert binding.pin == "tang" and binding.keyslot >= 0 and tang.url in binding.config and binding.problem == ""
    # The sealed image's binding trusts this Tang, whose private keys are on the audited host.
    exposed = luksforge.audit([luks_image], tang_key_dirs=[tang.keydir])
    assert exposed.tang_keys_in_images == []
    assert {x.role for x in exposed.tang_key_exposures} == {"signing", "exchange"}
    assert all(not x.same_image and x.key_location.startswith(str(tang.keydir)) for x in exposed.tang_key_exposures)
    assert exposed.to_dict()["tang_key_exposures"][0]["url"] == tang.url
    assert luksforge.audit([luks_image], tang_key_dirs=[tmp_path / "none"]).tang_key_exposures == []
    assert luksforge.audit([luks_image], scan_tang_keys=False, tang_key_dirs=[tang.keydir]).tang_key_exposures == []


def test_exception_in_on_instance_stops_stamping(tang, luks_image, passphrase, tmp_path):
    policy = write_policy(tmp_path / "p.toml", tang)
    luksforge.seal(luks_image, passphrase, policy=policy)

    def stop(path, index, count):  # called as each instance starts
        if index == 1:
            raise KeyError("enough")

    with pytest.raises(KeyError):
        luksforge.stamp(luks_image, 3, tmp_path / "out", policy=policy, on_instance=stop)
    # The first instance is complete; the second was never started; no hidden partial file is left.
    assert len(os.listdir(tmp_path / "out")) == 1
