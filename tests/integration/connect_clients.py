"""Test clients for Webhook Connect, run on the test's reactor: treq for HTTP, SSE and
long-poll, autobahn for WebSocket. Every wait is bounded."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.protocol import Protocol
from twisted.web.client import HTTPConnectionPool

WAIT = 15.0

_pool = HTTPConnectionPool(reactor, persistent=False)


def bounded(d: Deferred[Any], seconds: float = WAIT) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


async def call(
    method: str,
    url: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any, Any]:
    """One request: (status, parsed JSON body or None, response headers)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    response = await bounded(treq.request(method, url, data=data, headers=hdrs, pool=_pool))
    content = await bounded(treq.content(response))
    try:
        parsed = json.loads(content) if content else None
    except ValueError:
        parsed = content
    return response.code, parsed, response.headers


class _EventStream(Protocol):
    def __init__(self, events: DeferredQueue[tuple[str, Any, str | None]], ended: Deferred[None]) -> None:
        self._events = events
        self._ended = ended
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            name, payload, event_id = "message", "", None
            for line in block.decode().split("\n"):
                key, _, value = line.partition(": ")
                if key == "event":
                    name = value
                elif key == "data":
                    payload += value
                elif key == "id":
                    event_id = value
            self._events.put((name, json.loads(payload) if payload else None, event_id))

    def connectionLost(self, reason: Any = None) -> None:
        if not self._ended.called:
            self._ended.callback(None)


class SSEClient:
    """One open event stream."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.events: DeferredQueue[tuple[str, Any, str | None]] = DeferredQueue()
        self.ended: Deferred[None] = Deferred()
        self._protocol = _EventStream(self.events, self.ended)
        response.deliverBody(self._protocol)
        self.connection_id = ""

    @classmethod
    async def open(
        cls, base: str, channel: str, token: str, last_event_id: str | None = None, connector: str = "test"
    ) -> SSEClient:
        headers = {"Authorization": f"Bearer {token}", "X-Connector-ID": connector}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        response = await bounded(
            treq.get(f"{base}/connect/stream/{channel}/sse", headers=headers, pool=_pool, unbuffered=True)
        )
        if response.code != 200:
            body = await bounded(treq.content(response))
            raise AssertionError(f"SSE answered {response.code}: {body!r}")
        client = cls(response)
        name, data, _ = await client.next_event()
        assert name == "connected", (name, data)
        client.connection_id = data["connection_id"]
        return client

    async def next_event(self, seconds: float = WAIT) -> tuple[str, Any, str | None]:
        event: tuple[str, Any, str | None] = await bounded(self.events.get(), seconds)
        return event

    async def next_webhook(self, seconds: float = WAIT) -> tuple[dict[str, Any], str]:
        """The next webhook event's wire message and its SSE id (heartbeats skipped)."""
        while True:
            name, data, event_id = await self.next_event(seconds)
            if name == "webhook":
                assert event_id is not None
                return data, event_id

    def close(self) -> None:
        transport = self._protocol.transport
        if transport is not None:
            transport.stopProducing()


class _Socket(WebSocketClientProtocol):
    factory: Any

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.frames.put(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(reason or "closed before open"))
        if not self.factory.closed.called:
            self.factory.closed.callback((code, reason))


class WSClient:
    """One WebSocket connection to a channel."""

    def __init__(self, factory: Any, protocol: _Socket) -> None:
        self.factory = factory
        self.protocol = protocol
        self.connection_id = ""

    @classmethod
    async def open(cls, port: int, channel: str, token: str, connector: str = "test") -> WSClient:
        url = f"ws://127.0.0.1:{port}/connect/stream/{channel}"
        factory: Any = WebSocketClientFactory(url, headers={"Authorization": f"Bearer {token}", "X-Connector-ID": connector})
        factory.protocol = _Socket
        factory.opened = Deferred()
        factory.closed = Deferred()
        factory.frames = DeferredQueue()
        connectWS(factory)
        protocol = await bounded(factory.opened)
        client = cls(factory, protocol)
        first = await client.frame()
        assert first["type"] == "connected", first
        client.connection_id = first["connection_id"]
        return client

    async def frame(self, seconds: float = WAIT) -> dict[str, Any]:
        frame: dict[str, Any] = await bounded(self.factory.frames.get(), seconds)
        return frame

    async def webhook(self, seconds: float = WAIT) -> dict[str, Any]:
        while True:
            frame = await self.frame(seconds)
            if frame["type"] == "webhook":
                return frame

    def send(self, frame: dict[str, Any]) -> None:
        self.protocol.sendMessage(json.dumps(frame).encode())

    def ack(self, message_id: str) -> None:
        self.send({"type": "ack", "message_id": message_id})

    def nack(self, message_id: str, retry: bool = True) -> None:
        self.send({"type": "nack", "message_id": message_id, "retry": retry})

    async def close(self) -> None:
        self.protocol.sendClose(1000)
        await bounded(self.factory.closed)


async def ws_refused(port: int, channel: str, token: str) -> str:
    """Try to open a WebSocket that should be refused; the reason autobahn reports."""
    url = f"ws://127.0.0.1:{port}/connect/stream/{channel}"
    factory: Any = WebSocketClientFactory(url, headers={"Authorization": f"Bearer {token}"})
    factory.protocol = _Socket
    factory.opened = Deferred()
    factory.closed = Deferred()
    factory.frames = DeferredQueue()
    connectWS(factory)
    try:
        await bounded(factory.opened)
    except ConnectionError as e:
        return str(e)
    raise AssertionError("the WebSocket was accepted")
