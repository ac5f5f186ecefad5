"""The connector's module and etcd delivery modes, on a Clock: no reactor, no sockets, no sleeps."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from cwm.config.store import ConfigStore
from cwm.connector.local import ModuleDelivery, etcd_delivery, module_delivery
from cwm.connector.message import DELIVERED, Delivery, Message, Outcome, dead_letter, requeue
from cwm.connector.settings import ConnectorSettings
from cwm.errors import ConfigError
from cwm.etcd.mirror import DELETE, Change, Entry
from cwm.etcd.watch import PrefixWatch
from cwm.modules.base import ModuleContext
from cwm.modules import runtime
from cwm.modules.output import DirectOutput
from cwm.workers import InlineWork
from tests.unit.test_receiver import RecordingModule

_sync = SynchronousTestCase()


@pytest.fixture(autouse=True)
def inline_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Clock runs no threads: the modules' file work and stdout writes happen inline in these tests."""
    monkeypatch.setattr(runtime, "ThreadWorkers", lambda *args: InlineWork())
    monkeypatch.setattr(runtime, "StdoutWriter", lambda reactor, stream: DirectOutput(stream))
NOW = 1_700_000_000.0


class Local:
    """A ModuleDelivery over a store of RecordingModules (behaviour from module-config), fed with ``replace_all``."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.modules: dict[str, RecordingModule] = {}

        def build(name: str, config: Mapping[str, Any], ctx: ModuleContext) -> RecordingModule:
            if "bad" in config:
                raise ConfigError("module-config.bad: not allowed")
            module = RecordingModule(config)
            assert ctx.entry is not None
            self.modules[ctx.entry[1]] = module
            return module

        context = ModuleContext(self.clock, None, None, None, FilePath("."))  # type: ignore[arg-type]
        self.store = ConfigStore(context, environ or {}, build=build, known_module=lambda n: n == "fake")
        self.delivery = ModuleDelivery(self.store, "default", self.clock)

    def load(self, webhooks: Mapping[str, Any]) -> None:
        self.store.replace_all({"default": webhooks}, {})
        self.store.mark_loaded()

    def deliver(self, message: Message) -> Outcome:
        outcome: Outcome = _sync.successResultOf(Deferred.fromCoroutine(self.delivery.deliver(message)))
        return outcome


def message(webhook_id: str = "hook", body: bytes = b'{"n": 1}', **headers: str) -> Message:
    return Message(
        message_id="m-1",
        webhook_id=webhook_id,
        headers={"content-type": "application/json", **headers},
        body=body,
    )


FAKE = {"module": "fake"}


def test_is_a_delivery() -> None:
    """ModuleDelivery is what the connector's Delivery protocol asks for."""
    delivery: Delivery = Local().delivery
    assert delivery.status()["mode"] == "module"


def test_delivered() -> None:
    """A known webhook's module gets the event; the outcome is an ack."""
    local = Local()
    local.load({"hook": FAKE})
    assert local.deliver(message()) == DELIVERED
    (event,) = local.modules["hook"].events
    assert (event.namespace, event.webhook_id, event.payload, event.data_type, event.client_ip) == (
        "default",
        "hook",
        {"n": 1},
        "json",
        "connector",
    )
    assert event.received_at == NOW and len(event.request_id) == 32


def test_exact_body_bytes_and_headers_reach_the_module() -> None:
    """The module sees the sender's bytes as they were, and every header as a one-value list."""
    local = Local()
    local.load({"hook": FAKE})
    body = '{ "a" :1,\n\t"é": [true , null] }  '.encode("utf-8")
    assert local.deliver(message(body=body, **{"x-github-event": "push", "x-hub-signature-256": "sha256=ab"})) == DELIVERED
    (event,) = local.modules["hook"].events
    assert event.body == body
    assert event.payload == {"a": 1, "é": [True, None]}
    assert dict(event.headers) == {
        "content-type": ["application/json"],
        "x-github-event": ["push"],
        "x-hub-signature-256": ["sha256=ab"],
    }


def test_each_delivery_gets_its_own_request_id() -> None:
    """Two deliveries are two requests, for the module's logs and file names."""
    local = Local()
    local.load({"hook": FAKE})
    local.deliver(message())
    local.deliver(message())
    first, second = local.modules["hook"].events
    assert first.request_id != second.request_id


