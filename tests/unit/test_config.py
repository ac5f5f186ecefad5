"""The config model, substitution, the store's last-good rule and the file watcher (Clock-driven)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath

from cwm.config.files import FileConfigSource
from cwm.config.model import (
    ConnectionEntry,
    namespace_problem,
    parse_connection_entry,
    parse_webhook_entry,
    webhook_id_problem,
)
from cwm.config.secrets import SecretUnavailable, substitute
from cwm.config.store import ConfigStore, InvalidRaw
from cwm.errors import ConfigError
from cwm.modules.base import ModuleContext, WebhookEvent


def known(name: str) -> bool:
    return name in ("log", "save_to_disk")


def parse(value: Any, connections: Mapping[str, ConnectionEntry] | None = None) -> Any:
    return parse_webhook_entry("hook", value, known, connections or {})


# --- substitution -----------------------------------------------------------------------------


def test_substitute_whole_value_keeps_text_exactly() -> None:
    """A whole-value reference becomes the variable's text, byte for byte (no characters or words deleted)."""
    environ = {"PW": "p;a|s&s$w(o)r{d}/../id cat"}
    assert substitute({"password": "{$PW}"}, environ) == {"password": environ["PW"]}


def test_substitute_embedded_and_default() -> None:
    """Embedded references and defaults (which may be empty or contain ':') are replaced."""
    environ = {"HOST": "example.com"}
    value = {"url": "https://{$HOST}:{$PORT:8443}/x", "empty": "{$NOPE:}", "colon": "{$NOPE:a:b}"}
    assert substitute(value, environ) == {
        "url": "https://example.com:8443/x",
        "empty": "",
        "colon": "a:b",
    }


def test_substitute_recurses_without_mutating() -> None:
    """Lists and nested objects are substituted into copies; the input is unchanged."""
    original = {"a": ["{$X}", {"b": "{$X}"}], "n": 3, "t": True}
    copy = json.loads(json.dumps(original))
    assert substitute(original, {"X": "1"}) == {"a": ["1", {"b": "1"}], "n": 3, "t": True}
    assert original == copy


def test_substitute_missing_variable_holds_the_entry_back() -> None:
    """An unset variable with no default is a secret unavailable, named with its place, not a value."""
    with pytest.raises(SecretUnavailable) as e:
        substitute({"authorization": "Bearer {$TOKEN}"}, {}, "hook")
    assert e.value.reason == "hook.authorization: environment variable TOKEN is not set"


def test_substitute_leaves_plain_braces_alone() -> None:
    """Text that is not a reference (no '$', bad name) is left as it is."""
    assert substitute("{not} {$1X} {$}", {}) == "{not} {$1X} {$}"


# --- model ------------------------------------------------------------------------------------


def test_parse_minimal_entry_defaults() -> None:
    """A minimal entry gets json, an empty module-config and the 10 s response timeout."""
    entry = parse({"module": "log"})
    assert (entry.module, entry.data_type, dict(entry.module_config), entry.response_timeout) == (
        "log",
        "json",
        {},
        10.0,
    )


@pytest.mark.parametrize(
    "value, reason",
    [
        ("a string", "entry must be a JSON object, not a string"),
        ([1], "entry must be a JSON object, not an array"),
        ({}, "'module' must be a non-empty string"),
        ({"module": 3}, "'module' must be a non-empty string"),
        ({"module": "nope"}, "unknown module 'nope'"),
        ({"module": "log", "module-config": []}, "'module-config' must be a JSON object, not an array"),
        ({"module": "log", "data_type": 1}, "'data_type' must be a string, not a number"),
        ({"module": "log", "connection": "db"}, "unknown or invalid connection 'db'"),
        ({"module": "log", "response_timeout": 0}, "'response_timeout' must be a number of seconds above 0, at most 300"),
        ({"module": "log", "response_timeout": True}, "'response_timeout' must be a number of seconds above 0, at most 300"),
        ({"module": "log", "authorisation": "x"}, "unknown key 'authorisation'"),
        ({"module": "log", "chain": ["log"]}, "'chain' is not supported by cwm yet"),
    ],
)
def test_parse_rejections(value: Any, reason: str) -> None:
    """Every rejection path names the precise reason."""
    with pytest.raises(ConfigError) as e:
        parse(value)
    assert str(e.value) == reason


def test_parse_comment_keys_and_ignored_keys() -> None:
    """'_' keys are comments; upstream-only keys are accepted with a warning."""
    entry = parse({"module": "log", "_note": "x", "retry": {"enabled": True}})
    assert entry.warnings == ("'retry' is accepted for compatibility and ignored",)


