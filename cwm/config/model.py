"""Typed, validated configuration entries, parsed from webhooks.json and connections.json.

Parsing is pure: a raw JSON value in, a frozen entry or a ConfigError with the
precise reason out. A bad entry is rejected on its own; it never takes the
others down.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cwm.auth import CHECK_KEYS, UNSUPPORTED_CHECK_KEYS
from cwm.errors import ConfigError

DEFAULT_NAMESPACE = "default"
DATA_TYPES = ("json", "blob")
DEFAULT_RESPONSE_TIMEOUT = 10.0

_NAMESPACE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_WEBHOOK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_RESERVED_IDS = frozenset(
    "stats health docs openapi.json redoc api admin root system internal favicon.ico robots.txt".split()
)
_RESERVED_PREFIXES = ("_", "internal_", "system_", "admin_")
_RESERVED_SUFFIXES = ("_internal", "_system", "_admin")

# Upstream keys cwm accepts but does not act on; a warning names each one.
IGNORED_KEYS = frozenset({"retry", "credential_cleanup", "queue_name", "topic", "redis"})
# Keys cwm does not implement and must not ignore: ignoring them would change
# where a webhook goes, so the entry is rejected.
_UNSUPPORTED_KEYS = frozenset({"chain", "chain-config"})

CONNECTION_TYPES = frozenset(
    {
        "rabbitmq",
        "redis-rq",
        "redis",
        "kafka",
        "postgresql",
        "postgres",
        "mysql",
        "mariadb",
        "clickhouse",
        "mqtt",
        "s3",
        "activemq",
        "aws_sqs",
        "gcp_pubsub",
    }
)


def webhook_id_problem(webhook_id: str) -> str | None:
    """Why ``webhook_id`` is not a valid webhook id, or None if it is."""
    if not webhook_id:
        return "Webhook ID must not be empty"
    if len(webhook_id) > 64:
        return "Webhook ID too long (max 64 characters)"
    if not _WEBHOOK_ID.fullmatch(webhook_id):
        return (
            "Invalid webhook ID format: use letters, digits, '_' and '-', "
            "starting with a letter or digit"
        )
    lowered = webhook_id.lower()
    if lowered in _RESERVED_IDS:
        return f"Webhook ID '{webhook_id}' is reserved"
    if lowered.startswith(_RESERVED_PREFIXES) or lowered.endswith(_RESERVED_SUFFIXES):
        return f"Webhook ID '{webhook_id}' uses a reserved prefix or suffix"
    if "--" in webhook_id or "__" in webhook_id:
        return "Webhook ID must not contain '--' or '__'"
    return None


def namespace_problem(namespace: str) -> str | None:
    """Why ``namespace`` is not a valid namespace, or None if it is."""
    if not _NAMESPACE.fullmatch(namespace):
        return "Invalid namespace format: 1 to 64 letters, digits, '_' or '-'"
    return None


@dataclass(frozen=True)
class WebhookEntry:
    """One validated webhooks.json entry (after ``{$VAR}`` substitution).

    Attributes:
        webhook_id: The key of the entry.
        module: The output module's registry name.
        module_config: The module's own options, validated by the module.
        data_type: ``json`` or ``blob``; any other value is kept and answered
            415 per request (upstream's behaviour for a bad data_type).
        connection: A connections.json name, or None.
        response_timeout: Seconds to wait for the module before answering 202.
        raw: The whole entry as parsed, for the checks' builder.
        warnings: Keys accepted but not acted on.
    """

    webhook_id: str
    module: str
    module_config: Mapping[str, Any]
    data_type: str
    connection: str | None
    response_timeout: float
    raw: Mapping[str, Any]
    warnings: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class ConnectionEntry:
    """One validated connections.json entry."""

    name: str
    type: str
    raw: Mapping[str, Any]


def parse_webhook_entry(
    webhook_id: str,
    value: Any,
    known_module: Any,
    connections: Mapping[str, ConnectionEntry],
) -> WebhookEntry:
    """Validate one webhooks.json entry.

    Args:
        webhook_id: The entry's key.
        value: The entry's JSON value, after substitution.
        known_module: A predicate telling whether a module name is registered.
        connections: The valid connections, by name.

    Raises:
        ConfigError: the precise reason the entry cannot serve.
    """
    if not isinstance(value, dict):
        raise ConfigError(f"entry must be a JSON object, not {_json_type(value)}")
    problem = webhook_id_problem(webhook_id)
    if problem:
        raise ConfigError(problem)

    warnings = []
    for key in value:
        if key.startswith("_"):
            continue  # comments, as upstream's own files carry
        if key in _UNSUPPORTED_KEYS:
            raise ConfigError(f"'{key}' is not supported by cwm yet")
        if key in UNSUPPORTED_CHECK_KEYS or key in CHECK_KEYS or key in _ENTRY_KEYS:
            continue
        if key in IGNORED_KEYS:
            warnings.append(f"'{key}' is accepted for compatibility and ignored")
            continue
        raise ConfigError(f"unknown key '{key}'")

    module = value.get("module")
    if not isinstance(module, str) or not module:
        raise ConfigError("'module' must be a non-empty string")
    if not known_module(module):
        raise ConfigError(f"unknown module '{module}'")

    module_config = value.get("module-config", {})
    if module_config is None:
        module_config = {}
    if not isinstance(module_config, dict):
        raise ConfigError(f"'module-config' must be a JSON object, not {_json_type(module_config)}")

    data_type = value.get("data_type", "json")
    if not isinstance(data_type, str):
        raise ConfigError(f"'data_type' must be a string, not {_json_type(data_type)}")
    if data_type not in DATA_TYPES:
        warnings.append(f"data_type '{data_type}' is not supported: requests get 415")

    connection = value.get("connection")
    if connection is not None:
        if not isinstance(connection, str) or not connection:
            raise ConfigError("'connection' must be a non-empty string")
        if connection not in connections:
            raise ConfigError(f"unknown or invalid connection '{connection}'")

    timeout = value.get("response_timeout", DEFAULT_RESPONSE_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or not 0 < timeout <= 300
    ):
        raise ConfigError("'response_timeout' must be a number of seconds above 0, at most 300")

    return WebhookEntry(
        webhook_id=webhook_id,
        module=module,
        module_config=module_config,
        data_type=data_type,
        connection=connection,
        response_timeout=float(timeout),
        raw=value,
        warnings=tuple(warnings),
    )


_ENTRY_KEYS = frozenset(
    {"module", "module-config", "data_type", "connection", "response_timeout"}
)


def parse_connection_entry(name: str, value: Any) -> ConnectionEntry:
    """Validate one connections.json entry.

    Raises:
        ConfigError: the precise reason the connection cannot be used.
    """
    if not isinstance(value, dict):
        raise ConfigError(f"connection must be a JSON object, not {_json_type(value)}")
    kind = value.get("type")
    if not isinstance(kind, str) or not kind:
        raise ConfigError("'type' must be a non-empty string")
    if kind not in CONNECTION_TYPES:
        raise ConfigError(f"unknown connection type '{kind}'")
    if "host" in value and (not isinstance(value["host"], str) or not value["host"].strip()):
        raise ConfigError("'host' must be a non-empty string")
    if "port" in value:
        port = value["port"]
        if isinstance(port, str) and port.strip().isdigit():
            port = int(port)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError("'port' must be a whole number from 1 to 65535")
    return ConnectionEntry(name=name, type=kind, raw=value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
