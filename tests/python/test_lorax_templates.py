"""The Lorax templates, rendered and run as lorax does (lorax_harness), against a real Tang: the runtime
template verifies advertisements at render time and leaves a policy an install binds with, without TOFU;
the arch template puts a checked kickstart onto boot.iso's graft directory."""

import json
import os
import shutil
from pathlib import Path

import pytest

import luksforge
from conftest import FAST, SOURCE_DIR, cryptsetup_accepts, run, start_tang
from lorax_harness import Runner, brace_expand, parse

TEMPLATES = SOURCE_DIR / "lorax-templates"
RUNTIME = TEMPLATES / "luksforge-runtime.tmpl"
ARCH = TEMPLATES / "luksforge-arch.tmpl"
KICKSTARTS = sorted((TEMPLATES / "kickstarts").glob("*.ks"))


@pytest.fixture
def runtime_root(tmp_path):
    root = tmp_path / "installroot"
    (root / "tmp").mkdir(parents=True)
    (root / "usr/share").mkdir(parents=True)
    return root


def rendered_kickstart(template: Path, tang, tmp_path) -> Path:
    """The template rendered by `luksforge kickstart` (no secret in it), as it goes onto boot.iso."""
    policy = tmp_path / "render-policy.toml"
    policy.write_text(f'[[tang]]\nurl = "{tang.url}"\nthp = "{tang.thp}"\n')
    out = tmp_path / f"rendered-{template.name}"
    run(os.environ.get("LUKSFORGE_CLI", "luksforge"), "kickstart", "--kind", template.stem, "--policy", policy,
        "--url", "http://127.0.0.1:1/os/", "--out", out)
    return out


def run_runtime(root, **variables):
    runner = Runner(root, root)
    runner.run(RUNTIME, root=str(root), **variables)
    return runner


def test_harness_expands_braces_like_lorax():
    assert list(brace_expand("a{b,c}d")) == ["abd", "acd"]
    assert list(brace_expand('{"t":2,"pins":1}')) == ['"t":2', '"pins":1']  # why JSON never goes on a line
    assert list(brace_expand("plain")) == ["plain"]


def test_runtime_template_verifies_tang_and_writes_policy(tang, runtime_root, tmp_path):
    runner = run_runtime(runtime_root, luksforge_tang=tang.url, luksforge_thp=tang.thp)
    share = runtime_root / "usr/share/luksforge"
    assert sorted(p.name for p in share.iterdir()) == ["clevis-config.json", "clevis-pin", "policy.toml", "tang-1.jws",
                                                       "verified.json"]
    # The same binding for stock clevis, the advertisement named relative to the directory %post runs in.
    assert (share / "clevis-pin").read_text() == "tang\n"
    assert json.loads((share / "clevis-config.json").read_text()) == {"url": tang.url, "adv": "tang-1.jws", "thp": tang.thp}
    assert not list((runtime_root / "tmp").iterdir()), "the staging directory must be removed"
    assert (share / "policy.toml").stat().st_mode & 0o777 == 0o644
    assert any("1 Tang advertisement(s) verified" in m for m in runner.log)
    # Every command is a documented one and no word on any line carries JSON.
    assert {c[0] for c in runner.commands} <= {"log", "mkdir", "install", "chmod", "remove"}
    assert not any("{" in w for c in runner.commands for w in c)

    policy = luksforge.Policy.load(share / "policy.toml")
    assert policy.check() == [] and not policy.trust_on_first_use
    assert [(s.url, s.thp, str(s.adv)) for s in policy.servers] == [(tang.url, tang.thp, str(share / "tang-1.jws"))]
    adv = luksforge.parse_advertisement((share / "tang-1.jws").read_text())
    assert adv.has_signing_key(tang.thp)
    summary = json.loads((share / "verified.json").read_text())
    assert summary["pin"] == "tang" and summary["servers"][0]["thp"] == tang.thp
    assert summary["servers"][0]["trust"] == "offline_advertisement"

    # What an install does with it: bind through the policy, offline advertisement, verified through Tang.
    image = tmp_path / "disk.img"
    with luksforge.Volume.format(image, size=32 << 20, pbkdf=FAST, passphrase=b"build") as volume:
        bound = policy.bind(volume, passphrase=b"build")
        assert bound.verified
    assert cryptsetup_accepts(image, bytes(luksforge.Volume.open(image).unlock().passphrase), bound.keyslot)