def test_unknown_webhook_is_dead_lettered() -> None:
    """No local entry with that id: it can never be delivered as it is."""
    local = Local()
    local.load({"hook": FAKE})
    assert local.deliver(message("nope")) == dead_letter("no local webhook 'nope'")


def test_message_without_webhook_id_is_dead_lettered() -> None:
    """A message that names no webhook selects nothing."""
    local = Local()
    local.load({"hook": FAKE})
    assert local.deliver(message("")) == dead_letter("the message names no webhook")


def test_not_loaded_is_requeued() -> None:
    """Before the source's first load, a missing entry may simply not have arrived yet."""
    local = Local()
    local.store.replace_all({"default": {"hook": FAKE}}, {})  # built, but the source has not finished
    assert local.deliver(message()) == requeue("local configuration not loaded yet")
    assert local.modules["hook"].events == []
    assert local.delivery.status()["loaded"] is False


def test_module_refused_is_dead_lettered() -> None:
    """ModuleRefused is final: the reason goes with the dead letter."""
    local = Local()
    local.load({"hook": {**FAKE, "module-config": {"behaviour": "too_big"}}})
    assert local.deliver(message()) == dead_letter("Message exceeds the channel's size limit")


def test_module_unavailable_is_requeued() -> None:
    """ModuleUnavailable is transient: requeued with its reason."""
    local = Local()
    local.load({"hook": {**FAKE, "module-config": {"behaviour": "unavailable"}}})
    assert local.deliver(message()) == requeue("sink is down")


def test_module_bug_is_requeued_and_logged(logged_failures: list[Any]) -> None:
    """Any other exception is requeued, and its traceback is logged (never sent to the cloud)."""
    local = Local()
    local.load({"hook": {**FAKE, "module-config": {"behaviour": "crash"}}})
    assert local.deliver(message()) == requeue("module 'fake' failed")
    assert len(logged_failures) == 1
    assert logged_failures[0]["log_failure"].check(RuntimeError)
    assert logged_failures[0]["webhook_id"] == "hook" and logged_failures[0]["message_id"] == "m-1"
    logged_failures.clear()


def test_cancellation_passes_through() -> None:
    """The connector stopping cancels a delivery in progress: CancelledError, not an outcome."""
    local = Local()
    local.load({"hook": {**FAKE, "module-config": {"behaviour": "wait"}}})
    d = Deferred.fromCoroutine(local.delivery.deliver(message()))
    assert not d.called
    d.cancel()
    _sync.failureResultOf(d, CancelledError)
    assert local.modules["hook"].pending[0].called  # the module's wait was cancelled too


def test_slow_module_is_waited_for() -> None:
    """No deadline of the delivery's own: the outcome waits for the module, however long."""
    local = Local()
    local.load({"hook": {**FAKE, "module-config": {"behaviour": "wait"}}})
    d = Deferred.fromCoroutine(local.delivery.deliver(message()))
    local.clock.advance(3600)
    assert not d.called and local.clock.getDelayedCalls() == []
    local.modules["hook"].pending[0].callback(None)
    assert _sync.successResultOf(d) == DELIVERED


def test_body_not_json_for_a_json_entry_is_dead_lettered() -> None:
    """The local entry's data_type decides; a body it cannot parse never will be."""
    local = Local()
    local.load({"hook": FAKE, "raw": {**FAKE, "data_type": "blob"}})
    outcome = local.deliver(message(body=b"not json"))
    assert not outcome.ack and not outcome.retry
    assert outcome.reason.startswith("local webhook 'hook': Malformed JSON payload: ")
    assert local.modules["hook"].events == []
    assert local.deliver(message("raw", body=b"not json")) == DELIVERED
    (event,) = local.modules["raw"].events
    assert event.payload == b"not json" and event.body == b"not json" and event.data_type == "blob"


def test_empty_body_for_a_json_entry_is_dead_lettered() -> None:
    """An empty body is not JSON."""
    local = Local()
    local.load({"hook": FAKE})
    assert local.deliver(message(body=b"")) == dead_letter("local webhook 'hook': Malformed JSON payload: empty body")


