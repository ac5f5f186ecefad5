"""Every setting of ``twistd cwm-connector``: a JSON file, the environment, the command line.

Names are upstream's (its connector's config keys and ``CONNECTOR_*``
variables). Precedence, key by key: the file, then the environment, then an
option given on the command line. An option's default never overrides a file
or environment value (upstream's ``--protocol`` always did), and the file
never hides the environment (upstream read one or the other).

A bad value stops start-up with one line that names where it came from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cwm.config.files import read_document
from cwm.errors import ConfigError
from cwm.connect.channels import CHANNEL_NAME
from cwm.request import HEADER_NAME
from cwm.settings import boolean, choice, integer, key_prefix, number, readable_file, server_endpoint

PROTOCOLS = ("websocket", "sse", "long_poll")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
METHODS = ("POST", "PUT", "PATCH")


@dataclass(frozen=True)
class Target:
    """Where HTTP mode delivers one webhook's messages (upstream's TargetConfig)."""

    url: str
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_seconds: float = 30.0
    retry_enabled: bool = True
    retry_max_attempts: int = 3
    retry_delay_seconds: float = 1.0
    retry_backoff_multiplier: float = 2.0


@dataclass(frozen=True)
class ConnectorSettings:
    """The connector's settings after parsing and validation."""

    cloud_url: str
    channel: str
    token: str = field(repr=False)
    protocol: str = "websocket"
    reconnect_delay: float = 1.0
    max_reconnect_delay: float = 60.0
    reconnect_backoff_multiplier: float = 2.0
    heartbeat_timeout: float = 60.0
    connection_timeout: float = 30.0
    max_concurrent_requests: int = 10
    ack_timeout: float = 30.0
    drain_timeout: float = 30.0
    log_level: str = "info"
    verify_ssl: bool = True
    ca_cert_path: str | None = None
    client_cert_path: str | None = None
    client_key_path: str | None = None
    connector_id: str | None = None
    default_target: Target | None = None
    targets: Mapping[str, Target] = field(default_factory=dict)
    webhooks_config: str | None = None
    connections_config: str | None = None
    etcd_host: str | None = None
    etcd_port: int = 2379
    etcd_prefix: str = "/cwm/"
    etcd_username: str | None = None
    etcd_password: str | None = field(default=None, repr=False)
    namespace: str = "default"
    status_listen: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def delivery_mode(self) -> str:
        """``etcd``, ``module`` or ``http`` (in that order when several are configured)."""
        if self.etcd_host:
            return "etcd"
        if self.webhooks_config:
            return "module"
        return "http"


def _url(text: str) -> str:
    text = text.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError("expected an http:// or https:// base URL")
    return text


def _channel(text: str) -> str:
    if not CHANNEL_NAME.fullmatch(text) or ".." in text:
        raise ValueError("expected 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit")
    return text


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("expected a non-empty value")
    return text.strip()


@dataclass(frozen=True)
class _Field:
    key: str  # in the file, and the dataclass field
    env: str | None
    option: str | None
    parse: Callable[[str], Any]
    json_type: type | tuple[type, ...] = str


def _fields(cwd: str) -> list[_Field]:
    seconds = number(0.001, 86400.0)
    return [
        _Field("cloud_url", "CONNECTOR_CLOUD_URL", "cloud-url", _url),
        _Field("channel", "CONNECTOR_CHANNEL", "channel", _channel),
        _Field("token", "CONNECTOR_TOKEN", "token", _text),
        _Field("protocol", "CONNECTOR_PROTOCOL", "protocol", choice(*PROTOCOLS)),
        _Field("reconnect_delay", "CONNECTOR_RECONNECT_DELAY", None, seconds, (int, float)),
        _Field("max_reconnect_delay", "CONNECTOR_MAX_RECONNECT_DELAY", None, seconds, (int, float)),
        _Field("reconnect_backoff_multiplier", None, None, number(1.0, 100.0), (int, float)),
        _Field("heartbeat_timeout", "CONNECTOR_HEARTBEAT_TIMEOUT", None, number(1.0, 86400.0), (int, float)),
        _Field("connection_timeout", "CONNECTOR_CONNECTION_TIMEOUT", None, seconds, (int, float)),
        _Field("max_concurrent_requests", "CONNECTOR_MAX_CONCURRENT_REQUESTS", None, integer(1, 10_000), int),
        _Field("ack_timeout", "CONNECTOR_ACK_TIMEOUT", None, seconds, (int, float)),
        _Field("drain_timeout", "CONNECTOR_DRAIN_TIMEOUT", None, number(0.0, 3600.0), (int, float)),
        _Field("log_level", "CONNECTOR_LOG_LEVEL", "log-level", choice(*LOG_LEVELS)),
        _Field("verify_ssl", "CONNECTOR_VERIFY_SSL", None, boolean, bool),
        _Field("ca_cert_path", "CONNECTOR_CA_CERT_PATH", None, readable_file(cwd)),
        _Field("client_cert_path", "CONNECTOR_CLIENT_CERT_PATH", None, readable_file(cwd)),
        _Field("client_key_path", "CONNECTOR_CLIENT_KEY_PATH", None, readable_file(cwd)),
        _Field("connector_id", "CONNECTOR_ID", "connector-id", _text),
        _Field("webhooks_config", "CONNECTOR_WEBHOOKS_CONFIG", "webhooks-config", readable_file(cwd)),
        _Field("connections_config", "CONNECTOR_CONNECTIONS_CONFIG", "connections-config", readable_file(cwd)),
        _Field("etcd_host", "CONNECTOR_ETCD_HOST", None, _text),
        _Field("etcd_port", "CONNECTOR_ETCD_PORT", None, integer(1, 65535), int),
        _Field("etcd_prefix", "CONNECTOR_ETCD_PREFIX", None, key_prefix),
        _Field("etcd_username", "CONNECTOR_ETCD_USERNAME", None, _text),
        _Field("etcd_password", "CONNECTOR_ETCD_PASSWORD", None, _text),
        _Field("namespace", "CONNECTOR_NAMESPACE", None, _text),
        _Field("status_listen", "CONNECTOR_STATUS_LISTEN", "status-listen", server_endpoint),
    ]


