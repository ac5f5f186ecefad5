"""The Connect routes through StubTreq on a Clock: acks (query or JSON body, on any instance)
and calls that race a config reload releasing their channel."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cwm.connect.admin import ConnectAdmin
from cwm.connect.api import ConnectStreams
from cwm.connect.buffer import ChannelCounts
from cwm.connect.channels import ChannelConfig
from cwm.connect.hub import ConnectHub
from tests.unit.test_connect_hub import OWNER, RecordingBuffer, message, open_connection

_sync = SynchronousTestCase()


class RouteBuffer(RecordingBuffer):
    """Also answers what the routes ask; ``gate`` holds ``counts`` until the test opens it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: Deferred[None] | None = None
        self.in_redis: dict[str, str] = {}  # message id -> stream id, for acks by id

    async def counts(self, channel: str) -> ChannelCounts:
        if self.gate is not None:
            await self.gate
        return ChannelCounts(0, 0, 0, 0, 0, 0, {})

    async def connections(self, channel: str, now: float) -> list[dict[str, Any]]:
        return []

    async def ack_message(self, channel: str, message_id: str) -> bool:
        return await self.ack_message_at(channel, message_id) is not None

    async def ack_message_at(self, channel: str, message_id: str) -> str | None:
        self.calls.append(("ack_message", message_id))
        return self.in_redis.pop(message_id, None)

    async def stream_id_of(self, channel: str, message_id: str) -> str | None:
        return self.in_redis.get(message_id)


def setup() -> tuple[ConnectHub, RouteBuffer, Clock, Any]:
    clock = Clock()
    clock.advance(1000)
    buffer = RouteBuffer()
    hub = ConnectHub(buffer, buffer, clock, "me")  # type: ignore[arg-type]
    hub.start()
    release = hub.register(OWNER, ChannelConfig(name="ch", token="t"))
    return hub, buffer, clock, release


def answer(d: Deferred[Any]) -> tuple[int, Any]:
    response = _sync.successResultOf(d)
    body = _sync.successResultOf(response.content())
    return response.code, json.loads(body) if body else None


