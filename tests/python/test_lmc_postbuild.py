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


# --- Red Hat's defaults: 16 KiB of LUKS2 metadata, sss 2 of 3, bound by the kickstart's own %post -----------------

from conftest import start_tang  # noqa: E402
from kickstart_rules import Kickstart  # noqa: E402
from test_kickstarts import format_as_anaconda, installer, run_post, with_include, write_policy  # noqa: E402


@pytest.fixture(scope="module")
def tangs(tmp_path_factory):
    servers = [start_tang(tmp_path_factory.mktemp(f"lmc-tang{i}") / "db") for i in range(3)]
    yield servers
    for server in servers:
        server.stop()


def kickstart_built_disk(tmp_path, tangs, policy, keep_build_passphrase=False):
    """A livemedia-creator disk whose rendered lmc-make-disk kickstart's %pre and %post ran with stock Clevis
    (sss 2 of 3 against the runtime template's advertisements) on its LUKS2 root partition, formatted as anaconda
    does it (cryptsetup's default 16 KiB metadata). Returns the disk and the build passphrase %pre made."""
    inst = installer(tmp_path, tangs, "lmc-make-disk", policy)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    run("sfdisk", "--quiet", disk, input=b"label: gpt\nsize=8MiB, type=U, name=EFI\ntype=L, name=root\n")
    part = [p for p in luksforge.probe_image(disk).partitions if p.number == 2][0]
    root_part = next(c for c in Kickstart(with_include(inst.text, inst.include)).commands
                     if c[1] == "part" and c[2][0] == "/")[2]
    edit = None
    if keep_build_passphrase:  # Red Hat's documented %post: `clevis luks bind` only
        def edit(chroot):
            return chroot.replace('cryptsetup luksRemoveKey --batch-mode --key-file "$keyfile" "$dev"', ":")
    with luksforge.attach_loop(disk, offset_bytes=part.offset_bytes, size_bytes=part.size_bytes) as loop:
        format_as_anaconda(loop.device, root_part, inst.passphrase)
        result = run_post(inst, device=loop.device, chroot_edit=edit)
        assert result.returncode == 0, result.stderr
    return disk, inst.passphrase


def header_tokens(image):
    target = luksforge.select_luks_target(image)
    with luksforge.attach_target(target, read_only=True) as attached:
        with luksforge.Volume.open(attached.device, read_only=True) as volume:
            assert volume.inspect().metadata_bytes == 16 << 10
            return [t.type for t in volume.tokens()], [k.id for k in volume.keyslots()]


def check_sealed_instance(image):
    types, slots = header_tokens(image)
    assert types == ["clevis"] and len(slots) == 1, (types, slots)
    assert clevis_opens(image)


def test_seal_and_stamp_a_disk_the_kickstart_bound_sss_2_of_3_on_16k(tmp_path, tangs):
    policy = write_policy(tmp_path / "policy.toml", tangs)
    disk, passphrase = kickstart_built_disk(tmp_path, tangs, policy)
    assert not partition_opens(disk, passphrase)
    out = tmp_path / "instances"
    result = postbuild(disk, "--policy", policy, "--count", 2, "--out", out, "--ledger", tmp_path / "ledger.db")
    assert result.returncode == 0, result.stderr
    check_sealed_instance(disk)
    instances = [line for line in result.stdout.splitlines() if line]
    assert len(instances) == 2
    for instance in instances:
        check_sealed_instance(instance)
    assert len({v.fingerprint for v in luksforge.audit([disk, out]).volumes}) == 3


def test_seal_a_disk_whose_post_kept_the_build_passphrase(tmp_path, tangs):
    """Red Hat's documented %post (`clevis luks bind` only), sealed with the build passphrase or through Tang."""
    policy = write_policy(tmp_path / "policy.toml", tangs)
    for how in ("passphrase-file", "recovered"):
        work = tmp_path / how
        work.mkdir()
        disk, passphrase = kickstart_built_disk(work, tangs, policy, keep_build_passphrase=True)
        assert partition_opens(disk, passphrase)
        args = [disk, "--policy", policy, "--count", 1, "--out", work / "out", "--ledger", work / "ledger.db"]
        if how == "passphrase-file":
            key = work / "build.key"
            luksforge.write_secret_file(key, passphrase)
            args += ["--build-passphrase-file", key]
        result = postbuild(*args)
        assert result.returncode == 0, result.stderr
        check_sealed_instance(disk)
        assert not partition_opens(disk, passphrase)
        check_sealed_instance(next((work / "out").iterdir()))


