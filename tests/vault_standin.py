"""A Vault stand-in that speaks the parts of Vault's HTTP API cwm uses.

KV v1 and v2 reads, writes and deletes, AppRole login, token renew-self and
lookup-self, tokens with TTLs (on an injected clock or real time), namespaces,
``sys/health``, listing and enabling KV mounts (``sys/mounts``), and switches
to seal it (503) or stop it listening (connection refused). Use it in-process
as a twisted.web resource (``StubTreq(standin.resource())``) or on a real port
(``standin.listen(reactor)``, over TLS with ``tls=``);
``python -m tests.vault_standin --port N --seed FILE`` runs it as a process and
prints ``PORT <n>`` once listening (``--port 0``: any free port; ``--host
0.0.0.0`` to serve other hosts, as in a container; ``--dev-root-token T`` for a
never-expiring root token like ``vault server -dev``).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

# The Vault release whose API shapes the stand-in follows (the compose files'
# image); "+standin" says in every health answer that it is not Vault.
VERSION = "1.16.0+standin"
CLUSTER_NAME = "vault-cluster-standin"
CLUSTER_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "cwm-vault-standin"))


@dataclass
class Token:
    """A token the stand-in accepts until it expires or is revoked."""

    token: str = field(repr=False)
    ttl: float | None
    renewable: bool
    expires_at: float | None
    policies: list[str]
    renewals: int = 0


@dataclass
class _Version:
    data: dict[str, Any]
    version: int
    created_time: str
    deletion_time: str = ""


class VaultStandin:
    """The state of the stand-in: mounts, secrets, tokens, roles and counters."""

    def __init__(self, clock: Any = None, mounts: dict[str, int] | None = None) -> None:
        self._clock = clock
        self.mounts: dict[str, int] = dict(mounts if mounts is not None else {"secret": 2})
        self._secrets: dict[tuple[str, str, str], _Version] = {}
        self.tokens: dict[str, Token] = {}
        self.approles: dict[str, tuple[str, float, bool]] = {}  # role_id -> (secret_id, ttl, renewable)
        self.requests: Counter[str] = Counter()
        self.sealed = False
        self.hold = False
        self.held: list[Request] = []
        self.seen_headers: list[dict[str, str]] = []
        self._port: Any = None
        self._last_port_number = 0
        self._reactor: Any = None
        self._tls: Any = None
        self._interface = "127.0.0.1"

    # -- time ---------------------------------------------------------------

    def now(self) -> float:
        """The injected clock's time, or real time."""
        return float(self._clock.seconds()) if self._clock is not None else time.time()

    # -- the Python API -----------------------------------------------------

    def put_secret(
        self, path: str, data: dict[str, Any], mount: str = "secret", namespace: str = ""
    ) -> int:
        """Write a secret (a new version under KV v2); return its version."""
        if mount not in self.mounts:
            self.mounts[mount] = 2
        key = (_ns(namespace), mount, path.strip("/"))
        previous = self._secrets.get(key)
        version = previous.version + 1 if previous else 1
        self._secrets[key] = _Version(dict(data), version, self._timestamp())
        return version

    def delete_secret(self, path: str, mount: str = "secret", namespace: str = "") -> None:
        """Remove a secret entirely, all its versions too."""
        self._secrets.pop((_ns(namespace), mount, path.strip("/")), None)

    def secret(
        self, path: str, mount: str = "secret", namespace: str = ""
    ) -> dict[str, Any] | None:
        """The latest data of a secret; None if it is missing or (KV v2) deleted."""
        stored = self._secrets.get((_ns(namespace), mount, path.strip("/")))
        if stored is None or stored.deletion_time:
            return None
        return dict(stored.data)

    def _timestamp(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(self.now()))

    def create_token(
        self,
        ttl: float | None = None,
        renewable: bool = False,
        token: str | None = None,
        policies: list[str] | None = None,
    ) -> str:
        """Create a token; ``ttl=None`` never expires."""
        value = token if token is not None else "hvs." + secrets.token_urlsafe(18)
        expires = None if ttl is None else self.now() + ttl
        self.tokens[value] = Token(value, ttl, renewable, expires, policies or ["default"])
        return value

    def revoke_token(self, token: str) -> None:
        """Make ``token`` invalid from now on."""
        self.tokens.pop(token, None)

    def token_valid(self, token: str | None) -> bool:
        """Whether the stand-in would accept ``token`` now."""
        if token is None or token not in self.tokens:
            return False
        expires = self.tokens[token].expires_at
        return expires is None or self.now() < expires

    def create_approle(
        self,
        role_id: str | None = None,
        secret_id: str | None = None,
        token_ttl: float = 3600.0,
        renewable: bool = True,
    ) -> tuple[str, str]:
        """Create an AppRole credential pair; logins get tokens of ``token_ttl``."""
        role = role_id or str(uuid.uuid4())
        secret = secret_id or str(uuid.uuid4())
        self.approles[role] = (secret, token_ttl, renewable)
        return role, secret

    def request_count(self, path: str) -> int:
        """How many requests reached ``path`` (like ``/v1/secret/data/app``)."""
        return self.requests[path]

    def release_held(self) -> None:
        """Answer the requests held while ``hold`` was on with 503."""
        held, self.held = self.held, []
        for request in held:
            if not request.finished and not getattr(request, "_disconnected", False):
                _finish(request, 503, {"errors": ["released"]})

    # -- listening ------------------------------------------------------------

    def resource(self) -> Resource:
        """The twisted.web resource answering the HTTP API."""
        return _VaultResource(self)

    def listen(
        self, reactor: Any, port: int = 0, interface: str = "127.0.0.1", tls: Any = None
    ) -> int:
        """Listen on ``interface`` (loopback by default, ``0.0.0.0`` for all); return the port.

        ``tls`` is a server context factory (``PrivateCertificate.options()``)
        to speak HTTPS; it and ``interface`` are kept for ``resume_listening``.
        """
        self._reactor = reactor
        self._tls = tls
        self._interface = interface
        site = Site(self.resource())
        if tls is None:
            self._port = reactor.listenTCP(port, site, interface=interface)
        else:
            self._port = reactor.listenSSL(port, site, tls, interface=interface)
        self._last_port_number = self._port.getHost().port
        return self._last_port_number

    @property
    def addr(self) -> str:
        """``http(s)://127.0.0.1:<port>`` of the last listening port."""
        scheme = "http" if self._tls is None else "https"
        return f"{scheme}://127.0.0.1:{self._last_port_number}"

    def stop_listening(self) -> Deferred[None] | None:
        """Stop listening (clients now get connection refused)."""
        port, self._port = self._port, None
        if port is None:
            return None
        stopped: Deferred[None] = port.stopListening()
        return stopped

    def resume_listening(self) -> int:
        """Listen again on the same port number as before."""
        return self.listen(
            self._reactor, self._last_port_number, interface=self._interface, tls=self._tls
        )

    def seed(self, document: dict[str, Any]) -> None:
        """Load mounts, tokens, approles and secrets from a seed document.

        ``{"mounts": {"secret": 2, "kv": 1}, "tokens": {"root": {"ttl": null}},
        "approles": [{"role_id": "r", "secret_id": "s", "token_ttl": 3600}],
        "secrets": [{"mount": "secret", "path": "app/auth", "data": {...},
        "namespace": ""}]}``
        """
        self.mounts.update({str(k): int(v) for k, v in document.get("mounts", {}).items()})
        for name, spec in document.get("tokens", {}).items():
            self.create_token(
                ttl=spec.get("ttl"), renewable=bool(spec.get("renewable")), token=name
            )
        for role in document.get("approles", []):
            self.create_approle(
                role.get("role_id"),
                role.get("secret_id"),
                float(role.get("token_ttl", 3600)),
                bool(role.get("renewable", True)),
            )
        for item in document.get("secrets", []):
            self.put_secret(
                item["path"], item["data"], item.get("mount", "secret"), item.get("namespace", "")
            )

    # -- the HTTP API ---------------------------------------------------------

    def handle(self, request: Request) -> Any:
        """Count the request, then hold it or answer it."""
        path = request.path.decode("utf-8", "replace")
        self.requests[path] += 1
        headers = {
            k.decode("latin-1").lower(): v[0].decode("latin-1")
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        self.seen_headers.append(headers)
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return self._dispatch(request, headers)

    def answer_held(self) -> None:
        """Answer the requests held while ``hold`` was on, as if just received."""
        held, self.held = self.held, []
        for request in held:
            if request.finished or getattr(request, "_disconnected", False):
                continue
            headers = {
                k.decode("latin-1").lower(): v[0].decode("latin-1")
                for k, v in request.requestHeaders.getAllRawHeaders()
            }
            request.write(self._dispatch(request, headers))
            request.finish()

    def _dispatch(self, request: Request, headers: dict[str, str]) -> bytes:
        path = request.path.decode("utf-8", "replace")
        method = request.method.decode("ascii")
        segments = [s for s in path.split("/") if s]
        if segments == ["v1", "sys", "health"] and method in ("GET", "HEAD"):
            return self._health(request)  # unauthenticated, and answers when sealed too
        if self.sealed:
            return _answer(request, 503, {"errors": ["Vault is sealed"]})
        if len(segments) < 2 or segments[0] != "v1":
            return _answer(request, 404, {"errors": []})
        namespace = _ns(headers.get("x-vault-namespace", ""))
        body = _json_body(request)
        rest = segments[1:]
        if rest[:3] == ["auth", "approle", "login"] and method in ("POST", "PUT"):
            return self._login(request, body or {})
        token = headers.get("x-vault-token")
        if not self.token_valid(token):
            return _answer(request, 403, {"errors": ["permission denied"]})
        assert token is not None
        if rest[:3] == ["auth", "token", "renew-self"] and method in ("POST", "PUT"):
            return self._renew(request, token)
        if rest[:3] == ["auth", "token", "lookup-self"] and method == "GET":
            return self._lookup(request, token)
        if rest == ["sys", "mounts"] and method == "GET":
            return self._list_mounts(request)
        if rest[:2] == ["sys", "mounts"] and len(rest) > 2 and method in ("POST", "PUT"):
            if body is None:
                return _answer(request, 400, {"errors": ["failed to parse JSON input"]})
            return self._enable_mount(request, "/".join(rest[2:]), body)
        located = self._locate(rest)
        if located is None:
            route = "/".join(rest)
            return _answer(
                request, 404, {"errors": [f'no handler for route "{route}". route entry not found.']}
            )
        mount, path = located
        if not path:
            return _answer(request, 404, {"errors": []})
        key = (namespace, mount, path)
        if method == "GET":
            return self._read(request, key)
        if method in ("POST", "PUT"):
            if body is None:
                return _answer(request, 400, {"errors": ["failed to parse JSON input"]})
            return self._write(request, key, body)
        if method == "DELETE":
            return self._delete(request, key)
        return _answer(request, 405, {"errors": []})

    def _locate(self, rest: list[str]) -> tuple[str, str] | None:
        """``(mount, secret path)`` of a KV route; the path is "" if the route names none.

        Under a KV v2 mount only ``data/...`` routes name a secret.
        """
        mount = next(
            (m for m in sorted(self.mounts, key=len, reverse=True)
             if rest[: len(m.split("/"))] == m.split("/")),
            None,
        )
        if mount is None:
            return None
        after = rest[len(mount.split("/")):]
        if self.mounts[mount] == 2:
            if len(after) < 2 or after[0] != "data":
                return mount, ""
            after = after[1:]
        return mount, "/".join(after)

    def _read(self, request: Request, key: tuple[str, str, str]) -> bytes:
        stored = self._secrets.get(key)
        if stored is None:
            return _answer(request, 404, {"errors": []})
        if self.mounts[key[1]] == 1:
            return _answer(request, 200, _envelope(data=stored.data, lease_duration=2764800))
        if stored.deletion_time:
            # Vault answers 404 for a deleted version, and still shows its metadata.
            return _answer(
                request,
                404,
                _envelope(data={"data": None, "metadata": _metadata(stored)}, mount_type="kv"),
            )
        return _answer(
            request,
            200,
            _envelope(data={"data": stored.data, "metadata": _metadata(stored)}, mount_type="kv"),
        )

    def _write(self, request: Request, key: tuple[str, str, str], body: dict[str, Any]) -> bytes:
        namespace, mount, path = key
        if self.mounts[mount] == 1:
            # KV v1: the body is the secret; Vault refuses an empty one.
            if not body:
                return _answer(request, 400, {"errors": ["missing data fields"]})
            self.put_secret(path, body, mount, namespace)
            return _no_content(request)
        data = body.get("data")
        if not isinstance(data, dict):
            return _answer(request, 400, {"errors": ["no data provided"]})
        options = body.get("options")
        cas = options.get("cas") if isinstance(options, dict) else None
        previous = self._secrets.get(key)
        if cas is not None and cas != (previous.version if previous else 0):
            return _answer(
                request,
                400,
                {"errors": ["check-and-set parameter did not match the current version"]},
            )
        self.put_secret(path, data, mount, namespace)
        return _answer(request, 200, _envelope(data=_metadata(self._secrets[key])))

    def _delete(self, request: Request, key: tuple[str, str, str]) -> bytes:
        if self.mounts[key[1]] == 1:
            self._secrets.pop(key, None)
        else:
            # KV v2 deletes the latest version softly: a later write is version N + 1.
            stored = self._secrets.get(key)
            if stored is not None and not stored.deletion_time:
                stored.deletion_time = self._timestamp()
        return _no_content(request)

    def _health(self, request: Request) -> bytes:
        """Vault's ``sys/health``: 200 when unsealed and active, 503 when sealed."""
        if self.sealed:
            return _answer(
                request,
                503,
                {
                    "initialized": True,
                    "sealed": True,
                    "standby": True,
                    "performance_standby": False,
                    "replication_performance_mode": "disabled",
                    "replication_dr_mode": "disabled",
                    "server_time_utc": int(self.now()),
                    "version": VERSION,
                },
            )
        return _answer(
            request,
            200,
            {
                "initialized": True,
                "sealed": False,
                "standby": False,
                "performance_standby": False,
                "replication_performance_mode": "disabled",
                "replication_dr_mode": "disabled",
                "server_time_utc": int(self.now()),
                "version": VERSION,
                "cluster_name": CLUSTER_NAME,
                "cluster_id": CLUSTER_ID,
            },
        )

    def _list_mounts(self, request: Request) -> bytes:
        """The KV mounts, keyed ``"path/"``, at the top level and under ``data`` as Vault 1.x does.

        Only the KV engines the stand-in serves are listed (no ``sys/``,
        ``cubbyhole/`` or ``identity/``).
        """
        mounts = {f"{name}/": _mount_entry(name, version) for name, version in self.mounts.items()}
        answer = _envelope(data=mounts)
        answer.update(mounts)
        return _answer(request, 200, answer)

    def _enable_mount(self, request: Request, path: str, body: dict[str, Any]) -> bytes:
        """Enable a KV engine at ``path`` (``kv`` with ``options.version``, or ``kv-v2``)."""
        kind = body.get("type")
        options = body.get("options")
        version_text = str(options.get("version", "1")) if isinstance(options, dict) else "1"
        if kind == "kv-v2":
            version_text = "2"
        elif kind != "kv":
            return _answer(request, 400, {"errors": [f"plugin not found in the catalog: {kind}"]})
        if version_text not in ("1", "2"):
            return _answer(request, 400, {"errors": [f"invalid KV version: {version_text}"]})
        path = path.strip("/")
        for existing in self.mounts:
            if (path + "/").startswith(existing + "/") or (existing + "/").startswith(path + "/"):
                return _answer(request, 400, {"errors": [f"path is already in use at {existing}/"]})
        self.mounts[path] = int(version_text)
        return _no_content(request)

    def _login(self, request: Request, body: dict[str, Any]) -> bytes:
        role = self.approles.get(str(body.get("role_id", "")))
        if role is None or role[0] != body.get("secret_id"):
            return _answer(request, 400, {"errors": ["invalid role or secret ID"]})
        _, ttl, renewable = role
        token = self.create_token(ttl=ttl, renewable=renewable)
        return _answer(request, 200, _envelope(auth=self._auth_block(token)))

    def _renew(self, request: Request, token: str) -> bytes:
        record = self.tokens[token]
        if not record.renewable:
            return _answer(request, 400, {"errors": ["lease is not renewable"]})
        record.renewals += 1
        if record.ttl is not None:
            record.expires_at = self.now() + record.ttl
        return _answer(request, 200, _envelope(auth=self._auth_block(token)))

    def _lookup(self, request: Request, token: str) -> bytes:
        record = self.tokens[token]
        ttl = 0 if record.expires_at is None else int(record.expires_at - self.now())
        return _answer(
            request,
            200,
            _envelope(
                data={
                    "id": token,
                    "ttl": ttl,
                    "creation_ttl": int(record.ttl or 0),
                    "renewable": record.renewable,
                    "policies": record.policies,
                }
            ),
        )

    def _auth_block(self, token: str) -> dict[str, Any]:
        record = self.tokens[token]
        return {
            "client_token": token,
            "accessor": str(uuid.uuid4()),
            "policies": record.policies,
            "token_policies": record.policies,
            "metadata": None,
            "lease_duration": int(record.ttl or 0),
            "renewable": record.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": True,
        }


class _VaultResource(Resource):
    isLeaf = True

    def __init__(self, standin: VaultStandin) -> None:
        super().__init__()
        self._standin = standin

    def render(self, request: Request) -> Any:
        return self._standin.handle(request)


def _ns(namespace: str) -> str:
    return namespace.strip("/")


def _json_body(request: Request) -> dict[str, Any] | None:
    """The JSON object in the body, ``{}`` if there is none, None if it is not a JSON object."""
    content = request.content.read() if request.content is not None else b""
    if not content:
        return {}
    try:
        loaded = json.loads(content)
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None


def _mount_entry(name: str, version: int) -> dict[str, Any]:
    """One mount as ``sys/mounts`` lists it; its ids are derived from its name, so stable."""
    ident = uuid.uuid5(uuid.NAMESPACE_URL, "cwm-vault-standin/" + name)
    return {
        "accessor": f"kv_{ident.hex[:8]}",
        "config": {"default_lease_ttl": 0, "force_no_cache": False, "max_lease_ttl": 0},
        "description": "key/value secret storage",
        "external_entropy_access": False,
        "local": False,
        "options": {"version": str(version)},
        "plugin_version": "",
        "running_plugin_version": f"v{VERSION.split('+')[0]}+builtin.vault",
        "running_sha256": "",
        "seal_wrap": False,
        "type": "kv",
        "uuid": str(ident),
    }


def _metadata(stored: _Version) -> dict[str, Any]:
    return {
        "created_time": stored.created_time,
        "custom_metadata": None,
        "deletion_time": stored.deletion_time,
        "destroyed": False,
        "version": stored.version,
    }


def _envelope(
    data: Any = None, auth: Any = None, lease_duration: int = 0, mount_type: str | None = None
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "lease_id": "",
        "renewable": False,
        "lease_duration": lease_duration,
        "data": data,
        "wrap_info": None,
        "warnings": None,
        "auth": auth,
    }
    if mount_type is not None:
        answer["mount_type"] = mount_type
    return answer


def _answer(request: Request, status: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode("utf-8")


def _no_content(request: Request) -> bytes:
    request.setResponseCode(204)
    return b""


def _finish(request: Request, status: int, body: dict[str, Any]) -> None:
    request.write(_answer(request, status, body))
    request.finish()


def main(argv: list[str] | None = None) -> None:
    """Run the stand-in until killed; print ``PORT <n>`` once listening."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", help="JSON seed file (see VaultStandin.seed)")
    parser.add_argument(
        "--dev-root-token", help="a never-expiring root token, like vault server -dev's"
    )
    options = parser.parse_args(argv)
    from twisted.internet import reactor

    standin = VaultStandin()
    if options.dev_root_token:
        standin.create_token(token=options.dev_root_token, policies=["root"])
    if options.seed:
        with open(options.seed, encoding="utf-8") as seed_file:
            standin.seed(json.load(seed_file))
    port = standin.listen(reactor, options.port, interface=options.host)
    print(f"PORT {port}", flush=True)
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