def post_ack(hub: ConnectHub, clock: Clock, connection_id: str, query: str = "", body: Any = None,
             token: str = "t") -> tuple[int, Any]:
    client = StubTreq(ConnectStreams(hub, clock).resource())
    data = json.dumps(body).encode() if body is not None else None
    headers = {"X-Connection-ID": connection_id, "Authorization": f"Bearer {token}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    return answer(client.post(f"http://cwm/ack{query}", data=data, headers=headers))


def test_ack_takes_a_json_body_as_well_as_query_parameters() -> None:
    hub, buffer, clock, _ = setup()
    connection, _ = open_connection(hub, "sse", window=3)
    buffer.answer(message(1), message(2))
    assert post_ack(hub, clock, connection.id, body={"message_id": "msg_1", "status": "ack"}) == (
        200, {"status": "ok", "message_id": "msg_1", "outcome": "acked"})
    assert post_ack(hub, clock, connection.id, body={"message_id": "msg_2", "status": "nack", "retry": False}) == (
        200, {"status": "ok", "message_id": "msg_2", "outcome": "requeued"})
    assert buffer.given_back()[-1][:3] == ("2-0", "nack without retry", True)
    assert post_ack(hub, clock, connection.id, body={"status": "ack"}) == (
        422, {"detail": "message_id: required (query parameter or JSON body)"})
    assert post_ack(hub, clock, connection.id, body={"message_id": 5})[0] == 422
    assert post_ack(hub, clock, connection.id, body=["msg_1"]) == (422, {"detail": "The body must be a JSON object"})
    # With message_id in the query, the query is the ack (whatever a client put in the body).
    buffer.answer(message(3))
    client = StubTreq(ConnectStreams(hub, clock).resource())
    sent = client.post("http://cwm/ack?message_id=msg_3", data=b"message_id=msg_3&status=ack",
                       headers={"X-Connection-ID": connection.id, "Authorization": "Bearer t",
                                "Content-Type": "application/x-www-form-urlencoded"})
    assert answer(sent) == (200, {"status": "ok", "message_id": "msg_3", "outcome": "acked"})
    hub.stop()


def test_an_ack_for_a_connection_held_by_another_instance_is_settled_in_redis() -> None:
    hub, buffer, clock, _ = setup()
    buffer.in_redis["msg_9"] = "9-0"  # read and sent by another instance's stream
    assert post_ack(hub, clock, "sse_elsewhere_1", "?message_id=msg_9&status=ack") == (
        200, {"status": "ok", "message_id": "msg_9", "outcome": "acked"})
    assert ("ack_message", "msg_9") in buffer.calls
    assert post_ack(hub, clock, "sse_elsewhere_1", "?message_id=msg_9") == (404, {"detail": "Connection not found"})
    assert post_ack(hub, clock, "sse_elsewhere_1", "?message_id=msg_9", token="wrong") == (
        401, {"detail": "Invalid token"})
    hub.stop()


def test_an_ack_on_a_new_connection_for_a_message_sent_on_an_old_one_settles_it() -> None:
    """After a reconnect the connector may ack what the old stream sent with the new connection's id."""
    hub, buffer, clock, _ = setup()
    old, _ = open_connection(hub, "sse", window=1)
    buffer.answer(message(1))
    buffer.in_redis["msg_1"] = "1-0"
    new, _ = open_connection(hub, "sse", window=1)
    assert post_ack(hub, clock, new.id, "?message_id=msg_1")[0] == 200
    assert old.in_flight == {} and old.acked == 1  # the slot is free at once
    hub.stop()


def test_admin_and_status_calls_racing_a_reload_that_releases_the_channel_answer_200() -> None:
    hub, buffer, clock, release = setup()
    buffer.gate = Deferred()
    admin = StubTreq(ConnectAdmin(hub, "adm", clock).resource())
    streams = StubTreq(ConnectStreams(hub, clock).resource())
    pending = [
        admin.get("http://cwm/channels/ch", headers={"Authorization": "Bearer adm"}),
        admin.get("http://cwm/overview", headers={"Authorization": "Bearer adm"}),
        streams.get("http://cwm/status/ch", headers={"Authorization": "Bearer t"}),
    ]
    release()  # a config reload removed the entry while the calls awaited Redis
    assert hub.channel("ch") is None
    buffer.gate.callback(None)
    admin.flush()
    streams.flush()
    codes = [answer(d)[0] for d in pending]
    assert codes == [200, 200, 200]
    hub.stop()


class SharedTokens(RouteBuffer):
    """Rotated tokens in one dict, shared by the hubs (instances) using this buffer; lookups counted."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[str, dict[str, str]] = {}
        self.token_reads = 0

    async def tokens(self, channel: str) -> dict[str, str]:
        self.token_reads += 1
        return dict(self.stored.get(channel, {}))

    async def store_tokens(self, channel: str, fields: list[str], replacing: str = "") -> bool:
        self.stored[channel] = dict(zip(fields[::2], fields[1::2]))
        return True


def test_an_ack_from_elsewhere_with_a_bad_token_costs_no_redis_call_per_channel() -> None:
    clock = Clock()
    clock.advance(1000)
    buffer = SharedTokens()
    hub = ConnectHub(buffer, buffer, clock, "me")  # type: ignore[arg-type]
    hub.start()
    for n in range(5):
        hub.register(("default", f"h{n}"), ChannelConfig(name=f"ch{n}", token=f"t{n}"))
    clock.advance(5)  # a sweep reads each channel's tokens
    reads = buffer.token_reads
    for _ in range(3):
        assert post_ack(hub, clock, "sse_elsewhere_1", "?message_id=msg_9", token="made-up") == (
            401, {"detail": "Invalid token"})
    assert buffer.token_reads == reads
    hub.stop()


def test_a_rotation_on_another_instance_is_honoured_for_acks_here_within_a_sweep() -> None:
    clock = Clock()
    clock.advance(1000)
    buffer = SharedTokens()
    key = b"k" * 32
    here = ConnectHub(buffer, buffer, clock, "here", token_key=key)  # type: ignore[arg-type]
    there = ConnectHub(buffer, buffer, clock, "there", token_key=key)  # type: ignore[arg-type]
    for hub in (here, there):
        hub.start()
        hub.register(OWNER, ChannelConfig(name="ch", token="t"))
    clock.advance(5)
    channel = there.channel("ch")
    assert channel is not None
    new, _ = _sync.successResultOf(Deferred.fromCoroutine(there.rotate(channel, 10)))
    clock.advance(5)  # the next sweep here reads the rotation
    buffer.in_redis["msg_9"] = "9-0"
    assert post_ack(here, clock, "sse_elsewhere_1", "?message_id=msg_9", token=new)[0] == 200
    assert post_ack(here, clock, "sse_elsewhere_1", "?message_id=msg_9", token="t")[0] == 404  # in its grace
    clock.advance(10)  # the grace is over: the old token no longer opens it
    assert post_ack(here, clock, "sse_elsewhere_1", "?message_id=msg_9", token="t")[0] == 401
    for hub in (here, there):
        hub.stop()


def test_a_nack_by_id_frees_only_the_slot_of_the_copy_it_settled() -> None:
    """The nack requeues msg_1 under a new stream id, and that copy is read and dispatched here
    before the nack's answer is handled: the copy stays in flight."""
    from cwm.connect.buffer import Buffered, Outcome

    class Requeues(RouteBuffer):
        async def give_back(self, channel: str, stream_id: str, max_deliveries: int, reason: str, now: float,
                            dead: bool = False, counted: bool = True) -> Outcome:
            self.calls.append(("give_back", stream_id, reason, dead, counted))
            if stream_id == "1-0":
                self.answer(Buffered("10-0", "msg_1", "hook", 1, 1, 1e12, {}))  # the copy, read at once
            return Outcome("requeued", 1, "10-0")

    clock = Clock()
    clock.advance(1000)
    buffer = Requeues()
    hub = ConnectHub(buffer, buffer, clock, "me")  # type: ignore[arg-type]
    hub.start()
    hub.register(OWNER, ChannelConfig(name="ch", token="t"))
    connection, received = open_connection(hub, "sse", window=2)
    buffer.in_redis["msg_1"] = "1-0"  # sent by another instance, in flight there
    assert post_ack(hub, clock, "sse_elsewhere_1", "?message_id=msg_1&status=nack") == (
        200, {"status": "ok", "message_id": "msg_1", "outcome": "requeued"})
    assert received == [1] and connection.in_flight["msg_1"].message.stream_id == "10-0"
    assert connection.nacked == 0
    hub.stop()