def test_parse_unsupported_data_type_kept_with_warning() -> None:
    """A data_type other than json/blob is kept (answered 415 per request) and warned about."""
    entry = parse({"module": "log", "data_type": "xml"})
    assert entry.data_type == "xml" and "415" in entry.warnings[0]


def test_parse_connection_reference() -> None:
    """A connection that exists is accepted."""
    connections = {"db": parse_connection_entry("db", {"type": "postgresql", "host": "db", "port": "5432"})}
    assert parse({"module": "log", "connection": "db"}, connections).connection == "db"


@pytest.mark.parametrize(
    "value, reason",
    [
        ("x", "connection must be a JSON object, not a string"),
        ({}, "'type' must be a non-empty string"),
        ({"type": "ftp"}, "unknown connection type 'ftp'"),
        ({"type": "redis", "host": ""}, "'host' must be a non-empty string"),
        ({"type": "redis", "port": 70000}, "'port' must be a whole number from 1 to 65535"),
        ({"type": "redis", "port": "abc"}, "'port' must be a whole number from 1 to 65535"),
    ],
)
def test_connection_rejections(value: Any, reason: str) -> None:
    """Connection entries are validated on their own."""
    with pytest.raises(ConfigError) as e:
        parse_connection_entry("c", value)
    assert str(e.value) == reason


@pytest.mark.parametrize("good", ["a", "A1", "hook-1", "hook_1", "x" * 64])
def test_webhook_id_good(good: str) -> None:
    """Valid ids pass."""
    assert webhook_id_problem(good) is None


@pytest.mark.parametrize(
    "bad", ["", "x" * 65, "-a", "a.b", "a/b", "Health", "admin_x", "x_internal", "a--b", "a__b", "_x"]
)
def test_webhook_id_bad(bad: str) -> None:
    """Upstream's id rules reject each of these."""
    assert webhook_id_problem(bad) is not None


def test_namespace_rule() -> None:
    """Namespaces are 1-64 of [A-Za-z0-9_-]."""
    assert namespace_problem("ns_alpha-1") is None
    assert namespace_problem("") and namespace_problem("a.b") and namespace_problem("x" * 65)


# --- store ------------------------------------------------------------------------------------


class CountingModule:
    def __init__(self) -> None:
        self.closed = False

    async def deliver(self, event: WebhookEvent) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


def make_store(environ: Mapping[str, str] | None = None) -> tuple[ConfigStore, list[CountingModule]]:
    built: list[CountingModule] = []

    def build(name: str, config: Mapping[str, Any], ctx: ModuleContext) -> CountingModule:
        if config.get("fail"):
            raise ConfigError("module-config.fail: no")
        module = CountingModule()
        built.append(module)
        return module

    context = ModuleContext(Clock(), None, None, None, FilePath("."))  # type: ignore[arg-type]
    return ConfigStore(context, environ or {}, build=build, known_module=known), built


def test_store_builds_modules_once_and_reuses_unchanged_entries() -> None:
    """An unchanged entry keeps its module instance across reloads; a changed one is rebuilt."""
    store, built = make_store()
    store.replace_all({"default": {"a": {"module": "log"}, "b": {"module": "log"}}}, {})
    a = store.lookup("default", "a")
    store.replace_all({"default": {"a": {"module": "log"}, "b": {"module": "log", "data_type": "blob"}}}, {})
    assert store.lookup("default", "a") is a
    assert len(built) == 3 and built[1].closed and not built[0].closed


def test_store_keeps_last_good_version_of_an_invalid_change() -> None:
    """A changed entry that no longer validates keeps serving its last good version."""
    store, built = make_store()
    store.replace_all({"default": {"a": {"module": "log"}}}, {})
    good = store.lookup("default", "a")
    rejections = store.replace_all({"default": {"a": {"module": "nope"}}}, {})
    assert store.lookup("default", "a") is good
    assert [(r.name, r.reason, r.serving_previous) for r in rejections] == [
        ("a", "unknown module 'nope'", True)
    ]


def test_store_removes_deleted_entries_and_closes_modules() -> None:
    """An entry gone from the source stops serving and its module is closed."""
    store, built = make_store()
    store.replace_all({"default": {"a": {"module": "log"}}}, {})
    store.replace_all({"default": {}}, {})
    assert store.lookup("default", "a") is None and built[0].closed


