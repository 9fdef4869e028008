"""The checks livemedia-creator and anaconda apply to a kickstart, for tests (pykickstart is not packaged in
Debian, so neither `ksvalidator` nor lorax's own check can run here).

* `lmc_errors()` enforces pylorax's `check_kickstart()` (src/pylorax/creator.py; in lorax 28 for RHEL 8 the
  same checks sit in livemedia-creator's main()), for lorax 28 (RHEL 8), 34 (RHEL 9), 40 (RHEL 10) and 46 (newest):
  --no-virt needs a url or nfs method (or ostreesetup); repo only with url; url/nfs need a network command
  (lorax ≥ 34: except a file: url); no display mode (text, graphical, cmdline); a filesystem image (or a
  --no-virt PXE live image) has only / and swap and no autopart; without --no-virt the kickstart must shut down
  (shutdown, poweroff and halt all set pykickstart's KS_SHUTDOWN; reboot does not).
* `anaconda_errors()` does what `ksvalidator -v RHEL8|RHEL9|RHEL10` would for the commands these kickstarts use:
  every command known to that version, every option one of that command's (taken from pykickstart's handlers:
  RHEL10 dropped `timezone --isUtc/--ntpservers/--nontp`, network teams), well-formed sections, and an
  encrypted part with a passphrase (anaconda would otherwise stop and ask). A command outside that set is an
  error here, so an unchecked command cannot slip in.
"""

import re
import shlex
from pathlib import Path

LORAX_VERSIONS = (28, 34, 40, 46)
RHEL_VERSIONS = ("RHEL8", "RHEL9", "RHEL10")

_NETWORK = {"--activate", "--bindto", "--bondopts", "--bondslaves", "--bootproto", "--bridgeopts", "--bridgeslaves",
            "--device", "--dhcpclass", "--essid", "--ethtool", "--gateway", "--hostname", "--interfacename", "--ip",
            "--ipv6", "--ipv6gateway", "--mtu", "--nameserver", "--netmask", "--no-activate", "--nodefroute",
            "--nodns", "--noipv4", "--noipv6", "--notksdevice", "--onboot", "--vlanid", "--wepkey", "--wpakey"}
_NETWORK_DNS = {"--ipv4-dns-search", "--ipv4-ignore-auto-dns", "--ipv6-dns-search", "--ipv6-ignore-auto-dns"}
_PART = {"--asprimary", "--backuppassphrase", "--cipher", "--encrypted", "--escrowcert", "--fsoptions", "--fsprofile",
         "--fstype", "--grow", "--hibernation", "--label", "--luks-version", "--maxsize", "--mkfsoptions",
         "--noformat", "--onbiosdisk", "--ondisk", "--ondrive", "--onpart", "--passphrase", "--pbkdf",
         "--pbkdf-iterations", "--pbkdf-memory", "--pbkdf-time", "--recommended", "--resize", "--size", "--type",
         "--usepart"}
_BOOTLOADER = {"--append", "--boot-drive", "--default", "--disabled", "--driveorder", "--extlinux", "--iscrypted",
               "--leavebootorder", "--location", "--md5pass", "--nombr", "--password", "--timeout"}
