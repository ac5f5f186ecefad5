"""The connector's link to the cloud: one stream (WebSocket, SSE) or a chain of long-polls.

The stream is opened, watched (silent for ``heartbeat_timeout`` -> closed and
reopened) and reopened after every end with exponential backoff and jitter;
the delay starts again from ``reconnect_delay`` after each successful
connection. SSE resumes with ``Last-Event-ID``, so the cloud hands the
unacked messages of the previous stream to the new one instead of waiting for
their grace period.

Outcomes travel back as WebSocket frames, or as ``POST /connect/ack`` for SSE
and long-poll.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import treq
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from cwm.connect.channels import MAX_MESSAGE_SIZE_LIMIT, max_wire_size
from cwm.connector.dispatch import Dispatcher, Settle
from cwm.connector.logs import connector_logger
from cwm.connector.message import MalformedMessage, Message, Outcome
from cwm.connector.settings import ConnectorSettings
from cwm.connector.sse import EventStreamParser, EventTooLarge

MAX_FRAME_BYTES = max_wire_size(MAX_MESSAGE_SIZE_LIMIT)
"""The largest message the cloud may send (a channel's largest ``max_message_size`` of body,
carried twice and escaped): what a WebSocket message or an SSE event may hold. A limit, not
an allocation."""
MAX_ERROR_BODY = 4096
POLL_TIMEOUT = 30
POLL_MAX_MESSAGES = 100
REPORT_RETRY_PAUSES = (0.0, 0.5, 1.0)


class StreamRefused(Exception):
    """The cloud answered the stream request with an error status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"cloud answered {status}: {detail}" if detail else f"cloud answered {status}")
        self.status = status


class Backoff:
    """Waits between reconnects: ``delay`` grows by ``multiplier`` up to ``maximum``.

    Each wait is drawn uniformly from [delay/2, delay] ("equal jitter"), so
    connectors that lost the cloud together do not all come back at once.
    ``connected()`` starts again from ``initial``.
    """

    def __init__(self, initial: float, maximum: float, multiplier: float,
                 random_fraction: Callable[[], float] = random.random) -> None:
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self._random = random_fraction
        self.delay = initial

    def connected(self) -> None:
        self.delay = self.initial

    def next_wait(self) -> float:
        wait = self.delay * (0.5 + 0.5 * self._random())
        self.delay = min(self.delay * self.multiplier, self.maximum)
        return wait


async def _bounded_text(response: Any, clock: Any, seconds: float) -> str:
    """At most MAX_ERROR_BODY bytes of a response body, as text, for a log line."""
    chunks: list[bytes] = []
    size = 0

    def keep(data: bytes) -> None:
        nonlocal size
        if size < MAX_ERROR_BODY:
            chunks.append(data[: MAX_ERROR_BODY - size])
        size += len(data)

    try:
        await treq.collect(response, keep).addTimeout(seconds, clock)
    except Exception:
        pass
    text = b"".join(chunks).decode("utf-8", errors="replace").strip()
    try:
        detail = json.loads(text).get("detail")
        if isinstance(detail, str):
            return detail[:300]
    except (ValueError, AttributeError):
        pass
    return text[:300]


