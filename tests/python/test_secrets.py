"""luksforge.Secret and the secret helpers: bytes-like in, wiping Secret out, nothing leaks through repr."""

import copy
import os
import pickle
import stat

import pytest

import luksforge


def test_secret_exports_its_bytes_read_only_through_the_buffer_protocol():
    s = luksforge.Secret(b"correct horse")
    assert bytes(s) == b"correct horse"
    assert len(s) == 13 and s
    view = memoryview(s)
    assert view.readonly and view.tobytes() == b"correct horse"
    with pytest.raises(TypeError):
        view[0] = 0
    view.release()


@pytest.mark.parametrize("data", [b"abc\x00def", bytearray(b"abc\x00def"), memoryview(b"xxabc\x00defyy")[2:-2]])
def test_bytes_like_objects_are_accepted(data):
    assert bytes(luksforge.Secret(data)) == b"abc\x00def"
    assert bytes(luksforge.base64url_decode(luksforge.base64url_encode(data))) == b"abc\x00def"


def test_str_is_refused_because_it_cannot_be_wiped():
    with pytest.raises(TypeError, match="bytes-like"):
        luksforge.Secret("a passphrase")
    with pytest.raises(TypeError, match="bytes-like"):
        luksforge.Secret(12345)


def test_wipe_zeroes_in_place_and_leaves_an_earlier_view_valid():
    s = luksforge.Secret(b"top secret value")
    view = memoryview(s)
    s.wipe()
    assert s.wiped and len(s) == 0 and not s and bytes(s) == b""
    # The memory stays allocated until the object dies: the old view reads zeros, never freed memory.
    assert view.tobytes() == b"\x00" * 16


def test_context_manager_wipes_on_exit_also_on_error():
    with luksforge.Secret(b"abc") as s:
        assert bytes(s) == b"abc"
    assert s.wiped
    with pytest.raises(RuntimeError):
        with luksforge.generate_passphrase() as t:
            raise RuntimeError("boom")
    assert t.wiped


def test_repr_str_and_pickle_never_show_the_content():
    s = luksforge.Secret(b"hunter2hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    assert repr(s) == "<luksforge.Secret 14 bytes>"
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        copy.copy(s)
    with pytest.raises(TypeError):
        hash(s)
    s.wipe()
    assert repr(s) == "<luksforge.Secret wiped>"


def test_equality_with_bytes_like():
    s = luksforge.Secret(b"abc")
    assert s == b"abc" and s == bytearray(b"abc") and s == luksforge.Secret(b"abc")
    assert s != b"abd" and s != b"ab" and not (s == "abc")


def test_generated_passphrases_are_printable_unique_and_sized():
    a, b = luksforge.generate_passphrase(), luksforge.generate_passphrase()
    assert len(a) == 43 and a != b
    assert all(c < 128 and (chr(c).isalnum() or chr(c) in "-_") for c in bytes(a))  # no bytes.isascii before 3.7
    assert len(luksforge.generate_passphrase(entropy_bits=128)) == 22
    assert len(luksforge.random_secret(64)) == 64


def test_secret_files_are_0600_exact_and_not_overwritten(tmp_path):
    path = tmp_path / "key"
    luksforge.write_secret_file(path, b"line\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert bytes(luksforge.read_secret_file(path)) == b"line\n"  # trailing newline kept, like --key-file
    with pytest.raises(luksforge.Error) as info:
        luksforge.write_secret_file(path, b"other")
    assert info.value.errno is not None
    luksforge.write_secret_file(path, bytearray(b"other"), overwrite=True)
    assert bytes(luksforge.read_secret_file(str(path))) == b"other"


def test_missing_secret_file_maps_to_not_found(tmp_path):
    with pytest.raises(luksforge.NotFoundError) as info:
        luksforge.read_secret_file(tmp_path / "missing")
    assert info.value.errno == 2
    assert isinstance(info.value, luksforge.Error)


def test_bad_base64url_is_a_format_error():
    with pytest.raises(luksforge.FormatError) as info:
        luksforge.base64url_decode("***")
    assert info.value.errno == 22


# The import disables core dumps as the CLI does (docs/hardening.md): checked in a fresh interpreter that starts
# with core dumps allowed, then made to abort while holding a Secret.
_CORE_PROBE = r"""
import ctypes, os, resource, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_GET_DUMPABLE = 3
before = (resource.getrlimit(resource.RLIMIT_CORE)[0], libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))
import luksforge
secret = luksforge.Secret(b"core-dump-probe-secret")
after = (resource.getrlimit(resource.RLIMIT_CORE)[0], libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))
print(before[0], before[1], after[0], after[1], resource.getrlimit(resource.RLIMIT_CORE)[1])
sys.stdout.flush()
if sys.argv[1] == "abort":
    os.abort()
"""


def _core_probe(tmp_path, action, allow):
    import resource
    import subprocess
    import sys

    env = dict(os.environ)
    env.pop("LUKSFORGE_ALLOW_CORE_DUMPS", None)
    if allow:
        env["LUKSFORGE_ALLOW_CORE_DUMPS"] = "1"

    def allow_cores():
        hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
        resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))

    result = subprocess.run([sys.executable, "-c", _CORE_PROBE, action], cwd=str(tmp_path), env=env,
                            preexec_fn=allow_cores, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return result, [int(x) for x in result.stdout.split()]


def _cores_land_in_cwd():
    with open("/proc/sys/kernel/core_pattern") as f:
        return f.read().strip() in ("core", "core.%p")


def test_import_disables_core_dumps_as_the_cli_does(tmp_path):
    result, (soft_before, dumpable_before, soft_after, dumpable_after, hard_after) = _core_probe(tmp_path, "print", False)
    assert result.returncode == 0, result.stderr
    assert soft_before != 0 and dumpable_before == 1  # the probe really started with core dumps on
    assert soft_after == 0 and dumpable_after == 0
    assert hard_after == soft_before  # the hard limit is kept: the program may raise it for its children


def test_an_aborting_program_holding_a_secret_leaves_no_core(tmp_path):
    result, values = _core_probe(tmp_path, "abort", False)
    assert result.returncode == -6 and values[2:4] == [0, 0]
    assert not [p for p in os.listdir(str(tmp_path)) if p.startswith("core")]
    if _cores_land_in_cwd():
        # Control: with the opt-out the same abort does dump (so the check above can fail).
        (tmp_path / "control").mkdir()
        control, control_values = _core_probe(tmp_path / "control", "abort", True)
        assert control.returncode == -6 and control_values[2:4] == control_values[0:2]
        assert [p for p in os.listdir(str(tmp_path / "control")) if p.startswith("core")]


def test_the_opt_out_keeps_core_dumps_as_they_were(tmp_path):
    result, (soft_before, dumpable_before, soft_after, dumpable_after, _) = _core_probe(tmp_path, "print", True)
    assert result.returncode == 0, result.stderr
    assert (soft_after, dumpable_after) == (soft_before, dumpable_before) == (soft_before, 1)
