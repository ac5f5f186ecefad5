"""Webhook Connect on one cwm instance: channels, connections, and the delivery loop.

Channels come from the configuration: a ``webhook_connect`` entry registers
its channel when it is built and releases it when it goes away, so a channel
exists (and a connector may attach) as soon as its config is loaded, whatever
the backend, and before any webhook arrived.

Messages live in Redis (``StreamBuffer``); this instance only tracks which of
its connections holds which message:

- **One reader per instance**, on its own Redis connection. It reads what
  waits, each channel no more than its connections here have free in-flight
  slots (``max_in_flight`` each; XREADGROUP has one COUNT for all its streams,
  so one command per distinct count). When nothing waits, a single blocking
  XREADGROUP with COUNT 1 over every channel with a free slot is the wake-up;
  the next round reads the rest. A slow connector only fills its own window;
  nothing waits on it. When a window opens on a channel the blocking read did
  not include, the read is woken with CLIENT UNBLOCK. Should the loop fail
  (Redis gone, or a bug), it is restarted with backoff and ``status()`` says
  so (``read_loop``).
- **In flight** until the connector acks or nacks it, or ``ack_timeout_seconds``
  passes (it is then given back and redelivered, counting as a delivery).
  ``max_deliveries`` sends it to the dead letters. A connection that goes
  away gives back what it held: WebSocket at once; SSE after a short grace in
  which a reconnect with ``Last-Event-ID`` takes them over; long-poll never
  (what a poll returned stays in flight until acked or timed out).
- **Several instances** share the Redis: connections are listed there too
  (refreshed by a sweep, so an instance that died drops out), which enforces
  ``max_connections`` across instances and gives every instance the same
  stats. Messages an instance read and never settled (it died) are reclaimed
  by any instance once idle past the ack timeout.
- **Acks reach any instance** (``settle_by_id``): behind a load balancer, an
  ack may land on an instance that does not hold the stream, or on a new one
  after the holder died. The message is found by its id in Redis and settled
  there; the holder notices within a tick (``_reconcile``) and frees the slot.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    FirstError,
    TimeoutError,
    gatherResults,
    maybeDeferred,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
import txredisapi

from cwm.connect.buffer import Buffered, ChannelCounts, StreamBuffer
from cwm.connect.channels import ChannelConfig, ChannelTokens, TokenState
from cwm.modules.base import ModuleUnavailable
from cwm.etcd.backoff import Backoff

T = TypeVar("T")

UNAVAILABLE_RETRY_AFTER = 5

CALL_TIMEOUT = 5.0
"""Seconds any one Redis call may take before the caller gets a 503."""
READ_BLOCK_MS = 5000
RESUME_GRACE = 15.0
"""Seconds an SSE connection's unacked messages wait for a reconnect with Last-Event-ID."""
RECLAIM_MARGIN = 5.0
"""Beyond the ack timeout, before another instance takes over a message (its owner's own sweep comes first)."""
REGISTRY_TTL = 30.0
"""A connection listed in Redis drops out this long after its instance last refreshed it."""
CONSUMER_FORGOTTEN_MS = 24 * 3600 * 1000
"""A consumer (instance) that held nothing for a day is removed from a channel's group."""
UNCONFIGURED_MAX_DELIVERIES = 1_000_000
TICK_SECONDS = 1.0
SWEEP_SECONDS = 5.0
TOKENS_FRESH_SECONDS = 3 * SWEEP_SECONDS
"""How long the rotated tokens last read (by the sweep, every ``SWEEP_SECONDS``) are trusted
for ``authorize_known``: a rotation on another instance is honoured here within about a sweep."""
LOOP_MAX_DELAY = 60.0
"""The longest a failing background loop (tick, sweep) waits before it is started again."""
STOP_TIMEOUT = 2 * CALL_TIMEOUT
"""Seconds ``stop`` waits for the read loop and a sweep under way to end."""
REPLAY_PAGE = 500
"""Dead letters a replay scans (and moves) per Redis call, each call with its own timeout."""

# Redis error replies that say "not now" rather than "wrong": worth a retry.
_TRANSIENT = frozenset({"OOM", "LOADING", "BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"})

Owner = tuple[str, str]
"""(namespace, webhook_id) of the entry that registered a channel."""
Sink = Callable[[list[Buffered]], None]


class ConnectUnavailable(ModuleUnavailable):
    """Redis did not answer in time, or is not connected: a 503 with Retry-After
    (to a connector, and to a webhook's sender through the ``webhook_connect`` module).

    Attributes:
        cause: What went wrong, for the log (the client gets the fixed detail).
    """

    def __init__(self, cause: str) -> None:
        super().__init__("Webhook Connect buffer unavailable", UNAVAILABLE_RETRY_AFTER)
        self.cause = cause


class SinkClosed(Exception):
    """A sink's transport is closing (its close is under way): nothing was sent."""


class NotInFlight(Exception):
    """The connection holds no such message (already settled, timed out, or never sent)."""


