"""Settings: command line beats environment beats default; a bad value is one clear line."""

from __future__ import annotations

import pytest

from cwm.errors import ConfigError
from cwm.settings import DEFAULT_MAX_BODY_BYTES, parse_settings

NO_CLI: dict[str, str | None] = {}


def test_defaults() -> None:
    """With nothing set, upstream's defaults apply."""
    s = parse_settings(NO_CLI, {}, "/srv")
    assert s.listen == "tcp:8000"
    assert s.webhooks_file.path == "/srv/webhooks.json"
    assert s.connections_file.path == "/srv/connections.json"
    assert (s.config_backend, s.file_watching, s.reload_debounce) == ("file", False, 3.0)
    assert (s.max_body_bytes, s.max_concurrent_tasks) == (DEFAULT_MAX_BODY_BYTES, 100)


def test_env_overrides_defaults() -> None:
    """Each environment variable is read once into its setting."""
    s = parse_settings(
        NO_CLI,
        {
            "WEBHOOKS_CONFIG_FILE": "conf/w.json",
            "CONNECTIONS_CONFIG_FILE": "/etc/cwm/c.json",
            "CONFIG_BACKEND": "FILE",
            "CONFIG_FILE_WATCHING_ENABLED": "yes",
            "CONFIG_RELOAD_DEBOUNCE_SECONDS": "0.5",
            "MAX_BODY_BYTES": "1024",
            "MAX_CONCURRENT_TASKS": "7",
            "PORT": "9000",
        },
        "/srv",
    )
    assert s.webhooks_file.path == "/srv/conf/w.json"
    assert s.connections_file.path == "/etc/cwm/c.json"
    assert (s.file_watching, s.reload_debounce, s.max_body_bytes, s.max_concurrent_tasks) == (True, 0.5, 1024, 7)
    assert s.listen == "tcp:9000"


def test_host_and_port_make_the_listen_default() -> None:
    """HOST/PORT build the endpoint; an IPv6 host has its colons escaped."""
    assert parse_settings(NO_CLI, {"HOST": "127.0.0.1", "PORT": "81"}, "/").listen == "tcp:81:interface=127.0.0.1"
    assert parse_settings(NO_CLI, {"HOST": "::1"}, "/").listen == "tcp:8000:interface=\\:\\:1"


def test_cli_beats_env() -> None:
    """An option given on the command line wins over its variable."""
    s = parse_settings(
        {"listen": "tcp:7000", "webhooks": "cli.json", "config-backend": "file", "connections": None},
        {"PORT": "9000", "WEBHOOKS_CONFIG_FILE": "env.json", "CONNECTIONS_CONFIG_FILE": "envc.json"},
        "/x",
    )
    assert (s.listen, s.webhooks_file.path, s.connections_file.path) == ("tcp:7000", "/x/cli.json", "/x/envc.json")


@pytest.mark.parametrize(
    "cli, env, message",
    [
        ({}, {"CONFIG_RELOAD_DEBOUNCE_SECONDS": "soon"}, "invalid CONFIG_RELOAD_DEBOUNCE_SECONDS='soon': expected a number"),
        ({}, {"CONFIG_RELOAD_DEBOUNCE_SECONDS": "nan"}, "invalid CONFIG_RELOAD_DEBOUNCE_SECONDS='nan': expected a number from 0 to 3600"),
        ({}, {"MAX_BODY_BYTES": "0"}, "invalid MAX_BODY_BYTES='0': expected a whole number from 1 to 2147483648"),
        ({}, {"MAX_CONCURRENT_TASKS": "many"}, "invalid MAX_CONCURRENT_TASKS='many': expected a whole number"),
        ({}, {"CONFIG_FILE_WATCHING_ENABLED": "maybe"}, "invalid CONFIG_FILE_WATCHING_ENABLED='maybe': expected true or false"),
        ({}, {"PORT": "70000"}, "invalid PORT='70000': expected a whole number from 0 to 65535"),
        ({}, {"CONFIG_BACKEND": "zk"}, "invalid CONFIG_BACKEND='zk': expected one of file, etcd"),
        ({"config-backend": "zk"}, {}, "invalid --config-backend='zk': expected one of file, etcd"),
        ({"listen": "bogus:1"}, {}, "invalid --listen='bogus:1': not a server endpoint description"),
        ({}, {"WEBHOOKS_CONFIG_FILE": " "}, "invalid WEBHOOKS_CONFIG_FILE=' ': expected a file path"),
        ({}, {"CONFIG_BACKEND": "etcd", "ETCD_PORT": "x"}, "invalid ETCD_PORT='x': expected a whole number"),
        ({}, {"CONFIG_BACKEND": "etcd", "ETCD_ENDPOINTS": "a:1,b"}, "invalid ETCD_ENDPOINTS='a:1,b': expected host:port"),
        ({}, {"CONFIG_BACKEND": "etcd", "ETCD_PREFIX": "/"}, "invalid ETCD_PREFIX='/': expected a key prefix"),
        ({}, {"CONFIG_BACKEND": "etcd", "ETCD_NAMESPACE": "a.b"}, "invalid ETCD_NAMESPACE='a.b': Invalid namespace format"),
        ({}, {"CONFIG_BACKEND": "etcd", "ETCD_USERNAME": "u"}, "invalid etcd credentials: set both ETCD_USERNAME and ETCD_PASSWORD"),
        ({}, {"CONFIG_BACKEND": "etcd", "ETCD_CA_CERT": "/nonexistent/ca.pem"}, "invalid ETCD_CA_CERT='/nonexistent/ca.pem': no such file"),
    ],
)
def test_invalid_values_name_the_variable_and_value(cli: dict[str, str], env: dict[str, str], message: str) -> None:
    """Each bad value raises one ConfigError line naming the variable (or option) and the value."""
    with pytest.raises(ConfigError) as e:
        parse_settings(cli, env, "/")
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_etcd_settings_defaults_and_overrides() -> None:
    """The etcd backend reads upstream's ETCD_* variables, plus ETCD_ENDPOINTS for a cluster."""
    s = parse_settings({"config-backend": "etcd"}, {}, "/")
    assert s.etcd is not None
    assert (s.etcd.options.endpoints, s.etcd.prefix, s.etcd.namespace) == ((("localhost", 2379),), "/cwm/", "default")
    assert s.default_namespace == "default"
    s = parse_settings(
        NO_CLI,
        {
            "CONFIG_BACKEND": "etcd",
            "ETCD_HOST": "etcd",
            "ETCD_PORT": "2380",
            "ETCD_PREFIX": "config",
            "ETCD_NAMESPACE": "staging",
            "ETCD_USERNAME": "app",
            "ETCD_PASSWORD": "pw",
        },
        "/",
    )
    assert s.etcd is not None
    assert (s.etcd.options.endpoints, s.etcd.prefix, s.default_namespace) == ((("etcd", 2380),), "/config/", "staging")
    assert (s.etcd.options.username, s.etcd.options.password, s.etcd.options.tls) == ("app", "pw", False)
    assert "pw" not in repr(s.etcd)
    s = parse_settings(NO_CLI, {"CONFIG_BACKEND": "etcd", "ETCD_ENDPOINTS": "a:1, b:2,[::1]:3"}, "/")
    assert s.etcd is not None and s.etcd.options.endpoints == (("a", 1), ("b", 2), ("::1", 3))
    assert parse_settings(NO_CLI, {}, "/").etcd is None


