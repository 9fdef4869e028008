"""Helpers for luksforge's Lorax templates (lorax-templates/ in the source tree).

Lorax renders a template with Mako inside its own Python process on the build host, so a template can
``import luksforge`` and do real work before any template command runs. These helpers do that work:

* :func:`prepare_runtime` checks the ``--add-template-var`` values (a policy file, or Tang URLs with pinned
  thumbprints), fetches every Tang advertisement, verifies its signatures and the pinned signing key, and
  stages a policy that names the verified advertisements as offline ``adv`` files — so installs bind without
  trust-on-first-use. The runtime template then copies the staged files with plain Lorax commands.
* :func:`check_kickstart` refuses a kickstart that would not produce an NBDE-ready install.

Nothing here ever writes JSON onto a template line: Lorax brace-expands words holding ``{``, ``,`` and ``}``.

Lorax runs in the distribution's own Python (3.6 on RHEL 8, 3.9 on RHEL 9, 3.12 on RHEL 10), so this module
keeps to Python 3.6: no tomllib (the policy is read by the C++ library, luksforge.Policy), no dataclasses, no
postponed annotations, no builtin generics in annotations.
"""

import hashlib
import json
import os
import re
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import List

from . import _luksforge as _lf

#: Where the runtime template puts the verified policy and advertisements. Lorax's runtime-cleanup.tmpl
#: removes /usr/share/doc, /usr/share/man, /usr/local, /tmp/*, /var/tmp ... but nothing under these.
RUNTIME_DIR = "/usr/share/luksforge"
MAX_ADVERTISEMENT_BYTES = 1 << 20


class TemplateVarError(ValueError):
    """An ``--add-template-var`` value is missing or malformed (the message names the variable)."""


class StagedFile:
    """One file for the runtime template to `install`: source relative to the template's root (inroot), as
    Lorax's `install` wants it; dest an absolute path in the runtime."""

    def __init__(self, source: str, dest: str, mode: str = "644") -> None:
        self.source, self.dest, self.mode = source, dest, mode

    def __repr__(self) -> str:
        return "StagedFile({!r}, {!r}, {!r})".format(self.source, self.dest, self.mode)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StagedFile) and vars(self) == vars(other)


class RuntimePlan:
    """What prepare_runtime staged: `staging` (relative to root), the files, the verified servers, the pin."""

    def __init__(self, staging: str, dest_dir: str) -> None:
        self.staging, self.dest_dir = staging, dest_dir
        self.files = []  # type: List[StagedFile]
        self.servers = []  # type: List[dict]
        self.pin = ""
        self.threshold = 1

    def __repr__(self) -> str:
        return "RuntimePlan({!r})".format(vars(self))


def _split_list(value: str, name: str) -> "List[str]":
    items = [item.strip() for item in re.split(r"[\s,]+", value or "") if item.strip()]
    if not items:
        raise TemplateVarError(f"{name} is empty")
    return items


_THUMBPRINT = re.compile(r"^[A-Za-z0-9_-]{27}$|^[A-Za-z0-9_-]{43}$")


