"""examples/: the Python build script makes N unique images from a base (real Tang); the C++ program is built
with find_package(luksforge) against this build installed into a temporary prefix, which also proves the
Python module installs where /usr/bin/python3 imports it and loads the installed library."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import luksforge
from conftest import BINARY_DIR, SOURCE_DIR, cryptsetup_accepts, run

BUILD_PASSPHRASE = b"example build passphrase"


@pytest.fixture
def policy(tang, tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(f'[[tang]]\nurl = "{tang.url}"\nthp = "{tang.thp}"\n')
    return path


def test_python_example_builds_unique_images(tmp_path, policy):
    base = tmp_path / "base.img"
    with open(base, "wb") as f:
        f.truncate(32 << 20)
    run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", "--key-file", "-", base, input=BUILD_PASSPHRASE)
    key = tmp_path / "build.key"
    luksforge.write_secret_file(key, BUILD_PASSPHRASE)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, SOURCE_DIR / "examples/python/build_images.py", base, "--policy", policy,
                             "--count", "3", "--out", out, "--build-passphrase-file", key,
                             "--ledger", tmp_path / "ledger.db"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["shared_keys"] == 0 and len(summary["instances"]) == 3
    fingerprints = {i["fingerprint"] for i in summary["instances"]} | {summary["sealed"]["fingerprint_after"]}
    assert len(fingerprints) == 4
    assert not cryptsetup_accepts(base, BUILD_PASSPHRASE, 0)
    for instance in summary["instances"]:
        secret = run("clevis", "luks", "pass", "-d", instance["image"], "-s", instance["keyslot"]).stdout
        assert cryptsetup_accepts(instance["image"], secret, instance["keyslot"])


def test_python_example_refuses_an_invalid_policy(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("threshold = 0\n")
    result = subprocess.run([sys.executable, SOURCE_DIR / "examples/python/build_images.py", tmp_path / "none.img",
                             "--policy", bad, "--count", "1", "--out", tmp_path / "out"], capture_output=True, text=True)
    assert result.returncode == 1 and "FormatError" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def installed_prefix(tmp_path_factory):
    assert BINARY_DIR is not None, "run through ctest (LUKSFORGE_BINARY_DIR)"
    prefix = tmp_path_factory.mktemp("prefix")
    run("cmake", "--install", BINARY_DIR, "--prefix", prefix)
    return prefix


def test_python_module_installs_where_python_imports_it(installed_prefix, tmp_path):
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    package = installed_prefix / "lib" / version / "dist-packages" / "luksforge"
    assert {"__init__.py", "__init__.pyi", "_luksforge.pyi", "py.typed", "lorax.py"} <= set(os.listdir(package))
    assert list(package.glob("_luksforge*.so"))
    # Only the installed copy on the path, no LD_LIBRARY_PATH: the module finds libluksforge by its RPATH.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}
    env["PYTHONPATH"] = str(package.parent)
    probe = "import luksforge; print(luksforge.__file__); print(len(luksforge.generate_passphrase()))"
    out = run("/usr/bin/python3", "-c", probe, env=env, cwd=tmp_path).stdout.decode().split()
    assert out[0].startswith(str(package)) and out[1] == "43"


def test_cpp_example_builds_against_the_installed_package(installed_prefix, tmp_path):
    build = tmp_path / "build"
    run("cmake", "-S", SOURCE_DIR / "examples/cpp", "-B", build, f"-DCMAKE_PREFIX_PATH={installed_prefix}")
    run("cmake", "--build", build)
    program = build / "luksforge-fleet-check"
    key = tmp_path / "demo.key"
    luksforge.write_secret_file(key, b"demo passphrase")
    image = tmp_path / "demo.img"
    formatted = run(program, "format", image, key).stdout.decode()
    assert "fingerprint" in formatted and cryptsetup_accepts(image, b"demo passphrase", 0)
    with luksforge.Volume.open(image, read_only=True) as volume:
        fingerprint = volume.fingerprint
    assert fingerprint in formatted

    clone = tmp_path / "clone.img"
    shutil.copyfile(image, clone)
    other = tmp_path / "other.img"
    run(program, "format", other, key)
    unique = run(program, "check", image, other)
    assert unique.returncode == 0 and b"SHARED" not in unique.stdout
    shared = run(program, "check", image, clone, other, check=False)
    assert shared.returncode == 3 and f"SHARED volume key {fingerprint[:16]}".encode() in shared.stdout

    missing = run(program, "check", tmp_path / "missing.img", check=False)
    assert missing.returncode == 1 and b"errno 2" in missing.stderr