def test_store_module_config_error_names_module() -> None:
    """A module that refuses its config rejects only that entry."""
    store, _ = make_store()
    rejections = store.replace_all(
        {"default": {"a": {"module": "log", "module-config": {"fail": 1}}, "b": {"module": "log"}}}, {}
    )
    assert rejections[0].reason == "module 'log': module-config.fail: no"
    assert store.lookup("default", "b") is not None


def test_store_missing_env_holds_back_only_that_entry() -> None:
    """An unset {$VAR} without default holds back its entry (503, listed); the rest serve."""
    store, _ = make_store({"SET": "x"})
    store.replace_all(
        {"default": {"a": {"module": "log", "authorization": "{$UNSET}"}, "b": {"module": "log", "authorization": "{$SET}"}}},
        {},
    )
    assert store.lookup("default", "a") is None and store.lookup("default", "b") is not None
    assert store.rejections == ()
    held = store.held_back("default", "a")
    assert held is not None and held.reason == "a.authorization: environment variable UNSET is not set"
    assert not held.waiting and store.unavailable == (held,)


def test_store_connection_change_rebuilds_dependent_webhook() -> None:
    """A webhook whose connection changed is rebuilt; a bad connection rejects its users."""
    store, built = make_store()
    hooks = {"default": {"a": {"module": "log", "connection": "c"}}}
    store.replace_all(hooks, {"c": {"type": "redis", "host": "one"}})
    first = store.lookup("default", "a")
    store.replace_all(hooks, {"c": {"type": "redis", "host": "two"}})
    assert store.lookup("default", "a") is not first
    fresh, _ = make_store()
    fresh.replace_all(hooks, {"c": {"type": "ftp"}})
    assert fresh.lookup("default", "a") is None
    assert {r.name for r in fresh.rejections} == {"c", "a"}


def test_store_update_puts_and_deletes_single_keys() -> None:
    """update() touches only the given keys; None deletes; namespaces come and go."""
    store, built = make_store()
    store.update({("ns1", "a"): {"module": "log"}, ("ns2", "b"): {"module": "log"}})
    a = store.lookup("ns1", "a")
    store.update({("ns2", "b"): None})
    assert store.lookup("ns1", "a") is a and store.lookup("ns2", "b") is None
    assert store.counts() == (1, 0) and built[1].closed


def test_store_update_connection_arrival_rebuilds_rejected_webhook() -> None:
    """A webhook rejected for a missing connection serves once the connection arrives."""
    store, _ = make_store()
    store.update({("ns", "a"): {"module": "log", "connection": "c"}})
    assert store.lookup("ns", "a") is None
    store.update({}, {"c": {"type": "redis", "host": "h"}})
    assert store.lookup("ns", "a") is not None and store.rejections == ()
    store.update({}, {"c": None})
    assert store.lookup("ns", "a") is not None  # the last good version keeps serving
    assert [r.name for r in store.rejections] == ["a"]


def test_store_invalid_raw_is_rejected_with_its_reason() -> None:
    """A value a source could not parse is rejected; an older good version keeps serving."""
    store, _ = make_store()
    store.update({("ns", "a"): {"module": "log"}})
    good = store.lookup("ns", "a")
    store.update({("ns", "a"): InvalidRaw("value is not valid JSON")})
    assert store.lookup("ns", "a") is good
    assert [(r.name, r.reason, r.serving_previous) for r in store.rejections] == [
        ("a", "value is not valid JSON", True)
    ]
    store.update({("ns", "a"): None})
    assert store.rejections == () and store.lookup("ns", "a") is None


# --- file source ------------------------------------------------------------------------------


class Files:
    """A webhooks/connections pair in a temp dir and a source watching them on a Clock."""

    def __init__(self, tmp_path: Path, debounce: float = 1.0) -> None:
        self.dir = tmp_path
        self.webhooks = tmp_path / "webhooks.json"
        self.connections = tmp_path / "connections.json"
        self.write({"a": {"module": "log"}})
        self.connections.write_text("{}")
        self.clock = Clock()
        self.store, _ = make_store()
        self.signal_callbacks: list[Any] = []
        self.source = FileConfigSource(
            self.store,
            FilePath(str(self.webhooks)),
            FilePath(str(self.connections)),
            self.clock,
            watching=True,
            debounce=debounce,
            poll_interval=0.25,
            install_reload_signal=self._install,
        )

    def _install(self, callback: Any) -> Any:
        self.signal_callbacks.append(callback)
        return lambda: self.signal_callbacks.remove(callback)

    def write(self, document: Any, path: Path | None = None) -> None:
        (path or self.webhooks).write_text(json.dumps(document))

    def ids(self) -> set[str]:
        return {i for i in ("a", "b", "c") if self.store.lookup("default", i)}

    def advance(self, seconds: float) -> None:
        for _ in range(int(seconds / 0.25)):
            self.clock.advance(0.25)