_SOURCE = {"--metalink", "--mirrorlist", "--noverifyssl", "--proxy", "--sslcacert", "--sslclientcert", "--sslclientkey"}
_REBOOT = {"--eject", "--kexec"}
_COMMON = {
    "text": {"--non-interactive"}, "graphical": {"--non-interactive"}, "cmdline": {"--non-interactive"},
    "lang": {"--addsupport"}, "keyboard": {"--switch", "--vckeymap", "--xlayouts"},
    "selinux": {"--disabled", "--enforcing", "--permissive"},
    "firewall": {"--disable", "--disabled", "--enable", "--enabled", "--ftp", "--http", "--port", "--remove-service",
                 "--service", "--smtp", "--ssh", "--trust", "--use-system-defaults"},
    "services": {"--disabled", "--enabled"}, "zerombr": set(),
    "clearpart": {"--all", "--cdl", "--disklabel", "--drives", "--initlabel", "--linux", "--list", "--none"},
    "reqpart": {"--add-boot"}, "part": _PART, "partition": _PART,
    "shutdown": _REBOOT, "reboot": _REBOOT, "poweroff": _REBOOT, "halt": _REBOOT,
    "url": _SOURCE | {"--url"}, "nfs": {"--dir", "--opts", "--server"},
}
COMMANDS = {
    "RHEL8": {**_COMMON, "timezone": {"--isUtc", "--nontp", "--ntpservers", "--utc"},
              "network": _NETWORK | {"--teamconfig", "--teamslaves"}, "rootpw": {"--iscrypted", "--lock", "--plaintext"},
              "bootloader": _BOOTLOADER,
              "repo": _SOURCE | {"--baseurl", "--cost", "--excludepkgs", "--ignoregroups", "--includepkgs", "--install",
                                 "--name"}},
    "RHEL9": {**_COMMON, "timezone": {"--isUtc", "--nontp", "--ntpservers", "--utc"},
              "network": _NETWORK | _NETWORK_DNS | {"--teamconfig", "--teamslaves"},
              "rootpw": {"--allow-ssh", "--iscrypted", "--lock", "--plaintext"}, "bootloader": _BOOTLOADER,
              "repo": _SOURCE | {"--baseurl", "--cost", "--excludepkgs", "--includepkgs", "--install", "--name"}},
    "RHEL10": {**_COMMON, "timezone": {"--utc"}, "network": _NETWORK | _NETWORK_DNS,
               "rootpw": {"--allow-ssh", "--iscrypted", "--lock", "--plaintext"}, "bootloader": _BOOTLOADER | {"--sdboot"},
               "repo": _SOURCE | {"--baseurl", "--cost", "--excludepkgs", "--includepkgs", "--install", "--name"}},
}
SECTIONS = {"%packages", "%post", "%pre", "%pre-install", "%onerror", "%traceback"}
SECTION_OPTIONS = {"%post": {"--nochroot", "--erroronfail", "--interpreter", "--log"},
                   "%pre": {"--erroronfail", "--interpreter", "--log"}, "%pre-install": {"--erroronfail", "--interpreter", "--log"},
                   "%packages": {"--excludedocs", "--ignoremissing", "--nocore", "--multilib", "--instLangs",
                                 "--inst-langs", "--excludeWeakdeps", "--exclude-weakdeps", "--retries", "--timeout"},
                   "%onerror": {"--interpreter", "--log"}, "%traceback": {"--interpreter", "--log"}}
DISPLAY_MODES = {"text", "graphical", "cmdline"}
SHUTDOWN_COMMANDS = {"shutdown", "poweroff", "halt"}  # pykickstart: KS_SHUTDOWN; `reboot` is KS_REBOOT


class Kickstart:
    """Commands (line number, name, words) and sections of a kickstart, %include files read when they exist
    (livemedia-creator parses with missingIncludeIsFatal=False)."""

    def __init__(self, text: str, source: str = "kickstart"):
        self.commands = []
        self.sections = []  # (line, name, options, body)
        self.errors = []
        self._read(text, source)

    def _read(self, text: str, source: str):
        lines = text.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            number = i + 1
            i += 1
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if words[0] == "%include" or words[0] == "%ksappend":
                if len(words) != 2:
                    self.errors.append(f"{source}:{number}: {words[0]} takes one file")
                elif Path(words[1]).is_file():
                    self._read(Path(words[1]).read_text(), words[1])
                continue
            if words[0].startswith("%"):
                if words[0] not in SECTIONS:
                    self.errors.append(f"{source}:{number}: unknown section {words[0]}")
                body = []
                while i < len(lines) and not lines[i].startswith("%end"):
                    body.append(lines[i])
                    i += 1
                if i == len(lines):
                    self.errors.append(f"{source}:{number}: section {words[0]} has no %end")
                i += 1
                self.sections.append((number, words[0], words[1:], "\n".join(body)))
                continue
            self.commands.append((number, words[0], words[1:]))

    def last(self, name):
        found = [c for c in self.commands if c[1] == name]
        return found[-1] if found else None

    def seen(self, *names):
        return any(c[1] in names for c in self.commands)

    def method(self):
        """pykickstart's handler.method.method: the last of url/nfs/cdrom/harddrive/liveimg/hmc."""
        methods = [c for c in self.commands if c[1] in ("url", "nfs", "cdrom", "harddrive", "liveimg", "hmc")]
        return methods[-1] if methods else None

    def packages(self):
        return [w for s in self.sections if s[1] == "%packages" for w in s[3].split()]


