"""Blocking work off the reactor thread: the file threads, the stdout writer, large bodies, the wiring."""

from __future__ import annotations

import gc
import io
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from cwm.config.store import ConfigStore
from cwm.errors import HTTPError
from cwm.modules import disk, log
from cwm.modules.base import ModuleContext, ModuleUnavailable, WebhookEvent
from cwm.modules.output import LoggerOutput, StdoutWriter
from cwm.modules.runtime import ModulesService, module_context
from cwm.pipeline import LARGE_BODY, WebhookPipeline
from cwm.request import InboundRequest
from cwm.service import daemonized
from cwm.settings import parse_settings
from cwm.workers import InlineWork, ThreadWorkers, WorkersBusy

_sync = SynchronousTestCase()


class HeldWork:
    """Records each call and runs it only when the test says so."""

    def __init__(self, busy: bool = False) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []
        self.busy = busy

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self.busy:
            return fail(WorkersBusy("all busy"))
        d: Deferred[Any] = Deferred()
        self.calls.append((function, args, d))
        return d

    def finish_all(self) -> None:
        for function, args, d in self.calls:
            try:
                d.callback(function(*args))
            except Exception:
                d.errback(Failure())
        self.calls = []


class ThreadQueueReactor(Clock):
    """A Clock whose callFromThread queues the call until ``pump`` (from the test thread)."""

    def __init__(self) -> None:
        super().__init__()
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._lock = threading.Condition()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:  # noqa: N802 (Twisted's name)
        with self._lock:
            self._calls.append((f, args))
            self._lock.notify_all()

    def pump(self, until: Callable[[], bool], timeout: float = 5.0) -> None:
        """Run queued calls until ``until()`` holds; fail after ``timeout`` seconds without progress."""
        while not until():
            with self._lock:
                if not self._lock.wait_for(lambda: bool(self._calls), timeout):
                    raise AssertionError("nothing came back from the thread")
                calls, self._calls = self._calls, []
            for f, args in calls:
                f(*args)


def event(body: bytes = b'{"a": 1}', payload: Any = None, request_id: str = "r1") -> WebhookEvent:
    return WebhookEvent(
        namespace="default",
        webhook_id="hook",
        request_id=request_id,
        received_at=1_700_000_000.0,
        headers={},
        body=body,
        payload={"a": 1} if payload is None else payload,
        data_type="json",
        client_ip="203.0.113.1",
    )


def context(tmp_path: Path, files: Any, output: Any = None) -> ModuleContext:
    return ModuleContext(
        clock=Clock(),
        stdout=io.StringIO(),
        http=None,
        http_unguarded=None,
        working_dir=FilePath(str(tmp_path)),
        files=files,
        output=output,
    )


# --- save_to_disk on the file threads ------------------------------------------------------------


def test_save_to_disk_does_its_file_work_on_the_file_threads(tmp_path: Path) -> None:
    """Nothing touches the disk until the file thread runs thd_save; then the webhook is saved."""
    files = HeldWork()
    module = disk.build({"path": "out"}, context(tmp_path, files))
    delivered = Deferred.fromCoroutine(module.deliver(event()))
    _sync.assertNoResult(delivered)
    assert not (tmp_path / "out").exists()
    ((function, _, _),) = files.calls
    assert function.__name__ == "thd_save"
    files.finish_all()
    assert _sync.successResultOf(delivered) is None
    assert [json.loads(p.read_text()) for p in (tmp_path / "out").iterdir()] == [{"a": 1}]


def test_save_to_disk_with_the_file_threads_full_is_503_with_retry_after(tmp_path: Path) -> None:
    module = disk.build({"path": "out"}, context(tmp_path, HeldWork(busy=True)))
    failure = _sync.failureResultOf(Deferred.fromCoroutine(module.deliver(event())), ModuleUnavailable)
    assert failure.value.status == 503 and failure.value.headers["Retry-After"] == str(disk.BUSY_RETRY_AFTER)


