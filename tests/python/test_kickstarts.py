"""The kickstarts: LUKS2 encryption, network in the initramfs, and a %post that really binds with luksforge,
verifies through Tang and removes the build passphrase — run here against a LUKS2 image made with the
kickstart's own build passphrase (dracut and grubby, which only exist in the installed system, are recorded)."""

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

import luksforge
from conftest import SOURCE_DIR, cryptsetup_accepts, run
from lorax_harness import Runner

KICKSTARTS = sorted((SOURCE_DIR / "lorax-templates/kickstarts").glob("*.ks"))
POST = re.compile(r"^%post\b(?P<args>[^\n]*)\n(?P<body>.*?)^%end\b", re.M | re.S)


def test_both_kickstarts_exist():
    assert {p.name for p in KICKSTARTS} == {"lmc-make-disk.ks", "virt-install.ks"}


@pytest.mark.parametrize("kickstart", KICKSTARTS, ids=lambda p: p.name)
def test_kickstart_is_nbde_ready(kickstart):
    text = kickstart.read_text()
    luksforge.lorax.check_kickstart(text, kickstart.name)
    part = [line for line in text.splitlines() if line.startswith("part / ")][0].split()
    assert "--encrypted" in part and "--luks-version=luks2" in part
    assert re.search(r"^bootloader .*rd\.neednet=1", text, re.M)
    packages = re.search(r"^%packages\n(.*?)^%end", text, re.M | re.S).group(1).split()
    assert {"clevis-dracut", "luksforge"} <= set(packages)
    # The %post's build passphrase is the part line's, and it never goes into argv (printf is a builtin).
    passphrase = next(w.split("=", 1)[1] for w in part if w.startswith("--passphrase="))
    assert f"printf '%s' '{passphrase}' >" in text


def fake_tool(directory: Path, name: str):
    """A stand-in for a tool of the installed system: records its arguments."""
    path = directory / name
    path.write_text(f'#!/bin/sh\necho "$0 $*" >> "{directory}/calls"\n')
    path.chmod(0o755)


@pytest.mark.parametrize("kickstart", KICKSTARTS, ids=lambda p: p.name)
def test_post_binds_verifies_and_removes_the_build_passphrase(kickstart, tang, tmp_path):
    text = kickstart.read_text()
    passphrase = re.search(r"--passphrase=(\S+)", text).group(1).encode()
    sections = list(POST.finditer(text))
    nochroot = [m.group("body") for m in sections if "--nochroot" in m.group("args")]
    chroot = [m.group("body") for m in sections if "--nochroot" not in m.group("args")]
    assert len(nochroot) == 1 and len(chroot) == 1
    assert all("--erroronfail" in m.group("args") for m in sections)

    # The installer runtime as luksforge-runtime.tmpl leaves it.
    runtime = tmp_path / "runtime"
    (runtime / "tmp").mkdir(parents=True)
    Runner(runtime, runtime).run(SOURCE_DIR / "lorax-templates/luksforge-runtime.tmpl", root=str(runtime),
                                 luksforge_tang=tang.url, luksforge_thp=tang.thp)
    sysroot = tmp_path / "sysroot"
    sysroot.mkdir()
    env = {**os.environ, "ANA_INSTALL_PATH": str(sysroot), "LUKSFORGE_RUNTIME_DIR": str(runtime / "usr/share/luksforge")}
    subprocess.run(["bash", "-c", nochroot[0]], env=env, check=True)
    assert (sysroot / "etc/luksforge/policy.toml").exists()

    # The installed disk, as anaconda formats it from the part line.
    disk = tmp_path / "root.img"
    with open(disk, "wb") as f:
        f.truncate(32 << 20)
    run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", "--key-file", "-", disk, input=passphrase)
    tools = tmp_path / "installed-system-tools"
    tools.mkdir()
    for name in ("grubby", "dracut"):
        fake_tool(tools, name)
    cli_dir = Path(os.environ["LUKSFORGE_CLI"]).parent
    env = {**os.environ, "PATH": f"{tools}:{cli_dir}:{os.environ['PATH']}", "LUKSFORGE_DEVICES": str(disk),
           "LUKSFORGE_POLICY": str(sysroot / "etc/luksforge/policy.toml")}
    result = subprocess.run(["bash", "-c", chroot[0]], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

    assert not cryptsetup_accepts(disk, passphrase, 0), "the build passphrase must be gone"
    slots = luksforge.Volume.open(disk, read_only=True).keyslots()
    assert len(slots) == 1
    clevis_pass = run("clevis", "luks", "pass", "-d", disk, "-s", slots[0].id).stdout
    assert cryptsetup_accepts(disk, clevis_pass, slots[0].id)
    calls = (tools / "calls").read_text().splitlines()
    assert calls == [f"{tools}/grubby --update-kernel=ALL --args=rd.neednet=1", f"{tools}/dracut -f --regenerate-all"]
    assert not list(Path("/run").glob("luksforge-build.*")), "the build key file must be removed"


def test_post_fails_and_keeps_the_build_passphrase_when_tang_is_down(fresh_tang, tmp_path):
    kickstart = KICKSTARTS[0]
    text = kickstart.read_text()
    passphrase = re.search(r"--passphrase=(\S+)", text).group(1).encode()
    chroot = [m.group("body") for m in POST.finditer(text) if "--nochroot" not in m.group("args")][0]
    runtime = tmp_path / "runtime"
    (runtime / "tmp").mkdir(parents=True)
    Runner(runtime, runtime).run(SOURCE_DIR / "lorax-templates/luksforge-runtime.tmpl", root=str(runtime),
                                 luksforge_tang=fresh_tang.url, luksforge_thp=fresh_tang.thp)
    fresh_tang.stop()
    disk = tmp_path / "root.img"
    with open(disk, "wb") as f:
        f.truncate(32 << 20)
    run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", "--key-file", "-", disk, input=passphrase)
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("grubby", "dracut"):
        fake_tool(tools, name)
    env = {**os.environ, "PATH": f"{tools}:{Path(os.environ['LUKSFORGE_CLI']).parent}:{os.environ['PATH']}",
           "LUKSFORGE_DEVICES": str(disk), "LUKSFORGE_POLICY": str(runtime / "usr/share/luksforge/policy.toml")}
    result = subprocess.run(["bash", "-c", chroot], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert cryptsetup_accepts(disk, passphrase, 0), "the build passphrase must survive a failed binding"
    assert not (tools / "calls").exists()