_TARGET_KEYS = frozenset(Target.__dataclass_fields__)
# Never printed: the token and the etcd password.
_SECRET = frozenset({"token", "etcd_password"})


def _target(value: Any, where: str) -> Target:
    if not isinstance(value, dict):
        raise ConfigError(f"invalid {where}: expected an object with a url")
    unknown = sorted(set(value) - _TARGET_KEYS)
    if unknown:
        raise ConfigError(f"invalid {where}: unknown key {unknown[0]!r}")
    try:
        url = _url(value["url"]) if isinstance(value.get("url"), str) else None
    except ValueError:
        url = None
    if url is None:
        raise ConfigError(f"invalid {where}.url: expected an http:// or https:// URL")
    method = value.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise ConfigError(f"invalid {where}.method: expected one of {', '.join(METHODS)}")
    headers = value.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and HEADER_NAME.fullmatch(k) and isinstance(v, str) and not any(c in v for c in "\r\n\0")
        for k, v in headers.items()
    ):
        raise ConfigError(f"invalid {where}.headers: expected an object of header names to string values")

    def num(key: str, default: float, low: float, high: float, whole: bool = False) -> Any:
        v: Any = value.get(key, default)
        numeric = isinstance(v, (int, float)) and not isinstance(v, bool) and (isinstance(v, int) or not whole)
        if not numeric or not low <= float(v) <= high:
            kind = "a whole number" if whole else "a number"
            raise ConfigError(f"invalid {where}.{key}: expected {kind} from {low:g} to {high:g}")
        return v

    retry_enabled = value.get("retry_enabled", True)
    if not isinstance(retry_enabled, bool):
        raise ConfigError(f"invalid {where}.retry_enabled: expected true or false")
    return Target(
        url=url,
        method=method.upper(),
        headers=dict(headers),
        timeout_seconds=float(num("timeout_seconds", 30.0, 0.001, 3600.0)),
        retry_enabled=retry_enabled,
        retry_max_attempts=int(num("retry_max_attempts", 3, 1, 100, whole=True)),
        retry_delay_seconds=float(num("retry_delay_seconds", 1.0, 0.0, 3600.0)),
        retry_backoff_multiplier=float(num("retry_backoff_multiplier", 2.0, 1.0, 100.0)),
    )


def read_config_file(path: str) -> dict[str, Any]:
    """The connector's JSON config file, as an object.

    Raises:
        ConfigError: missing, unreadable, not JSON, or not an object.
    """
    return read_document(path, "config")[0]


