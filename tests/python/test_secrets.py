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
