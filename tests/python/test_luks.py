"""luksforge.Volume against real image files and stock cryptsetup: format, keyslots, tokens, inspect, rekey,
error mapping, the context manager's lock, progress callbacks and GIL release."""

import errno
import sys
import threading
import time

import pytest

import luksforge
from conftest import FAST, cryptsetup_accepts, luks_dump, run


def test_format_with_passphrase_is_opened_by_cryptsetup(image, passphrase):
    with luksforge.Volume.format(image, pbkdf=FAST, passphrase=passphrase, label="py") as volume:
        assert volume.luks_version == 2
        info = volume.inspect()
    dump = luks_dump(image)
    assert info.uuid == run("cryptsetup", "luksUUID", image).stdout.decode().strip()
    assert info.label == "py" and info.cipher == "aes-xts-plain64" and info.volume_key_bytes == 64
    assert [k.id for k in info.keyslots] == [0] and "0" in dump["keyslots"]
    assert info.keyslots[0].pbkdf.type == "pbkdf2" and info.keyslots[0].pbkdf.iterations == 1000
    assert cryptsetup_accepts(image, passphrase, 0)
    assert not cryptsetup_accepts(image, b"wrong", 0)
    d = info.to_dict()
    assert d["uuid"] == info.uuid and d["fingerprint"] == info.fingerprint and len(info.fingerprint) == 64


def test_two_formats_never_share_a_volume_key_and_size_creates_the_file(tmp_path, passphrase):
    a = luksforge.Volume.format(tmp_path / "a.img", size=24 << 20, pbkdf=FAST, passphrase=passphrase)
    b = luksforge.Volume.format(tmp_path / "b.img", size=24 << 20, pbkdf=FAST, passphrase=bytearray(passphrase))
    assert (tmp_path / "a.img").stat().st_size == 24 << 20
    assert a.fingerprint != b.fingerprint
    assert bytes(a.volume_key(passphrase)) != bytes(b.volume_key(memoryview(passphrase)))
    a.close()
    b.close()


def test_reads_what_cryptsetup_formatted(luks_image, passphrase):
    with luksforge.Volume.open(luks_image, read_only=True) as volume:
        assert volume.test_passphrase(passphrase) == 0
        assert volume.test_passphrase(b"nope") is None
        assert volume.keyslot(0).pbkdf.type == "pbkdf2"
        assert volume.keyslot(5) is None
        key = volume.volume_key(passphrase, slot=0)
        assert isinstance(key, luksforge.Secret) and len(key) == 64
        key.wipe()


def test_keyslots_add_test_remove(luks_image, passphrase):
    with luksforge.Volume.open(luks_image) as volume:
        slot = volume.add_keyslot(passphrase, b"second", pbkdf=FAST, slot=3)
        assert slot == 3 and [k.id for k in volume.keyslots()] == [0, 3]
        assert volume.test_passphrase(b"second", slot=3) == 3
    assert cryptsetup_accepts(luks_image, b"second", 3)
    with luksforge.Volume.open(luks_image) as volume:
        volume.remove_keyslot(3)
        assert [k.id for k in volume.keyslots()] == [0]
    assert not cryptsetup_accepts(luks_image, b"second", 3)


def test_add_keyslot_by_volume_key_right_after_format(image):
    with luksforge.Volume.format(image, pbkdf=FAST) as volume:
        assert volume.keyslots() == []
        first = volume.add_keyslot_by_volume_key(b"one", pbkdf=FAST)
        key = volume.volume_key(b"one")
        second = volume.add_keyslot_by_volume_key(b"two", pbkdf=FAST, volume_key=key)
    assert cryptsetup_accepts(image, b"one", first) and cryptsetup_accepts(image, b"two", second)


def test_tokens_round_trip_as_dict_and_text(luks_image):
    with luksforge.Volume.open(luks_image) as volume:
        token_id = volume.set_token({"type": "luksforge-test", "keyslots": ["0"], "note": "a,b{c}"})
        token = volume.token(token_id)
        assert token.type == "luksforge-test" and token.keyslots == [0] and token.data["note"] == "a,b{c}"
        second = volume.set_token('{"type":"other","keyslots":[]}', id=5)
        assert second == 5 and [t.id for t in volume.tokens()] == [token_id, 5]
        volume.unassign_token(token_id, 0)
        assert volume.token(token_id).keyslots == []
        volume.assign_token(token_id, 0)
        volume.remove_token(5)
        assert volume.token(5) is None
    exported = run("cryptsetup", "token", "export", "--token-id", token_id, luks_image).stdout
    assert b"luksforge-test" in exported