def _check_url(url: str, name: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise TemplateVarError(f"{name}: {url!r} is not an http(s) URL")
    return url.rstrip("/")


def fetch_advertisement_jws(url: str, thp: str, timeout_ms: int = 10000) -> bytes:
    """GET {url}/adv/{thp} as served (the signed JWS, byte for byte), capped in size, no redirects."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # a Tang server never redirects; refuse to follow
            return None

    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(f"{url}/adv/{urllib.parse.quote(thp)}", headers={"Accept": "application/jose+json"})
    try:
        with opener.open(request, timeout=timeout_ms / 1000) as response:
            body = response.read(MAX_ADVERTISEMENT_BYTES + 1)
    except OSError as e:  # URLError, HTTPError, timeouts
        raise _lf.TangError(f"{url}: cannot fetch the advertisement for {thp}: {e}") from None
    if len(body) > MAX_ADVERTISEMENT_BYTES:
        raise _lf.TangError(f"{url}: advertisement larger than {MAX_ADVERTISEMENT_BYTES} bytes")
    return body


def verify_advertisement(url: str, jws: bytes, thp: str) -> "_lf.Advertisement":
    """Every signature must verify (luksforge.parse_advertisement) and the pinned key `thp` must be a signer."""
    adv = _lf.parse_advertisement(jws.decode("utf-8"))
    if not adv.signed:
        raise _lf.TangError(f"{url}: the advertisement is not signed")
    if not adv.has_signing_key(thp):
        raise _lf.TangError(f"{url}: the advertisement is not signed by the pinned key {thp} "
                            f"(its signing keys: {', '.join(adv.signing_thumbprints)})")
    if not adv.exchange_thumbprints:
        raise _lf.TangError(f"{url}: the advertisement has no exchange (deriveKey) key")
    return adv


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    raise TemplateVarError(f"cannot write {value!r} to TOML")


def _policy_document(policy: "_lf.Policy") -> dict:
    """The policy's settings as parsed by the C++ library, ready for _write_policy (docs/policy.md's keys; the
    [[tang]] entries are filled in by the caller). Unset sizes stay unset: format --policy then picks them."""
    document = {"threshold": policy.threshold, "trust_on_first_use": policy.trust_on_first_use,
                "max_instances_per_key": policy.max_instances_per_key}
    luks = {"cipher": policy.cipher, "key_bits": policy.key_bits}
    if policy.metadata_bytes is not None:
        luks["metadata_size"] = policy.metadata_bytes
    if policy.keyslots_bytes is not None:
        luks["keyslots_size"] = policy.keyslots_bytes
    pbkdf = policy.keyslot_pbkdf
    keyslot = {"pbkdf": pbkdf.type}
    if pbkdf.type == "pbkdf2":
        keyslot.update(hash=pbkdf.hash, iterations=pbkdf.iterations)
    else:
        keyslot.update(iterations=pbkdf.iterations, memory_kib=pbkdf.memory_kib, parallel=pbkdf.parallel)
    document.update(luks=luks, keyslot=keyslot, tang=[])
    return document


def _write_policy(document: dict) -> str:
    """TOML for the policy schema (docs/policy.md): top-level scalars, [[tang]] entries, [luks], [keyslot]."""
    lines = []
    for key, value in document.items():
        if not isinstance(value, (dict, list)):
            lines.append(f"{key} = {_toml_value(value)}")
    for table, value in document.items():
        if isinstance(value, dict):
            lines += ["", f"[{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list):
            for entry in value:
                lines += ["", f"[[{table}]]"] + [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def _clevis_binding(document: dict):
    """Clevis's pin name and config for the staged policy: tang for one server, else sss t-of-n over tang."""
    servers = []
    for entry in document["tang"]:
        server = {"url": entry["url"], "adv": entry["adv"]}
        if entry.get("thp"):
            server["thp"] = entry["thp"]  # clevis also checks that the offline advertisement is signed by it
        servers.append(server)
    threshold = int(document.get("threshold", 1))
    if len(servers) == 1 and threshold == 1:
        return "tang", servers[0]
    return "sss", {"t": threshold, "pins": {"tang": servers}}


