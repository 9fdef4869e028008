"""The kickstart templates and `luksforge kickstart`: no secret in any kickstart (committed or rendered), a fresh
random build passphrase per install made by %pre in the installer's memory and gone from the installed system
once %post ran, livemedia-creator's and anaconda's checks (kickstart_rules.py: lorax 28/34/40/46,
RHEL 8/9/10), and a %post that really binds — with stock Clevis only, or with luksforge when the image has it —
against the advertisements the runtime template verified, 2 of 3 Tang servers, on a LUKS2 volume with
`cryptsetup luksFormat`'s default 16 KiB metadata; verifies through Tang and removes the build passphrase
(dracut and grubby, which only exist in the installed system, are recorded)."""

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import luksforge
from conftest import SOURCE_DIR, cryptsetup_accepts, luks_dump, run, start_tang
from kickstart_rules import (LORAX_VERSIONS, RHEL_VERSIONS, Kickstart, anaconda_errors, lmc_errors, option,
                             passphrases, usage_commands)
from lorax_harness import Runner

TEMPLATES = SOURCE_DIR / "lorax-templates/kickstarts"
KINDS = ("lmc-make-disk", "virt-install")
POST = re.compile(r"^%post\b(?P<args>[^\n]*)\n(?P<body>.*?)^%end\b", re.M | re.S)
PRE = re.compile(r"^%pre\b(?P<args>[^\n]*)\n(?P<body>.*?)^%end\b", re.M | re.S)
PART_INCLUDE = "/run/luksforge/root-part.ks"  # where the templates' %pre writes the root `part` line
CLI = os.environ.get("LUKSFORGE_CLI", "luksforge")


@pytest.fixture(scope="module")
def tangs(tmp_path_factory):
    servers = [start_tang(tmp_path_factory.mktemp(f"tang{i}") / "db") for i in range(3)]
    yield servers
    for server in servers:
        server.stop()


def write_policy(path: Path, servers, threshold=2) -> Path:
    text = f"threshold = {threshold}\n"
    for s in servers:
        text += f'\n[[tang]]\nurl = "{s.url}"\nthp = "{s.thp}"\n'
    path.write_text(text)
    return path


@pytest.fixture
def policy(tangs, tmp_path):
    return write_policy(tmp_path / "policy.toml", tangs)


def render(policy, out, kind="lmc-make-disk", *extra, check=True):
    args = [CLI, "kickstart", "--kind", kind, "--policy", policy, "--out", out, *extra]
    if not any(a in ("--url", "--include") for a in map(str, extra)):
        args += ["--url", "http://127.0.0.1:1/os/", "--repo", "AppStream=http://127.0.0.1:1/appstream/"]
    return run(*args, check=check)


# --- the committed templates -------------------------------------------------------------------------------------