def test_errors_map_to_the_hierarchy_with_errno(tmp_path, luks_image, passphrase):
    with pytest.raises(luksforge.NotFoundError) as missing:
        luksforge.Volume.open(tmp_path / "missing.img")
    assert missing.value.errno == errno.ENOENT and isinstance(missing.value, luksforge.Error)

    plain = tmp_path / "plain.img"
    plain.write_bytes(b"\0" * (4 << 20))
    with pytest.raises(luksforge.FormatError) as not_luks:
        luksforge.Volume.open(plain)
    assert not_luks.value.errno == errno.EINVAL
    assert luksforge.Volume.probe(plain) is None

    luks1 = tmp_path / "luks1.img"
    luks1.write_bytes(b"\0" * (8 << 20))
    run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks1", "--pbkdf-force-iterations", "1000",
        "--key-file", "-", luks1, input=passphrase)
    with pytest.raises(luksforge.FormatError):
        luksforge.Volume.open(luks1)
    with luksforge.Volume.probe(luks1) as probed:
        assert probed.luks_version == 1

    before = luks_image.read_bytes()[: 1 << 20]
    with luksforge.Volume.open(luks_image) as volume:
        with pytest.raises(luksforge.AuthError) as wrong:
            volume.add_keyslot(b"wrong passphrase", b"new", pbkdf=FAST)
        assert wrong.value.errno == errno.EPERM
        with pytest.raises(TypeError, match="bytes-like"):
            volume.add_keyslot("str passphrase", b"new")
    assert luks_image.read_bytes()[: 1 << 20] == before  # bad input changed nothing


OPEN_IN_ANOTHER_PROCESS = '''
import sys, luksforge
try:
    luksforge.Volume.open(sys.argv[1]).close()
except luksforge.BusyError as e:
    print("busy", e.errno)
else:
    print("opened")
'''


def open_in_another_process(image) -> str:
    return run(sys.executable, "-c", OPEN_IN_ANOTHER_PROCESS, image).stdout.decode().strip()


def test_context_manager_releases_the_device_lock(luks_image):
    volume = luksforge.Volume.open(luks_image)
    assert open_in_another_process(luks_image) == f"busy {errno.EBUSY}"
    with volume:
        assert not volume.closed
    assert volume.closed and "closed" in repr(volume)
    with pytest.raises(ValueError, match="closed"):
        volume.keyslots()
    assert open_in_another_process(luks_image) == "opened"  # the lock went with the with-block


def test_lock_is_released_even_when_the_block_raises(luks_image):
    with pytest.raises(RuntimeError):
        with luksforge.Volume.open(luks_image):
            assert open_in_another_process(luks_image).startswith("busy")
            raise RuntimeError("boom")
    assert open_in_another_process(luks_image) == "opened"