def test_charset_of_the_content_type_is_used() -> None:
    """The sender's Content-Type charset decodes the body, as in the receiver."""
    local = Local()
    local.load({"hook": FAKE})
    body = '{"name": "Zoë"}'.encode("latin-1")
    assert local.deliver(message(body=body, **{"content-type": "application/json; charset=latin-1"})) == DELIVERED
    assert local.modules["hook"].events[0].payload == {"name": "Zoë"}


def test_variables_are_substituted_in_module_config() -> None:
    """{$VAR} works in module mode (upstream's module mode skipped it)."""
    local = Local({"SINK": "primary", "LEVEL": "2"})
    local.load({"hook": {**FAKE, "module-config": {"sink": "{$SINK}", "url": "https://{$HOST:example.com}/{$LEVEL}"}}})
    assert dict(local.modules["hook"].config) == {"sink": "primary", "url": "https://example.com/2"}
    assert local.deliver(message()) == DELIVERED


def test_held_back_entry_is_requeued_without_its_reason() -> None:
    """A secret that cannot be resolved holds the entry back: requeued; the reason is in status only."""
    local = Local()
    local.load({"hook": {**FAKE, "module-config": {"token": "{$TOKEN}"}}})
    assert local.deliver(message()) == requeue("local webhook 'hook' waits for a secret")
    (held,) = local.delivery.status()["secrets_unavailable"]
    assert held["name"] == "hook" and "TOKEN" in held["reason"]


def test_rejected_entry_is_requeued() -> None:
    """An invalid local entry may be fixed live: requeued (the cloud bounds the redeliveries)."""
    local = Local()
    local.load({"hook": {**FAKE, "module-config": {"bad": True}}})
    assert local.deliver(message()) == requeue("local webhook 'hook' has an invalid configuration")
    (rejected,) = local.delivery.status()["rejected"]
    assert rejected["name"] == "hook" and rejected["reason"] == "module 'fake': module-config.bad: not allowed"
    local.load({"hook": FAKE})
    assert local.deliver(message()) == DELIVERED


def test_entries_of_other_namespaces_are_not_used() -> None:
    """Only the delivery's namespace is looked in."""
    local = Local()
    local.store.replace_all({"other": {"hook": FAKE}}, {})
    local.store.mark_loaded()
    assert local.deliver(message()) == dead_letter("no local webhook 'hook'")


def test_auth_checks_of_the_local_entry_are_not_run() -> None:
    """The cloud checked the sender; the local entry's authorization is not asked for again."""
    local = Local({"TOKEN": "s3cret-value"})
    local.load({"hook": {**FAKE, "authorization": "Bearer {$TOKEN}", "ip_whitelist": ["10.1.2.3"]}})
    assert local.deliver(message()) == DELIVERED


def test_status_counts_and_never_shows_a_secret() -> None:
    """Status: mode, namespace, counts, rejections; no substituted value anywhere."""
    local = Local({"TOKEN": "s3cret-value"})
    local.store.replace_all(
        {"default": {"a": {**FAKE, "authorization": "Bearer {$TOKEN}"}, "b": {**FAKE, "module-config": {"bad": 1}}}},
        {"db": {"type": "redis-rq", "host": "redis.example.com", "port": 6379, "password": "{$TOKEN}"}},
    )
    local.store.mark_loaded()
    status = local.delivery.status()
    assert {k: status[k] for k in ("mode", "namespace", "loaded", "webhooks", "connections")} == {
        "mode": "module",
        "namespace": "default",
        "loaded": True,
        "webhooks": 1,
        "connections": 1,
    }
    assert [r["name"] for r in status["rejected"]] == ["b"]
    assert "s3cret-value" not in json.dumps(status)


def test_close_closes_every_module() -> None:
    """close() releases the module instances."""
    local = Local()
    local.load({"a": FAKE, "b": FAKE})
    modules = list(local.modules.values())
    _sync.successResultOf(Deferred.fromCoroutine(local.delivery.close()))
    assert all(m.closed for m in modules)


# --- real modules, built by the registry -------------------------------------------------------


def real_store(tmp_path: Path, environ: Mapping[str, str], stdout: io.StringIO | None = None) -> tuple[ConfigStore, Clock]:
    clock = Clock()
    clock.advance(NOW)
    context = ModuleContext(clock, stdout or io.StringIO(), None, None, FilePath(str(tmp_path)), files=InlineWork())
    return ConfigStore(context, environ), clock


