"""Connector settings: file < environment < explicit options, upstream's names, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cwm.connector.settings import Target, parse_connector_settings
from cwm.errors import ConfigError

BASE_ENV = {"CONNECTOR_CLOUD_URL": "https://cloud.example", "CONNECTOR_CHANNEL": "alpha", "CONNECTOR_TOKEN": "tok",
            "CONNECTOR_TARGET_URL": "http://127.0.0.1:8011/webhook/local"}
NO_CLI: dict[str, str | None] = {}


def parse(cli: dict[str, str | None] | None = None, env: dict[str, str] | None = None,
          document: dict[str, Any] | None = None, cwd: str = "/") -> Any:
    return parse_connector_settings(cli or NO_CLI, env if env is not None else BASE_ENV, cwd, document, "connector.json")


def test_defaults_from_the_environment() -> None:
    s = parse()
    assert (s.cloud_url, s.channel, s.protocol, s.delivery_mode) == ("https://cloud.example", "alpha", "websocket", "http")
    assert s.default_target == Target(url="http://127.0.0.1:8011/webhook/local")
    assert (s.reconnect_delay, s.max_reconnect_delay, s.heartbeat_timeout, s.max_concurrent_requests) == (1.0, 60.0, 60.0, 10)
    assert "tok" not in repr(s)


def test_file_then_environment_then_explicit_options() -> None:
    document = {"cloud_url": "http://file", "channel": "from-file", "token": "t", "protocol": "sse",
                "max_concurrent_requests": 4, "verify_ssl": False, "log_level": "DEBUG",
                "default_target": {"url": "http://127.0.0.1:1/x", "retry_max_attempts": 5}, "_comment": "ignored"}
    s = parse(env={}, document=document)
    assert (s.cloud_url, s.channel, s.protocol, s.max_concurrent_requests, s.verify_ssl, s.log_level) == (
        "http://file", "from-file", "sse", 4, False, "debug")
    assert s.default_target.retry_max_attempts == 5
    # The environment beats the file...
    s = parse(env={"CONNECTOR_PROTOCOL": "long_poll", "CONNECTOR_CHANNEL": "env-ch"}, document=document)
    assert (s.protocol, s.channel) == ("long_poll", "env-ch")
    # ...and only an option actually given beats both (None = not given: no default wins).
    s = parse(cli={"protocol": None, "channel": "cli-ch"}, env={"CONNECTOR_PROTOCOL": "long_poll"}, document=document)
    assert (s.protocol, s.channel) == ("long_poll", "cli-ch")
    s = parse(cli={"protocol": "websocket", "target-url": "http://127.0.0.1:2/y", "no-verify-ssl": None},
              env={}, document={**document, "verify_ssl": True})
    assert s.protocol == "websocket" and s.default_target.url == "http://127.0.0.1:2/y" and s.verify_ssl is True
    assert s.default_target.retry_max_attempts == 5  # the file's target settings stay


def test_targets_and_modes(tmp_path: Path) -> None:
    hooks = tmp_path / "webhooks.json"
    hooks.write_text("{}")
    s = parse(env={k: v for k, v in BASE_ENV.items() if k != "CONNECTOR_TARGET_URL"},
              document={"targets": {"gh": {"url": "http://127.0.0.1:9/gh", "method": "put", "headers": {"X-A": "1"}}}})
    assert s.targets == {"gh": Target(url="http://127.0.0.1:9/gh", method="PUT", headers={"X-A": "1"})}
    assert s.default_target is None and s.delivery_mode == "http"
    s = parse(env={**BASE_ENV, "CONNECTOR_WEBHOOKS_CONFIG": str(hooks)})
    assert s.delivery_mode == "module" and s.warnings == ("delivery mode module is used; the http settings are ignored",)
    s = parse(env={**BASE_ENV, "CONNECTOR_ETCD_HOST": "etcd", "CONNECTOR_ETCD_PORT": "2380",
                   "CONNECTOR_ETCD_PREFIX": "cwm", "CONNECTOR_NAMESPACE": "ns",
                   "CONNECTOR_ETCD_USERNAME": "u", "CONNECTOR_ETCD_PASSWORD": "p"})
    assert (s.delivery_mode, s.etcd_host, s.etcd_port, s.etcd_prefix, s.namespace, s.etcd_username) == (
        "etcd", "etcd", 2380, "/cwm/", "ns", "u")
    assert "'p'" not in repr(s)


@pytest.mark.parametrize(
    "env, document, message",
    [
        ({"CONNECTOR_PROTOCOL": "carrier-pigeon"}, None,
         "invalid CONNECTOR_PROTOCOL='carrier-pigeon': expected one of websocket, sse, long_poll"),
        ({"CONNECTOR_CLOUD_URL": "ftp://x"}, None, "invalid CONNECTOR_CLOUD_URL='ftp://x': expected an http:// or https:// base URL"),
        ({"CONNECTOR_CHANNEL": "a..b"}, None, "invalid CONNECTOR_CHANNEL='a..b': expected 1-128 characters"),
        ({"CONNECTOR_MAX_CONCURRENT_REQUESTS": "0"}, None,
         "invalid CONNECTOR_MAX_CONCURRENT_REQUESTS='0': expected a whole number from 1 to 10000"),
        ({"CONNECTOR_TOKEN": " "}, None, "invalid CONNECTOR_TOKEN: expected a non-empty value"),
        ({}, {"max_concurrent_requests": "4"}, "invalid max_concurrent_requests in connector.json: expected a whole number"),
        ({}, {"verify_ssl": "no"}, "invalid verify_ssl in connector.json: expected true or false"),
        ({}, {"reconnect_delay": True}, "invalid reconnect_delay in connector.json: expected a number"),
        ({}, {"protcol": "sse"}, "invalid connector.json: unknown key 'protcol'"),
        ({}, {"targets": {"gh": {"url": "http://h/x", "retries": 3}}}, "invalid targets.gh in connector.json: unknown key 'retries'"),
        ({}, {"targets": {"gh": {"url": "http://h/x", "retry_max_attempts": 0}}},
         "invalid targets.gh in connector.json.retry_max_attempts: expected a whole number from 1 to 100"),
        ({"CONNECTOR_RECONNECT_DELAY": "10", "CONNECTOR_MAX_RECONNECT_DELAY": "5"}, None,
         "invalid max_reconnect_delay: must be at least reconnect_delay"),
        ({"CONNECTOR_ETCD_USERNAME": "u"}, None, "invalid etcd credentials: set both"),
        ({"CONNECTOR_CA_CERT_PATH": "/nonexistent.pem"}, None, "invalid CONNECTOR_CA_CERT_PATH='/nonexistent.pem': no such file"),
    ],
)
def test_bad_values_are_one_line_naming_their_source(env: dict[str, str], document: dict[str, Any] | None, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(env={**BASE_ENV, **env}, document=document)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_required_settings_and_a_delivery_mode() -> None:
    with pytest.raises(ConfigError, match=r"^missing token: set it in the config file, CONNECTOR_TOKEN or --token$"):
        parse(env={k: v for k, v in BASE_ENV.items() if k != "CONNECTOR_TOKEN"})
    with pytest.raises(ConfigError, match=r"^no delivery mode: "):
        parse(env={k: v for k, v in BASE_ENV.items() if k != "CONNECTOR_TARGET_URL"})
