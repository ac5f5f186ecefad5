"""Start a real ``twistd -n cwm`` on a random loopback port and talk HTTP to it."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

TWISTD = str(Path(sys.executable).with_name("twistd"))
START_TIMEOUT = 30.0


class TwistdProcess:
    """One ``twistd --pidfile= -n PLUGIN ...`` child whose output is collected line by line."""

    def __init__(
        self,
        workdir: Path,
        plugin_args: list[str],
        env: Mapping[str, str] | None = None,
        drop_env: tuple[str, ...] = ("CONFIG_", "WEBHOOK", "CONNECTOR_"),
    ) -> None:
        self.workdir = workdir
        self.lines: list[str] = []
        self._changed = threading.Condition()
        environ = {k: v for k, v in os.environ.items() if not k.startswith(drop_env)}
        environ.update(env or {})
        self.process = subprocess.Popen(
            [TWISTD, "--pidfile=", "-n", *plugin_args],
            cwd=workdir,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        """Block until a line from index ``start`` on matches, or fail after ``timeout``."""
        compiled = re.compile(pattern)
        with self._changed:
            ok = self._changed.wait_for(
                lambda: any(compiled.search(l) for l in self.lines[start:]) or self.process.poll() is not None,
                timeout,
            )
            for line in self.lines[start:]:
                found = compiled.search(line)
                if found:
                    return found
        raise AssertionError(
            f"no line matching {pattern!r} within {timeout} s (ok={ok}); output:\n" + "\n".join(self.lines[-50:])
        )

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until ``predicate()`` holds after some new output, bounded by ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise AssertionError("condition not met; output:\n" + "\n".join(self.lines[-50:]))

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        connection: http.client.HTTPConnection | None = None,
    ) -> tuple[int, Any, http.client.HTTPResponse]:
        conn = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        data = response.read()
        if connection is None:
            conn.close()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = data
        return response.status, parsed, response

    def post(self, path: str, document: Any = None, headers: Mapping[str, str] | None = None, **kw: Any) -> tuple[int, Any, Any]:
        body = json.dumps(document if document is not None else {"hello": "world"}).encode()
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        return self.request("POST", path, body, hdrs, **kw)

    def raw(self, data: bytes, read_until_close: bool = True, timeout: float = 10.0) -> bytes:
        """Send raw bytes on a fresh connection and return everything answered."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(data)
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if not read_until_close:
                    break
            return b"".join(chunks)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError("twistd did not stop within %s s after SIGTERM" % timeout)
        self._reader.join(5)
        return self.process.returncode


class CwmProcess(TwistdProcess):
    """One ``twistd --pidfile= -n cwm`` on a random loopback port."""

    def __init__(
        self,
        workdir: Path,
        webhooks: Path,
        connections: Path,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(
            workdir,
            ["cwm", "--listen", "tcp:0:interface=127.0.0.1", "--webhooks", str(webhooks),
             "--connections", str(connections), *args],
            env,
        )
        match = self.wait_for(r"LimitedSite (?:\(TLS\) )?starting on (\d+)", START_TIMEOUT)
        self.port = int(match.group(1))


def start_cwm(tmp_path: Path, webhooks: Any, connections: Any = None, **kwargs: Any) -> CwmProcess:
    """Write the two files into ``tmp_path`` and start cwm on them."""
    webhooks_file = tmp_path / "webhooks.json"
    connections_file = tmp_path / "connections.json"
    webhooks_file.write_text(json.dumps(webhooks))
    connections_file.write_text(json.dumps(connections or {}))
    return CwmProcess(tmp_path, webhooks_file, connections_file, **kwargs)
