"""Render and run Lorax templates the way lorax does (pylorax.ltmpl), without lorax (not packaged in Debian).

parse(): Mako render with lookup directories ["/", template dir], split lines, strip, drop empty lines and
lines starting with '#', shlex.split each line and brace-expand every word — even quoted ones, as lorax does.
Runner: the documented file commands against an input and an output tree (install copies inroot→outroot;
mkdir/chmod/remove/append/replace/copy/move/symlink act in outroot; runcmd runs a host command), a leading '-'
ignoring that line's error, and the first other error aborting. Package commands are refused: they need
lorax's dnf backend, which an add-template must not rely on."""

import glob
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from mako.lookup import TemplateLookup

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


def parse(template: Path, **variables) -> list[list[str]]:
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