def test_files_load_at_start(tmp_path: Path) -> None:
    """startService loads both files synchronously."""
    files = Files(tmp_path)
    assert not files.store.loaded
    files.source.startService()
    assert files.ids() == {"a"} and files.store.loaded
    files.source.stopService()
    assert files.clock.getDelayedCalls() == [] and files.signal_callbacks == []


def test_files_in_place_rewrite_after_debounce(tmp_path: Path) -> None:
    """An in-place rewrite is applied once the file stayed unchanged for the debounce time."""
    files = Files(tmp_path, debounce=1.0)
    files.source.startService()
    files.write({"a": {"module": "log"}, "b": {"module": "log"}})
    files.advance(0.5)
    assert files.ids() == {"a"}
    files.advance(1.0)
    assert files.ids() == {"a", "b"}
    files.source.stopService()


def test_files_same_size_same_mtime_rewrite_is_seen(tmp_path: Path) -> None:
    """A rewrite that keeps size and mtime is still noticed (content hash)."""
    files = Files(tmp_path, debounce=0)
    files.write({"a": {"module": "log"}})
    files.source.startService()
    stat = os.stat(files.webhooks)
    files.write({"b": {"module": "log"}})  # same length as before
    os.utime(files.webhooks, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    files.advance(0.5)
    assert files.ids() == {"b"}
    files.source.stopService()


def test_files_atomic_rename_is_seen(tmp_path: Path) -> None:
    """A file replaced by rename (new inode) is reloaded."""
    files = Files(tmp_path, debounce=0)
    files.source.startService()
    new = tmp_path / "new.json"
    files.write({"c": {"module": "log"}}, new)
    os.replace(new, files.webhooks)
    files.advance(0.5)
    assert files.ids() == {"c"}
    files.source.stopService()


def test_files_symlink_swap_is_seen(tmp_path: Path) -> None:
    """A ConfigMap-style swap of a '..data' symlink is reloaded."""
    files = Files(tmp_path, debounce=0)
    for version, doc in (("v1", {"a": {"module": "log"}}), ("v2", {"b": {"module": "log"}})):
        (tmp_path / version).mkdir()
        (tmp_path / version / "webhooks.json").write_text(json.dumps(doc))
    os.symlink("v1", tmp_path / "..data")
    files.webhooks.unlink()
    os.symlink("..data/webhooks.json", files.webhooks)
    files.source.startService()
    assert files.ids() == {"a"}
    os.symlink("v2", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    files.advance(0.5)
    assert files.ids() == {"b"}
    files.source.stopService()


def test_files_half_written_keeps_last_good(tmp_path: Path) -> None:
    """A file that does not parse (or vanished) keeps the last good config; fixing it applies."""
    files = Files(tmp_path, debounce=0)
    files.source.startService()
    files.webhooks.write_text('{"b": {"module": "lo')
    files.advance(0.5)
    assert files.ids() == {"a"} and "not valid JSON" in files.source.errors[0]
    files.webhooks.unlink()
    files.advance(0.5)
    assert files.ids() == {"a"} and "does not exist" in files.source.errors[0]
    files.write({"b": {"module": "log"}})
    files.advance(0.5)
    assert files.ids() == {"b"} and files.source.errors == []
    files.source.stopService()


def test_files_sighup_reloads_now(tmp_path: Path) -> None:
    """The reload signal applies the files at once, without waiting for the debounce."""
    files = Files(tmp_path, debounce=100)
    files.source.startService()
    files.write({"b": {"module": "log"}})
    files.signal_callbacks[0]()
    assert files.ids() == {"b"}
    files.source.stopService()


def test_files_not_watching_needs_signal(tmp_path: Path) -> None:
    """Without watching, changes apply only on reload; no timer runs."""
    files = Files(tmp_path)
    files.source._watching = False
    files.source.startService()
    files.write({"b": {"module": "log"}})
    assert files.clock.getDelayedCalls() == []
    assert files.ids() == {"a"}
    files.source.stopService()


def test_files_missing_at_start_serves_nothing(tmp_path: Path) -> None:
    """A missing webhooks file at start serves no webhook and reports why."""
    files = Files(tmp_path)
    files.webhooks.unlink()
    files.source.startService()
    assert files.ids() == set() and "does not exist" in files.source.errors[0]
    files.source.stopService()