def test_save_to_disk_of_a_large_payload_writes_the_same_json(tmp_path: Path) -> None:
    payload = {"items": [{"n": i, "s": "é" * 10} for i in range(20_000)]}
    body = json.dumps(payload).encode()
    assert len(body) > disk.LARGE_BODY
    module = disk.build({"path": "out"}, context(tmp_path, InlineWork()))
    _sync.successResultOf(Deferred.fromCoroutine(module.deliver(event(body, payload))))
    (saved,) = (tmp_path / "out").iterdir()
    assert json.loads(saved.read_bytes()) == payload


def test_a_context_without_threads_refuses_file_work(tmp_path: Path) -> None:
    """A context built only to validate entries never writes on the calling thread."""
    ctx = ModuleContext(Clock(), io.StringIO(), None, None, FilePath(str(tmp_path)))
    module = disk.build({"path": "out"}, ctx)
    _sync.failureResultOf(Deferred.fromCoroutine(module.deliver(event())), ModuleUnavailable)
    assert not (tmp_path / "out").exists()


def test_thread_workers_refuse_past_their_queue_limit() -> None:
    """Not started, nothing runs: the calls wait, and past the limit the next one fails at once."""
    workers = ThreadWorkers(ThreadQueueReactor(), "test", threads=1, queue_limit=2)
    first, second = workers.run(lambda: 1), workers.run(lambda: 2)
    third = workers.run(lambda: 3)
    _sync.failureResultOf(third, WorkersBusy)
    assert (workers.pending, workers.refused) == (2, 1)
    first.cancel()  # the caller went away; the call still waits for its thread
    _sync.failureResultOf(first, CancelledError)
    _sync.failureResultOf(workers.run(lambda: 4), WorkersBusy)
    assert (workers.pending, workers.refused) == (2, 2)
    second.addErrback(lambda _: None)


def test_thread_workers_run_on_their_own_threads_and_stop() -> None:
    reactor = ThreadQueueReactor()
    workers = ThreadWorkers(reactor, "test", threads=2, queue_limit=4)
    workers.startService()
    results: list[tuple[str, bool]] = []
    workers.run(lambda: (threading.current_thread().name, threading.current_thread().daemon)).addCallback(
        results.append
    )
    reactor.pump(lambda: bool(results))
    name, daemon = results[0]
    assert name.startswith("PoolThread-test") and workers.pending == 0
    assert daemon, "a call stuck on a dead disk must not keep the process from exiting"
    stopped = workers.stopService()
    reactor.pump(lambda: stopped.called)
    _sync.successResultOf(stopped)
    _sync.failureResultOf(workers.run(lambda: 1), WorkersBusy)


# --- the log module's writer ---------------------------------------------------------------------