def prepare_runtime(root: str, *, policy: str = "", tang: str = "", thp: str = "", threshold: str = "",
                    timeout_ms: str = "10000", dest_dir: str = RUNTIME_DIR) -> RuntimePlan:
    """Validate the template variables, fetch and verify every advertisement, and stage the runtime files.

    Either `policy` (a policy file on the build host) or `tang` (Tang URLs) with `thp` (one pinned signing-key
    thumbprint per URL, same order) and optionally `threshold`. Lists are separated by spaces or commas.
    Raises TemplateVarError, luksforge.FormatError (bad policy) or luksforge.TangError (fetch or trust failed),
    which makes Lorax abort at render time before anything is written into the runtime.
    """
    if bool(policy) == bool(tang):
        raise TemplateVarError("set exactly one of luksforge_policy=FILE or luksforge_tang=URL[,URL...]")
    try:
        timeout = int(timeout_ms)
    except ValueError:
        raise TemplateVarError(f"luksforge_timeout_ms: {timeout_ms!r} is not a number") from None

    if policy:
        if thp or threshold:
            raise TemplateVarError("luksforge_thp/luksforge_threshold go with luksforge_tang, not with a policy")
        policy_path = Path(policy)
        parsed = _lf.Policy.load(policy_path)
        parsed.require_valid()  # schema, thresholds, thumbprints, offline advertisements: all before any fetch
        if parsed.tpm2 is not None:
            # The runtime binds Tang servers only; a [tpm2] share is bound on the installed machine itself.
            raise TemplateVarError(f"{policy}: the policy has a [tpm2] pin, which the Lorax runtime template does "
                                   "not bind (bind tpm2 on the installed machine: luksforge bind IMAGE --policy FILE)")
        document = _policy_document(parsed)
        servers = []
        for server in parsed.servers:
            if server.thp is None and server.adv is None:
                raise TemplateVarError(f"{policy}:{server.line}: {server.url} has neither thp nor adv: an "
                                       "installer must not trust a Tang server on first use")
            entry = {"url": server.url}
            if server.thp is not None:
                entry["thp"] = server.thp
            document["tang"].append(entry)
            servers.append((entry, server.url, server.thp, str(server.adv) if server.adv is not None else None))
    else:
        urls = [_check_url(u, "luksforge_tang") for u in _split_list(tang, "luksforge_tang")]
        thps = _split_list(thp, "luksforge_thp") if thp else []
        if len(thps) != len(urls):
            raise TemplateVarError(f"luksforge_thp needs one pinned thumbprint per Tang URL "
                                   f"({len(urls)} URLs, {len(thps)} thumbprints)")
        for t in thps:
            if not _THUMBPRINT.match(t):
                raise TemplateVarError(f"luksforge_thp: {t!r} is not a base64url S256 or S1 thumbprint")
        try:
            t_value = int(threshold) if threshold else 1
        except ValueError:
            raise TemplateVarError(f"luksforge_threshold: {threshold!r} is not a number") from None
        if not 1 <= t_value <= len(urls):
            raise TemplateVarError(f"luksforge_threshold must be between 1 and {len(urls)}, not {t_value}")
        document = {"threshold": t_value, "trust_on_first_use": False, "tang": []}
        servers = []
        for url, t in zip(urls, thps):
            entry = {"url": url, "thp": t}
            document["tang"].append(entry)
            servers.append((entry, url, t, None))

    root_tmp = Path(root) / "tmp"
    root_tmp.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="luksforge-", dir=root_tmp))
    plan = RuntimePlan(staging=str(staging.relative_to(root)), dest_dir=dest_dir)
    verified = []
    for index, (entry, url, pinned, offline) in enumerate(servers, start=1):
        if offline is not None:
            raw = Path(offline).read_bytes()
            adv = _lf.parse_advertisement(raw.decode("utf-8"))
            if pinned and not adv.has_signing_key(pinned):
                raise _lf.TangError(f"{url}: the offline advertisement {offline} is not signed by {pinned}")
        else:
            raw = fetch_advertisement_jws(url, pinned, timeout)
            adv = verify_advertisement(url, raw, pinned)
        name = f"tang-{index}.jws"
        (staging / name).write_bytes(raw)
        # Exactly what a bind in the installed system will do with this file: no network, no TOFU.
        config = {"url": url, "adv": str(staging / name)}
        if pinned:
            config["thp"] = pinned
        trusted = _lf.trusted_advertisement(config)
        entry.pop("adv", None)
        entry["adv"] = name  # relative to the policy file: valid in staging and in the runtime alike
        verified.append({"url": url, "thp": pinned, "adv": f"{dest_dir}/{name}", "trust": trusted.source,
                         "signing_thumbprints": adv.signing_thumbprints,
                         "exchange_thumbprints": adv.exchange_thumbprints,
                         "sha256": hashlib.sha256(raw).hexdigest()})
        plan.files.append(StagedFile(f"{plan.staging}/{name}", f"{dest_dir}/{name}"))

    # The same binding for stock `clevis luks bind` (the installed system needs no luksforge): pin and config,
    # naming each advertisement file relative to the directory %post runs clevis in.
    clevis_pin, clevis_config = _clevis_binding(document)
    (staging / "clevis-pin").write_text(clevis_pin + "\n")
    (staging / "clevis-config.json").write_text(json.dumps(clevis_config, separators=(",", ":")) + "\n")
    plan.files.append(StagedFile(f"{plan.staging}/clevis-pin", f"{dest_dir}/clevis-pin"))
    plan.files.append(StagedFile(f"{plan.staging}/clevis-config.json", f"{dest_dir}/clevis-config.json"))

    policy_text = _write_policy(document)
    (staging / "policy.toml").write_text(policy_text)
    runtime_policy = _lf.Policy.parse(policy_text, source=f"{dest_dir}/policy.toml", base_dir=staging)
    runtime_policy.require_valid()
    plan.pin, plan.threshold, plan.servers = runtime_policy.pin, runtime_policy.threshold, verified
    plan.files.append(StagedFile(f"{plan.staging}/policy.toml", f"{dest_dir}/policy.toml"))

    summary = {"luksforge": _lf.__version__, "verified_at": _lf.utc_timestamp(), "pin": plan.pin,
               "threshold": plan.threshold, "policy": f"{dest_dir}/policy.toml", "servers": verified}
    (staging / "verified.json").write_text(json.dumps(summary, indent=2) + "\n")
    plan.files.append(StagedFile(f"{plan.staging}/verified.json", f"{dest_dir}/verified.json"))
    for f in plan.files:
        _check_template_word(f.source)
        _check_template_word(f.dest)
    return plan