def option(words, name):
    for word in words:
        if word == name:
            return ""
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def lmc_errors(ks: Kickstart, lorax: int, *, no_virt=False, make_fsimage=False, make_pxe_live=False):
    errors = []
    method = ks.method()
    method_name = method[1] if method else None
    if no_virt and method_name not in ("url", "nfs") and not ks.seen("ostreesetup"):
        errors.append("Only url, nfs and ostreesetup install methods are currently supported.")
    if lorax >= 28 and ks.seen("repo") and method_name != "url":
        errors.append("repo can only be used with the url install method.")
    if not ks.seen("network"):
        url = option(method[2], "--url") if method_name == "url" else None
        exempt = lorax >= 34 and url is not None and url.startswith("file:")
        if method_name == "nfs" or (method_name == "url" and not exempt):
            errors.append("The kickstart must activate networking if the url or nfs install method is used.")
    if ks.seen(*DISPLAY_MODES):
        errors.append("The kickstart must not set a display mode (text, cmdline, graphical).")
    if make_fsimage or (make_pxe_live and no_virt):
        mounts = [c[2][0] for c in ks.commands if c[1] in ("part", "partition") and c[2]]
        if any(m not in ("/", "swap") for m in mounts) or ks.seen("autopart"):
            errors.append("Filesystem images must use a single / part, not autopart or multiple partitions.")
    if not no_virt:
        action = [c[1] for c in ks.commands if c[1] in SHUTDOWN_COMMANDS | {"reboot"}]
        if not action or action[-1] not in SHUTDOWN_COMMANDS:
            errors.append("The kickstart must include shutdown when using virt installation.")
    return errors


def anaconda_errors(ks: Kickstart, version: str):
    allowed = COMMANDS[version]
    errors = list(ks.errors)
    for number, name, words in ks.commands:
        if name not in allowed:
            errors.append(f"line {number}: {name} is not a command these checks know for {version}")
            continue
        for word in words:
            if word.startswith("--") and word.split("=", 1)[0] not in allowed[name]:
                errors.append(f"line {number}: {name} has no option {word.split('=', 1)[0]} in {version}")
        if name in ("part", "partition"):
            if not words or words[0].startswith("--"):
                errors.append(f"line {number}: part needs a mount point")
            if "--encrypted" in words and not option(words, "--passphrase"):
                errors.append(f"line {number}: an encrypted part without --passphrase makes anaconda ask for one")
            luks = option(words, "--luks-version")
            if luks is not None and luks not in ("luks1", "luks2"):
                errors.append(f"line {number}: --luks-version={luks}")
            pbkdf = option(words, "--pbkdf")
            if pbkdf is not None and pbkdf not in ("pbkdf2", "argon2i", "argon2id"):
                errors.append(f"line {number}: --pbkdf={pbkdf}")
            iterations = option(words, "--pbkdf-iterations")
            if iterations is not None and (not iterations.isdigit() or (pbkdf == "pbkdf2" and int(iterations) < 1000)):
                errors.append(f"line {number}: --pbkdf-iterations={iterations} (pbkdf2 needs at least 1000)")
        if name == "url" and not option(words, "--url") and not option(words, "--mirrorlist") and not option(words, "--metalink"):
            errors.append(f"line {number}: url without --url, --mirrorlist or --metalink")
        if name == "repo" and not option(words, "--name"):
            errors.append(f"line {number}: repo without --name")
    for number, name, options, _ in ks.sections:
        for word in options:
            if word.startswith("--") and word.split("=", 1)[0] not in SECTION_OPTIONS.get(name, set()):
                errors.append(f"line {number}: {name} has no option {word}")
    if not any(s[1] == "%packages" for s in ks.sections):
        errors.append("no %packages section")
    return errors


def passphrases(ks: Kickstart):
    return [option(c[2], "--passphrase") for c in ks.commands
            if c[1] in ("part", "partition", "logvol", "raid", "autopart") and option(c[2], "--passphrase")]


def usage_commands(text: str, program: str):
    """The commented usage lines that run `program` (continuations joined; the line starts with it)."""
    comment = "\n".join(line[1:].strip() for line in text.splitlines() if line.startswith("#"))
    joined = re.sub(r"\\\n\s*", " ", comment)
    return [line for line in joined.splitlines()
            if line.split(" ")[0].endswith("/" + program) or " ".join(line.split(" ")[:2]) == program]