@pytest.mark.parametrize("step", ["rekey-progress", "bind-keyslot-added", "bind-done", "verify-done",
                                  "build-token-removed"])
def test_killed_postbuild_reruns_to_completion_without_a_helper_token(step, tmp_path, tangs):
    policy = write_policy(tmp_path / "policy.toml", tangs)
    disk, _ = kickstart_built_disk(tmp_path, tangs, policy)
    killed = subprocess.run([sys.executable, SCRIPT, disk, "--policy", policy, "--quiet"],
                            env={**os.environ, "LUKSFORGE_CRASH_AT": step}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)
    assert killed.returncode == -9, killed.stderr
    result = postbuild(disk, "--policy", policy, "--count", 1, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    check_sealed_instance(disk)
    check_sealed_instance(next((tmp_path / "out").iterdir()))


def test_too_big_for_16k_is_refused_before_anything_is_written(tmp_path):
    """6 servers (3 of 6) bound by %post: seal would not fit; refused up front, the image unchanged."""
    servers = [start_tang(tmp_path / f"t{i}") for i in range(6)]
    try:
        bind_policy = write_policy(tmp_path / "bind.toml", servers, threshold=3)
        # luksforge kickstart refuses this policy for 16 KiB, so bind the way %post would with a 6-server config.
        disk = tmp_path / "disk.img"
        make_disk(disk)
        target = luksforge.select_luks_target(disk)
        with luksforge.attach_target(target) as attached, luksforge.Volume.open(attached.device) as volume:
            loaded = luksforge.Policy.load(bind_policy)  # bound as stock clevis would (its own exact fit check)
            volume.bind(loaded.pin, loaded.pin_config, passphrase=BUILD_PASSPHRASE, pbkdf=FAST)
            volume.remove_keyslot(volume.test_passphrase(BUILD_PASSPHRASE))
        before = disk.read_bytes()
        result = postbuild(disk, "--policy", bind_policy, "--quiet")
        assert result.returncode == 1 and "at most 5" in result.stderr, result.stderr
        assert disk.read_bytes() == before
    finally:
        for s in servers:
            s.stop()


# --- a build farm's one PostgreSQL ledger --------------------------------------------------------------------------

@pytest.mark.parametrize("named_by", ["--ledger", "policy", "environment"])
def test_seal_and_stamp_record_in_the_farms_postgresql_ledger(named_by, tmp_path, tangs, postgres):
    """Every builder of a farm records in the one database: a postgresql:// URL given as --ledger, as the
    policy's `ledger` or as $LUKSFORGE_LEDGER reaches the server intact (a pathlib.Path would fold its `//`
    into a local file name), as `luksforge seal`/`stamp` would use it."""
    policy = write_policy(tmp_path / "policy.toml", tangs)
    disk, _ = kickstart_built_disk(tmp_path, tangs, policy)
    env = dict(os.environ)
    env.pop("LUKSFORGE_LEDGER", None)
    args = [disk, "--policy", policy, "--count", 2, "--out", tmp_path / "out"]
    if named_by == "--ledger":
        args += ["--ledger", postgres.url]
    elif named_by == "policy":
        policy.write_text(f'ledger = "{postgres.url}"\n' + policy.read_text())  # top-level key: before [[tang]]
    else:
        env["LUKSFORGE_LEDGER"] = postgres.url
    result = subprocess.run([sys.executable, SCRIPT, *map(str, args)], env=env, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert result.returncode == 0, result.stderr
    with luksforge.Ledger(postgres.url) as ledger:
        records = [r for r in ledger.records() if r.image.startswith(str(tmp_path) + "/")]
    assert sorted(r.event for r in records) == ["sealed", "stamped", "stamped"], records
    assert all(r.state == "committed" for r in records)
    fingerprints = {v.fingerprint for v in luksforge.audit([disk, tmp_path / "out"]).volumes}
    assert {r.fingerprint for r in records} == fingerprints and len(fingerprints) == 3
    assert not list(tmp_path.glob("postgres*")), "the URL became a local ledger file"