def saved(directory: Path) -> list[bytes]:
    return [f.read_bytes() for f in sorted(directory.iterdir())]


def test_save_to_disk_end_to_end_keeps_the_exact_bytes(tmp_path: Path) -> None:
    """A real save_to_disk entry, its path from the environment: a blob is saved byte for byte, JSON as JSON."""
    store, clock = real_store(tmp_path, {"OUT": "out"})
    store.replace_all(
        {
            "default": {
                "raw": {"module": "save_to_disk", "data_type": "blob", "module-config": {"path": "{$OUT}/raw"}},
                "doc": {"module": "save_to_disk", "module-config": {"path": "{$OUT}/doc"}},
            }
        },
        {},
    )
    store.mark_loaded()
    delivery = ModuleDelivery(store, "default", clock)
    body = b'{"z":1,  "a" : "\xc3\xa9"}\r\n\x00\xff'
    outcome = _sync.successResultOf(Deferred.fromCoroutine(delivery.deliver(message("raw", body))))
    assert outcome == DELIVERED
    assert saved(tmp_path / "out" / "raw") == [body]
    body = b'{"z": 1, "a": "\xc3\xa9"}'
    assert _sync.successResultOf(Deferred.fromCoroutine(delivery.deliver(message("doc", body)))) == DELIVERED
    assert [json.loads(b) for b in saved(tmp_path / "out" / "doc")] == [{"z": 1, "a": "é"}]
    _sync.successResultOf(Deferred.fromCoroutine(delivery.close()))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"a": "\\ud800"}', "lone UTF-16 surrogate"),
        (b"[1e999]", "number is too large"),
        (b"[" + b"9" * 5000 + b"]", "an integer has more than 4300 digits"),
    ],
)
def test_json_the_parser_refuses_is_dead_lettered_at_once(tmp_path: Path, body: bytes, reason: str) -> None:
    """The parser's decisions hold in module mode: never a requeue (or a file of Infinity) for a body that cannot succeed."""
    store, clock = real_store(tmp_path, {})
    store.replace_all({"default": {"doc": {"module": "save_to_disk", "module-config": {"path": "doc"}}}}, {})
    store.mark_loaded()
    delivery = ModuleDelivery(store, "default", clock)
    outcome = _sync.successResultOf(Deferred.fromCoroutine(delivery.deliver(message("doc", body))))
    assert (outcome.ack, outcome.retry) == (False, False) and reason in outcome.reason
    assert not (tmp_path / "doc").exists()


def test_a_large_message_is_parsed_on_the_file_threads(tmp_path: Path) -> None:
    """Module mode parses a body over LARGE_BODY off the reactor thread; busy threads requeue it."""
    from cwm.body import LARGE_BODY
    from cwm.workers import WorkersBusy

    calls: list[Any] = []

    class Files:
        busy = False

        def run(self, function: Any, *args: Any) -> Deferred[Any]:
            calls.append(function.__name__)
            if self.busy:
                raise_busy: Deferred[Any] = Deferred()
                raise_busy.errback(WorkersBusy("busy"))
                return raise_busy
            return InlineWork().run(function, *args)

    files = Files()
    store, clock = real_store(tmp_path, {})
    store.replace_all({"default": {"doc": {"module": "save_to_disk", "module-config": {"path": "doc"}}}}, {})
    store.mark_loaded()
    delivery = ModuleDelivery(store, "default", clock, files=files)
    big = json.dumps({"pad": "x" * LARGE_BODY}).encode()
    assert _sync.successResultOf(Deferred.fromCoroutine(delivery.deliver(message("doc", big)))) == DELIVERED
    assert _sync.successResultOf(Deferred.fromCoroutine(delivery.deliver(message("doc", b'{"small": 1}')))) == DELIVERED
    assert calls == ["thd_parse_body"]
    files.busy = True
    outcome = _sync.successResultOf(Deferred.fromCoroutine(delivery.deliver(message("doc", big))))
    assert (outcome.ack, outcome.retry) == (False, True) and "busy" in outcome.reason