def test_runtime_template_with_three_servers_and_threshold(tmp_path, runtime_root):
    servers = [start_tang(tmp_path / f"t{i}") for i in range(3)]
    try:
        run_runtime(runtime_root, luksforge_tang=",".join(s.url for s in servers),
                    luksforge_thp=" ".join(s.thp for s in servers), luksforge_threshold="2")
        policy = luksforge.Policy.load(runtime_root / "usr/share/luksforge/policy.toml")
        assert policy.check() == [] and policy.threshold == 2 and policy.pin == "sss"
        assert len(list((runtime_root / "usr/share/luksforge").glob("tang-*.jws"))) == 3
    finally:
        for s in servers:
            s.stop()


def test_runtime_template_from_a_policy_file(tang, runtime_root, tmp_path):
    source = tmp_path / "site-policy.toml"
    source.write_text(f'max_instances_per_key = 3\n\n[[tang]]\nurl = "{tang.url}"\nthp = "{tang.thp}"\n\n'
                      '[keyslot]\npbkdf = "pbkdf2"\niterations = 2000\n')
    run_runtime(runtime_root, luksforge_policy=str(source))
    policy = luksforge.Policy.load(runtime_root / "usr/share/luksforge/policy.toml")
    assert policy.check() == []
    assert policy.max_instances_per_key == 3 and policy.keyslot_pbkdf.iterations == 2000
    assert policy.servers[0].adv is not None and policy.servers[0].thp == tang.thp


@pytest.mark.parametrize("variables, error", [
    ({}, "exactly one of"),
    ({"luksforge_tang": "http://127.0.0.1:1"}, "one pinned thumbprint per Tang URL"),
    ({"luksforge_tang": "ftp://127.0.0.1:1", "luksforge_thp": "A" * 43}, "not an http"),
    ({"luksforge_tang": "http://127.0.0.1:1", "luksforge_thp": "short"}, "thumbprint"),
    ({"luksforge_tang": "http://127.0.0.1:1", "luksforge_thp": "A" * 43, "luksforge_threshold": "2"}, "threshold"),
])
def test_runtime_template_refuses_bad_variables_at_render_time(runtime_root, variables, error):
    with pytest.raises(luksforge.lorax.TemplateVarError, match=error):
        run_runtime(runtime_root, **variables)
    assert not (runtime_root / "usr/share/luksforge").exists()


def test_runtime_template_refuses_a_wrong_thumbprint_or_a_dead_server(tang, runtime_root):
    other = "x5j47HARIeE6pkZckMW8Z7dvFQ8XWCRdQ_5UlETyj4I"
    with pytest.raises(luksforge.TangError):
        run_runtime(runtime_root, luksforge_tang=tang.url, luksforge_thp=other)
    from conftest import free_port
    with pytest.raises(luksforge.TangError):
        run_runtime(runtime_root, luksforge_tang=f"http://127.0.0.1:{free_port()}", luksforge_thp=tang.thp,
                    luksforge_timeout_ms="2000")
    assert not (runtime_root / "usr/share/luksforge").exists()


def test_runtime_template_refuses_a_policy_that_trusts_on_first_use(tang, runtime_root, tmp_path):
    source = tmp_path / "tofu.toml"
    source.write_text(f'trust_on_first_use = true\n\n[[tang]]\nurl = "{tang.url}"\n')
    with pytest.raises(luksforge.lorax.TemplateVarError, match="first use"):
        run_runtime(runtime_root, luksforge_policy=str(source))
    invalid = tmp_path / "invalid.toml"
    invalid.write_text('threshold = 3\n\n[[tang]]\nurl = "http://127.0.0.1:1"\nthp = "' + tang.thp + '"\n')
    with pytest.raises(luksforge.FormatError):
        run_runtime(runtime_root, luksforge_policy=str(invalid))


def test_runtime_template_output_survives_runtime_cleanup(tang, runtime_root):
    """Lorax's runtime-cleanup.tmpl removes, among others, these trees; ours must not be among them."""
    run_runtime(runtime_root, luksforge_tang=tang.url, luksforge_thp=tang.thp)
    cleanup = ["/tmp/*", "/usr/local", "/usr/share/doc", "/usr/share/info", "/usr/share/man", "/var/tmp",
               "/usr/share/i18n", "/etc/logrotate.d"]
    runner = Runner(runtime_root, runtime_root)
    runner.cmd_remove(*cleanup)
    assert (runtime_root / "usr/share/luksforge/policy.toml").exists()


