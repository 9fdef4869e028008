"""Render and run Lorax templates the way lorax does (pylorax.ltmpl), without lorax (not packaged in Debian).

parse(): Mako render with lookup directories ["/", template dir], split lines, strip, drop empty lines and
lines starting with '#', shlex.split each line and brace-expand every word — even quoted ones, as lorax does.
Runner: the documented file commands against an input and an output tree (install copies inroot→outroot;
mkdir/chmod/remove/append/replace/copy/move/symlink act in outroot; runcmd runs a host command), a leading '-'
ignoring that line's error, and the first other error aborting. Package commands are refused: they need
lorax's dnf backend, which an add-template must not rely on.

Lorax renders its templates in the build host's own Python, which has Mako. The module's tests also run under
RHEL's Pythons (tests/python/compat_runner.py), where no Mako is installed: there Runner.run hands the whole
template run to Debian's python3 (`LUKSFORGE_MAKO_PYTHON`, default /usr/bin/python3, with the module built for it
from `LUKSFORGE_MAKO_PYTHONPATH`) running this file, the way lorax on that host would run it, and takes back
what it did."""

import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

try:
    from mako.lookup import TemplateLookup
except ImportError:  # a Python without Mako: Runner.run renders through _run_in_mako_python
    TemplateLookup = None

DOCUMENTED = {"install", "installimg", "installkernel", "installinitrd", "mkdir", "append", "replace", "copy",
              "move", "symlink", "hardlink", "remove", "chmod", "treeinfo", "log", "runcmd", "systemctl",
              "installpkg", "removepkg", "run_pkg_transaction", "removefrom", "removekmod"}


def brace_expand(word):
    if not ("{" in word and "," in word and "}" in word):
        yield word
        return
    right = word.find("}")
    left = word[:right].rfind("{")
    prefix, choices, suffix = word[:left], word[left + 1:right], word[right + 1:]
    for choice in choices.split(","):
        yield from brace_expand(prefix + choice + suffix)


def parse(template: Path, **variables) -> "list[list[str]]":
    if TemplateLookup is None:
        raise ImportError("Mako is not installed for this Python: render through Runner.run")
    lookup = TemplateLookup(directories=["/", str(template.parent)])
    text = lookup.get_template(str(template.resolve())).render(**variables)
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    return [[expanded for word in shlex.split(line) for expanded in brace_expand(word)] for line in lines]


def _inside(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


class Runner:
    def __init__(self, inroot: Path, outroot: Path):
        self.inroot, self.outroot = Path(inroot), Path(outroot)
        self.log = []
        self.commands = []

    def run(self, template: Path, **variables):
        if TemplateLookup is None:
            return self._run_in_mako_python(template, variables)
        builtins = {"exists": lambda p: bool(glob.glob(str(_inside(self.inroot, p)))),
                    "glob": lambda g: [str(Path(p).relative_to(self.inroot))
                                       for p in glob.glob(str(_inside(self.inroot, g)))]}
        parsed = parse(template, **{**builtins, **variables})
        for words in parsed:
            command, args = words[0], words[1:]
            skip_error = command.startswith("-")
            command = command.lstrip("-")
            assert command in DOCUMENTED, f"{template.name}: {command!r} is not a documented Lorax command"
            self.commands.append([command] + args)
            try:
                getattr(self, "cmd_" + command)(*args)
            except Exception:
                if not skip_error:
                    raise
        return parsed

    def _run_in_mako_python(self, template, variables):
        """The same run in a Python that has Mako (template variables must be JSON values)."""
        python = os.environ.get("LUKSFORGE_MAKO_PYTHON", "/usr/bin/python3")
        request = json.dumps({"inroot": str(self.inroot), "outroot": str(self.outroot),
                              "template": str(template), "variables": variables})
        env = dict(os.environ)  # templates import the host's luksforge module: the one built for that Python
        env["PYTHONPATH"] = os.environ.get("LUKSFORGE_MAKO_PYTHONPATH", env.get("PYTHONPATH", ""))
        done = subprocess.run([python, os.path.abspath(__file__)], input=request.encode(), stdout=subprocess.PIPE,
                              env=env, check=True)
        reply = json.loads(done.stdout.decode())
        self.log.extend(reply["log"])
        self.commands.extend(reply["commands"])
        return reply["parsed"]

    # --- the documented commands the luksforge templates use -------------------------------------------------
    def cmd_log(self, message):
        self.log.append(message)

    def cmd_mkdir(self, *dirs):
        for d in dirs:
            _inside(self.outroot, d).mkdir(parents=True, exist_ok=True)

    def cmd_install(self, srcglob, dest):
        sources = glob.glob(str(_inside(self.inroot, srcglob)))
        if not sources:
            raise IOError(f"nothing matching {srcglob} in {self.inroot}")
        target = _inside(self.outroot, dest)
        for src in sources:
            out = target / Path(src).name if target.is_dir() else target
            if os.path.isdir(src):
                shutil.copytree(src, out, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(src, out)

    def cmd_chmod(self, fileglob, mode):
        matches = glob.glob(str(_inside(self.outroot, fileglob)))
        if not matches:
            raise IOError(f"chmod: nothing matching {fileglob}")
        for f in matches:
            os.chmod(f, int(mode, 8))

    def cmd_remove(self, *fileglobs):
        for g in fileglobs:
            for f in glob.glob(str(_inside(self.outroot, g))):
                if os.path.isdir(f) and not os.path.islink(f):
                    shutil.rmtree(f)
                else:
                    os.unlink(f)

    def cmd_append(self, filename, data):
        with open(_inside(self.outroot, filename), "a") as f:
            f.write(bytes(data, "utf8").decode("unicode_escape") + "\n")

    def cmd_runcmd(self, *cmdlist):
        assert cmdlist[0].startswith("/"), f"runcmd needs an absolute path: {cmdlist[0]}"
        subprocess.run(cmdlist, check=True)


if __name__ == "__main__":  # Runner.run on behalf of a Python without Mako: a JSON request on stdin
    request = json.load(sys.stdin)
    reply_to = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what runcmd's commands print goes to stderr, not into the reply
    runner = Runner(Path(request["inroot"]), Path(request["outroot"]))
    parsed = runner.run(Path(request["template"]), **request["variables"])
    json.dump({"parsed": parsed, "log": runner.log, "commands": runner.commands}, reply_to)
    reply_to.close()