def test_log_module_end_to_end(tmp_path: Path) -> None:
    """A real log entry writes the relayed webhook as one JSON line."""
    stdout = io.StringIO()
    store, clock = real_store(tmp_path, {}, stdout)
    store.replace_all({"default": {"hook": {"module": "log"}}}, {})
    store.mark_loaded()
    delivery = ModuleDelivery(store, "default", clock)
    outcome = _sync.successResultOf(Deferred.fromCoroutine(delivery.deliver(message(body=b'{"event": "push"}'))))
    assert outcome == DELIVERED
    (line,) = stdout.getvalue().splitlines()
    record = json.loads(line)
    assert (record["webhook_id"], record["payload"], record["headers"]) == (
        "hook",
        {"event": "push"},
        {"content-type": "application/json"},
    )


def test_save_to_disk_failure_is_requeued(tmp_path: Path) -> None:
    """A sink that fails (the target is a file, not a directory) is ModuleUnavailable: requeued."""
    (tmp_path / "blocked").write_text("")
    store, clock = real_store(tmp_path, {})
    store.replace_all({"default": {"hook": {"module": "save_to_disk", "module-config": {"path": "blocked"}}}}, {})
    store.mark_loaded()
    outcome = _sync.successResultOf(Deferred.fromCoroutine(ModuleDelivery(store, "default", clock).deliver(message())))
    assert not outcome.ack and outcome.retry and outcome.reason.startswith("could not save the webhook")


# --- module_delivery and etcd_delivery, with a Clock for a reactor -----------------------------


def settings(**values: Any) -> ConnectorSettings:
    return ConnectorSettings(cloud_url="https://cloud.example.com", channel="ch", token="t", **values)


class ModuleMode:
    """``module_delivery`` over real files in tmp_path, started under a MultiService on a Clock."""

    def __init__(self, tmp_path: Path, webhooks: Any, connections: Any = None, environ: Mapping[str, str] | None = None) -> None:
        self.webhooks = tmp_path / "webhooks.json"
        self.write(webhooks)
        connections_path = None
        if connections is not None:
            connections_path = tmp_path / "connections.json"
            connections_path.write_text(json.dumps(connections))
        self.clock = Clock()
        self.clock.advance(NOW)
        self.parent = MultiService()
        self.delivery = module_delivery(
            settings(
                webhooks_config=str(self.webhooks),
                connections_config=str(connections_path) if connections_path else None,
            ),
            self.clock,
            environ or {},
            io.StringIO(),
            self.parent,
            working_dir=FilePath(str(tmp_path)),
        )

    def write(self, document: Any) -> None:
        self.webhooks.write_text(json.dumps(document))

    def deliver(self, message: Message) -> Outcome:
        outcome: Outcome = _sync.successResultOf(Deferred.fromCoroutine(self.delivery.deliver(message)))
        return outcome

    def advance(self, seconds: float) -> None:
        for _ in range(int(seconds / 0.25)):
            self.clock.advance(0.25)

    def stop(self) -> None:
        _sync.successResultOf(self.parent.stopService())
        assert self.clock.getDelayedCalls() == []


def save(path: str) -> dict[str, Any]:
    return {"module": "save_to_disk", "module-config": {"path": path}}


def test_module_mode_loads_the_file_at_start_without_connections_file(tmp_path: Path) -> None:
    """No connections file: no connections; the webhooks file loads when the parent starts."""
    mode = ModuleMode(tmp_path, {"hook": save("{$DIR}")}, environ={"DIR": "out"})
    assert mode.deliver(message()) == requeue("local configuration not loaded yet")
    mode.parent.startService()
    status = mode.delivery.status()
    assert (status["mode"], status["loaded"], status["webhooks"], status["connections"], status["errors"]) == (
        "module",
        True,
        1,
        0,
        [],
    )
    assert status["connections_config"] is None
    assert mode.deliver(message(body=b'{"n":1}')) == DELIVERED
    assert [json.loads(b) for b in saved(tmp_path / "out")] == [{"n": 1}]
    mode.stop()


def test_module_mode_with_connections_file(tmp_path: Path) -> None:
    """A connections file is read too."""
    connections = {"queue": {"type": "redis-rq", "host": "redis.example.com", "port": 6379}}
    mode = ModuleMode(tmp_path, {"hook": save("out")}, connections)
    mode.parent.startService()
    assert mode.delivery.status()["connections"] == 1
    mode.stop()