def test_rekey_reports_progress_keeps_passphrase_and_changes_fingerprint(luks_image, passphrase):
    calls = []
    with luksforge.Volume.open(luks_image) as volume:
        before = volume.fingerprint
        result = volume.rekey(passphrase, progress=lambda done, total: calls.append((done, total)))
        assert result.completed and result.old_fingerprint == before
        assert result.new_fingerprint == volume.fingerprint != before
        assert result.keyslot_map and all(isinstance(k, int) for k in result.keyslot_map)
    assert calls and all(total > 0 for _, total in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    new_slot = result.keyslot_map[0]
    assert cryptsetup_accepts(luks_image, passphrase, new_slot)


def test_exception_in_progress_callback_stops_cleanly_and_rekey_resumes(tmp_path, passphrase):
    image = tmp_path / "big.img"
    with luksforge.Volume.format(image, size=48 << 20, pbkdf=FAST, passphrase=passphrase) as volume:
        before = volume.fingerprint

    class Stop(Exception):
        pass

    def stop_midway(done, total):
        raise Stop("stop here")

    with luksforge.Volume.open(image) as volume:
        with pytest.raises(Stop):
            volume.rekey([passphrase], progress=stop_midway)
        assert volume.inspect().reencryption_in_progress
    # Nothing crossed a C frame: the image is consistent, still opens, and the re-key can be finished.
    with luksforge.Volume.open(image) as volume:
        assert volume.test_passphrase(passphrase) is not None
        result = volume.rekey([passphrase])
        assert result.completed and not volume.inspect().reencryption_in_progress
        assert volume.fingerprint != before


def test_progress_callback_returning_false_pauses(tmp_path, passphrase):
    image = tmp_path / "pause.img"
    luksforge.Volume.format(image, size=48 << 20, pbkdf=FAST, passphrase=passphrase).close()
    with luksforge.Volume.open(image) as volume:
        paused = volume.rekey(passphrase, progress=lambda done, total: False)
        assert not paused.completed
        assert volume.rekey(passphrase).completed


class Counter(threading.Thread):
    """Counts in a tight Python loop: it can only advance while no other thread holds the GIL."""

    def __init__(self):
        super().__init__(daemon=True)
        self.count = 0
        self.stop = False

    def run(self):
        while not self.stop:
            self.count += 1


def count_during(work):
    counter = Counter()
    counter.start()
    time.sleep(0.05)
    start_count, start = counter.count, time.monotonic()
    work()
    elapsed = time.monotonic() - start
    advanced = counter.count - start_count
    counter.stop = True
    counter.join()
    return advanced, elapsed


def test_gil_is_released_during_pbkdf(luks_image, passphrase):
    slow = luksforge.Pbkdf("pbkdf2", iterations=400_000)
    with luksforge.Volume.open(luks_image) as volume:
        advanced, elapsed = count_during(lambda: volume.add_keyslot(passphrase, b"slow", pbkdf=slow))
    assert elapsed > 0.05, "the PBKDF was too fast to show anything"
    # With the GIL held for the whole call the counter could not move at all.
    assert advanced > 10_000


def test_gil_is_released_during_rekey(tmp_path, passphrase):
    image = tmp_path / "gil.img"
    luksforge.Volume.format(image, size=64 << 20, pbkdf=FAST, passphrase=passphrase).close()
    with luksforge.Volume.open(image) as volume:
        advanced, elapsed = count_during(lambda: volume.rekey(passphrase))
    assert elapsed > 0.05
    assert advanced > 10_000


def test_close_from_another_thread_waits_for_running_work(tmp_path, passphrase):
    image = tmp_path / "race.img"
    luksforge.Volume.format(image, size=48 << 20, pbkdf=FAST, passphrase=passphrase).close()
    volume = luksforge.Volume.open(image)
    started = threading.Event()

    def progress(done, total):
        started.set()

    worker = threading.Thread(target=lambda: volume.rekey(passphrase, progress=progress))
    worker.start()
    assert started.wait(30)
    volume.close()  # must wait for the re-key, not pull the Volume from under it
    worker.join()
    assert volume.closed
    with luksforge.Volume.open(image) as again:
        assert not again.inspect().reencryption_in_progress


def test_ctrl_c_during_rekey_raises_keyboard_interrupt_and_leaves_it_resumable(tmp_path, passphrase):
    import os
    import signal
    image = tmp_path / "sigint.img"
    luksforge.Volume.format(image, size=48 << 20, pbkdf=FAST, passphrase=passphrase).close()
    calls = []

    def progress(done, total):
        calls.append(done)
        if done > 0 and calls.count(done) == 1 and len([c for c in calls if c > 0]) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT, arriving while the re-encryption runs

    with luksforge.Volume.open(image) as volume:
        with pytest.raises(KeyboardInterrupt):
            volume.rekey(passphrase, max_hotzone_bytes=1 << 20, progress=progress)
        info = volume.inspect()
        assert info.reencryption_in_progress
        assert 0 < max(calls) < info.device_bytes
        assert volume.rekey(passphrase, max_hotzone_bytes=8 << 20).completed
    assert cryptsetup_accepts(image, passphrase, luksforge.Volume.open(image, read_only=True).test_passphrase(passphrase))


def test_using_the_volume_from_its_own_progress_callback_raises_instead_of_hanging(tmp_path, passphrase):
    image = tmp_path / "reentry.img"
    luksforge.Volume.format(image, size=24 << 20, pbkdf=FAST, passphrase=passphrase).close()
    with luksforge.Volume.open(image) as volume:
        with pytest.raises(ValueError, match="its own callback"):
            volume.rekey(passphrase, progress=lambda done, total: volume.inspect())
        assert volume.rekey(passphrase).completed