def _check_template_word(word: str) -> None:
    # Lorax shlex-splits and brace-expands every line: a path must stay one word.
    if any(c in word for c in "{}, \t\n'\"\\"):
        raise TemplateVarError(f"{word!r} cannot be used on a Lorax template line")


_POST_SECTION = re.compile(r"^%post\b(?P<args>[^\n]*)\n(?P<body>.*?)^%end\b", re.M | re.S)

_SECTION = re.compile(r"^(?P<name>%(?:pre-install|pre|post|packages|onerror|traceback|addon|anaconda))(?![\w-])"
                      r"(?P<args>[^\n]*)\n(?P<body>.*?)^%end\b", re.M | re.S)
_STORAGE_LINE = re.compile(r"^\s*(?:printf\s+['\"])?(part|partition|logvol|raid)\s")


def _encrypted_storage_lines(text: str):
    """The encrypted part/logvol/raid lines: kickstart commands (outside sections, where the committed value of
    --passphrase would be a fixed secret) and the ones a %pre writes for an %include (made per install)."""
    commands = _SECTION.sub("", text)
    pre = "\n".join(m.group("body") for m in _SECTION.finditer(text) if m.group("name") == "%pre")
    found = []
    for origin, block in (("command", commands), ("pre", pre)):
        for line in block.splitlines():
            if _STORAGE_LINE.match(line) and "--encrypted" in line.split():
                found.append((origin, line.strip()))
    return found


def _passphrase_of(line: str):
    for word in line.split():
        if word.startswith("--passphrase="):
            return word.split("=", 1)[1].strip("'\"")
    return None


def check_kickstart(text: str, name: str = "kickstart") -> None:
    """Refuse a kickstart that would not make an NBDE-ready LUKS2 install, or that carries a build passphrase of
    its own: everything on boot.iso is public, and every install from one kickstart would share it (raises
    TemplateVarError). The luksforge kickstarts let %pre make the passphrase per install, in the installer's
    memory, and %include the `part` line it writes."""
    problems = []
    encrypted = _encrypted_storage_lines(text)
    if not encrypted:
        problems.append("no 'part ... --encrypted' line (nor one that %pre writes)")
    for origin, line in encrypted:
        shown = line.split("--passphrase=")[0].strip()
        if "--luks-version=luks2" not in line.split():
            problems.append(f"encrypted without --luks-version=luks2: {shown}")
        passphrase = _passphrase_of(line)
        if passphrase is None:
            problems.append(f"encrypted without --passphrase (anaconda would stop and ask): {shown}")
        elif origin == "command" or not (passphrase == "%s" or passphrase.startswith("$")):
            problems.append(f"a fixed build passphrase in the kickstart ({shown}): whoever reads the kickstart or "
                            "boot.iso has it, and every install shares it; let %pre make one per install, as the "
                            "luksforge kickstarts do")
    if "@LUKSFORGE_" in text:
        problems.append("an unrendered template (@LUKSFORGE_...@ markers): render it with `luksforge kickstart`")
    posts = [m.group("body") for m in _POST_SECTION.finditer(text) if "--nochroot" not in m.group("args")]
    binds = any(re.search(r"\b(luksforge|clevis\s+luks)\s+bind\b", body) for body in posts)
    if not binds:
        problems.append("no %post binds the volume ('clevis luks bind' or 'luksforge bind')")
    verified = any(re.search(r"\bluksforge\s+unlock\b.*--test", body) or
                   (re.search(r"\bclevis\s+luks\s+pass\b", body) and "--test-passphrase" in body) for body in posts)
    if not verified:
        problems.append("no %post verifies the binding through Tang ('clevis luks pass' + 'cryptsetup open "
                        "--test-passphrase', or 'luksforge unlock ... --test')")
    if not any(re.search(r"\b(luksRemoveKey|luksKillSlot|luksforge\s+remove-key)\b", body) for body in posts):
        problems.append("no %post removes the build passphrase's keyslot")
    if "rd.neednet=1" not in text:
        problems.append("the initramfs is not given rd.neednet=1")
    if not re.search(r"\bdracut\b[^\n]*-f", text):
        problems.append("the initramfs is not regenerated (dracut -f)")
    if problems:
        raise TemplateVarError(f"{name}: " + "; ".join(problems))