def _reason(error: BaseException) -> str:
    """A short reason for status pages: the error's text (Redis errors carry no secret), bounded."""
    text = error.cause if isinstance(error, ConnectUnavailable) else str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _follow(d: Deferred[Any]) -> Deferred[None]:
    """A Deferred that fires (with None) when ``d`` does, leaving ``d``'s own result alone."""
    follower: Deferred[None] = Deferred()

    def fired(result: Any) -> Any:
        if not follower.called:
            follower.callback(None)
        return result

    d.addBoth(fired)
    return follower


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _position(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (-1, -1)


@dataclass(frozen=True)
class Replayed:
    """What a dead-letter replay did; ``next_cursor`` is where one stopped by its limit goes on."""

    moved: int
    not_found: list[str]
    next_cursor: str | None


@dataclass
class InFlight:
    message: Buffered
    deadline: float


class Connection:
    """One connector's stream (or one long-poll) on this instance."""

    def __init__(
        self,
        connection_id: str,
        channel: str,
        protocol: str,
        connector_id: str,
        remote: str,
        token: str,
        connected_at: float,
        window: int,
    ) -> None:
        self.id = connection_id
        self.channel = channel
        self.protocol = protocol
        self.connector_id = connector_id
        self.remote = remote
        self.token = token
        self.connected_at = connected_at
        self.window = window
        self.in_flight: dict[str, InFlight] = {}
        self.sink: Sink | None = None
        self.closer: Callable[[str], None] | None = None
        self.held_until: float | None = None  # set once the client has gone
        self.last_sent = ""
        self.settled: deque[str] = deque(maxlen=max(16, 2 * window))  # recent stream ids, for resume
        self.sent = 0
        self.acked = 0
        self.nacked = 0
        self.last_activity = connected_at

    @property
    def attached(self) -> bool:
        return self.sink is not None

    def free(self) -> int:
        return self.window - len(self.in_flight) if self.sink is not None else 0

    def has_seen(self, stream_id: str) -> bool:
        """Whether this connection sent the message at ``stream_id`` (for Last-Event-ID)."""
        return (
            stream_id == self.last_sent
            or stream_id in self.settled
            or any(item.message.stream_id == stream_id for item in self.in_flight.values())
        )

    def record(self, instance: str, expires_at: float) -> dict[str, Any]:
        """As listed in Redis for every instance."""
        return {
            "connection_id": self.id,
            "connector_id": self.connector_id,
            "protocol": self.protocol,
            "instance": instance,
            "remote_address": self.remote,
            "connected_at": self.connected_at,
            "expires_at": expires_at,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "connection_id": self.id,
            "connector_id": self.connector_id,
            "protocol": self.protocol,
            "remote_address": self.remote,
            "connected_at": iso(self.connected_at),
            "last_activity_at": iso(self.last_activity),
            "in_flight": len(self.in_flight),
            "messages_sent": self.sent,
            "messages_acked": self.acked,
            "messages_nacked": self.nacked,
        }


@dataclass
class Channel:
    """One channel on this instance: the config entries that register it, and its connections here.

    Several entries may register one channel; the latest registration's
    settings apply. Once the last one is released the hub forgets the
    channel, but a call already holding it (a route or task between two
    awaits) still reads the settings it had last: ``config`` never fails.
    ``ready`` says its consumer group is known to exist; ``recovered`` that
    what this consumer held before a restart was given back.
    """

    name: str
    created_at: float
    registrations: dict[Owner, ChannelConfig] = field(default_factory=dict)
    connections: dict[str, Connection] = field(default_factory=dict)
    ready: bool = False  # its consumer group is known to exist
    recovered: bool = False  # what this consumer held before a restart was given back
    recovering: bool = False  # that give-back is under way
    expire_cursor: str = ""
    tokens: TokenState | None = None  # the rotated tokens as last read from Redis...
    tokens_read_at: float | None = None  # ...then (None: not read yet)
    last: tuple[Owner, ChannelConfig] | None = None  # the latest registration, kept after release

    @property
    def config(self) -> ChannelConfig:
        if self.registrations:
            return next(reversed(self.registrations.values()))  # the latest registration
        assert self.last is not None, "a channel is registered when it is made"
        return self.last[1]

    @property
    def webhook_id(self) -> str:
        if self.registrations:
            return next(reversed(self.registrations))[1]
        assert self.last is not None, "a channel is registered when it is made"
        return self.last[0][1]

    @property
    def webhook_ids(self) -> list[str]:
        return sorted({owner[1] for owner in self.registrations})

    def free(self) -> int:
        return sum(c.free() for c in self.connections.values())


class ConnectHub:
    """Channels and connections of this instance, over a shared ``StreamBuffer``."""

    _log = Logger()

    def __init__(
        self,
        buffer: StreamBuffer,
        reader: StreamBuffer,
        clock: IReactorTime,
        instance: str,
        connected: Callable[[], bool] = lambda: True,
        token_key: bytes | None = None,
    ) -> None:
        """
        Args:
            buffer: for every call but the blocking read (a connection pool).
            reader: on a connection of its own, for the blocking read.
            clock: the reactor's time.
            instance: this instance's consumer name in Redis.
            connected: whether the pool has a live Redis connection now (a
                publish then fails at once instead of waiting for the timeout).
            token_key: what rotated channel tokens are hashed with in Redis
                (``channels.token_key``); None: no rotation.
        """
        self._buffer = buffer
        self._reader = reader
        self._clock = clock
        self.instance = instance
        self._connected = connected
        self._tokens = ChannelTokens(token_key)
        self._channels: dict[str, Channel] = {}
        self._connections: dict[str, Connection] = {}
        self._running = False
        self._read: Deferred[Any] | None = None
        self._reading: frozenset[str] = frozenset()
        self._reader_client_id: str | None = None
        self._idle: Deferred[None] | None = None
        self._unblocking: IDelayedCall | None = None
        self._tick = LoopingCall(self._loop_step, "tick", lambda: self._on_tick())
        self._tick.clock = clock
        self._sweep = LoopingCall(self._loop_step, "sweep", lambda: self._sweep_once())
        self._sweep.clock = clock
        self._read_loop: Deferred[None] | None = None
        self._read_state = "stopped"
        self._read_error = "not started"
        self._read_restart: IDelayedCall | None = None
        self._loop_restarts: dict[str, IDelayedCall] = {}
        # Per background loop: the restart delays after failures, and whether it is failing now.
        self._loop_backoffs = {
            "tick": Backoff(initial=TICK_SECONDS, maximum=LOOP_MAX_DELAY, healthy_reset=LOOP_MAX_DELAY),
            "sweep": Backoff(initial=SWEEP_SECONDS, maximum=LOOP_MAX_DELAY, healthy_reset=LOOP_MAX_DELAY),
        }
        self._loops_failing: set[str] = set()
        self._reconciling = False
        self._backoff = Backoff(initial=0.5, maximum=5.0, healthy_reset=10.0)
        self._pending: set[Deferred[Any]] = set()
        self._lost_reads = False  # a read failed: Redis may hold messages for us whose reply was lost
        self._settling: set[str] = set()  # stream ids whose ack, nack or give-back is under way here
        self._sweeping: Deferred[None] | None = None
        self.buffer_ok = True
        self.last_error = ""

    # -- life cycle --------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self._start_loop("tick", self._tick, TICK_SECONDS, now=False)
        self._start_loop("sweep", self._sweep, SWEEP_SECONDS, now=True)
        self._start_read_loop()

    def _loop_step(self, name: str, body: Callable[[], Any]) -> Deferred[Any]:
        """One run of a background loop's body; a success ends a failure streak."""

        def worked(result: Any) -> Any:
            self._loop_backoffs[name].healthy(self._clock.seconds())
            if name in self._loops_failing:
                self._loops_failing.discard(name)
                self._log.info("Webhook Connect {loop} works again", loop=name)
            return result

        return maybeDeferred(body).addCallback(worked)

    def _start_loop(self, name: str, loop: LoopingCall, interval: float, now: bool) -> None:
        """Run a background LoopingCall; should its body fail, start it again after a backoff
        (at least ``interval``, growing to ``LOOP_MAX_DELAY``), logged once per failure streak."""
        self._loop_restarts.pop(name, None)
        if not self._running or loop.running:
            return

        def failed(failure: Failure) -> None:
            delay = max(interval, self._loop_backoffs[name].failed(self._clock.seconds()))
            if name not in self._loops_failing:
                self._loops_failing.add(name)
                self._log.failure("Webhook Connect {loop} failed; started again in {delay:g} s"
                                  " (failing again is not logged until it works)", failure, loop=name, delay=delay)
            if self._running:
                self._loop_restarts[name] = self._clock.callLater(
                    delay, self._start_loop, name, loop, interval, True
                )

        loop.start(interval, now=now).addErrback(failed)

    def _sweep_once(self) -> Deferred[None]:
        sweeping = self._sweeping = Deferred.fromCoroutine(self._sweep_redis())

        def done(result: Any) -> Any:
            if self._sweeping is sweeping:
                self._sweeping = None
            return result

        return sweeping.addBoth(done)

    def _start_read_loop(self) -> None:
        self._read_restart = None
        if not self._running:
            return
        self._read_state = "running"
        self._read_error = ""
        loop = self._read_loop = Deferred.fromCoroutine(self._read_forever())
        loop.addErrback(self._read_loop_failed)

    def _read_loop_failed(self, failure: Failure) -> None:
        """The read loop died (a bug, not Redis: those it retries itself): start it again, with backoff."""
        if not self._running or failure.check(CancelledError):
            return
        self._lost_reads = True
        delay = self._backoff.failed(self._clock.seconds())
        self._log.failure("Webhook Connect read loop failed; restarting in {delay:g} s", failure, delay=delay)
        self._read_state = "restarting"
        self._read_error = _reason(failure.value)
        self._read = None
        self._reading = frozenset()
        self._read_restart = self._clock.callLater(delay, self._start_read_loop)

    def stop(self) -> Deferred[None]:
        """Close every connection, give back what it held, stop reading."""
        self._running = False
        self._read_state, self._read_error = "stopped", "stopped"
        for loop in (self._tick, self._sweep):
            if loop.running:
                loop.stop()
        for call in [self._read_restart, *self._loop_restarts.values()]:
            if call is not None and call.active():
                call.cancel()
        self._read_restart = None
        self._loop_restarts.clear()
        for connection in list(self._connections.values()):
            self._close(connection, "server shutting down")
            self._detach(connection, hold=0)
        if self._idle is not None:
            self._idle.cancel()
        if self._read is not None:
            if self._reader_client_id is not None:
                # Woken rather than cancelled: what it was handed comes back and is given
                # back uncounted (a cancelled reply would leave it in flight until reclaimed).
                self._spawn(self._unblock_once(self._reader_client_id))
            else:
                self._read.cancel()
        if self._unblocking is not None and self._unblocking.active():
            self._unblocking.cancel()
        # The read loop (a read under way gives back what it brings) and a sweep in
        # progress end first, then what they and the closing connections spawned.
        loops = [d for d in (self._read_loop, self._sweeping) if d is not None and not d.called]
        ended: Deferred[Any] = DeferredList([_follow(d) for d in loops], consumeErrors=True)
        ended.addTimeout(STOP_TIMEOUT, self._clock)
        ended.addErrback(lambda _: None)  # bounded: what is still under way is reclaimed later

        def then_pending(_: Any) -> Deferred[Any]:
            return DeferredList(list(self._pending), consumeErrors=True)

        return ended.addCallback(then_pending).addCallback(lambda _: None)

    # -- channels ------------------------------------------------------------

    def register(self, owner: Owner, config: ChannelConfig) -> Callable[[], None]:
        """A config entry uses ``config.name``; returns the call that releases it.

        Several entries may feed one channel. The latest registration's
        settings are the channel's; entries that disagree are logged.
        """
        channel = self._channels.get(config.name)
        if channel is None:
            channel = self._channels[config.name] = Channel(config.name, self._clock.seconds())
        channel.registrations.pop(owner, None)
        others = list(channel.registrations.values())
        channel.registrations[owner] = config
        self._buffer.cap_dead_letters(config.name, config.dead_letter_max)
        channel.last = (owner, config)
        if any(other != config for other in others):
            self._log.warn(
                "channel {channel!r}: webhook {webhook_id!r} configures it differently from {others}; its settings apply",
                channel=config.name,
                webhook_id=owner[1],
                others=sorted(o[1] for o in channel.registrations if o != owner),
            )
        for connection in channel.connections.values():
            if connection.protocol != "long_poll":
                connection.window = config.max_in_flight
        if not channel.ready:
            self._spawn(self._ensure(channel))
        self._capacity_changed(channel)

        def release() -> None:
            current = self._channels.get(config.name)
            if current is None or current.registrations.get(owner) is not config:
                return
            del current.registrations[owner]
            if current.registrations:
                current.last = next(reversed(current.registrations.items()))
            self._buffer.cap_dead_letters(
                config.name, current.config.dead_letter_max if current.registrations else None
            )
            if not current.registrations:
                del self._channels[config.name]
                for connection in list(current.connections.values()):
                    self._close(connection, "channel removed from the configuration")
                    self._detach(connection, hold=0)

        return release

    def channel(self, name: str) -> Channel | None:
        return self._channels.get(name)

    def channels(self) -> list[Channel]:
        return [self._channels[name] for name in sorted(self._channels)]

    def connection(self, connection_id: str) -> Connection | None:
        return self._connections.get(connection_id)

    async def _ensure(self, channel: Channel) -> None:
        """Create the channel's group if needed; the first time, give back what a previous life held."""
        if channel.recovering:
            # Another call (registration, or the first sweep) is giving back what a
            # previous life held; once it is done it marks the channel ready. Going
            # on here could give back what this process has read since.
            return
        try:
            await self._call(self._buffer.ensure_channel(channel.name))
            if not channel.recovered:
                channel.recovering = True
                try:
                    # This consumer name is stable across restarts: whatever it
                    # holds now (the channel is not read before this is done),
                    # this process never sent.
                    await self._give_back_held(channel, "instance restarted", counted=True, source=self._buffer)
                finally:
                    channel.recovering = False
                channel.recovered = True
        except ConnectUnavailable:
            return  # the sweep tries again
        channel.ready = True
        self._capacity_changed(channel)

    async def _give_back_held(self, channel: Channel, reason: str, counted: bool, source: StreamBuffer) -> int:
        """Give back what this consumer holds in Redis on ``channel`` and no connection here
        has in flight (nor is settling); how many. Raises ConnectUnavailable.

        ``source`` is the connection that asks Redis what is held: after a lost read,
        the reader's own, so the answer comes after every read it had sent."""
        held = await self._call(source.held_by_me(channel.name))
        mine = {
            item.message.stream_id for c in channel.connections.values() for item in c.in_flight.values()
        } | self._settling
        given = 0
        for stream_id in held:
            if stream_id in mine:
                continue
            await self._call(
                self._buffer.give_back(
                    channel.name, stream_id, channel.config.max_deliveries, reason, self._clock.seconds(),
                    counted=counted,
                )
            )
            given += 1
        return given

    async def _recover_lost_reads(self) -> bool:
        """After a read whose reply was lost (a timeout, a failure of one of its commands):
        what Redis handed this consumer that no connection here holds goes back, uncounted
        (it was never sent). False when Redis could not be asked (tried again later)."""
        if self._sweeping is not None:
            # Its reclaim moves other instances' abandoned messages to this consumer and gives
            # them back counted: let it finish, so those are not taken for lost reads.
            await _follow(self._sweeping)
        for channel in list(self._channels.values()):
            if not channel.ready:
                continue  # its give-back at start-up (``_ensure``) comes first
            try:
                given = await self._give_back_held(channel, "read reply lost", counted=False, source=self._reader)
            except ConnectUnavailable:
                return False
            except txredisapi.ResponseError as e:
                if "NOGROUP" in str(e):
                    continue  # the stream is gone: nothing is held there
                raise
            if given:
                self._log.info(
                    "channel {channel!r}: {count} message(s) read while the reply was lost given back",
                    channel=channel.name,
                    count=given,
                )
        return True

    # -- tokens ----------------------------------------------------------------

    async def token_state(self, channel: Channel) -> TokenState | None:
        """The channel's rotated tokens; an entry an older cwm left in plain text is hashed in place."""
        config_token = channel.config.token
        state = TokenState.from_redis(await self._call(self._buffer.tokens(channel.name)))
        if state is not None and not state.hashed and self._tokens.can_hash:
            hashed = self._tokens.migrate(state, config_token)
            # Only if the entry is still the one read (a rotation meanwhile wins).
            if await self._call(self._buffer.store_tokens(channel.name, hashed.as_redis(), replacing=state.current)):
                self._log.info("channel {channel!r}: rotated tokens found in plain text now stored hashed",
                               channel=channel.name)
            state = hashed
        channel.tokens, channel.tokens_read_at = state, self._clock.seconds()
        return state

    async def authorize(self, channel: Channel, token: str) -> bool:
        """Whether ``token`` opens ``channel`` now (the configured or rotated tokens)."""
        state = await self.token_state(channel)
        return self._tokens.accepted(token, channel.config.token, state, self._clock.seconds(), channel.name)

    def authorize_known(self, channel: Channel, token: str) -> bool | None:
        """``authorize`` without Redis, from the tokens the sweep last read; None when those
        are not known or older than ``TOKENS_FRESH_SECONDS`` (ask ``authorize``)."""
        now = self._clock.seconds()
        if channel.tokens_read_at is None or now - channel.tokens_read_at > TOKENS_FRESH_SECONDS:
            return None
        return self._tokens.accepted(token, channel.config.token, channel.tokens, now, channel.name)

    async def rotate(self, channel: Channel, grace_seconds: float) -> tuple[str, TokenState]:
        """A new token for the channel, on every instance; the old one works for ``grace_seconds``.

        Returns the new token (only its hash is stored) and the stored state.
        """
        state = await self.token_state(channel)
        token, rotated = self._tokens.rotate(channel.config.token, state, self._clock.seconds(), grace_seconds)
        await self._call(self._buffer.store_tokens(channel.name, rotated.as_redis()))
        channel.tokens, channel.tokens_read_at = rotated, self._clock.seconds()
        return token, rotated

    # -- publishing ----------------------------------------------------------

    async def publish(
        self, config: ChannelConfig, webhook_id: str, message_id: str, envelope: dict[str, Any] | bytes, now: float
    ) -> tuple[int, str] | None:
        """Queue one message; (sequence, stream id), or None when the channel is full.

        Raises:
            ConnectUnavailable: Redis is not reachable; nothing was stored.
        """
        if not self._connected():
            raise ConnectUnavailable("not connected to Redis")
        return await self._call(
            self._buffer.publish(
                config.name, message_id, webhook_id, now + config.ttl_seconds, envelope, config.max_queue_size
            )
        )

    # -- connections ---------------------------------------------------------

    async def connect(
        self, channel: Channel, protocol: str, connector_id: str, remote: str, token: str, window: int
    ) -> Connection | None:
        """Open a connection (not yet receiving: see ``attach``); None past ``max_connections``."""
        now = self._clock.seconds()
        prefix = {"websocket": "wsc", "sse": "sse", "long_poll": "poll"}[protocol]
        connection = Connection(
            f"{prefix}_{uuid.uuid4().hex[:16]}_{int(now)}",
            channel.name,
            protocol,
            connector_id,
            remote,
            token,
            now,
            window,
        )
        record = connection.record(self.instance, now + REGISTRY_TTL)
        joining = Deferred.fromCoroutine(
            self._call(self._buffer.join(channel.name, connection.id, record, channel.config.max_connections, now))
        )
        answer: Deferred[bool] = Deferred()  # cancelling it (the client went away) leaves the join to finish

        def joined_or_not(result: bool | Failure) -> None:
            if not answer.called:
                answer.callback(result)  # a Failure goes down the errback chain
            elif result is True or (isinstance(result, Failure) and result.check(ConnectUnavailable)):
                # Nobody waits for it any more: take it back, after it landed (or, when Redis
                # did not answer in time, in case it landed all the same).
                self._spawn(self._leave(channel.name, connection.id))

        joining.addBoth(joined_or_not)
        try:
            joined = await answer
        except ConnectUnavailable:
            self._spawn(self._leave(channel.name, connection.id))  # in case it lands after the timeout
            raise
        if not joined:
            return None
        current = self._channels.get(channel.name)
        if current is None:  # the channel went away meanwhile
            self._spawn(self._leave(channel.name, connection.id))
            return None
        current.connections[connection.id] = connection
        self._connections[connection.id] = connection
        self._log.info(
            "connector {connector_id!r} connected to channel {channel!r} over {protocol} as {connection_id}",
            connector_id=connector_id,
            channel=channel.name,
            protocol=protocol,
            connection_id=connection.id,
        )
        return connection

    def attach(self, connection: Connection, sink: Sink, closer: Callable[[str], None]) -> None:
        """Start sending messages to the connection."""
        if connection.id not in self._connections:
            return
        connection.sink = sink
        connection.closer = closer
        self._capacity_changed(self._channels.get(connection.channel))

    def resume(self, connection: Connection, last_event_id: str) -> int:
        """Take over what an earlier SSE connection sent up to ``last_event_id``.

        The earlier connection's messages at or before that position reached
        the client: they wait for its ack here, unsent. The ones after it are
        sent again on this connection. Returns how many were taken over.
        """
        channel = self._channels.get(connection.channel)
        if channel is None or not last_event_id:
            return 0
        previous = next(
            (
                c
                for c in channel.connections.values()
                if c is not connection and c.protocol == "sse" and c.has_seen(last_event_id)
            ),
            None,
        )
        if previous is None:
            return 0
        if previous.attached:
            self._close(previous, "resumed by another connection")
        self._remove(previous)
        mark = _position(last_event_id)
        resend: list[Buffered] = []
        for message_id, item in sorted(previous.in_flight.items(), key=lambda kv: _position(kv[1].message.stream_id)):
            connection.in_flight[message_id] = item
            if _position(item.message.stream_id) > mark:
                resend.append(item.message)
        previous.in_flight.clear()
        if resend and connection.sink is not None:
            self._send(connection, resend)
        self._log.info(
            "connection {connection_id} resumed {previous_id} after {last_event_id}: {taken} in flight, {resent} sent again",
            connection_id=connection.id,
            previous_id=previous.id,
            last_event_id=last_event_id,
            taken=len(connection.in_flight),
            resent=len(resend),
        )
        return len(connection.in_flight)

    def disconnect(self, connection: Connection, hold: float | None = 0.0) -> None:
        """The client went away (or the poll was answered).

        Args:
            hold: 0 gives back every message it held now; a number of seconds
                keeps them for a resume that long; None keeps each until its
                ack or its ack timeout (long-poll).
        """
        self._detach(connection, hold)

    def close(self, connection_id: str, reason: str) -> bool:
        """Close a connection of this instance (admin); False if it is not here."""
        connection = self._connections.get(connection_id)
        if connection is None or not connection.attached:
            return False
        self._close(connection, reason)
        self._detach(connection, hold=0)
        return True

    def _close(self, connection: Connection, reason: str) -> None:
        closer = connection.closer
        connection.closer = None
        if closer is not None:
            try:
                closer(reason)
            except Exception:
                self._log.failure("closing connection {connection_id} failed", connection_id=connection.id)

    def _detach(self, connection: Connection, hold: float | None) -> None:
        if connection.id not in self._connections:
            return
        was_attached = connection.sink is not None or connection.held_until is None
        connection.sink = None
        connection.closer = None
        if was_attached:
            self._spawn(self._leave(connection.channel, connection.id))
            self._log.info(
                "connection {connection_id} on channel {channel!r} closed; {held} message(s) in flight",
                connection_id=connection.id,
                channel=connection.channel,
                held=len(connection.in_flight),
            )
        if hold == 0 or not connection.in_flight:
            self._give_back_all(connection, "connection closed")
            self._remove(connection)
        else:
            connection.held_until = float("inf") if hold is None else self._clock.seconds() + hold

    def _remove(self, connection: Connection) -> None:
        self._connections.pop(connection.id, None)
        channel = self._channels.get(connection.channel)
        if channel is not None:
            channel.connections.pop(connection.id, None)

    async def _leave(self, channel: str, connection_id: str) -> None:
        try:
            await self._call(self._buffer.leave(channel, connection_id))
        except ConnectUnavailable:
            pass  # the entry expires by itself (REGISTRY_TTL)

    # -- settling --------------------------------------------------------------

    async def settle(self, connection: Connection, message_id: str, ack: bool, retry: bool = True, reason: str = "") -> str:
        """Ack or nack a message the connection holds.

        Returns ``acked``, ``requeued``, ``dead_lettered``, or ``gone`` (it had
        already been settled elsewhere, e.g. reclaimed after a timeout).

        Raises:
            NotInFlight: the connection does not hold it.
            ConnectUnavailable: Redis did not answer; it is still in flight
                and the ack may be repeated.
        """
        item = connection.in_flight.pop(message_id, None)
        if item is None:
            raise NotInFlight(message_id)
        self._settling.add(item.message.stream_id)
        try:
            if ack:
                acked = await self._call(self._buffer.ack(connection.channel, item.message.stream_id))
                if not acked:
                    # Not in flight at that stream id: it may have been requeued under a new one
                    # meanwhile (a nack or a reclaim elsewhere); then it is still queued, and the
                    # connector did handle it.
                    acked = await self._call(self._buffer.ack_message(connection.channel, message_id))
                outcome = "acked" if acked else "gone"
            else:
                result = await self._call(
                    self._buffer.give_back(
                        connection.channel,
                        item.message.stream_id,
                        self._max_deliveries(connection.channel),
                        reason or ("nack" if retry else "nack without retry"),
                        self._clock.seconds(),
                        dead=not retry,
                    )
                )
                outcome = result.state
        except (ConnectUnavailable, CancelledError):
            # Not recorded, or not known to be: still in flight, and the ack may be repeated.
            if connection.id in self._connections:
                connection.in_flight[message_id] = item
            raise
        finally:
            self._settling.discard(item.message.stream_id)
        connection.last_activity = self._clock.seconds()
        self._count_settled(connection, item, ack)
        return outcome

    async def settle_anywhere(self, connection: Connection, message_id: str, ack: bool, retry: bool = True,
                              reason: str = "") -> str:
        """``settle`` on the connection; for a message it does not hold (sent on an earlier
        connection, or given back meanwhile), ``settle_by_id`` on its channel."""
        try:
            return await self.settle(connection, message_id, ack, retry, reason)
        except NotInFlight:
            channel = self._channels.get(connection.channel)
            if channel is None:
                raise
            return await self.settle_by_id(channel, message_id, ack, retry, reason)

    async def settle_by_id(self, channel: Channel, message_id: str, ack: bool, retry: bool = True,
                           reason: str = "") -> str:
        """Ack or nack a message of the channel by its id, whichever connection or instance holds it.

        For an ack that reaches an instance other than the one holding the
        stream (a load balancer; the holder died), or a connection other than
        the one it was sent on. An ack also settles a message given back
        meanwhile (the connector did handle it). The holder, if alive, frees
        its slot on its next tick.

        Raises:
            NotInFlight: the channel holds no such message (already settled).
            ConnectUnavailable: Redis did not answer; the call may be repeated.
        """
        stream_id: str | None
        if ack:
            stream_id = await self._call(self._buffer.ack_message_at(channel.name, message_id))
            if stream_id is None:
                raise NotInFlight(message_id)
            outcome = "acked"
        else:
            stream_id = await self._call(self._buffer.stream_id_of(channel.name, message_id))
            if stream_id is None:
                raise NotInFlight(message_id)
            result = await self._call(
                self._buffer.give_back(
                    channel.name, stream_id, self._max_deliveries(channel.name),
                    reason or ("nack" if retry else "nack without retry"), self._clock.seconds(), dead=not retry,
                )
            )
            if result.state == "gone":
                raise NotInFlight(message_id)  # waiting, not in flight: nothing to nack
            outcome = result.state
        for connection in list(channel.connections.values()):
            item = connection.in_flight.get(message_id)
            # Only the copy just settled: one requeued under a new stream id (and perhaps
            # dispatched again meanwhile) is another delivery, still in flight.
            if item is not None and item.message.stream_id == stream_id:
                self._settled_elsewhere(connection, message_id, ack)
        return outcome

    def _settled_elsewhere(self, connection: Connection, message_id: str, ack: bool) -> None:
        """Another instance (or connection) settled a message this connection holds: free its slot."""
        item = connection.in_flight.pop(message_id, None)
        if item is not None:
            self._count_settled(connection, item, ack)

    def _count_settled(self, connection: Connection, item: InFlight, ack: bool) -> None:
        """A message ``connection`` held is settled: count it, and free its slot (or the
        connection, when it was only kept for its last acks)."""
        connection.settled.append(item.message.stream_id)
        if ack:
            connection.acked += 1
        else:
            connection.nacked += 1
        if connection.held_until is not None and not connection.in_flight:
            self._remove(connection)
        else:
            self._capacity_changed(self._channels.get(connection.channel))

    async def _reconcile(self) -> None:
        """Drop from the local windows what is no longer in flight in Redis (settled by another instance)."""
        if self._reconciling:
            return
        self._reconciling = True
        try:
            for channel in list(self._channels.values()):
                held = {
                    item.message.stream_id: (connection, message_id)
                    for connection in channel.connections.values()
                    for message_id, item in connection.in_flight.items()
                }
                if not held:
                    continue
                try:
                    gone = await self._call(self._buffer.not_pending(channel.name, list(held)))
                except ConnectUnavailable:
                    return  # tried again next tick
                except txredisapi.ResponseError as e:
                    if "NOGROUP" in str(e):
                        return  # the stream is gone (Redis emptied): the read loop makes it again
                    raise
                for stream_id in gone:
                    connection, message_id = held[stream_id]
                    item = connection.in_flight.get(message_id)
                    if item is not None and item.message.stream_id == stream_id:
                        self._settled_elsewhere(connection, message_id, ack=True)
        finally:
            self._reconciling = False

    def _give_back_all(self, connection: Connection, reason: str) -> None:
        items = list(connection.in_flight.values())
        connection.in_flight.clear()
        for item in items:
            self._spawn(self._give_back(connection.channel, item.message, reason))

    def _max_deliveries(self, channel_name: str) -> int:
        """The channel's limit; a channel no longer configured keeps its messages (it may come back)."""
        channel = self._channels.get(channel_name)
        return channel.config.max_deliveries if channel is not None else UNCONFIGURED_MAX_DELIVERIES

    async def _give_back(self, channel_name: str, message: Buffered, reason: str, counted: bool = True) -> None:
        self._settling.add(message.stream_id)  # not for the lost-read give-back (_give_back_held)
        try:
            await self._call(
                self._buffer.give_back(
                    channel_name,
                    message.stream_id,
                    self._max_deliveries(channel_name),
                    reason,
                    self._clock.seconds(),
                    counted=counted,
                )
            )
        except ConnectUnavailable:
            # Still in flight in Redis: reclaimed after the ack timeout.
            self._log.warn(
                "could not give back message {message_id} ({reason}): Redis unavailable; it is reclaimed later",
                message_id=message.message_id,
                reason=reason,
            )
        finally:
            self._settling.discard(message.stream_id)

    def _on_tick(self) -> None:
        try:
            self._expire_local()
        except Exception:
            self._log.failure("Webhook Connect ack-timeout check failed")
        if any(c.in_flight for c in self._connections.values()):
            self._spawn(self._reconcile())

    def _expire_local(self) -> None:
        """Give back what waited past its ack timeout; end resume grace periods."""
        now = self._clock.seconds()
        for connection in list(self._connections.values()):
            if connection.held_until is not None and now >= connection.held_until:
                self._give_back_all(connection, "connection closed")
                self._remove(connection)
                continue
            late = [mid for mid, item in connection.in_flight.items() if item.deadline <= now]
            for message_id in late:
                item = connection.in_flight.pop(message_id)
                self._log.info(
                    "message {message_id} on channel {channel!r}: no ack from {connection_id} in time; given back",
                    message_id=message_id,
                    channel=connection.channel,
                    connection_id=connection.id,
                )
                self._spawn(self._give_back(connection.channel, item.message, "ack timeout"))
            if late:
                if connection.held_until is not None and not connection.in_flight:
                    self._remove(connection)
                else:
                    self._capacity_changed(self._channels.get(connection.channel))

    # -- reading and dispatching ---------------------------------------------

    def _wanted(self) -> dict[str, int]:
        return {
            name: free
            for name, channel in self._channels.items()
            if channel.ready and (free := channel.free()) > 0
        }

    def _capacity_changed(self, channel: Channel | None) -> None:
        if channel is None or not self._running or not channel.ready or channel.free() <= 0:
            return
        if self._idle is not None:
            idle, self._idle = self._idle, None
            idle.callback(None)
        elif self._read is not None and channel.name not in self._reading:
            self._unblock()

    def _unblock(self, attempts: int = 3) -> None:
        """Wake the blocking read (it is then issued again with the new windows)."""
        if self._reader_client_id is None or self._read is None:
            return
        if self._unblocking is not None and self._unblocking.active():
            return
        self._spawn(self._unblock_once(self._reader_client_id))
        if attempts > 1:
            # Should the wake reach Redis before the read it is meant for.
            self._unblocking = self._clock.callLater(0.2, self._unblock, attempts - 1)

    async def _unblock_once(self, client_id: str) -> None:
        try:
            await self._call(self._buffer.unblock(client_id))
        except ConnectUnavailable:
            pass

    async def _read_forever(self) -> None:
        while self._running:
            if self._lost_reads:
                # A read failed or timed out: Redis may have handed this consumer messages
                # whose reply never came. Give them back before reading again.
                if not await self._recover_lost_reads():
                    if not await self._pause(self._backoff.failed(self._clock.seconds())):
                        return
                    continue
                self._lost_reads = False
            wanted = self._wanted()
            if not wanted:
                if not await self._pause(None):
                    return
                continue
            try:
                # What waits, each channel no more than it can take now.
                messages = await self._call(self._reader.read(wanted))
                if not messages and (wanted := self._wanted()):
                    # Nothing waits: wait for the first new message (at most one per stream).
                    messages = await self._read_blocking(wanted)
            except CancelledError:
                self._lost_reads = True
                if not self._running:
                    return
                messages = []
            except (ConnectUnavailable, txredisapi.ResponseError) as e:
                # Redis away, or a group gone (Redis restarted empty): retried here. Anything
                # else is a bug that ends this loop; it is then restarted (_read_loop_failed).
                self._lost_reads = True
                if isinstance(e, txredisapi.ResponseError) and "NOGROUP" not in str(e):
                    raise
                self._reader_failed(e)
                if not await self._pause(self._backoff.failed(self._clock.seconds())):
                    return
                continue
            self._backoff.healthy(self._clock.seconds())
            if not self.buffer_ok or self._read_state != "running":
                self._log.info("Webhook Connect reads from Redis again")
            self.buffer_ok = True
            self._read_state, self._read_error = "running", ""
            if not self._running:
                # Stopped while the read was under way: nobody here will send these.
                for channel_name, message in messages:
                    self._spawn(self._give_back(channel_name, message, "server shutting down", counted=False))
                return
            self._dispatch(messages)

    async def _read_blocking(self, wanted: dict[str, int]) -> list[tuple[str, Buffered]]:
        """The wake-up: a blocking read over every wanted channel; CLIENT UNBLOCK ends it early."""
        self._reading = frozenset(wanted)
        client_id, found = self._reader.read_blocking(wanted, READ_BLOCK_MS)
        self._read = found

        def known(value: str) -> str:
            self._reader_client_id = value
            return value

        client_id.addCallback(known)
        # Both replies under one deadline; a failure of either is consumed here (never an
        # "Unhandled error in Deferred"), and a timeout cancels both.
        both: Deferred[list[Any]] = gatherResults([client_id, found], consumeErrors=True)
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            both.cancel()  # cancels each of the two

        deadline = self._clock.callLater(READ_BLOCK_MS / 1000 + CALL_TIMEOUT, expire)
        try:
            _, messages = await both
            return messages
        except FirstError as e:
            error = e.subFailure.value
            if expired:
                raise ConnectUnavailable("Redis did not answer the blocking read in time") from None
            if isinstance(error, (TimeoutError, txredisapi.ConnectionError)):
                raise ConnectUnavailable(_reason(error)) from None
            if isinstance(error, txredisapi.ResponseError) and str(error).split(" ", 1)[0] in _TRANSIENT:
                raise ConnectUnavailable(str(error)) from None  # e.g. LOADING, BUSY: retried
            e.subFailure.raiseException()
            raise  # not reached
        finally:
            if deadline.active():
                deadline.cancel()
            self._read = None
            self._reading = frozenset()
            if self._unblocking is not None and self._unblocking.active():
                self._unblocking.cancel()

    async def _pause(self, delay: float | None) -> bool:
        """Wait ``delay`` seconds (None: no limit) or until a window opens; False once stopped."""
        if not self._running:
            return False
        wait: Deferred[None] = Deferred()
        self._idle = wait

        def wake() -> None:
            if self._idle is wait:
                self._idle = None
                wait.callback(None)

        call = self._clock.callLater(delay, wake) if delay is not None else None
        try:
            await wait
        except CancelledError:
            return False
        finally:
            if call is not None and call.active():
                call.cancel()
        return self._running

    def _reader_failed(self, error: Exception) -> None:
        text = _reason(error)
        if "NOGROUP" in text:
            for channel in self._channels.values():
                channel.ready = False
                self._spawn(self._ensure(channel))
        if self.buffer_ok or text != self.last_error:
            self._log.warn("Webhook Connect cannot read from Redis: {error}", error=text)
        self.buffer_ok = False
        self.last_error = text
        self._read_state, self._read_error = "restarting", text

    def _dispatch(self, found: Iterable[tuple[str, Buffered]]) -> None:
        now = self._clock.seconds()
        batches: dict[str, tuple[Connection, list[Buffered]]] = {}
        for channel_name, message in found:
            channel = self._channels.get(channel_name)
            if message.expires_at <= now:
                self._spawn(self._expire(channel_name, message))
                continue
            target = None
            if channel is not None:
                target = max(channel.connections.values(), key=Connection.free, default=None)
            if target is None or target.free() <= 0 or channel is None:
                self._spawn(self._give_back(channel_name, message, "no capacity", counted=False))
                continue
            target.in_flight[message.message_id] = InFlight(message, now + channel.config.ack_timeout_seconds)
            batches.setdefault(target.id, (target, []))[1].append(message)
        for connection, messages in batches.values():
            self._send(connection, messages)

    def _send(self, connection: Connection, messages: list[Buffered]) -> None:
        """Hand each message to the connection's sink. One that cannot be sent is given back
        alone (counted as a failed delivery of that message only); the others go on. A sink
        that is closing (``SinkClosed``) sent nothing: given back uncounted."""
        for message in messages:
            sink = connection.sink
            if sink is None:
                return  # closed meanwhile: what it holds was given back with it
            try:
                sink([message])
            except SinkClosed:
                # Closing: the close gives back what it held; this one was never sent.
                if connection.in_flight.pop(message.message_id, None) is not None:
                    self._spawn(self._give_back(connection.channel, message, "connection closing", counted=False))
                continue
            except Exception:
                self._log.failure(
                    "sending message {message_id} to connection {connection_id} failed; given back",
                    message_id=message.message_id,
                    connection_id=connection.id,
                )
                if connection.in_flight.pop(message.message_id, None) is not None:
                    self._spawn(self._give_back(connection.channel, message, "send failed"))
                continue
            connection.last_sent = message.stream_id
            connection.sent += 1
            connection.last_activity = self._clock.seconds()

    async def _expire(self, channel: str, message: Buffered) -> None:
        try:
            await self._call(self._buffer.expire(channel, message.stream_id, self._clock.seconds()))
        except ConnectUnavailable:
            pass

    # -- the sweep -----------------------------------------------------------

    async def _sweep_redis(self) -> None:
        """Per channel: make sure it exists, reclaim abandoned messages, expire old ones, list connections."""
        now = self._clock.seconds()
        for channel in list(self._channels.values()):
            try:
                if not channel.ready:
                    await self._ensure(channel)
                    if not channel.ready:
                        continue
                config = channel.config
                idle_ms = int((config.ack_timeout_seconds + RECLAIM_MARGIN) * 1000)
                reclaimed = await self._call(self._buffer.reclaim(channel.name, idle_ms, config.max_deliveries, now))
                if reclaimed:
                    self._log.info(
                        "channel {channel!r}: {count} message(s) left unacked past the ack timeout given back",
                        channel=channel.name,
                        count=len(reclaimed),
                    )
                _, channel.expire_cursor = await self._call(
                    self._buffer.expire_waiting(channel.name, now, channel.expire_cursor)
                )
                await self._call(self._buffer.forget_idle_consumers(channel.name, CONSUMER_FORGOTTEN_MS))
                await self.token_state(channel)  # for authorize_known: rotations on other instances
                records = {
                    c.id: c.record(self.instance, now + REGISTRY_TTL)
                    for c in channel.connections.values()
                    if c.attached
                }
                for kicked in await self._call(self._buffer.refresh(channel.name, records)):
                    self.close(kicked, "disconnected by an administrator")
            except ConnectUnavailable:
                return
            except Exception:
                self._log.failure("Webhook Connect sweep of channel {channel!r} failed", channel=channel.name)

    # -- stats -----------------------------------------------------------------

    async def counts(self, channel: Channel) -> ChannelCounts:
        """Message counts of the channel, from Redis (every instance's)."""
        return await self._call(self._buffer.counts(channel.name))

    async def dead_letters(self, channel: Channel, limit: int, cursor: str = "") -> tuple[list[bytes], str | None]:
        """A page of dead letters (each one JSON object's bytes), newest first, and the cursor
        of the next page (None: the last)."""
        return await self._call(self._buffer.dead_letters(channel.name, limit, cursor))

    async def replay(
        self, channel: Channel, message_ids: list[str] | None, limit: int | None = None, cursor: str = ""
    ) -> Replayed:
        """Dead letters back to the queue: all, or those with these message ids; at most ``limit``.

        Goes through the dead letters oldest first, ``REPLAY_PAGE`` per Redis
        call (each under its own timeout), after ``cursor`` and up to the
        newest one at the start: letters dead-lettered meanwhile wait for the
        next replay, so a connector failing them again cannot keep it going.
        """
        name, ttl = channel.name, channel.config.ttl_seconds
        wanted = None if message_ids is None else set(message_ids)
        until = await self._call(self._buffer.last_dead_letter(name))
        moved = 0
        while until and cursor != until and (wanted is None or wanted):
            page = await self._call(self._buffer.dead_letter_ids(name, cursor, until, REPLAY_PAGE))
            if not page:
                break
            chosen = [(dead_id, mid) for dead_id, mid in page if wanted is None or mid in wanted]
            budget = None if limit is None else limit - moved
            cut = budget is not None and len(chosen) > budget
            if cut:
                chosen = chosen[:budget]
            moved += await self._call(
                self._buffer.replay(name, [dead_id for dead_id, _ in chosen], ttl, self._clock.seconds())
            )
            if wanted is not None:
                wanted.difference_update(mid for _, mid in chosen)
            cursor = chosen[-1][0] if cut else page[-1][0]
            if len(page) < REPLAY_PAGE and not cut:
                break
            if limit is not None and moved >= limit and cursor != until:
                return Replayed(moved, [], cursor)
        missing = [m for m in message_ids if m in wanted] if message_ids is not None and wanted else []
        return Replayed(moved, missing, None)

    async def clients(self, channel: Channel) -> list[dict[str, Any]]:
        """The channel's live connections on every instance."""
        return await self._call(self._buffer.connections(channel.name, self._clock.seconds()))

    async def purge(self, channel: Channel) -> int:
        return await self._call(self._buffer.purge(channel.name))

    async def kick(self, channel: Channel, connection_id: str) -> None:
        await self._call(self._buffer.kick(channel.name, connection_id))

    def status(self) -> dict[str, Any]:
        """For health and readiness: ``read_loop`` is ``running``, ``restarting`` (after a
        failure, while backing off) or ``stopped``; ``read_loop_error`` says why when not running."""
        status: dict[str, Any] = {
            "buffer": self.buffer_ok and self._connected(),
            "channels_count": len(self._channels),
            "connections_count": sum(1 for c in self._connections.values() if c.attached),
            "read_loop": self._read_state,
        }
        if self._read_state != "running":
            status["read_loop_error"] = self._read_error or self._read_state
        return status

    # -- plumbing --------------------------------------------------------------

    async def _call(self, work: Coroutine[Any, Any, T]) -> T:
        """Run one buffer call with the timeout every Redis call has."""
        d: Deferred[T] = Deferred.fromCoroutine(work)
        d.addTimeout(CALL_TIMEOUT, self._clock)
        try:
            return await d
        except TimeoutError:
            raise ConnectUnavailable(f"Redis did not answer within {CALL_TIMEOUT:g} s") from None
        except CancelledError:
            raise  # the caller went away (a client closed its request): not Redis's doing
        except txredisapi.ConnectionError as e:
            raise ConnectUnavailable(str(e) or "not connected to Redis") from None
        except txredisapi.ResponseError as e:
            if str(e).split(" ", 1)[0] in _TRANSIENT:
                raise ConnectUnavailable(str(e)) from None
            raise

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        d: Deferred[None] = Deferred.fromCoroutine(work)
        if d.called:
            d.addErrback(lambda f: self._log.failure("Webhook Connect task failed", f))
            return
        self._pending.add(d)

        def done(result: Any) -> None:
            self._pending.discard(d)
            if isinstance(result, Failure) and not result.check(CancelledError):
                self._log.failure("Webhook Connect task failed", result)

        d.addBoth(done)