def test_webhook_connect_settings() -> None:
    """Off unless enabled; the Redis URL falls back to REDIS_URL; an empty admin token leaves the admin API off."""
    assert parse_settings(NO_CLI, {}, "/").connect is None
    s = parse_settings(NO_CLI, {"WEBHOOK_CONNECT_ENABLED": "true"}, "/")
    assert s.connect is not None
    assert (s.connect.redis.host, s.connect.redis.port, s.connect.redis.db) == ("localhost", 6379, 0)
    assert (s.connect.admin_token, s.connect.key_prefix) == (None, "cwm:wc")
    assert s.connect.instance.endswith(":tcp:8000")
    s = parse_settings(
        NO_CLI,
        {
            "WEBHOOK_CONNECT_ENABLED": "1",
            "REDIS_URL": "redis://:pw@redis:6380/2",
            "WEBHOOK_CONNECT_ADMIN_TOKEN": " adm ",
            "WEBHOOK_CONNECT_KEY_PREFIX": "wc",
            "WEBHOOK_CONNECT_INSTANCE_ID": "cloud-1",
        },
        "/",
    )
    assert s.connect is not None
    assert (s.connect.redis.host, s.connect.redis.port, s.connect.redis.db, s.connect.redis.password) == (
        "redis", 6380, 2, "pw")
    assert (s.connect.admin_token, s.connect.key_prefix, s.connect.instance) == ("adm", "wc", "cloud-1")
    assert "adm" not in repr(s.connect) and "pw" not in repr(s.connect)
    s = parse_settings(
        NO_CLI,
        {"WEBHOOK_CONNECT_ENABLED": "1", "REDIS_URL": "redis://a:1/0", "WEBHOOK_CONNECT_REDIS_URL": "redis://b:2/0"},
        "/",
    )
    assert s.connect is not None and s.connect.redis.host == "b"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"WEBHOOK_CONNECT_REDIS_URL": "http://:secret@h"}, "invalid WEBHOOK_CONNECT_REDIS_URL: expected a redis://host:port/db URL"),
        ({"REDIS_URL": "redis://:secret@h:x"}, "invalid REDIS_URL: expected a redis://host:port/db URL with numeric port and db"),
        ({"WEBHOOK_CONNECT_KEY_PREFIX": "a{b}"}, "invalid WEBHOOK_CONNECT_KEY_PREFIX='a{b}': expected 1-200 characters"),
        ({"WEBHOOK_CONNECT_ENABLED": "sure"}, "invalid WEBHOOK_CONNECT_ENABLED='sure': expected true or false"),
    ],
)
def test_webhook_connect_bad_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_settings(NO_CLI, {"WEBHOOK_CONNECT_ENABLED": "true", **env}, "/")
    assert str(e.value).startswith(message) and "secret" not in str(e.value)


def test_webhook_connect_instance_on_a_random_port_is_per_process() -> None:
    import os

    s = parse_settings({"listen": "tcp:0:interface=127.0.0.1"}, {"WEBHOOK_CONNECT_ENABLED": "true"}, "/")
    assert s.connect is not None and s.connect.instance.endswith(f":tcp:0:interface=127.0.0.1:{os.getpid()}")