def test_module_mode_reloads_an_edited_file_live(tmp_path: Path) -> None:
    """An edit of webhooks.json applies after the debounce, without a restart; a removed id is dead-lettered."""
    mode = ModuleMode(tmp_path, {"a": save("a")})
    mode.parent.startService()
    assert mode.deliver(message("b")) == dead_letter("no local webhook 'b'")
    mode.write({"b": save("b")})
    mode.advance(0.5)
    assert mode.deliver(message("b")) == dead_letter("no local webhook 'b'")  # still debouncing
    mode.advance(1.5)
    assert mode.deliver(message("b")) == DELIVERED
    assert mode.deliver(message("a")) == dead_letter("no local webhook 'a'")
    assert len(saved(tmp_path / "b")) == 1
    mode.stop()


def test_module_mode_keeps_the_last_good_file(tmp_path: Path) -> None:
    """A broken edit is reported in status; the last good entries keep delivering."""
    mode = ModuleMode(tmp_path, {"a": save("a")})
    mode.parent.startService()
    mode.webhooks.write_text("{not json")
    mode.advance(2)
    status = mode.delivery.status()
    assert len(status["errors"]) == 1 and "is not valid JSON" in status["errors"][0]
    assert mode.deliver(message("a")) == DELIVERED
    mode.stop()


def test_module_mode_stop_closes_the_modules(tmp_path: Path) -> None:
    """Stopping the parent stops the polling and closes every module instance."""
    mode = ModuleMode(tmp_path, {"a": save("a")})
    mode.parent.startService()
    assert mode.delivery.status()["webhooks"] == 1
    mode.stop()
    assert mode.delivery.status()["webhooks"] == 0


@pytest.mark.parametrize(
    "content, reason",
    [
        ("{oops", "webhooks file {path} is not valid JSON"),
        ("[]", "webhooks file {path} must hold a JSON object"),
    ],
)
def test_module_mode_refuses_to_start_on_an_unusable_file(tmp_path: Path, content: str, reason: str) -> None:
    """Start-up stops with the reason, rather than dead-lettering every message."""
    path = tmp_path / "webhooks.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as e:
        module_delivery(settings(webhooks_config=str(path)), Clock(), {}, io.StringIO(), MultiService())
    assert str(e.value).startswith(reason.format(path=path))


def test_module_mode_needs_a_webhooks_file() -> None:
    """Without webhooks_config there is nothing to deliver to."""
    with pytest.raises(ConfigError):
        module_delivery(settings(), Clock(), {}, io.StringIO(), MultiService())


def test_etcd_mode_requeues_until_loaded() -> None:
    """Before the first snapshot (etcd not reached yet), messages are requeued; status says connecting."""
    parent = MultiService()
    delivery = etcd_delivery(
        settings(etcd_host="127.0.0.1", etcd_port=1, namespace="staging", etcd_username="u", etcd_password="pw-secret"),
        Clock(),
        {},
        io.StringIO(),
        parent,
    )
    assert _sync.successResultOf(Deferred.fromCoroutine(delivery.deliver(message()))) == requeue(
        "local configuration not loaded yet"
    )
    status = delivery.status()
    assert (status["mode"], status["namespace"], status["etcd"], status["loaded"]) == ("etcd", "staging", "connecting", False)
    assert "instances" not in status["etcd_status"] and "pw-secret" not in json.dumps(status)


def test_etcd_mode_refuses_an_invalid_namespace() -> None:
    """A namespace that no etcd key can hold is a start-up error, not a silent dead-lettering of everything."""
    with pytest.raises(ConfigError) as e:
        etcd_delivery(settings(etcd_host="127.0.0.1", namespace="a/b"), Clock(), {}, io.StringIO(), MultiService())
    assert "CONNECTOR_NAMESPACE" in str(e.value)


