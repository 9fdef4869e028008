"""Shared fixtures for the luksforge pytest suites: small image files, a real Tang server and a software TPM
(swtpm) on loopback, a real PostgreSQL server on a unix socket, and helpers to run stock tools (cryptsetup,
clevis, jose). Run through ctest (tests/python/CMakeLists.txt), which puts the build-tree luksforge package on
PYTHONPATH. Keeps to Python 3.6: the same files also run under compat_runner.py on RHEL's Pythons (3.6, 3.9,
3.12)."""

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import List

import pytest

import luksforge

SOURCE_DIR = Path(os.environ.get("LUKSFORGE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
BINARY_DIR = Path(os.environ["LUKSFORGE_BINARY_DIR"]) if "LUKSFORGE_BINARY_DIR" in os.environ else None
FAST = luksforge.Pbkdf.pbkdf2_fast(1000)  # test keyslots: cheap and without benchmark
IMAGE_BYTES = 32 << 20


def pytest_sessionfinish(session, exitstatus):
    # Under ctest a skipped test is a test that could not fail: make it fail the run instead.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if os.environ.get("LUKSFORGE_NO_SKIPS") and reporter is not None and reporter.stats.get("skipped"):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def run(*args, input=None, check=True, **kwargs):
    """Run a command, returning CompletedProcess with text output; raise with its stderr on failure."""
    result = subprocess.run([str(a) for a in args], input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            check=False, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {result.returncode}: "
                             f"{result.stderr.decode(errors='replace') if isinstance(result.stderr, bytes) else result.stderr}")
    return result


def cryptsetup_accepts(image, passphrase: bytes, slot: int) -> bool:
    """Whether stock cryptsetup opens keyslot `slot` of `image` with `passphrase` (no device-mapper needed)."""
    result = run("cryptsetup", "open", "--test-passphrase", "--key-slot", slot, "--key-file", "-", image,
                 input=bytes(passphrase), check=False)
    return result.returncode == 0


def luks_dump(image) -> dict:
    return json.loads(run("cryptsetup", "luksDump", "--dump-json-metadata", image).stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TangServer:
    def __init__(self, url: str, port: int, keydir: Path, process: subprocess.Popen) -> None:
        self.url, self.port, self.keydir, self.process = url, port, keydir, process

    @property
    def signing_thumbprints(self) -> "List[str]":
        """S256 thumbprints of the server's signing keys, computed by stock `jose` from the key files."""
        thps = []
        for jwk in sorted(self.keydir.glob("*.jwk")):
            if jwk.name.startswith("."):  # rotated out: tangd no longer advertises it
                continue
            if "verify" in json.loads(jwk.read_text()).get("key_ops", []):
                thps.append(run("jose", "jwk", "thp", "-i", jwk).stdout.decode().strip())
        return thps

    @property
    def thp(self) -> str:
        return self.signing_thumbprints[0]

    def config(self, **extra) -> dict:
        return {"url": self.url, "thp": self.thp, **extra}

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def start_tang(keydir: Path) -> TangServer:
    """tangd behind socat on a free 127.0.0.1 port; waits until the port accepts connections."""
    if not any(keydir.glob("*.jwk")):
        keydir.mkdir(parents=True, exist_ok=True)
        run("/usr/libexec/tangd-keygen", keydir)
    for _ in range(5):
        port = free_port()
        process = subprocess.Popen(
            ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"EXEC:/usr/libexec/tangd {keydir}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return TangServer(f"http://127.0.0.1:{port}", port, keydir, process)
            except OSError:
                time.sleep(0.05)
        process.kill()
        process.wait()
    raise RuntimeError("could not start tangd behind socat on a loopback port")


@pytest.fixture(scope="session")
def tang(tmp_path_factory):
    server = start_tang(tmp_path_factory.mktemp("tang") / "db")
    yield server
    server.stop()


@pytest.fixture
def fresh_tang(tmp_path):
    """A Tang server of one test's own (for tests that stop or rotate it)."""
    server = start_tang(tmp_path / "tangdb")
    yield server
    server.stop()


class PostgresServer:
    """A throw-away PostgreSQL cluster owned by `nobody` (initdb/pg_ctl refuse root), listening only on a unix
    socket in a 0755 directory under /tmp (pytest's own temporary directories are 0700: nobody could not reach
    them). `url` is a ledger URL for it, without a password (trust authentication)."""

    def __init__(self) -> None:
        import glob
        import tempfile

        def program(name):
            found = shutil.which(name) or (sorted(glob.glob("/usr/lib/postgresql/*/bin/" + name)) or [None])[-1]
            assert found, f"PostgreSQL's {name} is not installed (tools/deps.sh installs postgresql)"
            return found

        self._pg_ctl = program("pg_ctl")
        self.top = Path(tempfile.mkdtemp(prefix="luksforge-pg-"))
        self.top.chmod(0o755)
        self.data, self.socket = self.top / "data", self.top / "socket"
        self.data.mkdir()
        self.socket.mkdir()
        run("chown", "nobody", self.data, self.socket)
        run("runuser", "-u", "nobody", "--", program("initdb"), "-D", self.data, "-A", "trust", "-U", "luksforge",
            "--no-sync", "-E", "UTF8")
        run("runuser", "-u", "nobody", "--", self._pg_ctl, "-D", self.data, "-l", self.socket / "log", "-w", "-o",
            f"-k {self.socket} -c listen_addresses= -c fsync=off", "start")
        self.url = f"postgresql:///postgres?host={self.socket}&user=luksforge"

    def stop(self) -> None:
        run("runuser", "-u", "nobody", "--", self._pg_ctl, "-D", self.data, "-m", "immediate", "-w", "stop",
            check=False)
        shutil.rmtree(self.top, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer()
    yield server
    server.stop()


class SoftwareTpm:
    """swtpm socket --tpm2 on a free loopback port pair (server P, control P+1, as the swtpm TCTI expects)."""

    def __init__(self, state: Path) -> None:
        self.process = None
        for _ in range(20):
            port = free_port()
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            self.port = port
            break
        else:
            raise RuntimeError("no free loopback port pair for swtpm")
        state.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [require_tool("swtpm"), "socket", "--tpm2", "--server", "type=tcp,port={},bindaddr=127.0.0.1".format(self.port),
             "--ctrl", "type=tcp,port={},bindaddr=127.0.0.1".format(self.port + 1), "--tpmstate", "dir={}".format(state),
             "--flags", "not-need-init,startup-clear"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.tcti = "swtpm:host=127.0.0.1,port={}".format(self.port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.tool("tpm2_getrandom", "--hex", "4", check=False).returncode == 0:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("swtpm on port {} does not answer".format(self.port))

    def env(self) -> dict:
        return dict(os.environ, TPM2TOOLS_TCTI=self.tcti)

    def tool(self, *args, input=None, check=True):
        """A tpm2-tools or stock Clevis command against this TPM. Clevis 19 leaves sessions and, on failure, the
        sealed object loaded; swtpm has no resource manager to flush them, so they are flushed here."""
        result = run(*args, input=input, check=check, env=self.env())
        if args[0] != "tpm2_getrandom":
            run("tpm2_flushcontext", "-l", env=self.env())
            run("tpm2_flushcontext", "-t", env=self.env())
        return result

    def extend_pcr(self, pcr: int, bank: str = "sha256", data: bytes = b"luksforge test") -> None:
        import hashlib
        self.tool("tpm2_pcrextend", "{}:{}={}".format(pcr, bank, hashlib.new(bank, data).hexdigest()))

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def swtpm(tmp_path):
    """A software TPM of one test's own; TPM2TOOLS_TCTI points the module (in this process) at it meanwhile."""
    tpm = SoftwareTpm(tmp_path / "tpmstate")
    old = os.environ.get("TPM2TOOLS_TCTI")
    os.environ["TPM2TOOLS_TCTI"] = tpm.tcti
    yield tpm
    if old is None:
        del os.environ["TPM2TOOLS_TCTI"]
    else:
        os.environ["TPM2TOOLS_TCTI"] = old
    tpm.stop()


@pytest.fixture
def image(tmp_path):
    """Path of a new sparse 32 MiB file (not yet formatted)."""
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(IMAGE_BYTES)
    return path


@pytest.fixture
def passphrase() -> bytes:
    return b"build passphrase for tests"


@pytest.fixture
def luks_image(image, passphrase):
    """A LUKS2 image made by stock cryptsetup with `passphrase` in keyslot 0 (pbkdf2, 1000 iterations)."""
    run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
        "1000", "--key-slot", "0", "--key-file", "-", image, input=passphrase)
    return image


def require_tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    assert path, f"{name} is not installed (tools/deps.sh installs it)"
    return path