class BlockingStream(io.StringIO):
    """A stream whose writes wait until ``release`` is set: a stdout pipe nobody reads."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        if not self.release.wait(10):
            raise OSError("never released")
        return super().write(text)


def test_log_module_answers_once_written_and_503_past_the_buffer(tmp_path: Path) -> None:
    """A stdout that does not drain holds the webhook (202 after response_timeout), then 503 + Retry-After."""
    reactor = ThreadQueueReactor()
    stream = BlockingStream()
    writer = StdoutWriter(reactor, stream, limit=1000)
    writer.startService()
    module = log.build({}, context(tmp_path, InlineWork(), output=writer))
    first = Deferred.fromCoroutine(module.deliver(event(request_id="first")))
    assert stream.entered.wait(5)
    _sync.assertNoResult(first)  # the thread is stuck in write(): no answer yet, and no stall here
    second = Deferred.fromCoroutine(module.deliver(event(request_id="second")))
    big = event(body=b"x", payload={"pad": "y" * 2000}, request_id="big")
    refused = _sync.failureResultOf(Deferred.fromCoroutine(module.deliver(big)), ModuleUnavailable)
    assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "5"
    assert "output buffer is full" in refused.value.detail
    assert writer.refused == 1
    stream.release.set()
    reactor.pump(lambda: first.called and second.called)
    assert _sync.successResultOf(first) is None and _sync.successResultOf(second) is None
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == ["first", "second"]
    assert writer.buffered == 0
    stopped = writer.stopService()
    reactor.pump(lambda: stopped.called)
    late = _sync.failureResultOf(writer.write("after stop\n"), ModuleUnavailable)  # never a silent wait
    assert late.value.status == 503 and "stopped" in late.value.detail


def test_log_module_write_failure_is_503() -> None:
    class Closed(io.StringIO):
        def write(self, text: str) -> int:
            raise ValueError("I/O operation on closed file")

    reactor = ThreadQueueReactor()
    writer = StdoutWriter(reactor, Closed())
    writer.startService()
    written = writer.write("line\n")
    reactor.pump(lambda: written.called)
    failure = _sync.failureResultOf(written, ModuleUnavailable)
    assert failure.value.detail == "could not write to stdout: ValueError"
    stopped = writer.stopService()
    reactor.pump(lambda: stopped.called)


def test_logger_output_sends_the_text_to_twisted_log(tmp_path: Path) -> None:
    from twisted.logger import globalLogPublisher

    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        module = log.build({}, context(tmp_path, InlineWork(), output=LoggerOutput()))
        _sync.successResultOf(Deferred.fromCoroutine(module.deliver(event(request_id="daemon"))))
    finally:
        globalLogPublisher.removeObserver(seen.append)
    (logged,) = [e for e in seen if "webhook_text" in e]
    assert json.loads(logged["webhook_text"])["request_id"] == "daemon"


def test_log_module_renders_a_large_body_on_the_file_threads(tmp_path: Path) -> None:
    files = HeldWork()
    stdout = io.StringIO()
    module_stdout = log.build({}, ModuleContext(Clock(), stdout, None, None, FilePath("."), files=files))
    big = event(body=b"x" * (log.LARGE_BODY + 1), payload={"a": "b"})
    delivered = Deferred.fromCoroutine(module_stdout.deliver(big))
    ((function, _, _),) = files.calls
    assert function.__name__ == "thd_render" and stdout.getvalue() == ""
    files.finish_all()
    _sync.successResultOf(delivered)
    assert json.loads(stdout.getvalue())["payload"] == {"a": "b"}


# --- large bodies in the pipeline ----------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.payloads: list[Any] = []

    async def deliver(self, event: WebhookEvent) -> None:
        self.payloads.append(event.payload)

    async def close(self) -> None:
        pass


def pipeline(body_work: Any, webhook: dict[str, Any]) -> tuple[WebhookPipeline, Recorder]:
    clock = Clock()
    module = Recorder()
    ctx = ModuleContext(clock, io.StringIO(), None, None, FilePath("."))
    store = ConfigStore(ctx, {}, build=lambda name, config, c: module, known_module=lambda n: n == "rec")
    store.replace_all({"default": {"hook": webhook}}, {})
    store.mark_loaded()
    return WebhookPipeline(store, clock, 10, body_work=body_work), module


def post(pipe: WebhookPipeline, body: bytes) -> Deferred[Any]:
    request = InboundRequest(
        "POST", "/webhook/hook", body, "203.0.113.1", 0.0, headers={"content-type": ["application/json"]}
    )
    return Deferred.fromCoroutine(pipe.handle(None, "hook", request))


def test_a_large_body_is_parsed_and_schema_checked_on_the_body_threads() -> None:
    work = HeldWork()
    schema = {"type": "object", "required": ["items"]}
    pipe, module = pipeline(work, {"module": "rec", "json_schema": schema})
    big = json.dumps({"items": list(range(LARGE_BODY // 4))}).encode()
    assert len(big) > LARGE_BODY
    d = post(pipe, big)
    ((function, _, _),) = work.calls
    assert function.__name__ == "thd_parse_and_check" and module.payloads == []
    work.finish_all()
    assert _sync.successResultOf(d).status == 200 and len(module.payloads[0]["items"]) == LARGE_BODY // 4
    d = post(pipe, json.dumps({"other": "x" * LARGE_BODY}).encode())
    work.finish_all()
    failure = _sync.failureResultOf(d, HTTPError)
    assert failure.value.status == 400 and "schema" in failure.value.detail


def test_a_small_body_is_parsed_at_once() -> None:
    work = HeldWork()
    pipe, module = pipeline(work, {"module": "rec"})
    assert _sync.successResultOf(post(pipe, b'{"a": 1}')).status == 200
    assert work.calls == [] and module.payloads == [{"a": 1}]


def test_large_bodies_past_the_body_threads_bound_are_503() -> None:
    pipe, _ = pipeline(HeldWork(busy=True), {"module": "rec"})
    failure = _sync.failureResultOf(post(pipe, b"[" + b"1," * LARGE_BODY + b"1]"), HTTPError)
    assert failure.value.status == 503 and failure.value.headers["Retry-After"] == "1"
    assert "large bodies" in failure.value.detail


# --- the wiring ----------------------------------------------------------------------------------


def test_module_context_builds_threads_quiet_pools_and_the_writer() -> None:
    reactor = ThreadQueueReactor()
    ctx, pools = module_context(reactor, io.StringIO(), FilePath("."))
    assert isinstance(ctx.files, ThreadWorkers) and isinstance(ctx.output, StdoutWriter)
    # One client factory per outbound connection: none logs "Starting factory".
    assert all(pool._factory.noisy is False for pool in pools)
    daemon_ctx, _ = module_context(reactor, io.StringIO(), FilePath("."), output_to_log=True)
    assert isinstance(daemon_ctx.output, LoggerOutput)


def test_modules_service_starts_and_stops_the_threads() -> None:
    reactor = ThreadQueueReactor()
    ctx, pools = module_context(reactor, io.StringIO(), FilePath("."))
    store = ConfigStore(ctx, {})
    service = ModulesService(store, pools, ctx)
    service.startService()
    assert ctx.files.running and ctx.output.running  # type: ignore[attr-defined]
    stopped = service.stopService()
    reactor.pump(lambda: stopped.called)
    assert not ctx.files.running  # type: ignore[attr-defined]


def test_config_store_leaves_the_gc_alone_and_calls_on_loaded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """gc.freeze is process-wide: only the composition root decides it (GC_FREEZE_AFTER_LOAD)."""
    frozen: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(1))
    ctx = ModuleContext(Clock(), io.StringIO(), None, None, FilePath("."))
    ConfigStore(ctx, {}).mark_loaded()
    assert frozen == []
    loaded: list[int] = []
    store = ConfigStore(ctx, {}, on_loaded=lambda: loaded.append(1))
    store.mark_loaded()
    store.update({})
    assert loaded == [1]


def test_gc_freeze_setting() -> None:
    assert parse_settings({}, {}, "/tmp").gc_freeze is True
    assert parse_settings({}, {"GC_FREEZE_AFTER_LOAD": "false"}, "/tmp").gc_freeze is False


def test_daemonized_reads_twistd_nodaemon() -> None:
    class Options(dict[str, Any]):
        parent: Any = None

    options = Options()
    assert daemonized(options) is False
    options.parent = {"nodaemon": False}
    assert daemonized(options) is True
    options.parent = {"nodaemon": True}
    assert daemonized(options) is False


def test_logger_output_keeps_one_event_small() -> None:
    """twistd writes log events on the reactor thread: a huge body is cut, and the cut is said."""
    from twisted.logger import globalLogPublisher

    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        _sync.successResultOf(LoggerOutput(limit=100).write("x" * 150 + "\n"))
        _sync.successResultOf(LoggerOutput(limit=100).write("short\n"))
    finally:
        globalLogPublisher.removeObserver(seen.append)
    texts = [e["webhook_text"] for e in seen if "webhook_text" in e]
    assert texts == ["x" * 100 + "... [50 more characters not logged]", "short"]