def parse_connector_settings(
    cli: Mapping[str, str | None],
    environ: Mapping[str, str],
    cwd: str,
    document: Mapping[str, Any] | None = None,
    document_name: str = "the config file",
) -> ConnectorSettings:
    """Merge file < environment < explicit command-line options, then validate.

    Args:
        cli: option name -> value, None when the option was not given.
        document: the config file's object, if there is one.

    Raises:
        ConfigError: one line naming the key, variable or option, and why.
    """
    document = dict(document or {})
    fields = _fields(cwd)
    known = {f.key for f in fields} | {"default_target", "targets", "log_format"}
    unknown = sorted(k for k in document if k not in known and not k.startswith("_"))
    if unknown:
        raise ConfigError(f"invalid {document_name}: unknown key {unknown[0]!r}")
    values: dict[str, Any] = {}
    for f in fields:
        raw: Any = None
        where = ""
        if f.option is not None and cli.get(f.option) is not None:
            raw, where = cli[f.option], f"--{f.option}"
        elif f.env is not None and f.env in environ:
            raw, where = environ[f.env], f.env
        elif f.key in document and document[f.key] is not None:
            value = document[f.key]
            where = f"{f.key} in {document_name}"
            if isinstance(value, bool) and f.json_type is not bool:
                raise ConfigError(f"invalid {where}: expected {_kind(f.json_type)}")
            if not isinstance(value, f.json_type):
                raise ConfigError(f"invalid {where}: expected {_kind(f.json_type)}")
            raw = ("true" if value else "false") if isinstance(value, bool) else str(value)
        else:
            continue
        try:
            values[f.key] = f.parse(str(raw))
        except ValueError as e:
            shown = "" if f.key in _SECRET else f"={raw!r}"
            raise ConfigError(f"invalid {where}{shown}: {e}") from None
    if cli.get("no-verify-ssl"):
        values["verify_ssl"] = False
    for key, variable, option in (("cloud_url", "CONNECTOR_CLOUD_URL", "--cloud-url"),
                                  ("channel", "CONNECTOR_CHANNEL", "--channel"),
                                  ("token", "CONNECTOR_TOKEN", "--token")):
        if key not in values:
            raise ConfigError(f"missing {key}: set it in the config file, {variable} or {option}")
    default_target = _default_target(cli, environ, document, document_name)
    targets_raw = document.get("targets", {})
    if not isinstance(targets_raw, dict):
        raise ConfigError(f"invalid targets in {document_name}: expected an object of webhook id to target")
    targets = {str(k): _target(v, f"targets.{k} in {document_name}") for k, v in targets_raw.items()}
    if values.get("max_reconnect_delay", 60.0) < values.get("reconnect_delay", 1.0):
        raise ConfigError("invalid max_reconnect_delay: must be at least reconnect_delay")
    if ("etcd_username" in values) != ("etcd_password" in values):
        raise ConfigError("invalid etcd credentials: set both CONNECTOR_ETCD_USERNAME and CONNECTOR_ETCD_PASSWORD, or neither")
    if ("client_cert_path" in values) != ("client_key_path" in values):
        raise ConfigError("invalid TLS client settings: set both client_cert_path and client_key_path, or neither")
    modes = [
        name
        for name, configured in (
            ("etcd", "etcd_host" in values),
            ("module", "webhooks_config" in values),
            ("http", default_target is not None or bool(targets)),
        )
        if configured
    ]
    if not modes:
        raise ConfigError(
            "no delivery mode: set a default target (CONNECTOR_TARGET_URL, --target-url or default_target),"
            " targets, webhooks_config, or CONNECTOR_ETCD_HOST"
        )
    warnings = tuple(
        f"delivery mode {modes[0]} is used; the {mode} settings are ignored" for mode in modes[1:]
    )
    return ConnectorSettings(default_target=default_target, targets=targets, warnings=warnings, **values)


def _kind(json_type: type | tuple[type, ...]) -> str:
    if json_type is bool:
        return "true or false"
    if json_type is int:
        return "a whole number"
    if json_type == (int, float):
        return "a number"
    return "a string"


def _default_target(
    cli: Mapping[str, str | None], environ: Mapping[str, str], document: Mapping[str, Any], document_name: str
) -> Target | None:
    base: dict[str, Any] = {}
    if document.get("default_target") is not None:
        target = _target(document["default_target"], f"default_target in {document_name}")
        base = {k: getattr(target, k) for k in _TARGET_KEYS}
        base["headers"] = dict(target.headers)
    url = cli.get("target-url") or environ.get("CONNECTOR_TARGET_URL")
    if url:
        base["url"] = url
    if "CONNECTOR_TARGET_METHOD" in environ:
        base["method"] = environ["CONNECTOR_TARGET_METHOD"]
    if "CONNECTOR_TARGET_TIMEOUT" in environ:
        try:
            base["timeout_seconds"] = number(0.001, 3600.0)(environ["CONNECTOR_TARGET_TIMEOUT"])
        except ValueError as e:
            raise ConfigError(f"invalid CONNECTOR_TARGET_TIMEOUT={environ['CONNECTOR_TARGET_TIMEOUT']!r}: {e}") from None
    if not base:
        return None
    if "url" not in base:
        raise ConfigError("invalid default target: CONNECTOR_TARGET_METHOD/TIMEOUT set without a target URL")
    where = "--target-url" if cli.get("target-url") else (
        "CONNECTOR_TARGET_URL" if environ.get("CONNECTOR_TARGET_URL") else f"default_target in {document_name}")
    return _target(base, where)