@pytest.mark.parametrize("kickstart", KICKSTARTS, ids=lambda p: p.name)
def test_arch_template_grafts_the_kickstart_and_runtime_policy(kickstart, tang, tmp_path):
    workdir = tmp_path / "work"
    inroot = workdir / "installroot"
    (inroot / "tmp").mkdir(parents=True)
    outroot = tmp_path / "out"
    outroot.mkdir()
    run_runtime(inroot, luksforge_tang=tang.url, luksforge_thp=tang.thp)
    kickstart = rendered_kickstart(kickstart, tang, tmp_path)
    runner = Runner(inroot, outroot)
    runner.run(ARCH, workdir=str(workdir), inroot=str(inroot), outroot=str(outroot), isolabel="Test-Label",
               luksforge_kickstart=str(kickstart))
    graft = workdir / "iso-graft"
    assert (graft / "luksforge.ks").read_text() == kickstart.read_text()
    assert (graft / "luksforge/policy.toml").read_bytes() == (inroot / "usr/share/luksforge/policy.toml").read_bytes()
    assert (graft / "luksforge/clevis-config.json").exists() and (graft / "luksforge/clevis-pin").read_text() == "tang\n"
    assert all(c[0] in {"log", "runcmd"} for c in runner.commands)


def test_arch_template_without_runtime_policy_grafts_only_the_kickstart(tang, tmp_path):
    workdir = tmp_path / "work"
    (workdir / "installroot").mkdir(parents=True)
    runner = Runner(workdir / "installroot", tmp_path)
    runner.run(ARCH, workdir=str(workdir), inroot=str(workdir / "installroot"),
               luksforge_kickstart=str(rendered_kickstart(KICKSTARTS[0], tang, tmp_path)),
               luksforge_kickstart_name="ks.cfg")
    assert sorted(p.name for p in (workdir / "iso-graft").iterdir()) == ["ks.cfg"]


def test_arch_template_refuses_a_kickstart_that_is_not_nbde_ready(tmp_path):
    bad = tmp_path / "plain.ks"
    bad.write_text("part / --fstype=xfs --size=4096 --encrypted --passphrase=xxxxxxxx\n%post\necho hi\n%end\n")
    with pytest.raises(luksforge.lorax.TemplateVarError) as info:
        parse(ARCH, workdir=str(tmp_path), inroot=str(tmp_path), luksforge_kickstart=str(bad),
              exists=lambda p: False)
    message = str(info.value)
    for problem in ("luks2", "clevis luks bind", "luksforge bind", "clevis luks pass", "unlock", "removes the build",
                    "rd.neednet=1", "dracut", "fixed build passphrase"):
        assert problem in message
    assert not (tmp_path / "iso-graft").exists()
    with pytest.raises(luksforge.lorax.TemplateVarError, match="luksforge_kickstart"):
        parse(ARCH, workdir=str(tmp_path), inroot=str(tmp_path), exists=lambda p: False)


@pytest.mark.parametrize("kickstart", KICKSTARTS, ids=lambda p: p.name)
def test_arch_template_refuses_a_kickstart_with_a_passphrase_of_its_own(kickstart, tang, tmp_path):
    """Everything on boot.iso is public: the committed template (unrendered), a rendered one whose root `part`
    line carries a passphrase (random or not: every install from that ISO would share it), or whose %pre writes
    a fixed one, never go onto boot.iso; the rendered kickstart, whose %pre makes one per install, does."""
    rendered = rendered_kickstart(kickstart, tang, tmp_path).read_text()
    fixed = "part / --fstype=xfs --size=4096 --encrypted --luks-version=luks2 --passphrase=" + "A1b2" * 11
    include = "%include /run/luksforge/root-part.ks\n"
    assert include in rendered
    for bad_text, error in ((kickstart.read_text(), "unrendered"),
                            (rendered.replace(include, fixed + "\n"), "fixed build passphrase"),
                            (rendered.replace("--passphrase=%s", "--passphrase=luksforge-build-only-2f1c"),
                             "fixed build passphrase"),
                            (rendered.replace(include, "part / --fstype=xfs --encrypted --luks-version=luks2\n")
                             .replace("--passphrase=%s ", ""), "anaconda would stop and ask")):
        bad = tmp_path / "bad.ks"
        bad.write_text(bad_text)
        with pytest.raises(luksforge.lorax.TemplateVarError, match=error):
            parse(ARCH, workdir=str(tmp_path), inroot=str(tmp_path), luksforge_kickstart=str(bad),
                  exists=lambda p: False)
        assert not (tmp_path / "iso-graft").exists()
    luksforge.lorax.check_kickstart(rendered, kickstart.name)