def test_both_templates_exist():
    assert {p.name for p in TEMPLATES.glob("*.ks")} == {f"{kind}.ks" for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_template_commits_no_secret_and_refuses_use_as_is(kind):
    text = (TEMPLATES / f"{kind}.ks").read_text()
    ks = Kickstart(text)
    assert passphrases(ks) == []  # the root `part` line comes from %pre, through %include
    assert f"%include {PART_INCLUDE}\n" in text
    assert part_passphrases(text) == ["%s"]  # %pre's printf format: filled in per install
    assert "luksforge-build-only" not in text and "@LUKSFORGE_BUILD_PASSPHRASE@" not in text
    # Used as it is it has no installation source: the arch template's check refuses it.
    with pytest.raises(luksforge.lorax.TemplateVarError, match="unrendered"):
        luksforge.lorax.check_kickstart(text, kind)


def part_passphrases(text):
    """The --passphrase values of every `part` line: kickstart commands and the ones a script writes."""
    return re.findall(r"^\s*(?:printf ')?part\s.*--passphrase=(\S+)", text, re.M)


def run_pre(text, directory: Path):
    """The kickstart's %pre as anaconda runs it before it parses the %include: returns the `part` line file it
    wrote, the passphrase file and that passphrase (both files are in `directory`, in place of /tmp and /run)."""
    (pre,) = [m.group("body") for m in PRE.finditer(text)]
    directory.mkdir(parents=True, exist_ok=True)
    include, run_dir = directory / "luksforge-root-part.ks", directory / "run"
    env = {**os.environ, "LUKSFORGE_RUN_DIR": str(run_dir), "LUKSFORGE_PART_INCLUDE": str(include)}
    result = subprocess.run(["bash", "-c", pre], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert result.returncode == 0, result.stderr
    passphrase = (run_dir / "build.pass").read_bytes()
    assert passphrase not in result.stdout + result.stderr
    return include, run_dir, passphrase


def with_include(text, include: Path):
    """The kickstart as anaconda parses it after %pre: its %include read from where the test's %pre wrote it."""
    return text.replace(f"%include {PART_INCLUDE}\n", f"%include {include}\n")


@pytest.mark.parametrize("kind", KINDS)
def test_pre_makes_a_fresh_private_passphrase_for_every_install(kind, tmp_path):
    text = (TEMPLATES / f"{kind}.ks").read_text()
    seen = set()
    for i in range(2):
        include, run_dir, passphrase = run_pre(text, tmp_path / str(i))
        assert re.fullmatch(rb"[A-Za-z0-9_-]{43}", passphrase)
        assert stat.S_IMODE((run_dir / "build.pass").stat().st_mode) == 0o600
        assert stat.S_IMODE(include.stat().st_mode) == 0o600
        (part,) = passphrases(Kickstart(with_include(text, include)))
        assert part.encode() == passphrase
        (line,) = include.read_text().splitlines()
        assert line.startswith("part / ") and "--encrypted" in line and "--luks-version=luks2" in line
        seen.add(passphrase)
    assert len(seen) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_template_needs_only_rhel_packages(kind):
    ks = Kickstart((TEMPLATES / f"{kind}.ks").read_text())
    assert set(ks.packages()) == {"@core", "clevis-dracut", "clevis-luks", "cryptsetup"}


def test_usage_comments_name_only_real_options():
    """Every option the lmc kickstart's usage comment passes to lmc-postbuild.py, that script has."""
    helptext = run(sys.executable, SOURCE_DIR / "lorax-templates/lmc-postbuild.py", "--help").stdout.decode()
    known = set(re.findall(r"(--[a-z][a-z0-9-]*)", helptext))
    lines = usage_commands((TEMPLATES / "lmc-make-disk.ks").read_text(), "lmc-postbuild.py")
    assert lines
    for line in lines:
        used = set(re.findall(r"\s(--[a-z][a-z0-9-]*)", line))
        assert used and used <= known, f"{line}: {used - known} not options of lmc-postbuild.py"
    # `luksforge kickstart` as the comments show it.
    kickstart_help = run(CLI, "kickstart", "--help").stdout.decode()
    for kind in KINDS:
        for line in usage_commands((TEMPLATES / f"{kind}.ks").read_text(), "luksforge kickstart"):
            for used in re.findall(r"\s(--[a-z][a-z0-9-]*)", line):
                assert used in kickstart_help, f"{kind}: {used}"


# --- rendering ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_render_writes_a_kickstart_without_a_secret(kind, policy, tmp_path):
    first, second = tmp_path / "a.ks", tmp_path / "b.ks"
    render(policy, first, kind)
    render(policy, second, kind)
    text = first.read_text()
    assert text == second.read_text()  # nothing random in it: the passphrase is made per install
    assert "@LUKSFORGE" not in text and passphrases(Kickstart(text)) == []
    assert part_passphrases(text) == ["%s"]
    luksforge.lorax.check_kickstart(text, kind)
    # Never replaced by accident; --force does.
    again = render(policy, first, kind, "--url", "http://127.0.0.1:2/os/", check=False)
    assert again.returncode != 0 and first.read_text() == text
    render(policy, first, kind, "--force", "--url", "http://127.0.0.1:2/os/")
    assert first.read_text() != text and not list(tmp_path.glob("*.partial"))


def test_render_refuses_a_template_with_a_render_time_passphrase(policy, tmp_path):
    old = tmp_path / "old.ks"
    old.write_text((TEMPLATES / "virt-install.ks").read_text().replace(
        f"%include {PART_INCLUDE}\n", "part / --encrypted --luks-version=luks2 --passphrase=@LUKSFORGE_BUILD_PASSPHRASE@\n"))
    result = render(policy, tmp_path / "ks.cfg", "virt-install", "--template", old, check=False)
    assert result.returncode != 0 and not (tmp_path / "ks.cfg").exists()
    assert "%pre" in result.stderr.decode()


def test_render_installation_source_as_url_repo_or_include(policy, tmp_path):
    out = tmp_path / "ks.cfg"
    render(policy, out, "lmc-make-disk", "--url", "http://127.0.0.1:1/os/", "--repo", "AppStream=http://127.0.0.1:1/as/")
    ks = Kickstart(out.read_text())
    assert ks.last("url")[2] == ["--url=http://127.0.0.1:1/os/"]
    assert ks.last("repo")[2] == ["--name=AppStream", "--baseurl=http://127.0.0.1:1/as/"]
    source = tmp_path / "source.ks"
    source.write_text("url --url=http://127.0.0.1:1/os/\n")
    included = tmp_path / "included.cfg"
    render(policy, included, "lmc-make-disk", "--include", source)
    assert f"%include {source}\n" in included.read_text()
    assert Kickstart(included.read_text()).method()[1] == "url"  # read through the %include, as lmc does
    for bad in (["--url", "http://x/ y"], ["--url", "gopher://x/"], ["--include", source, "--repo", "a=http://x/"],
                ["--url", "http://x/", "--repo", "no-equals"], []):
        args = bad or ["--include", ""]
        result = run(CLI, "kickstart", "--policy", policy, "--out", tmp_path / "bad.ks", *args, check=False)
        assert result.returncode != 0 and not (tmp_path / "bad.ks").exists(), bad


def test_render_refuses_a_policy_that_does_not_fit_anacondas_header(tmp_path):
    servers = [start_tang(tmp_path / f"t{i}") for i in range(6)]
    try:
        policy = write_policy(tmp_path / "six.toml", servers, threshold=3)
        result = render(policy, tmp_path / "ks.cfg", check=False)
        assert result.returncode != 0 and not (tmp_path / "ks.cfg").exists()
        assert "16 KiB" in result.stderr.decode() and "at most 5" in result.stderr.decode()
    finally:
        for s in servers:
            s.stop()


def test_render_refuses_trust_on_first_use(tang, tmp_path):
    policy = tmp_path / "tofu.toml"
    policy.write_text(f'trust_on_first_use = true\n[[tang]]\nurl = "{tang.url}"\n')
    result = render(policy, tmp_path / "ks.cfg", check=False)
    assert result.returncode != 0 and "trust_on_first_use" in result.stderr.decode()


# --- livemedia-creator's and anaconda's checks -------------------------------------------------------------------

@pytest.mark.parametrize("lorax", LORAX_VERSIONS)
def test_lmc_kickstart_passes_livemedia_creators_check(lorax, policy, tmp_path):
    for extra in (["--url", "http://127.0.0.1:1/os/", "--repo", "AppStream=http://127.0.0.1:1/as/"],
                  ["--include", str(tmp_path / "source.ks")]):
        (tmp_path / "source.ks").write_text("url --url=http://127.0.0.1:1/os/\n")
        out = tmp_path / "ks.cfg"
        render(policy, out, "lmc-make-disk", "--force", *extra)
        ks = Kickstart(out.read_text())
        assert lmc_errors(ks, lorax) == []                # --make-disk in a VM
        assert lmc_errors(ks, lorax, no_virt=True) == []  # --make-disk --no-virt


@pytest.mark.parametrize("version", RHEL_VERSIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_kickstarts_pass_anacondas_checks(kind, version, policy, tmp_path):
    out = tmp_path / "ks.cfg"
    render(policy, out, kind)
    text = out.read_text()
    assert anaconda_errors(Kickstart(text), version) == []  # as ksvalidator reads it (includes not followed)
    include, _, _ = run_pre(text, tmp_path / "pre")
    after_pre = Kickstart(with_include(text, include))  # as anaconda parses it after %pre
    assert [c[2][0] for c in after_pre.commands if c[1] == "part"] == ["/boot", "/"] or kind == "virt-install"
    assert anaconda_errors(after_pre, version) == []
    assert anaconda_errors(Kickstart((TEMPLATES / f"{kind}.ks").read_text()), version) == []


def test_the_checks_can_fail():
    """What livemedia-creator refused in the old kickstart (text) and the rest of check_kickstart's rules."""
    base = "network --bootproto=dhcp\nurl --url=http://x/\npart / --size=4096\nshutdown\n%packages\n@core\n%end\n"
    assert lmc_errors(Kickstart(base), 46) == []
    assert "display mode" in lmc_errors(Kickstart("text\n" + base), 28)[0]
    assert "shutdown" in lmc_errors(Kickstart(base.replace("shutdown", "reboot")), 40)[0]
    assert lmc_errors(Kickstart(base.replace("shutdown", "poweroff")), 40) == []
    assert "networking" in lmc_errors(Kickstart(base.replace("network --bootproto=dhcp\n", "")), 34)[0]
    no_url = base.replace("url --url=http://x/\n", "")
    assert "install methods" in lmc_errors(Kickstart(no_url), 46, no_virt=True)[0]
    assert "repo" in lmc_errors(Kickstart(no_url + "repo --name=a --baseurl=http://x/\n"), 28)[0]
    assert "single /" in lmc_errors(Kickstart(base + "part /boot --size=1\n"), 46, make_fsimage=True)[0]
    assert anaconda_errors(Kickstart(base + "timezone UTC --isUtc\n"), "RHEL10")
    assert not anaconda_errors(Kickstart(base + "timezone UTC --isUtc\n"), "RHEL9")
    assert anaconda_errors(Kickstart(base + "bogus\n"), "RHEL9")
    assert anaconda_errors(Kickstart(base.replace("--size=4096", "--size=4096 --encrypted")), "RHEL8")


# --- %post against a real volume, real Tang servers and the runtime template's advertisements -------------------

def fake_tool(directory: Path, name: str):
    """A stand-in for a tool of the installed system: records its arguments."""
    path = directory / name
    path.write_text(f'#!/bin/sh\necho "$0 $*" >> "{directory}/calls"\n')
    path.chmod(0o755)


def post_sections(text):
    sections = list(POST.finditer(text))
    assert all("--erroronfail" in m.group("args") for m in sections)
    nochroot = [m.group("body") for m in sections if "--nochroot" in m.group("args")]
    chroot = [m.group("body") for m in sections if "--nochroot" not in m.group("args")]
    assert len(nochroot) == 1 and len(chroot) == 1
    return nochroot[0], chroot[0]


def installer(tmp_path, tangs, kind, policy):
    """The runtime as luksforge-runtime.tmpl leaves it, the rendered kickstart, its %pre run (the build
    passphrase), the installed system's tree (with the anaconda-ks.cfg anaconda writes before %post, at worst
    repeating the part line with its passphrase) and its disk as anaconda formats it from that part line
    (cryptsetup defaults: 16 KiB of LUKS2 metadata)."""
    runtime = tmp_path / "runtime"
    (runtime / "tmp").mkdir(parents=True)
    Runner(runtime, runtime).run(SOURCE_DIR / "lorax-templates/luksforge-runtime.tmpl", root=str(runtime),
                                 luksforge_tang=",".join(s.url for s in tangs),
                                 luksforge_thp=",".join(s.thp for s in tangs), luksforge_threshold="2")
    ks_path = tmp_path / "ks.cfg"
    render(policy, ks_path, kind)
    text = ks_path.read_text()
    include, run_dir, passphrase = run_pre(text, tmp_path / "installer")
    part = next(c for c in Kickstart(with_include(text, include)).commands if c[1] == "part" and c[2][0] == "/")[2]
    sysroot = tmp_path / "sysroot"
    (sysroot / "root").mkdir(parents=True)
    (sysroot / "dev/shm").mkdir(parents=True)  # anaconda mounts a tmpfs there for %post
    (sysroot / "root/anaconda-ks.cfg").write_text("# Generated by Anaconda\n" + " ".join(["part"] + part) + "\n")
    disk = tmp_path / "root.img"
    with open(disk, "wb") as f:
        f.truncate(32 << 20)
    format_as_anaconda(disk, part, passphrase)
    tools = tmp_path / "installed-system-tools"
    tools.mkdir()
    for name in ("grubby", "dracut"):
        fake_tool(tools, name)
    return Installer(runtime, text, include, run_dir, passphrase, sysroot, disk, tools)


class Installer:
    def __init__(self, runtime, text, include, run_dir, passphrase, sysroot, disk, tools):
        self.runtime, self.text, self.include, self.run_dir = runtime, text, include, run_dir
        self.passphrase, self.sysroot, self.disk, self.tools = passphrase, sysroot, disk, tools


def format_as_anaconda(device, part, passphrase: bytes):
    """LUKS2 as anaconda makes it from the kickstart's part line: its PBKDF options, cryptsetup's defaults else."""
    pbkdf = option(part, "--pbkdf")
    iterations = option(part, "--pbkdf-iterations")
    run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", pbkdf, "--pbkdf-force-iterations",
        iterations, "--key-file", "-", device, input=passphrase)


def run_post(inst, with_luksforge=False, device=None, chroot_edit=None):
    """The %post sections in order, as anaconda runs them: --nochroot in the installer, then the one in the
    installed system (dracut and grubby recorded, not run)."""
    nochroot, chroot = post_sections(inst.text)
    if chroot_edit:
        chroot = chroot_edit(chroot)
    env = {**os.environ, "ANA_INSTALL_PATH": str(inst.sysroot),
           "LUKSFORGE_RUNTIME_DIR": str(inst.runtime / "usr/share/luksforge"),
           "LUKSFORGE_RUN_DIR": str(inst.run_dir), "LUKSFORGE_PART_INCLUDE": str(inst.include)}
    subprocess.run(["bash", "-c", nochroot], env=env, check=True)
    path = f"{inst.tools}:/usr/sbin:/usr/bin:/sbin:/bin"
    if with_luksforge:
        path = f"{inst.tools}:{Path(CLI).parent}:/usr/sbin:/usr/bin:/sbin:/bin"
    env = {**os.environ, "PATH": path, "LUKSFORGE_DEVICES": str(device or inst.disk),
           "LUKSFORGE_SYSROOT": str(inst.sysroot), "LUKSFORGE_CONF_DIR": str(inst.sysroot / "etc/luksforge")}
    return subprocess.run(["bash", "-c", chroot], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)  # Python 3.6 (test_lmc_postbuild imports it): no capture_output


def files_holding(root: Path, secret: bytes):
    return [p for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


@pytest.mark.parametrize("with_luksforge", [False, True], ids=["stock-clevis", "luksforge-in-image"])
@pytest.mark.parametrize("kind", KINDS)
def test_post_binds_verifies_and_removes_the_build_passphrase(kind, with_luksforge, tangs, policy, tmp_path):
    inst = installer(tmp_path, tangs, kind, policy)
    if not with_luksforge:
        check = subprocess.run(["bash", "-c", "command -v luksforge"], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        assert check.returncode != 0, "luksforge must not be on the stock-Clevis path"
    result = run_post(inst, with_luksforge)
    assert result.returncode == 0, result.stderr
    assert (inst.sysroot / "etc/luksforge/clevis-config.json").exists()

    assert not cryptsetup_accepts(inst.disk, inst.passphrase, 0), "the build passphrase must be gone"
    dump = luks_dump(inst.disk)
    assert list(dump["keyslots"]) != ["0"] and len(dump["keyslots"]) == 1
    (slot,) = [int(s) for s in dump["keyslots"]]
    (token,) = dump["tokens"].values()
    assert token["type"] == "clevis" and token["keyslots"] == [str(slot)]
    listed = run("clevis", "luks", "list", "-d", inst.disk).stdout.decode()
    assert listed.startswith(f"{slot}: sss") and '"t":2' in listed
    clevis_pass = run("clevis", "luks", "pass", "-d", inst.disk, "-s", slot).stdout
    assert cryptsetup_accepts(inst.disk, clevis_pass, slot)
    calls = (inst.tools / "calls").read_text().splitlines()
    assert calls == [f"{inst.tools}/grubby --update-kernel=ALL --args=rd.neednet=1",
                     f"{inst.tools}/dracut -f --regenerate-all"]
    # No copy of the build passphrase anywhere: not in the installed system (anaconda's copies of the kickstart
    # in /root included — original-ks.cfg is copied after %post), not left in the installer's /run and /tmp.
    (inst.sysroot / "root/original-ks.cfg").write_text(inst.text)
    assert files_holding(inst.sysroot, inst.passphrase) == []
    assert "--passphrase" not in (inst.sysroot / "root/anaconda-ks.cfg").read_text()
    assert not (inst.run_dir / "build.pass").exists() and not inst.include.exists()
    assert not (inst.sysroot / "dev/shm/luksforge-build.pass").exists()


def test_post_fails_and_keeps_the_build_passphrase_when_tang_is_down(tmp_path, tangs):
    servers = [start_tang(tmp_path / f"t{i}") for i in range(3)]
    policy = write_policy(tmp_path / "policy.toml", servers)
    inst = installer(tmp_path, servers, "virt-install", policy)
    for s in servers:
        s.stop()
    result = run_post(inst)
    assert result.returncode != 0
    assert cryptsetup_accepts(inst.disk, inst.passphrase, 0), "the build passphrase must survive an unverified binding"
    assert not (inst.tools / "calls").exists()
    assert not (inst.sysroot / "dev/shm/luksforge-build.pass").exists(), "the key file goes even when %post fails"


def test_post_refuses_to_run_without_the_pre_made_passphrase(tangs, policy, tmp_path):
    inst = installer(tmp_path, tangs, "lmc-make-disk", policy)
    (inst.run_dir / "build.pass").unlink()
    nochroot, _ = post_sections(inst.text)
    env = {**os.environ, "ANA_INSTALL_PATH": str(inst.sysroot),
           "LUKSFORGE_RUNTIME_DIR": str(inst.runtime / "usr/share/luksforge"),
           "LUKSFORGE_RUN_DIR": str(inst.run_dir), "LUKSFORGE_PART_INCLUDE": str(inst.include)}
    assert subprocess.run(["bash", "-c", nochroot], env=env).returncode != 0
