"""Every environment variable and command-line option of ``twistd cwm``, parsed once.

Precedence is always: an option given on the command line, then the environment
variable, then the default. An invalid value stops start-up with one line that
names the variable (or option) and the value.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar
from urllib.parse import urlsplit

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.python import usage
from twisted.python.filepath import FilePath

from cwm.config.model import DEFAULT_NAMESPACE, namespace_problem
from cwm.config.vault import VaultSettings
from cwm.connect.buffer import RedisAddress, parse_redis_url
from cwm.errors import ConfigError
from cwm.etcd.options import EtcdOptions
from cwm.web.listen import DEFAULT_BACKLOG, default_backlog

T = TypeVar("T")

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
CONFIG_BACKENDS = ("file", "etcd")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class EtcdSettings:
    """Where and how to reach etcd (``CONFIG_BACKEND=etcd``).

    Attributes:
        options: The client's endpoints (``ETCD_ENDPOINTS``, else
            ``ETCD_HOST``/``ETCD_PORT``), TLS files and credentials.
        prefix: Key prefix, always starting and ending with one ``/``.
        namespace: The namespace of ``POST /webhook/{id}``.
    """

    options: EtcdOptions
    prefix: str
    namespace: str


@dataclass(frozen=True)
class ConnectSettings:
    """Webhook Connect, cloud side (``WEBHOOK_CONNECT_ENABLED=true``).

    Attributes:
        redis: Where the buffer lives (``WEBHOOK_CONNECT_REDIS_URL``, else
            ``REDIS_URL``, else ``redis://localhost:6379/0``).
        admin_token: ``WEBHOOK_CONNECT_ADMIN_TOKEN``; None leaves the admin
            API off (403).
        key_prefix: Prefix of every Redis key (``WEBHOOK_CONNECT_KEY_PREFIX``).
        instance: This instance's consumer name in Redis; stable across
            restarts so a restarted instance gives back at once what it held.
        token_key: ``WEBHOOK_CONNECT_TOKEN_KEY``, what rotated channel tokens
            are hashed with in Redis; None: derived from ``admin_token``.
        redis_ca_cert: ``WEBHOOK_CONNECT_REDIS_CA_CERT``: a PEM file of the CA
            certificates a ``rediss://`` server must chain to, instead of the
            system's roots.
    """

    redis: RedisAddress
    admin_token: str | None = field(repr=False)
    key_prefix: str
    instance: str
    token_key: str | None = field(default=None, repr=False)
    redis_ca_cert: str | None = None


@dataclass(frozen=True)
class Settings:
    """The receiver's settings after parsing and validation.

    Attributes:
        listen: A strports server endpoint description (``tcp:8000``).
        webhooks_file: Path of webhooks.json.
        connections_file: Path of connections.json.
        file_watching: Reload the files when they change on disk.
        reload_debounce: Seconds a changed file must stay unchanged before it
            is read.
        max_body_bytes: Largest accepted request body.
        max_concurrent_tasks: Most module deliveries in flight at once; past it
            the sender gets 503 with Retry-After instead of waiting.
        working_dir: Directory relative paths are resolved against.
        etcd: The etcd settings when the backend is etcd, else None.
        vault: The Vault settings when Vault references are enabled, else None.
        connect: Webhook Connect's settings when it is enabled, else None.
        http_header_timeout: Seconds a request's head may take from its first
            byte (``HTTP_HEADER_TIMEOUT``); more bytes do not extend it.
        http_body_timeout: Seconds a request body may pause (``HTTP_BODY_TIMEOUT``).
        http_idle_timeout: Seconds a keep-alive connection may wait for its
            next request (``HTTP_IDLE_TIMEOUT``).
        max_connections: Open connections past which new ones are closed at
            once (``MAX_CONNECTIONS``).
        listen_backlog: The listen backlog when ``listen`` names none: 511, or
            the kernel's ``somaxconn`` when lower.
        gc_freeze: Once the configuration is loaded, move every object built
            so far out of the garbage collector's reach (``gc.freeze()``), so
            that full collections stay short with many webhooks
            (``GC_FREEZE_AFTER_LOAD``).
        gc_hold_max: Seconds full garbage collections may stay held off while
            large bodies are alive (``GC_HOLD_MAX_SECONDS``); 0 never holds
            them off (``cwm.collector``).
    """

    listen: str
    webhooks_file: FilePath
    connections_file: FilePath
    file_watching: bool
    reload_debounce: float
    max_body_bytes: int
    max_concurrent_tasks: int
    working_dir: FilePath
    etcd: EtcdSettings | None = None
    vault: VaultSettings | None = None
    connect: ConnectSettings | None = None
    http_header_timeout: float = 10.0
    http_body_timeout: float = 30.0
    http_idle_timeout: float = 60.0
    max_connections: int = 10_000
    listen_backlog: int = DEFAULT_BACKLOG
    gc_freeze: bool = True
    gc_hold_max: float = 30.0

    @property
    def default_namespace(self) -> str:
        """The namespace ``POST /webhook/{id}`` uses."""
        return self.etcd.namespace if self.etcd is not None else DEFAULT_NAMESPACE

    @property
    def config_backend(self) -> str:
        """``file`` or ``etcd``."""
        return "file" if self.etcd is None else "etcd"


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected true or false")


def number(minimum: float, maximum: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("expected a number") from None
        if not (minimum <= value <= maximum):  # also rejects nan
            raise ValueError(f"expected a number from {minimum:g} to {maximum:g}")
        return value

    return parse


def integer(minimum: int, maximum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
        if not (minimum <= value <= maximum):
            raise ValueError(f"expected a whole number from {minimum} to {maximum}")
        return value

    return parse


def choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value

    return parse


def server_endpoint(text: str) -> str:
    try:
        serverFromString(MemoryReactor(), text)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"not a server endpoint description ({e})") from None
    return text


class _Source:
    """Looks a setting up on the command line, then in the environment."""

    def __init__(self, cli: Mapping[str, str | None], environ: Mapping[str, str]) -> None:
        self._cli = cli
        self._environ = environ

    def get(
        self,
        option: str | None,
        variable: str | None,
        parse: Callable[[str], T],
        default: T,
        secret: bool = False,
    ) -> T:
        """The parsed value, or ``default``; an error names the source (and, unless
        ``secret``, repeats the value)."""
        if option is not None and self._cli.get(option) is not None:
            raw, name = self._cli[option], f"--{option}"
        elif variable is not None and variable in self._environ:
            raw, name = self._environ[variable], variable
        else:
            return default
        assert raw is not None
        try:
            return parse(raw)
        except ValueError as e:
            shown = "" if secret else f"={raw!r}"
            raise ConfigError(f"invalid {name}{shown}: {e}") from None


def _default_listen(source: _Source) -> str:
    port = source.get(None, "PORT", integer(0, 65535), 8000)
    host = source.get(None, "HOST", str.strip, "")
    if not host:
        return f"tcp:{port}"
    return f"tcp:{port}:interface={host.replace(':', chr(92) + ':')}"


def parse_settings(
    cli: Mapping[str, str | None],
    environ: Mapping[str, str],
    cwd: str,
) -> Settings:
    """Build Settings from command-line values (None = not given) and the environment.

    Raises:
        ConfigError: one line naming the variable or option and its bad value.
    """
    source = _Source(cli, environ)
    working_dir = FilePath(cwd)

    def path(text: str) -> FilePath:
        if not text.strip():
            raise ValueError("expected a file path")
        return FilePath(os.path.join(cwd, os.path.expanduser(text)))

    listen = source.get("listen", None, server_endpoint, "") or server_endpoint(_default_listen(source))
    backend = source.get("config-backend", "CONFIG_BACKEND", choice(*CONFIG_BACKENDS), "file")
    return Settings(
        etcd=_etcd_settings(source, cwd) if backend == "etcd" else None,
        vault=_vault_settings(source, cwd) if _vault_enabled(source) else None,
        connect=_connect_settings(source, listen, cwd)
        if source.get(None, "WEBHOOK_CONNECT_ENABLED", boolean, False)
        else None,
        listen=listen,
        webhooks_file=source.get("webhooks", "WEBHOOKS_CONFIG_FILE", path, path("webhooks.json")),
        connections_file=source.get(
            "connections", "CONNECTIONS_CONFIG_FILE", path, path("connections.json")
        ),
        file_watching=source.get(None, "CONFIG_FILE_WATCHING_ENABLED", boolean, False),
        reload_debounce=source.get(
            None, "CONFIG_RELOAD_DEBOUNCE_SECONDS", number(0.0, 3600.0), 3.0
        ),
        max_body_bytes=source.get(
            None, "MAX_BODY_BYTES", integer(1, 1 << 31), DEFAULT_MAX_BODY_BYTES
        ),
        max_concurrent_tasks=source.get(None, "MAX_CONCURRENT_TASKS", integer(1, 100_000), 100),
        working_dir=working_dir,
        http_header_timeout=source.get(None, "HTTP_HEADER_TIMEOUT", number(0.1, 86400.0), 10.0),
        http_body_timeout=source.get(None, "HTTP_BODY_TIMEOUT", number(0.1, 86400.0), 30.0),
        http_idle_timeout=source.get(None, "HTTP_IDLE_TIMEOUT", number(0.1, 86400.0), 60.0),
        max_connections=source.get(None, "MAX_CONNECTIONS", integer(1, 10_000_000), 10_000),
        listen_backlog=default_backlog(),
        gc_freeze=source.get(None, "GC_FREEZE_AFTER_LOAD", boolean, True),
        gc_hold_max=source.get(None, "GC_HOLD_MAX_SECONDS", number(0.0, 3600.0), 30.0),
    )


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError("expected host:port")
    host = host.strip("[]")
    return host, integer(1, 65535)(port)


def _endpoints(text: str) -> tuple[tuple[str, int], ...]:
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("expected host:port[,host:port...]")
    return tuple(_host_port(p) for p in parts)


def key_prefix(text: str) -> str:
    cleaned = text.strip().strip("/")
    if not cleaned or "//" in cleaned:
        raise ValueError("expected a key prefix such as /cwm/")
    return f"/{cleaned}/"


def _namespace(text: str) -> str:
    problem = namespace_problem(text)
    if problem:
        raise ValueError(problem)
    return text


def readable_file(cwd: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        path = os.path.join(cwd, os.path.expanduser(text.strip()))
        if not os.path.isfile(path):
            raise ValueError("no such file")
        return path

    return parse


def _etcd_settings(source: _Source, cwd: str) -> EtcdSettings:
    host = source.get(None, "ETCD_HOST", str.strip, "localhost") or "localhost"
    port = source.get(None, "ETCD_PORT", integer(1, 65535), 2379)
    single: tuple[tuple[str, int], ...] = ((host, port),)
    endpoints = source.get(None, "ETCD_ENDPOINTS", _endpoints, single)
    username = source.get(None, "ETCD_USERNAME", str, "") or None
    password = source.get(None, "ETCD_PASSWORD", str, "") or None
    if (username is None) != (password is None):
        raise ConfigError("invalid etcd credentials: set both ETCD_USERNAME and ETCD_PASSWORD, or neither")
    cert = source.get(None, "ETCD_CERT", readable_file(cwd), "") or None
    key = source.get(None, "ETCD_KEY", readable_file(cwd), "") or None
    if (cert is None) != (key is None):
        raise ConfigError("invalid etcd TLS settings: set both ETCD_CERT and ETCD_KEY, or neither")
    options = EtcdOptions(
        endpoints=endpoints,
        username=username,
        password=password,
        ca_cert=source.get(None, "ETCD_CA_CERT", readable_file(cwd), "") or None,
        cert=cert,
        key=key,
    )
    return EtcdSettings(
        options=options,
        prefix=source.get(None, "ETCD_PREFIX", key_prefix, "/cwm/"),
        namespace=source.get(None, "ETCD_NAMESPACE", _namespace, DEFAULT_NAMESPACE),
    )


def _vault_enabled(source: _Source) -> bool:
    backend = source.get(None, "SECRETS_BACKEND", choice("env", "environment", "vault"), "env")
    return backend == "vault" or source.get(None, "VAULT_ENABLED", boolean, False)


def _clamped(minimum: float, maximum: float) -> Callable[[str], float]:
    """A number, brought into [minimum, maximum] as upstream does."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("expected a number of seconds") from None
        if value != value:
            raise ValueError("expected a number of seconds")
        return min(maximum, max(minimum, value))

    return parse


def _vault_url(text: str) -> str:
    url = text.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL")
    return url


def _verify(cwd: str) -> Callable[[str], bool | str]:
    def parse(text: str) -> bool | str:
        lowered = text.strip().lower()
        if lowered in _TRUE or not lowered:
            return True
        if lowered in _FALSE:
            return False
        return readable_file(cwd)(text)

    return parse


_VERIFY_DEFAULT: bool | str = True


def _mount(text: str) -> str:
    cleaned = text.strip().strip("/")
    if not cleaned or not all(
        part and all(c.isalnum() or c in "_.-" for c in part) for part in cleaned.split("/")
    ):
        raise ValueError("expected a mount path such as secret or kv/app")
    return cleaned


def _vault_settings(source: _Source, cwd: str) -> VaultSettings:
    addr = source.get(None, "VAULT_ADDR", _vault_url, "")
    if not addr:
        raise ConfigError("Vault is enabled (SECRETS_BACKEND=vault or VAULT_ENABLED) but VAULT_ADDR is not set")
    token = source.get(None, "VAULT_TOKEN", str.strip, "") or None
    role_id = source.get(None, "VAULT_ROLE_ID", str.strip, "") or None
    secret_id = source.get(None, "VAULT_SECRET_ID", str.strip, "") or None
    if token is None and (role_id is None or secret_id is None):
        raise ConfigError(
            "Vault is enabled but has no credentials: set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID"
        )
    return VaultSettings(
        addr=addr,
        token=token,
        role_id=role_id,
        secret_id=secret_id,
        namespace=source.get(None, "VAULT_NAMESPACE", str.strip, "") or None,
        mount_point=source.get(None, "VAULT_MOUNT_POINT", _mount, "secret"),
        kv_version=int(source.get(None, "VAULT_KV_VERSION", choice("1", "2"), "2")),
        verify=source.get(None, "VAULT_VERIFY", _verify(cwd), _VERIFY_DEFAULT),
        timeout=source.get(None, "VAULT_TIMEOUT_SECONDS", _clamped(1.0, 300.0), 10.0),
        cache_ttl=source.get(None, "VAULT_CACHE_TTL_SECONDS", number(0.0, 86400.0), 300.0),
        cache_max_size=source.get(None, "VAULT_CACHE_MAX_SIZE", integer(0, 1_000_000), 1000),
    )


def _connect_settings(source: _Source, listen: str, cwd: str) -> ConnectSettings:
    # The URLs may hold a password and the token is one: never repeated in an error.
    redis = source.get(None, "WEBHOOK_CONNECT_REDIS_URL", parse_redis_url, None, secret=True)
    if redis is None:  # REDIS_URL only as the fallback: it is not read when not used
        redis = source.get(None, "REDIS_URL", parse_redis_url, parse_redis_url("redis://localhost:6379/0"), secret=True)
    token = source.get(None, "WEBHOOK_CONNECT_ADMIN_TOKEN", str.strip, "", secret=True)
    return ConnectSettings(
        redis=redis,
        admin_token=token or None,
        key_prefix=source.get(None, "WEBHOOK_CONNECT_KEY_PREFIX", _redis_name, "cwm:wc"),
        instance=source.get(None, "WEBHOOK_CONNECT_INSTANCE_ID", _redis_name, _instance(listen)),
        token_key=source.get(None, "WEBHOOK_CONNECT_TOKEN_KEY", str.strip, "", secret=True) or None,
        redis_ca_cert=source.get(None, "WEBHOOK_CONNECT_REDIS_CA_CERT", readable_file(cwd), None),
    )


def _instance(listen: str) -> str:
    """Host and listening address: unique among live instances, the same after a restart.

    On a random port (``tcp:0``) two processes of one host would share it, so
    the process id is added (what the previous process held is then reclaimed
    after the ack timeout instead of at once).
    """
    name = f"{socket.gethostname()}:{listen}"
    if re.match(r"(tcp6?|ssl):0(:|$)", listen):
        name += f":{os.getpid()}"
    return name


def _redis_name(text: str) -> str:
    text = text.strip()
    if not text or len(text) > 200 or any(c in text for c in "{} \t\r\n"):
        raise ValueError("expected 1-200 characters without braces or white space")
    return text


class ReceiverOptions(usage.Options):
    """Command-line options of ``twistd cwm``."""

    optParameters = [
        ["listen", None, None, "Server endpoint to listen on (default from HOST/PORT, else tcp:8000)."],
        ["webhooks", None, None, "webhooks.json path (env WEBHOOKS_CONFIG_FILE; default webhooks.json)."],
        ["connections", None, None, "connections.json path (env CONNECTIONS_CONFIG_FILE; default connections.json)."],
        ["config-backend", None, None, "file or etcd (env CONFIG_BACKEND; default file)."],
    ]

    settings: Settings

    def postOptions(self) -> None:
        """Parse everything now, so a bad value stops start-up before any service runs."""
        cli = {name: self[name] for name in ("listen", "webhooks", "connections", "config-backend")}
        try:
            self.settings = parse_settings(cli, os.environ, os.getcwd())
        except ConfigError as e:
            _fail(str(e))


def _fail(message: str) -> NoReturn:
    # twistd would print the whole usage text for a UsageError; one line is clearer.
    sys.stderr.write(f"cwm: {message}\n")
    raise SystemExit(2)