async def _read_capped(response: Any, cap: int, clock: Any, seconds: float) -> bytes:
    """A response body, refused past ``cap`` bytes, within ``seconds``."""
    chunks: list[bytes] = []
    size = 0

    def keep(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > cap:
            raise ValueError(f"the cloud's answer is over {cap} bytes")
        chunks.append(data)

    await treq.collect(response, keep).addTimeout(seconds, clock)
    return b"".join(chunks)


class _Session:
    """One open stream: the watchdog, and its end (``ended`` fires with the reason)."""

    def __init__(self, client: CloudLink) -> None:
        self.client = client
        self.connection_id = ""
        self.opened: Deferred[None] = Deferred()
        self.ended: Deferred[str] = Deferred()
        self._watchdog: IDelayedCall | None = None

    def alive(self) -> None:
        """Something came from the cloud: the stream is not silent."""
        timeout = self.client.settings.heartbeat_timeout
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.reset(timeout)
        elif not self.ended.called:
            self._watchdog = self.client.clock.callLater(timeout, self._silent)

    def _silent(self) -> None:
        self._watchdog = None
        self.close(f"no data from the cloud for {self.client.settings.heartbeat_timeout:g}s")

    def close(self, reason: str) -> None:
        raise NotImplementedError

    def end(self, reason: str) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        if not self.opened.called:
            self.opened.errback(ConnectionError(reason))
        if not self.ended.called:
            self.ended.callback(reason)

    def message(self, data: Any, reporter: Callable[[str], Settle]) -> None:
        hand_over(self.client.dispatcher, data, reporter)


def hand_over(dispatcher: Dispatcher, data: Any, reporter: Callable[[str], Settle]) -> None:
    """Give one wire message to the dispatcher; ``reporter(message_id)`` reports its outcome."""
    message_id = data.get("message_id") if isinstance(data, dict) else None
    try:
        message = Message.from_wire(data)
    except MalformedMessage as e:
        if isinstance(message_id, str) and message_id:
            # It has an id: the cloud can be told never to send it again.
            dispatcher.undeliverable(message_id, str(e), reporter(message_id))
        else:
            dispatcher.malformed(str(e))
        return
    dispatcher.received(message, reporter(message.message_id))


class _SSESession(_Session):
    """An open ``GET /connect/stream/{channel}/sse``."""

    class _Body(Protocol):
        def __init__(self, session: _SSESession) -> None:
            self.session = session
            self.parser = EventStreamParser(MAX_FRAME_BYTES)

        def dataReceived(self, data: bytes) -> None:
            self.session.alive()
            try:
                events = self.parser.feed(data)
            except EventTooLarge as e:
                self.session.close(str(e))
                return
            for event in events:
                self.session.event(event.name, event.data, event.id)
                if self.session.ended.called:
                    return

        def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
            self.session.end("the cloud closed the stream" if reason.check(ConnectionDone) else
                             f"stream lost: {reason.getErrorMessage()}")

    def __init__(self, client: CloudLink, response: Any) -> None:
        super().__init__(client)
        self.body = self._Body(self)
        self.alive()
        response.deliverBody(self.body)

    def event(self, name: str, data: str, event_id: str | None) -> None:
        try:
            parsed = json.loads(data)
        except ValueError:
            self.client.log.warn("the cloud sent an SSE {name} event that is not JSON", name=name)
            return
        if name == "connected":
            connection_id = parsed.get("connection_id") if isinstance(parsed, dict) else None
            if isinstance(connection_id, str) and connection_id:
                self.connection_id = connection_id
                self.client.connection_id = connection_id
                if not self.opened.called:
                    self.opened.callback(None)
        elif name == "webhook":
            if event_id:  # the stream position, sent back as Last-Event-ID on a reconnect
                self.client.last_event_id = event_id
            self.message(parsed, self.client.reporter(None))
        elif name == "error":
            error = parsed.get("error") if isinstance(parsed, dict) else parsed
            self.client.log.warn("the cloud ended the stream: {error}", error=str(error)[:200])

    def close(self, reason: str) -> None:
        transport = self.body.transport
        if transport is not None:
            transport.stopProducing()  # type: ignore[attr-defined]  # connectionLost follows
        self.end(reason)


class _WSSession(_Session):
    """An open WebSocket to ``/connect/stream/{channel}``."""

    def __init__(self, client: CloudLink) -> None:
        super().__init__(client)
        self.protocol: Any = None
        self.open = False

    def opened_by(self, protocol: Any) -> None:
        self.protocol = protocol
        self.open = True
        self.alive()

    def frame(self, payload: bytes) -> None:
        self.alive()
        try:
            frame = json.loads(payload)
        except ValueError:
            self.client.log.warn("the cloud sent a WebSocket frame that is not JSON")
            return
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "connected":
            self.connection_id = str(frame.get("connection_id", ""))
            self.client.connection_id = self.connection_id
            if not self.opened.called:
                self.opened.callback(None)
        elif kind == "webhook":
            self.message(frame, self.reporter)
        elif kind == "heartbeat":
            self.send({"type": "heartbeat", "timestamp": frame.get("timestamp")})
        elif kind == "error":
            self.client.log.warn("the cloud reported: {error}", error=str(frame.get("error"))[:200])

    def send(self, frame: dict[str, Any]) -> bool:
        if not self.open or self.protocol is None:
            return False
        try:
            self.protocol.sendMessage(json.dumps(frame, separators=(",", ":")).encode())
        except Exception:  # autobahn's Disconnected: the close has begun
            return False
        return True

    def reporter(self, message_id: str) -> Settle:
        """Outcomes go back as frames on this WebSocket (the cloud gives back a closed one's messages)."""

        def settle(outcome: Outcome) -> Deferred[None]:
            frame: dict[str, Any] = {"type": "ack" if outcome.ack else "nack", "message_id": message_id}
            if not outcome.ack:
                frame["retry"] = outcome.retry
                frame["reason"] = outcome.reason[:200]
            if self.send(frame):
                return succeed(None)
            return fail(ConnectionDone("the WebSocket it came on is closed"))

        return settle

    def closed(self, code: int | None, reason: str | None) -> None:
        self.open = False
        refused = re.search(r"upgrade failed [(\[](\d{3})", reason or "")  # autobahn: "... failed [401]: ..."
        if refused and not self.opened.called:
            # The handshake's answer: 401 bad token, 404 unknown channel, 503...
            self.opened.errback(StreamRefused(int(refused.group(1)), reason or ""))
        self.end(f"WebSocket closed ({code}{': ' + reason if reason else ''})")

    def close(self, reason: str) -> None:
        if self.protocol is not None:
            if self.open:
                self.open = False  # from now on nothing more is sent on it
                self.protocol.sendClose(1000, reason[:120])
                self.protocol.transport.loseConnection()
            elif self.protocol.transport is not None:
                self.protocol.transport.abortConnection()  # still in the handshake
        self.end(reason)


class CloudLink:
    """Keeps the connector's stream to the cloud open and reports outcomes back."""

    log = connector_logger()

    def __init__(self, settings: ConnectorSettings, reactor: Any, http: Any, dispatcher: Dispatcher,
                 tls_creator: Callable[[str], Any] | None = None,
                 random_fraction: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.clock = reactor
        self._reactor = reactor
        self._http = http
        self.dispatcher = dispatcher
        self._tls_creator = tls_creator
        self._backoff = Backoff(settings.reconnect_delay, settings.max_reconnect_delay,
                                settings.reconnect_backoff_multiplier, random_fraction)
        self.connected = False
        self.connected_since: float | None = None
        self.connection_id = ""
        self.last_event_id: str | None = None
        self.last_error: str | None = None
        self._session: _Session | None = None
        self._pending: Deferred[Any] | None = None  # the wait or request to cancel on stop
        self._loop: Deferred[None] | None = None
        self._stopping = False
        self._quiet = False
        base = settings.cloud_url
        channel = quote(settings.channel, safe="")
        self._stream_url = f"{base}/connect/stream/{channel}"
        self._ack_url = f"{base}/connect/ack"

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(lambda f: self.log.failure("the cloud link stopped unexpectedly", f))

    def quiesce(self) -> None:
        """Stop asking for more: no new stream or poll. An open stream stays open to
        carry the outcomes of the deliveries still running."""
        self._quiet = True
        if self._pending is not None:
            # A backoff wait, a connection attempt, or an open long-poll (whose
            # messages the cloud then gives back at once). An open stream stays.
            self._pending.cancel()

    def stop(self) -> Deferred[None]:
        """Close the stream and stop reconnecting; fires once the link is down."""
        self._stopping = True
        self._quiet = True
        if self._pending is not None:
            self._pending.cancel()
        if self._session is not None:
            self._session.close("connector stopping")
        return self._loop if self._loop is not None else succeed(None)

    def status(self) -> dict[str, Any]:
        parts = urlsplit(self.settings.cloud_url)
        return {
            "cloud_url": f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}",
            "channel": self.settings.channel,
            "protocol": self.settings.protocol,
            "connected": self.connected,
            "connected_since": self.connected_since,
            "connection_id": self.connection_id or None,
            "last_error": self.last_error,
        }

    # -- the reconnect loop --------------------------------------------------

    async def _run(self) -> None:
        first = True
        while not self._stopping and not self._quiet:
            if not first:
                self.dispatcher.counters.reconnects += 1
            first = False
            try:
                if self.settings.protocol == "long_poll":
                    reason = await self._poll_loop()
                else:
                    reason = await self._stream()
            except CancelledError:
                if self._stopping:
                    break
                reason = "cancelled"
            except StreamRefused as e:
                reason = str(e)
                if e.status in (401, 403, 404):
                    self.log.error("the cloud refused the stream: {reason}; check the channel and token",
                                   reason=reason)
            except Exception as e:
                reason = _describe(e)
            if self._quiet and not self._stopping:
                # A long-poll cancelled by quiesce(): wait quietly for stop().
                try:
                    await self._cancellable(Deferred())
                except CancelledError:
                    reason = "connector stopping"
            self._down(reason)
            if self._stopping or self._quiet:
                break
            wait = self._backoff.next_wait()
            self.log.info("reconnecting to the cloud in {wait:.1f}s", wait=wait, reason=reason)
            try:
                await self._cancellable(deferLater(self.clock, wait, lambda: None))
            except CancelledError:
                break

    def _cancellable(self, d: Deferred[Any]) -> Deferred[Any]:
        self._pending = d

        def clear(result: object) -> object:
            if self._pending is d:
                self._pending = None
            return result

        return d.addBoth(clear)

    def _up(self, connection_id: str) -> None:
        self._backoff.connected()
        if not self.connected:
            self.log.info("connected to the cloud over {protocol} (channel {channel}, connection {connection_id})",
                          protocol=self.settings.protocol, channel=self.settings.channel,
                          connection_id=connection_id)
        self.connected = True
        self.connected_since = self.connected_since or self.clock.seconds()
        self.last_error = None

    def _down(self, reason: str) -> None:
        if self.connected or reason != self.last_error:
            level = self.log.info if self._stopping else self.log.warn
            level("disconnected from the cloud: {reason}", reason=reason)
        self.connected = False
        self.connected_since = None
        if not self._stopping:
            self.last_error = reason

    def _window(self) -> dict[str, str]:
        # As many unacked messages as run at once: none waits here while the
        # cloud's ack timeout runs (the cloud takes the smaller of this and the
        # channel's max_in_flight).
        return {"max_in_flight": str(self.settings.max_concurrent_requests)}

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.settings.token}"}
        if self.settings.connector_id:
            headers["X-Connector-ID"] = self.settings.connector_id
        headers.update(extra or {})
        return headers

    async def _stream(self) -> str:
        session: _Session
        if self.settings.protocol == "sse":
            session = await self._open_sse()
        else:
            session = await self._open_websocket()
        self._session = session
        try:
            await session.opened.addTimeout(self.settings.connection_timeout, self.clock)
        except Exception:
            session.close("no connected event from the cloud")
            raise
        self._up(session.connection_id)
        try:
            reason: str = await session.ended
        finally:
            self._session = None
        return reason

    async def _open_sse(self) -> _Session:
        extra = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_event_id:
            extra["Last-Event-ID"] = self.last_event_id
        request = self._http.get(f"{self._stream_url}/sse", params=self._window(), headers=self._headers(extra),
                                 unbuffered=True)
        response = await self._cancellable(request.addTimeout(self.settings.connection_timeout, self.clock))
        if response.code != 200:
            raise StreamRefused(response.code, await _bounded_text(response, self.clock, 5.0))
        return _SSESession(self, response)

    async def _open_websocket(self) -> _Session:
        from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

        session = _WSSession(self)

        class CloudSocket(WebSocketClientProtocol):
            def onOpen(self) -> None:
                if session.ended.called:  # stopped or timed out during the handshake
                    self.transport.abortConnection()  # type: ignore[union-attr]
                    return
                session.opened_by(self)

            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                session.frame(payload)

            def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
                session.closed(code, reason)

        parts = urlsplit(self.settings.cloud_url)
        secure = parts.scheme == "https"
        host = parts.hostname or "localhost"
        port = parts.port or (443 if secure else 80)
        url = ("wss" if secure else "ws") + self._stream_url[len(parts.scheme):] + "?" + urlencode(self._window())
        factory = WebSocketClientFactory(url, headers=self._headers(), reactor=self._reactor)
        factory.protocol = CloudSocket
        factory.noisy = False
        factory.setProtocolOptions(
            openHandshakeTimeout=self.settings.connection_timeout,
            closeHandshakeTimeout=5,
            autoPingInterval=max(1.0, self.settings.heartbeat_timeout / 2),
            autoPingTimeout=max(1.0, self.settings.heartbeat_timeout / 2),
            maxMessagePayloadSize=MAX_FRAME_BYTES,
            maxFramePayloadSize=MAX_FRAME_BYTES,
        )
        endpoint: Any = HostnameEndpoint(self._reactor, host, port, timeout=self.settings.connection_timeout)
        if secure and self._tls_creator is not None:
            endpoint = wrapClientTLS(self._tls_creator(host), endpoint)
        session.protocol = await self._cancellable(endpoint.connect(factory))
        return session

    # -- reports -------------------------------------------------------------

    async def _post_report(self, connection: Callable[[], str], message_id: str, outcome: Outcome,
                           retry_not_found: bool) -> None:
        """``POST /connect/ack``; a network error or 5xx is tried twice more (0.5 s, 1 s later),
        and a 404 once more when the connection may have just been resumed by a new one."""
        params = {"message_id": message_id, "status": "ack" if outcome.ack else "nack"}
        if not outcome.ack:
            params["retry"] = "true" if outcome.retry else "false"
            if outcome.reason:
                params["reason"] = outcome.reason[:200]
        for attempt, pause in enumerate(REPORT_RETRY_PAUSES):
            if pause:
                await deferLater(self.clock, pause, lambda: None)
            last = attempt == len(REPORT_RETRY_PAUSES) - 1
            try:
                request = self._http.post(self._ack_url, params=params,
                                          headers=self._headers({"X-Connection-ID": connection()}))
                response = await request.addTimeout(self.settings.ack_timeout, self.clock)
                detail = await _bounded_text(response, self.clock, self.settings.ack_timeout)
            except Exception:
                if last:
                    raise
                continue
            if response.code == 200:
                return
            again = response.code >= 500 or (response.code == 404 and retry_not_found and attempt == 0)
            if last or not again:
                raise StreamRefused(response.code, detail)

    def reporter(self, fixed_connection: str | None) -> Callable[[str], Settle]:
        """For SSE (``None``: the current connection, which took over the earlier
        ones' messages) or one long-poll answer's connection: message id -> Settle."""

        def for_message(message_id: str) -> Settle:
            def settle(outcome: Outcome) -> Deferred[None]:
                return Deferred.fromCoroutine(self._post_report(
                    lambda: fixed_connection or self.connection_id, message_id, outcome,
                    retry_not_found=fixed_connection is None))

            return settle

        return for_message

    # -- long-poll -----------------------------------------------------------

    async def _poll_loop(self) -> str:
        """Poll until a poll fails; returns why."""
        while not self._stopping and not self._quiet:
            await self._cancellable(self.dispatcher.slot_free())
            wanted = min(self.dispatcher.free_slots(), POLL_MAX_MESSAGES)
            url = f"{self._stream_url}/poll"
            # The first poll is short: it proves the channel and token within a second.
            timeout = POLL_TIMEOUT if self.connected else 1
            request = self._http.get(url, params={"timeout": str(timeout), "max_messages": str(wanted)},
                                     headers=self._headers())
            response = await self._cancellable(
                request.addTimeout(timeout + self.settings.connection_timeout, self.clock))
            if response.code == 204:
                await _bounded_text(response, self.clock, 5.0)
                self._up(self.connection_id)
                continue
            if response.code != 200:
                raise StreamRefused(response.code, await _bounded_text(response, self.clock, 5.0))
            # Read to the end even when quiesced: the cloud handed these over.
            body = json.loads(await _read_capped(response, wanted * MAX_FRAME_BYTES, self.clock,
                                                 self.settings.connection_timeout + wanted))
            connection_id = body.get("connection_id") if isinstance(body, dict) else None
            messages = body.get("messages") if isinstance(body, dict) else None
            if not isinstance(connection_id, str) or not isinstance(messages, list):
                raise ValueError("the cloud's poll answer has no connection_id and messages")
            self.connection_id = connection_id
            self._up(connection_id)
            for data in messages:
                hand_over(self.dispatcher, data, self.reporter(connection_id))
        return "connector stopping"


def _describe(e: Exception) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}"[:300] if text else type(e).__name__
