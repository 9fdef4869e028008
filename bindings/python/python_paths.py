"""Prints, one per line, what CMake needs to build and install the luksforge module for the interpreter that
runs this script: version (X.Y), header directory, extension suffix, and the package directory for the install
prefix given as argv[1], relative to it. Runs on every CPython from 3.6 on (bindings/python/CMakeLists.txt)."""

import os
import sys
import sysconfig


def default_scheme():
    getter = getattr(sysconfig, "get_default_scheme", None) or getattr(sysconfig, "_get_default_scheme", None)
    return getter() if getter else "posix_prefix"


def install_dir(prefix):
    """Where this interpreter imports packages from for `prefix`, as its own sysconfig says.

    1. Debian's deb_system scheme for /usr (/usr/lib/python3/dist-packages, what dh_python3 uses).
    2. Its default scheme, if that lives under the prefix (pyenv's own prefix, Debian's and Fedora's
       posix_local for /usr/local, Fedora's posix_prefix for /usr inside rpmbuild) -- but not a posix_local
       path for /usr (that is /usr/local's directory, seen from /usr).
    3. posix_prefix with the prefix substituted (lib/python3.X/site-packages, lib64 on Fedora/RHEL): the
       layout `pip install --prefix` uses; a prefix not on sys.path needs PYTHONPATH.
    """
    prefix = os.path.normpath(prefix)
    candidates = []
    if prefix == "/usr" and "deb_system" in sysconfig.get_scheme_names():
        candidates.append(sysconfig.get_path("platlib", "deb_system"))
    candidates.append(sysconfig.get_path("platlib", default_scheme()))
    for path in candidates:
        relative = os.path.relpath(os.path.normpath(path), prefix)
        if not relative.startswith(("..", "local" + os.sep)):
            return relative
    path = sysconfig.get_path("platlib", "posix_prefix", vars={"base": prefix, "platbase": prefix})
    return os.path.relpath(os.path.normpath(path), prefix)


def main():
    prefix = sys.argv[1] if len(sys.argv) > 1 else sys.prefix
    print("{}.{}".format(*sys.version_info[:2]))
    print(sysconfig.get_paths()["include"])
    print(sysconfig.get_config_var("EXT_SUFFIX"))
    print(install_dir(prefix))


if __name__ == "__main__":
    main()
