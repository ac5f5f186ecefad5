"""The container images' HEALTHCHECK: ``python -m cwm.probe cwm`` or ``python -m cwm.probe connector``.

It asks the running process the way an operator would, over HTTP on the
address the process listens on, read from the same environment the process
reads: ``PORT``/``HOST`` for the receiver (which serves ``/ready``) and
``CONNECTOR_STATUS_LISTEN`` for the connector (``/health``). So a container
started with ``PORT=9000`` is still probed where it listens (an address given
on the command line instead, ``--listen``, is not seen). Exit status 0 for a
2xx answer, 1 for anything else, a usage or setting error included (one line
on stderr says what): a HEALTHCHECK command must not exit 2, which Docker
reserves. No third-party import: it runs in the image's
Python as a short-lived process every few seconds.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

TIMEOUT_SECONDS = 2.0

# A wildcard listening address is probed on the loopback of its family.
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


class ProbeError(ValueError):
    """A setting the probe cannot turn into an address."""


@dataclass(frozen=True)
class Target:
    """Where to ask: a TCP host and port, or a UNIX socket path."""

    path: str
    host: str = ""
    port: int = 0
    unix: str = ""


def _split_endpoint(description: str) -> list[str]:
    """A strports description's fields: ':' separates them, '\\' escapes."""
    fields, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def endpoint_target(description: str, path: str) -> Target:
    """The address a server endpoint description (``tcp:9090:interface=::``) listens on."""
    kind, *fields = _split_endpoint(description.strip())
    positional = [f for f in fields if "=" not in f]
    named = dict(f.split("=", 1) for f in fields if "=" in f)
    kind = kind.lower()
    if kind == "unix":
        address = named.get("address") or (positional[0] if positional else "")
        if not address:
            raise ProbeError(f"no socket path in {description!r}")
        return Target(path=path, unix=address)
    if kind not in ("tcp", "tcp6"):
        raise ProbeError(f"cannot probe a {kind!r} endpoint ({description!r})")
    port_text = named.get("port") or (positional[0] if positional else "")
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 0 < int(port_text) < 65536:
        raise ProbeError(f"no port in {description!r}")
    interface = named.get("interface", "::" if kind == "tcp6" else "")
    return Target(path=path, host=_WILDCARDS.get(interface, interface), port=int(port_text))


def receiver_target(environ: Mapping[str, str]) -> Target:
    """The receiver's ``/ready``, on ``HOST``:``PORT`` as ``twistd cwm`` reads them (8000 by default)."""
    port = environ.get("PORT", "").strip() or "8000"
    host = environ.get("HOST", "").strip()
    escaped = host.replace(":", "\\:")
    return endpoint_target(f"tcp:{port}" + (f":interface={escaped}" if host else ""), "/ready")


def connector_target(environ: Mapping[str, str]) -> Target:
    """The connector's ``/health``, on ``CONNECTOR_STATUS_LISTEN``."""
    listen = environ.get("CONNECTOR_STATUS_LISTEN", "").strip()
    if not listen:
        raise ProbeError("CONNECTOR_STATUS_LISTEN is not set: the connector serves no status page")
    return endpoint_target(listen, "/health")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._socket_path)


def ask(target: Target, timeout: float = TIMEOUT_SECONDS) -> int:
    """GET the target's path; its status code.

    Raises OSError when nothing answers in time, HTTPException when what
    answers is not HTTP, UnicodeError for a host name that cannot be encoded.
    """
    connection: http.client.HTTPConnection
    if target.unix:
        connection = _UnixConnection(target.unix, timeout)
    else:
        connection = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    try:
        connection.request("GET", target.path, headers={"User-Agent": "cwm-probe"})
        return connection.getresponse().status
    finally:
        connection.close()


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    which = argv[0] if len(argv) == 1 else ""
    try:
        if which == "cwm":
            target = receiver_target(environ)
        elif which == "connector":
            target = connector_target(environ)
        else:
            print("usage: python -m cwm.probe cwm|connector", file=sys.stderr)
            return 1
    except ProbeError as e:
        print(f"cwm.probe: {e}", file=sys.stderr)
        return 1
    host = f"[{target.host}]" if ":" in target.host else target.host
    where = target.unix or f"{host}:{target.port}"
    try:
        status = ask(target)
    except (OSError, http.client.HTTPException, UnicodeError) as e:
        # UnicodeError: a host name the IDNA codec refuses (a label over 63 characters).
        print(f"cwm.probe: {where}{target.path}: {e}", file=sys.stderr)
        return 1
    if 200 <= status < 300:
        return 0
    print(f"cwm.probe: {where}{target.path} answered {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
