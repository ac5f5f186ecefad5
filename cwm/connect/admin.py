"""Webhook Connect's admin API, mounted at ``/admin/webhook-connect/``.

Upstream's routes and bodies, with ``WEBHOOK_CONNECT_ADMIN_TOKEN`` compared in
constant time (unset: 403, the API is off). ``/health`` needs no token. Counts
come from Redis, so every instance answers the same; so do the connection
lists (each instance keeps its connections listed there).

Beyond upstream: dead letters paged with ``cursor`` (each answer's
``next_cursor``), dead-letter replay and purge, and a disconnect that reaches
a connection held by another instance (202; that instance closes it within
its next sweep).
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from cwm.body import parse_body
from cwm.connect.api import bearer, bounded_arg, channel_stats, not_enabled, query_arg, request_header
from cwm.connect.hub import SWEEP_SECONDS, Channel, ConnectHub, iso
from cwm.errors import HTTPError
from cwm.web.errors import install_json_errors, json_answer

DEFAULT_GRACE = 3600
MAX_GRACE = 30 * 86400
MAX_REPLAY = 1_000_000
_DEAD_LETTER_ID = re.compile(r"[0-9]{1,19}-[0-9]{1,19}")


def _cursor(value: str | None) -> str:
    """A dead-letter cursor (a ``dead_letter_id``), checked before it reaches Redis; "" for none."""
    if not value:
        return ""
    if not _DEAD_LETTER_ID.fullmatch(value):
        raise HTTPError(422, "cursor: expected the next_cursor of an earlier answer")
    return value


def _json(request: IRequest, value: Any, status: int = 200) -> bytes:
    return json_answer(request, status, json.dumps(value).encode())


def _body(request: IRequest, required: bool) -> dict[str, Any] | None:
    """The JSON object body (parsed as webhook bodies are: 400 with the reason when malformed)."""
    content = request.content
    raw = content.read() if content is not None else b""
    if not raw.strip():
        if required:
            raise HTTPError(422, "A JSON object body is required")
        return None
    value = parse_body("json", raw, request_header(request, b"content-type"))
    if not isinstance(value, dict):
        raise HTTPError(422, "The body must be a JSON object")
    return value


class ConnectAdmin:
    """The routes under ``/admin/webhook-connect/``."""

    app = Klein()

    def __init__(self, hub: ConnectHub | None, admin_token: str | None, clock: IReactorTime) -> None:
        self._hub_or_none = hub
        self._token = admin_token
        self._clock = clock

    def resource(self) -> Any:
        return self.app.resource()

    def _admin(self, request: IRequest) -> ConnectHub:
        if self._hub_or_none is None:
            raise not_enabled()  # before any 403/401: with Webhook Connect off these routes do not exist
        if self._token is None:
            raise HTTPError(403, "Admin API disabled. Set WEBHOOK_CONNECT_ADMIN_TOKEN environment variable.")
        header = request_header(request, b"authorization")
        if not header:
            raise HTTPError(401, "Missing authorization header")
        if not hmac.compare_digest(bearer(header).encode(), self._token.encode()):
            raise HTTPError(401, "Invalid admin token")
        return self._hub_or_none

    def _channel(self, request: IRequest, name: str) -> tuple[ConnectHub, Channel]:
        hub = self._admin(request)
        channel = hub.channel(name)
        if channel is None:
            raise HTTPError(404, f"Channel '{name}' not found")
        return hub, channel

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        if self._hub_or_none is None:
            raise not_enabled()
        status = self._hub_or_none.status()
        body = {"status": "healthy" if status["buffer"] else "unhealthy", **status,
                "timestamp": iso(self._clock.seconds())}
        return _json(request, body, 200 if status["buffer"] else 503)

    @app.route("/channels", methods=["GET"])
    async def channels(self, request: IRequest) -> bytes:
        hub = self._admin(request)
        listed = []
        for channel in hub.channels():
            connections = await hub.clients(channel)
            config = channel.config
            listed.append({
                "name": channel.name,
                "webhook_id": channel.webhook_id,
                "webhook_ids": channel.webhook_ids,
                "created_at": iso(channel.created_at),
                "ttl_seconds": config.ttl_seconds,
                "max_queue_size": config.max_queue_size,
                "max_connections": config.max_connections,
                "connected_clients": len(connections),
            })
        return _json(request, listed)

    @app.route("/channels/<name>", methods=["GET"])
    async def channel(self, request: IRequest, name: str) -> bytes:
        hub, channel = self._channel(request, name)
        counts, connections = await hub.counts(channel), await hub.clients(channel)
        config = channel.config
        local = {c.id: c for c in channel.connections.values()}
        clients = []
        for record in connections:
            described = dict(record)
            described["connected_at"] = iso(float(record.get("connected_at", 0)))
            described.pop("expires_at", None)
            mine = local.get(record.get("connection_id", ""))
            if mine is not None:
                described.update(mine.describe())
            clients.append(described)
        stats = channel_stats(channel, counts, connections)
        stats["webhook_stats"] = counts.pending_by_webhook
        body = {
            "name": channel.name,
            "webhook_id": channel.webhook_id,
            "webhook_ids": channel.webhook_ids,
            "created_at": iso(channel.created_at),
            "config": {
                "name": channel.name,
                "webhook_id": channel.webhook_id,
                "ttl_seconds": config.ttl_seconds,
                "max_queue_size": config.max_queue_size,
                "max_message_size": config.max_message_size,
                "max_in_flight": config.max_in_flight,
                "ack_timeout_seconds": config.ack_timeout_seconds,
                "max_deliveries": config.max_deliveries,
                "max_connections": config.max_connections,
                "heartbeat_interval_seconds": config.heartbeat_interval_seconds,
                "forward_credentials": config.forward_credentials,
                "dead_letter_max": config.dead_letter_max,
                "created_at": iso(channel.created_at),
            },
            "stats": stats,
            "connected_clients": clients,
        }
        return _json(request, body)

    @app.route("/channels/<name>/rotate-token", methods=["POST"])
    async def rotate_token(self, request: IRequest, name: str) -> bytes:
        hub, channel = self._channel(request, name)
        body = _body(request, required=True) or {}
        grace = body.get("grace_period_seconds", DEFAULT_GRACE)
        if isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= MAX_GRACE:
            raise HTTPError(422, f"grace_period_seconds: expected a whole number from 0 to {MAX_GRACE}")
        new_token, rotated = await hub.rotate(channel, grace)
        return _json(request, {
            "channel": channel.name,
            "new_token": new_token,
            "old_token_expires_at": iso(rotated.previous_expires_at),
            "message": f"Old token valid for {grace} seconds grace period",
        })

    @app.route("/channels/<name>/connections/<connection_id>", methods=["DELETE"])
    async def disconnect(self, request: IRequest, name: str, connection_id: str) -> bytes:
        hub, channel = self._channel(request, name)
        local = hub.connection(connection_id)
        if local is not None and local.attached:
            if local.channel != channel.name:
                raise HTTPError(400, "Connection not on this channel")
            hub.close(connection_id, "disconnected by an administrator")
            return _json(request, {"status": "disconnected", "connection_id": connection_id})
        connections = await hub.clients(channel)
        record = next((r for r in connections if r.get("connection_id") == connection_id), None)
        if record is None:
            raise HTTPError(404, "Connection not found")
        await hub.kick(channel, connection_id)
        return _json(
            request,
            {
                "status": "disconnecting",
                "connection_id": connection_id,
                "instance": record.get("instance"),
                "message": f"The instance holding it closes it within {SWEEP_SECONDS:g} seconds",
            },
            202,
        )

    @app.route("/channels/<name>/webhook-stats", methods=["GET"])
    async def webhook_stats(self, request: IRequest, name: str) -> bytes:
        hub, channel = self._channel(request, name)
        counts = await hub.counts(channel)
        webhooks = {wid: {"pending": n} for wid, n in sorted(counts.pending_by_webhook.items())}
        return _json(request, {"channel": channel.name, "webhooks": webhooks})

    @app.route("/channels/<name>/stats", methods=["GET"])
    async def stats(self, request: IRequest, name: str) -> bytes:
        hub, channel = self._channel(request, name)
        counts, connections = await hub.counts(channel), await hub.clients(channel)
        return _json(request, channel_stats(channel, counts, connections))

    @app.route("/channels/<name>/dead-letters", methods=["GET"])
    async def dead_letters(self, request: IRequest, name: str) -> bytes:
        limit = bounded_arg(request, "limit", 100, 1, 1000)
        cursor = _cursor(query_arg(request, "cursor"))
        hub, channel = self._channel(request, name)
        letters, next_cursor = await hub.dead_letters(channel, limit, cursor)
        # The letters are JSON already (spliced, never parsed): joined, not encoded again.
        head = json.dumps({"channel": channel.name, "count": len(letters), "next_cursor": next_cursor})
        body = b"%s,\"messages\":[%s]}" % (head[:-1].encode(), b",".join(letters))
        return json_answer(request, 200, body)

    @app.route("/channels/<name>/dead-letters/replay", methods=["POST"])
    async def replay(self, request: IRequest, name: str) -> bytes:
        hub, channel = self._channel(request, name)
        body = _body(request, required=False)
        ids = None
        if body is not None and "message_ids" in body:
            ids = body["message_ids"]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(ids) > 10_000:
                raise HTTPError(422, "message_ids: expected a list of at most 10000 message ids")
        limit = (body or {}).get("limit")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_REPLAY
        ):
            raise HTTPError(422, f"limit: expected a whole number from 1 to {MAX_REPLAY}")
        cursor = (body or {}).get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise HTTPError(422, "cursor: expected the next_cursor of an earlier answer")
        replayed = await hub.replay(channel, ids, limit, _cursor(cursor))
        return _json(request, {
            "channel": channel.name,
            "replayed": replayed.moved,
            "not_found": replayed.not_found,
            "next_cursor": replayed.next_cursor,
        })

    @app.route("/channels/<name>/dead-letters", methods=["DELETE"])
    async def purge(self, request: IRequest, name: str) -> bytes:
        hub, channel = self._channel(request, name)
        purged = await hub.purge(channel)
        return _json(request, {"channel": channel.name, "purged": purged})

    @app.route("/overview", methods=["GET"])
    async def overview(self, request: IRequest) -> bytes:
        hub = self._admin(request)
        channels = {}
        total = 0
        for channel in hub.channels():
            connections = await hub.clients(channel)
            total += len(connections)
            channels[channel.name] = {
                "webhook_id": channel.webhook_id,
                "connected_clients": len(connections),
                "max_connections": channel.config.max_connections,
                "ttl_seconds": channel.config.ttl_seconds,
            }
        status = hub.status()
        return _json(request, {
            "timestamp": iso(self._clock.seconds()),
            "health": status,
            "total_channels": len(channels),
            "total_connections": total,
            "channels": channels,
        })


install_json_errors(ConnectAdmin.app)