def test_etcd_mode_builds_only_its_namespace_from_the_mirror(tmp_path: Path) -> None:
    """Fed by the watch's mirror: the namespace's entries and the global connections; other namespaces are not built."""
    parent = MultiService()
    delivery = etcd_delivery(
        settings(etcd_host="127.0.0.1", etcd_prefix="/cwm/", namespace="edge"),
        Clock(),
        {"OUT": "out"},
        io.StringIO(),
        parent,
        working_dir=FilePath(str(tmp_path)),
    )
    (watch,) = [s for s in parent if isinstance(s, PrefixWatch)]  # not started: no thread, no etcd

    def entry(key: str, value: Any, revision: int) -> Entry:
        return Entry(key.encode(), json.dumps(value).encode(), revision)

    watch.mirror.apply_snapshot(
        [
            entry("/cwm/edge/webhooks/hook", save("{$OUT}"), 2),
            entry("/cwm/default/webhooks/hook", {"module": "nope"}, 3),
            entry("/cwm/other/webhooks/x", save("x"), 4),
            entry("/cwm/global/connections/q", {"type": "redis-rq", "host": "redis.example.com", "port": 6379}, 5),
        ],
        5,
    )
    status = delivery.status()
    assert (status["loaded"], status["etcd"], status["webhooks"], status["connections"], status["rejected"]) == (
        True,
        "healthy",
        1,
        1,
        [],
    )
    assert _sync.successResultOf(Deferred.fromCoroutine(delivery.deliver(message(body=b'{"n":1}')))) == DELIVERED
    assert [json.loads(b) for b in saved(tmp_path / "out")] == [{"n": 1}]
    watch.mirror.apply_events([Change(DELETE, b"/cwm/edge/webhooks/hook", b"", 6)])
    outcome = _sync.successResultOf(Deferred.fromCoroutine(delivery.deliver(message())))
    assert outcome == dead_letter("no local webhook 'hook'")
    _sync.successResultOf(Deferred.fromCoroutine(delivery.close()))


def test_module_mode_of_a_daemon_logs_to_twistd_log_not_stdout(tmp_path: Path) -> None:
    """``output_to_log`` (twistd without -n, whose stdout is /dev/null): the log module writes to twistd's log."""
    from twisted.logger import globalLogPublisher

    (tmp_path / "webhooks.json").write_text(json.dumps({"hook": {"module": "log"}}))
    stdout, parent, clock = io.StringIO(), MultiService(), Clock()
    delivery = module_delivery(
        settings(webhooks_config=str(tmp_path / "webhooks.json")), clock, {}, stdout, parent,
        working_dir=FilePath(str(tmp_path)), output_to_log=True,
    )
    parent.startService()
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        outcome = _sync.successResultOf(Deferred.fromCoroutine(delivery.deliver(message(body=b'{"event": "push"}'))))
    finally:
        globalLogPublisher.removeObserver(seen.append)
        _sync.successResultOf(parent.stopService())
    assert outcome == DELIVERED and stdout.getvalue() == ""
    (logged,) = [e for e in seen if "webhook_text" in e]
    assert json.loads(logged["webhook_text"])["payload"] == {"event": "push"}


def test_module_mode_holds_full_collections_off_while_a_large_payload_is_alive(tmp_path: Path) -> None:
    """A message over LARGE_BODY: held from its parsing to the end of its delivery, released on the next turn."""
    from cwm.body import LARGE_BODY

    held: list[int] = []
    holds = [0]

    class Hold:
        def hold(self) -> Any:
            holds[0] += 1
            return lambda: holds.__setitem__(0, holds[0] - 1)

    class Files:
        def run(self, function: Any, *args: Any) -> Deferred[Any]:
            held.append(holds[0])
            return InlineWork().run(function, *args)

    store, clock = real_store(tmp_path, {})
    store.replace_all({"default": {"doc": {"module": "save_to_disk", "module-config": {"path": "doc"}}}}, {})
    store.mark_loaded()
    delivery = ModuleDelivery(store, "default", clock, files=Files(), payload_hold=Hold())
    big = json.dumps({"pad": "x" * LARGE_BODY}).encode()
    assert _sync.successResultOf(Deferred.fromCoroutine(delivery.deliver(message("doc", big)))) == DELIVERED
    assert held == [1] and holds == [1]
    clock.advance(0)
    assert holds == [0] and clock.getDelayedCalls() == []
    assert _sync.successResultOf(Deferred.fromCoroutine(delivery.deliver(message("doc", b'{"small": 1}')))) == DELIVERED
    assert holds == [0] and clock.getDelayedCalls() == []
