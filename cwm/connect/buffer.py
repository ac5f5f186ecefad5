"""The durable buffer of Webhook Connect: one Redis stream per channel, one consumer group.

Every state change of a message is one Lua script, so it is atomic on the
Redis side and two cwm instances sharing a Redis never disagree:

- ``publish``: refused when the channel already holds ``max_queue_size``
  messages (waiting + in flight), else XADD with the next sequence number.
- ``read``: XREADGROUP hands waiting messages to this instance's consumer;
  they stay in the group's pending list (in flight) until settled.
- ``ack``: XACK + XDEL, counted as delivered.
- ``give_back``: XACK + XDEL + XADD again at the tail with its delivery count
  raised (nack with retry, a connection that went away, an ack timeout), or
  into the channel's dead-letter stream once ``max_deliveries`` is reached or
  when the nack said not to retry. That stream keeps the channel's newest
  ``dead_letter_max`` letters: older ones are dropped, and counted.
- ``reclaim``: XAUTOCLAIM of messages in flight longer than the ack timeout,
  whichever instance read them (so an instance that died loses nothing);
  each is given back as a failed delivery.
- ``expire``: a message past its ``expires_at`` is dropped and counted.
- ``ack_message``: an ack by message id (the connector's), from any
  instance: the channel's ``ids`` hash maps each queued message id to its
  current stream id, kept by every script that moves a message.

Keys of one channel share a hash tag (``{prefix}:{channel}``), so the
scripts also run on Redis Cluster.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]
from json.encoder import encode_basestring_ascii
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger

from cwm.body import encode_in_pieces
from cwm.connect.channels import DEAD_LETTER_MAX
from cwm.errors import ConfigError

_log = Logger(namespace="cwm.connect.buffer")

GROUP = "cwm"

_PUBLISH = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return {0, ''} end
local seq = redis.call('INCR', KEYS[2])
local id = redis.call('XADD', KEYS[1], '*', 'mid', ARGV[2], 'wid', ARGV[3], 'exp', ARGV[4],
  'seq', seq, 'n', 0, 'env', ARGV[5])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
redis.call('HSET', KEYS[4], ARGV[2], id)
return {seq, id}
"""

# Shared by the scripts below: a flat field list as a table; one entry by id
# (or nil); a message settled (counted, and no longer pending for its webhook).
_ENTRY = """
local function fields(flat)
  local m = {}
  for i = 1, #flat, 2 do m[flat[i]] = flat[i + 1] end
  return m
end
local function entry(key, id)
  local found = redis.call('XRANGE', key, id, id)
  if #found == 0 then return nil end
  return fields(found[1][2])
end
local function settled(counts, stat, wid)
  redis.call('HINCRBY', counts, stat, 1)
  if redis.call('HINCRBY', KEYS[3], wid, -1) <= 0 then redis.call('HDEL', KEYS[3], wid) end
end
"""

_ACK = _ENTRY + """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local m = entry(KEYS[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if m then
  settled(KEYS[2], 'delivered', m['wid'])
  redis.call('HDEL', KEYS[4], m['mid'])
end
return 1
"""

# An ack by message id, whichever instance read it: a message in flight, or
# one given back meanwhile (waiting again), is done with; counted delivered.
_ACK_MESSAGE = _ENTRY + """
local id = redis.call('HGET', KEYS[4], ARGV[2])
if not id then return '' end
local m = entry(KEYS[1], id)
redis.call('HDEL', KEYS[4], ARGV[2])
if not m then return '' end
redis.call('XACK', KEYS[1], ARGV[1], id)
redis.call('XDEL', KEYS[1], id)
settled(KEYS[2], 'delivered', m['wid'])
return id
"""

# Of the stream ids ARGV[2..], those no longer in flight (settled by another instance).
_NOT_PENDING = """
local gone = {}
for i = 2, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1) == 0 then table.insert(gone, ARGV[i]) end
end
return gone
"""

_COUNTS = """
local length = redis.call('XLEN', KEYS[1])
local in_flight = 0
if length > 0 then
  local ok, summary = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1])
  if ok and summary then in_flight = summary[1] end
end
return {length, in_flight, redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3]), redis.call('XLEN', KEYS[4])}
"""

_GIVE_BACK = _ENTRY + """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return {0, 0, ''} end
local m = entry(KEYS[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if not m then return {0, 0, ''} end
local n = tonumber(m['n']) + tonumber(ARGV[7])
if ARGV[4] == '1' or n >= tonumber(ARGV[3]) then
  local id = redis.call('XADD', KEYS[4], '*', 'mid', m['mid'], 'wid', m['wid'], 'seq', m['seq'],
    'n', n, 'env', m['env'], 'reason', ARGV[5], 'at', ARGV[6])
  settled(KEYS[2], 'dead_lettered', m['wid'])
  redis.call('HDEL', KEYS[5], m['mid'])
  local dropped = redis.call('XTRIM', KEYS[4], 'MAXLEN', ARGV[8])
  if dropped > 0 then redis.call('HINCRBY', KEYS[2], 'dead_letters_dropped', dropped) end
  return {2, n, id}
end
local id = redis.call('XADD', KEYS[1], '*', 'mid', m['mid'], 'wid', m['wid'], 'exp', m['exp'],
  'seq', m['seq'], 'n', n, 'env', m['env'])
redis.call('HSET', KEYS[5], m['mid'], id)
return {1, n, id}
"""

# Waiting messages are those after the group's last-delivered id: in-flight
# ones are at or before it (a requeue moves a message to the tail). Scans at
# most ARGV[4] waiting entries after the cursor ARGV[3]; returns how many
# expired and where to go on ('' once the end is reached).
_EXPIRE_WAITING = _ENTRY + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function after(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am > bm or (am == bm and as > bs)
end
local start = '0-0'
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = fields(g)
  if info['name'] == ARGV[1] then start = info['last-delivered-id'] end
end
if ARGV[3] ~= '' and after(ARGV[3], start) then start = ARGV[3] end
local found = redis.call('XRANGE', KEYS[1], '(' .. start, '+', 'COUNT', ARGV[4])
local expired = 0
for _, e in ipairs(found) do
  local m = fields(e[2])
  if tonumber(m['exp']) <= tonumber(ARGV[2]) then
    redis.call('XDEL', KEYS[1], e[1])
    settled(KEYS[2], 'expired', m['wid'])
    redis.call('HDEL', KEYS[4], m['mid'])
    expired = expired + 1
  end
end
if #found < tonumber(ARGV[4]) then return {expired, ''} end
return {expired, found[#found][1]}
"""

# The connections of a channel, across instances: id -> JSON with expires_at.
# Joining drops entries whose instance stopped refreshing them, then refuses
# past the limit (ARGV[2]).
_JOIN = """
local now = tonumber(ARGV[1])
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local c = cjson.decode(v)
  if tonumber(c['expires_at']) < now then redis.call('HDEL', KEYS[1], c['connection_id']) end
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
return 1
"""

# Refresh this instance's connections (ARGV: pairs of id, JSON); returns the
# ids among them an admin asked to disconnect (from any instance).
_REFRESH = """
local kicked = {}
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  if redis.call('HDEL', KEYS[2], ARGV[i]) == 1 then table.insert(kicked, ARGV[i]) end
end
return kicked
"""

_EXPIRE = _ENTRY + """
local m = entry(KEYS[1], ARGV[2])
if not m then return 0 end
if tonumber(m['exp']) > tonumber(ARGV[3]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
settled(KEYS[2], 'expired', m['wid'])
redis.call('HDEL', KEYS[4], m['mid'])
return 1
"""

# Dead letters after ARGV[1] ('-': from the oldest) up to ARGV[2], at most
# ARGV[3] of them: flat id, message id pairs (not the envelopes).
_DEAD_IDS = _ENTRY + """
local out = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])) do
  table.insert(out, e[1])
  table.insert(out, fields(e[2])['mid'])
end
return out
"""

_REPLAY = _ENTRY + """
local moved = 0
for i = 3, #ARGV do
  local m = entry(KEYS[4], ARGV[i])
  if m then
    local id = redis.call('XADD', KEYS[1], '*', 'mid', m['mid'], 'wid', m['wid'], 'exp', ARGV[1],
      'seq', m['seq'], 'n', 0, 'env', m['env'])
    redis.call('HINCRBY', KEYS[3], m['wid'], 1)
    redis.call('HSET', KEYS[5], m['mid'], id)
    redis.call('XDEL', KEYS[4], ARGV[i])
    moved = moved + 1
  end
end
return moved
"""


_STORE_TOKENS = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'current') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is, from a ``redis://`` or ``rediss://`` URL."""

    host: str
    port: int
    db: int
    password: str | None
    username: str | None
    tls: bool
    verify: bool = True
    """With ``tls``: check the certificate and host name (``?ssl_cert_reqs=none`` turns it off)."""

    def __repr__(self) -> str:
        return f"RedisAddress({self.host}:{self.port}/{self.db}, tls={self.tls}, verify={self.verify})"


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[[user]:password@]host[:port][/db]``; ``rediss://`` for TLS.

    With ``rediss://`` the certificate and host name are checked unless the
    query says ``ssl_cert_reqs=none`` (``required``, the default, checks).

    Raises:
        ConfigError: not such a URL (the message never repeats a password).
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError("expected a redis://host:port/db URL")
    try:
        port = parts.port or 6379
        db_text = parts.path.strip("/") or "0"
        db = int(db_text)
    except ValueError:
        raise ConfigError("expected a redis://host:port/db URL with numeric port and db") from None
    cert_reqs = [v.strip().lower() for v in parse_qs(parts.query).get("ssl_cert_reqs", [])]
    if any(v not in ("none", "required") for v in cert_reqs):
        raise ConfigError("ssl_cert_reqs: expected none or required")
    return RedisAddress(
        host=parts.hostname,
        port=port,
        db=db,
        password=unquote(parts.password) if parts.password else None,
        username=unquote(parts.username) if parts.username else None,
        tls=parts.scheme == "rediss",
        verify="none" not in cert_reqs,
    )


def redis_tls(address: RedisAddress, ca_cert: str | None) -> IOpenSSLClientConnectionCreator | None:
    """What txredisapi's ``ssl_context_factory`` takes for ``address``: None without TLS.

    With TLS the certificate must chain to the system roots, or to the
    certificates of the PEM file ``ca_cert`` when given, and name the host
    of the URL (Twisted's ``optionsForClientTLS`` checks both). With
    ``ssl_cert_reqs=none`` nothing is checked, and a warning says so.
    Reads ``ca_cert``: for start-up only.

    Raises:
        ConfigError: ``ca_cert`` cannot be read or holds no certificate.
    """
    if not address.tls:
        return None
    from twisted.internet import ssl

    from cwm.config.vault import UnverifiedConnections, load_ca_bundle

    if not address.verify:
        _log.warn(
            "Webhook Connect's Redis URL says ssl_cert_reqs=none: the certificate of {host} is not checked, "
            "so a machine in the middle could read and change the webhooks",
            host=address.host,
        )
        return UnverifiedConnections(ssl.CertificateOptions(verify=False), address.host.encode("idna"))
    trust = (
        ssl.trustRootFromCertificates(load_ca_bundle(ca_cert, "WEBHOOK_CONNECT_REDIS_CA_CERT"))
        if ca_cert
        else ssl.platformTrust()
    )
    return ssl.optionsForClientTLS(address.host, trustRoot=trust)


WIRE_TAIL = ("timestamp", "headers", "payload", "body_base64")
"""The envelope's keys that connectors receive, in this order, last in the stored text."""
_WIRE_DEFAULTS: dict[str, Any] = {"timestamp": None, "headers": {}, "payload": None, "body_base64": None}
_STRING_PIECE = 64 * 1024
_HEAD_DECODER = json.JSONDecoder()


def _string_in_pieces(value: str) -> str:
    """``json.dumps(value)`` for a long string, escaped a slice at a time (each a short GIL hold)."""
    return '"' + "".join(
        encode_basestring_ascii(value[i : i + _STRING_PIECE])[1:-1] for i in range(0, len(value), _STRING_PIECE)
    ) + '"'


def envelope_text(envelope: Mapping[str, Any], *, yielding: bool = False) -> str:
    """The JSON text stored for a message: its other keys first, then ``WIRE_TAIL``.

    So laid out, the text from ``"timestamp"`` to the closing brace is what
    connectors receive of the envelope, and ``Buffered.wire_bytes`` splices
    it into each delivery without parsing the envelope (a 10 MB one takes
    0.4 s to parse). ``yielding``: for a large message on a worker thread;
    every step holds the GIL only briefly (the Python-level encoder, long
    strings escaped a slice at a time).
    """
    head = {k: v for k, v in envelope.items() if k not in _WIRE_DEFAULTS}
    tail = {k: envelope.get(k, _WIRE_DEFAULTS[k]) for k in WIRE_TAIL}
    if not yielding:
        parts = [json.dumps(tail, separators=(",", ":"))[1:-1]]
    else:
        encoder = json.JSONEncoder(separators=(",", ":"))
        parts = []
        for key, value in tail.items():
            if isinstance(value, str) and len(value) > _STRING_PIECE:
                encoded = _string_in_pieces(value)
            else:
                encoded = encode_in_pieces(encoder, value)
            parts.append(f'"{key}":{encoded}')
    head_text = json.dumps(head, separators=(",", ":"))[1:-1]
    return "{" + (head_text + "," if head_text else "") + ",".join(parts) + "}"


def _wire_cut(text: str) -> int:
    """Where ``WIRE_TAIL`` starts in a stored envelope laid out by ``envelope_text``; -1 otherwise.

    Only the small keys before it are decoded. An envelope stored before
    this layout (its ``expires_at`` comes after ``timestamp``) gives -1.
    """
    if not (text.startswith('{"') and text.endswith("}")):
        return -1
    index = 1
    laid_out = False
    try:
        while text[index] == '"':
            key, end = scanstring(text, index + 1)
            if key in _WIRE_DEFAULTS:
                return index if laid_out and key == WIRE_TAIL[0] else -1
            if text[end] != ":":
                return -1
            _, index = _HEAD_DECODER.raw_decode(text, end + 1)
            laid_out = laid_out or key == "expires_at"
            if text[index] != ",":
                return -1
            index += 1
    except (ValueError, IndexError):
        pass
    return -1


@dataclass(frozen=True)
class Buffered:
    """One message as read from a channel's stream."""

    stream_id: str
    message_id: str
    webhook_id: str
    sequence: int
    delivery_count: int  # deliveries before this one
    expires_at: float
    envelope: dict[str, Any] | str  # the stored JSON text (never parsed on the way to a connector)

    def wire_bytes(self) -> bytes:
        """The message as connectors receive it (upstream's fields plus ours), as JSON text in bytes.

        The per-delivery fields are spliced around the stored envelope's
        ``WIRE_TAIL`` text; an envelope of another layout is parsed.
        """
        text = self.envelope if isinstance(self.envelope, str) else ""
        # Stored with ensure_ascii, so character and byte offsets agree (isascii is a flag check).
        cut = _wire_cut(text) if text.isascii() else -1
        if cut < 0:
            stored = json.loads(text) if text else self.envelope
            assert isinstance(stored, dict)
            wire = {k: stored.get(k, _WIRE_DEFAULTS[k]) for k in WIRE_TAIL}
            middle = memoryview(json.dumps(wire, separators=(",", ":"))[1:-1].encode())
        else:
            middle = memoryview(text.encode("ascii"))[cut:-1]
        # One join of views: each copy of a 20 MB text costs milliseconds on the reactor thread.
        return b"".join(
            [
                f'{{"type":"webhook","message_id":{json.dumps(self.message_id)},"sequence":{int(self.sequence)}'
                f',"webhook_id":{json.dumps(self.webhook_id)},'.encode(),
                middle,
                f',"delivery_count":{int(self.delivery_count) + 1},"stream_id":{json.dumps(self.stream_id)}}}'.encode(),
            ]
        )

    def wire(self) -> dict[str, Any]:
        """``wire_bytes`` parsed (for inspection; the streams send the bytes)."""
        result: dict[str, Any] = json.loads(self.wire_bytes())
        return result


@dataclass(frozen=True)
class Outcome:
    """What ``give_back`` did: ``requeued``, ``dead_lettered`` or ``gone`` (already settled)."""

    state: str
    deliveries: int
    new_id: str


@dataclass(frozen=True)
class ChannelCounts:
    """Counts read from Redis for one channel."""

    queued: int  # waiting, not yet handed to a connector
    in_flight: int
    delivered: int
    expired: int
    dead_lettered: int
    dead_letters: int  # currently in the dead-letter stream
    pending_by_webhook: dict[str, int]
    dead_letters_dropped: int = 0  # the oldest, past the channel's dead_letter_max


class ChannelKeys:
    """The Redis keys of one channel."""

    __slots__ = ("stream", "sequence", "counts", "by_webhook", "dead", "clients", "kicks", "tokens", "ids")

    def __init__(self, prefix: str, channel: str) -> None:
        tag = f"{prefix}:{{{channel}}}"
        self.stream = f"{tag}:stream"
        self.sequence = f"{tag}:seq"
        self.counts = f"{tag}:counts"
        self.by_webhook = f"{tag}:by_webhook"
        self.dead = f"{tag}:dead"
        self.clients = f"{tag}:clients"
        self.kicks = f"{tag}:kicks"
        self.tokens = f"{tag}:tokens"
        self.ids = f"{tag}:ids"  # message id -> stream id, while queued or in flight


def _fields(flat: list[Any]) -> dict[str, str]:
    return {str(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def dead_letter_bytes(dead_letter_id: str, fields: Mapping[str, str]) -> bytes:
    """A dead letter as the admin API shows it: the envelope as stored plus its dead-letter fields.

    The stored envelope is one JSON object that has none of these keys, so
    they are spliced in before its closing brace instead of parsing it.
    """
    extra = json.dumps(
        {
            "dead_letter_id": dead_letter_id,
            "sequence": int(fields["seq"]),
            "delivery_count": int(fields["n"]),
            "reason": fields.get("reason", ""),
            "dead_lettered_at": float(fields.get("at", 0)),
        },
        separators=(",", ":"),
    )
    text = fields["env"].rstrip()
    if text == "{}":
        return extra.encode()
    return f"{text[:-1]},{extra[1:]}".encode()


class StreamBuffer:
    """Channel streams in one Redis, through a txredisapi connection (or pool)."""

    def __init__(self, redis: Any, prefix: str = "cwm:wc", consumer: str = "cwm") -> None:
        """``redis`` is a txredisapi connection or pool made with ``convertNumbers=False``."""
        self._redis = redis
        self._prefix = prefix
        self.consumer = consumer
        self._dead_letter_max: dict[str, int] = {}

    def cap_dead_letters(self, channel: str, maximum: int | None) -> None:
        """Keep at most ``maximum`` dead letters of the channel (None: the default)."""
        if maximum is None:
            self._dead_letter_max.pop(channel, None)
        else:
            self._dead_letter_max[channel] = maximum

    def keys(self, channel: str) -> ChannelKeys:
        return ChannelKeys(self._prefix, channel)

    async def ensure_channel(self, channel: str) -> None:
        """Create the stream and its consumer group (from the start) if they do not exist."""
        k = self.keys(channel)
        try:
            await self._redis.execute_command("XGROUP", "CREATE", k.stream, GROUP, "0", "MKSTREAM")
        except Exception as e:  # txredisapi.ResponseError, without importing its internals
            if "BUSYGROUP" not in str(e):
                raise

    async def publish(
        self,
        channel: str,
        message_id: str,
        webhook_id: str,
        expires_at: float,
        envelope: dict[str, Any] | bytes,
        max_queue_size: int,
    ) -> tuple[int, str] | None:
        """Append a message; (sequence, stream id), or None when the channel is full.

        ``envelope``: a dict, or its ``envelope_text`` encoded (made on a
        worker thread for a large one).
        """
        k = self.keys(channel)
        seq, stream_id = await self._redis.eval(
            _PUBLISH,
            [k.stream, k.sequence, k.by_webhook, k.ids],
            [
                str(max_queue_size),
                message_id,
                webhook_id,
                repr(expires_at),
                envelope if isinstance(envelope, bytes) else envelope_text(envelope),
            ],
        )
        if int(seq) == 0:
            return None
        return int(seq), str(stream_id)

    def _read_command(self, channels: list[str], count: int, block_ms: int | None) -> tuple[list[Any], dict[str, str]]:
        args: list[Any] = ["XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", str(count)]
        if block_ms is not None:
            args += ["BLOCK", str(block_ms)]
        args += ["STREAMS", *(self.keys(c).stream for c in channels), *(">" for _ in channels)]
        return args, {self.keys(c).stream: c for c in channels}

    def _found(self, reply: Any, by_key: dict[str, str]) -> list[tuple[str, Buffered]]:
        found: list[tuple[str, Buffered]] = []
        for key, entries in reply or []:
            channel = by_key[str(key)]
            for stream_id, flat in entries:
                if flat is None:
                    continue
                found.append((channel, self._message(str(stream_id), _fields(flat))))
        return found

    async def read(self, channels: dict[str, int]) -> list[tuple[str, Buffered]]:
        """Hand each channel's waiting messages to this consumer, no more than its count; no waiting.

        XREADGROUP takes one COUNT for all its streams, so channels are read
        in one command per distinct count (commonly one): no channel is
        handed more than it can take.
        """
        by_count: dict[int, list[str]] = {}
        for channel, n in channels.items():
            if n > 0:
                by_count.setdefault(n, []).append(channel)
        reads: list[Deferred[list[tuple[str, Buffered]]]] = []
        for n, names in sorted(by_count.items()):
            args, by_key = self._read_command(names, n, None)
            reads.append(self._redis.execute_command(*args).addCallback(self._found, by_key))
        # Every reply is waited for, even once one failed: what the others handed this
        # consumer is then in Redis's pending list before the caller looks there.
        results: list[tuple[bool, Any]] = await DeferredList(reads, consumeErrors=True)
        for ok, result in results:
            if not ok:
                result.raiseException()
        return [item for _, reply in results for item in reply]

    def read_blocking(
        self, channels: dict[str, int], block_ms: int
    ) -> tuple[Deferred[str], Deferred[list[tuple[str, Buffered]]]]:
        """Wait for the first new message on any of ``channels``, on this buffer's own connection.

        A wake-up: at most one message per stream (what any channel with a free
        slot can take); ``read`` then takes the rest, per channel. Returns the
        connection's client id and the read. Both commands are written at
        once, CLIENT ID first, so once the id is known Redis has the read:
        ``CLIENT UNBLOCK`` with that id (from another connection) then wakes it.
        """
        args, by_key = self._read_command([c for c, n in channels.items() if n > 0], 1, block_ms)
        client_id: Deferred[Any] = self._redis.execute_command("CLIENT", "ID")
        reply: Deferred[Any] = self._redis.execute_command(*args)
        return client_id.addCallback(str), reply.addCallback(self._found, by_key)

    async def unblock(self, client_id: str) -> None:
        """Wake the blocking read of the connection ``client_id`` (it returns nothing)."""
        await self._redis.execute_command("CLIENT", "UNBLOCK", client_id)

    @staticmethod
    def _message(stream_id: str, f: dict[str, str]) -> Buffered:
        return Buffered(
            stream_id=stream_id,
            message_id=f["mid"],
            webhook_id=f["wid"],
            sequence=int(f["seq"]),
            delivery_count=int(f["n"]),
            expires_at=float(f.get("exp", "inf")),
            envelope=f["env"] if isinstance(f["env"], str) else f["env"].decode("utf-8"),
        )

    async def ack(self, channel: str, stream_id: str) -> bool:
        """Remove a message in flight; False when it was not in flight (already settled)."""
        k = self.keys(channel)
        done = await self._redis.eval(_ACK, [k.stream, k.counts, k.by_webhook, k.ids], [GROUP, stream_id])
        return int(done) == 1

    async def ack_message(self, channel: str, message_id: str) -> bool:
        """Ack by message id, whichever instance read it; False when the channel does not hold it."""
        return await self.ack_message_at(channel, message_id) is not None

    async def ack_message_at(self, channel: str, message_id: str) -> str | None:
        """``ack_message``, returning the stream id the message was settled at (None: not held)."""
        k = self.keys(channel)
        done = await self._redis.eval(_ACK_MESSAGE, [k.stream, k.counts, k.by_webhook, k.ids], [GROUP, message_id])
        return str(done) or None

    async def stream_id_of(self, channel: str, message_id: str) -> str | None:
        """Where the message is in the channel's stream now (None: not queued nor in flight)."""
        found = await self._redis.execute_command("HGET", self.keys(channel).ids, message_id)
        return str(found) if found else None

    async def not_pending(self, channel: str, stream_ids: list[str]) -> list[str]:
        """Those of ``stream_ids`` no longer in flight (another instance settled them)."""
        k = self.keys(channel)
        gone: list[str] = []
        for start in range(0, len(stream_ids), 500):
            reply = await self._redis.eval(_NOT_PENDING, [k.stream], [GROUP, *stream_ids[start : start + 500]])
            gone += [str(i) for i in reply or []]
        return gone

    async def give_back(
        self,
        channel: str,
        stream_id: str,
        max_deliveries: int,
        reason: str,
        now: float,
        dead: bool = False,
        counted: bool = True,
    ) -> Outcome:
        """A delivery failed: requeue the message at the tail, or dead-letter it.

        ``counted=False`` puts back a message that was read but never sent
        to anyone (its delivery count stays as it was).
        """
        k = self.keys(channel)
        state, deliveries, new_id = await self._redis.eval(
            _GIVE_BACK,
            [k.stream, k.counts, k.by_webhook, k.dead, k.ids],
            [
                GROUP, stream_id, str(max_deliveries), "1" if dead else "0", reason, repr(now), "1" if counted else "0",
                str(self._dead_letter_max.get(channel, DEAD_LETTER_MAX)),
            ],
        )
        name = {0: "gone", 1: "requeued", 2: "dead_lettered"}[int(state)]
        return Outcome(name, int(deliveries), str(new_id))

    async def expire(self, channel: str, stream_id: str, now: float) -> bool:
        """Drop a message whose ``expires_at`` has passed; True if it was dropped."""
        k = self.keys(channel)
        done = await self._redis.eval(
            _EXPIRE, [k.stream, k.counts, k.by_webhook, k.ids], [GROUP, stream_id, repr(now)]
        )
        return int(done) == 1

    async def reclaim(
        self, channel: str, idle_ms: int, max_deliveries: int, now: float, count: int = 100
    ) -> list[Outcome]:
        """Give back every message in flight for longer than ``idle_ms``, whoever read it."""
        k = self.keys(channel)
        outcomes: list[Outcome] = []
        start = "0-0"
        while True:
            reply = await self._redis.execute_command(
                "XAUTOCLAIM", k.stream, GROUP, self.consumer, str(idle_ms), start, "COUNT", str(count), "JUSTID"
            )
            start, ids = str(reply[0]), reply[1]
            for stream_id in ids:
                outcomes.append(
                    await self.give_back(channel, str(stream_id), max_deliveries, "ack timeout", now)
                )
            if start == "0-0":
                return outcomes

    async def forget_idle_consumers(self, channel: str, idle_ms: int) -> list[str]:
        """Drop other consumers that hold nothing and were idle past ``idle_ms`` (instances gone for good)."""
        k = self.keys(channel)
        forgotten = []
        for info in await self._redis.execute_command("XINFO", "CONSUMERS", k.stream, GROUP) or []:
            fields = _fields(info)
            name = str(fields.get("name", ""))
            if name != self.consumer and int(fields.get("pending", 1)) == 0 and int(fields.get("idle", 0)) > idle_ms:
                await self._redis.execute_command("XGROUP", "DELCONSUMER", k.stream, GROUP, name)
                forgotten.append(name)
        return forgotten

    async def held_by_me(self, channel: str, count: int = 1000) -> list[str]:
        """Stream ids this consumer holds in flight (after a restart: left by the previous process)."""
        k = self.keys(channel)
        reply = await self._redis.execute_command("XPENDING", k.stream, GROUP, "-", "+", str(count), self.consumer)
        return [str(entry[0]) for entry in reply or []]

    async def expire_waiting(self, channel: str, now: float, cursor: str = "", count: int = 1000) -> tuple[int, str]:
        """Drop expired messages among up to ``count`` waiting ones after ``cursor``.

        Returns how many were dropped and the cursor to go on from (``""``
        once the end of the queue was reached: start again from its head).
        """
        k = self.keys(channel)
        expired, after = await self._redis.eval(
            _EXPIRE_WAITING, [k.stream, k.counts, k.by_webhook, k.ids], [GROUP, repr(now), cursor, str(count)]
        )
        return int(expired), str(after)

    async def join(self, channel: str, connection_id: str, record: dict[str, Any], limit: int, now: float) -> bool:
        """Record a connection unless the channel already has ``limit`` live ones."""
        k = self.keys(channel)
        done = await self._redis.eval(
            _JOIN, [k.clients], [repr(now), str(limit), connection_id, json.dumps(record)]
        )
        return int(done) == 1

    async def leave(self, channel: str, connection_id: str) -> None:
        k = self.keys(channel)
        await self._redis.execute_command("HDEL", k.clients, connection_id)
        await self._redis.execute_command("HDEL", k.kicks, connection_id)

    async def refresh(self, channel: str, records: dict[str, dict[str, Any]]) -> list[str]:
        """Keep this instance's connections listed; the ids an admin asked to close."""
        if not records:
            return []
        k = self.keys(channel)
        args: list[str] = []
        for connection_id, record in records.items():
            args += [connection_id, json.dumps(record)]
        kicked = await self._redis.eval(_REFRESH, [k.clients, k.kicks], args)
        return [str(c) for c in kicked or []]

    async def connections(self, channel: str, now: float) -> list[dict[str, Any]]:
        """The channel's live connections on every instance."""
        k = self.keys(channel)
        values = await self._redis.execute_command("HVALS", k.clients)
        records = [json.loads(v) for v in values or []]
        return sorted(
            (r for r in records if float(r.get("expires_at", 0)) >= now),
            key=lambda r: (r.get("connected_at", 0), r.get("connection_id", "")),
        )

    async def kick(self, channel: str, connection_id: str) -> None:
        """Ask whichever instance holds the connection to close it."""
        k = self.keys(channel)
        await self._redis.execute_command("HSET", k.kicks, connection_id, "1")

    async def tokens(self, channel: str) -> dict[str, str]:
        """The channel's rotated-token fields (empty if never rotated)."""
        k = self.keys(channel)
        return _fields(await self._redis.execute_command("HGETALL", k.tokens) or [])

    async def store_tokens(self, channel: str, fields: list[str], replacing: str = "") -> bool:
        """Replace the channel's token fields (whole: no field of an older form stays behind).

        With ``replacing``, only if the stored ``current`` field is still that
        (a plain-text entry being hashed); False when it was not.
        """
        k = self.keys(channel)
        return int(await self._redis.eval(_STORE_TOKENS, [k.tokens], [replacing, *fields])) == 1

    async def counts(self, channel: str) -> ChannelCounts:
        k = self.keys(channel)
        # One script, so the numbers are one moment's: read apart, an ack landing
        # between XLEN and XPENDING showed its message as still queued.
        length, in_flight, stats_flat, by_webhook_flat, dead = await self._redis.eval(
            _COUNTS, [k.stream, k.counts, k.by_webhook, k.dead], [GROUP]
        )
        length, in_flight, dead = int(length), int(in_flight), int(dead)
        stats = _fields(stats_flat or [])
        by_webhook = _fields(by_webhook_flat or [])
        return ChannelCounts(
            queued=max(0, length - in_flight),
            in_flight=in_flight,
            delivered=int(stats.get("delivered", 0)),
            expired=int(stats.get("expired", 0)),
            dead_lettered=int(stats.get("dead_lettered", 0)),
            dead_letters=dead,
            pending_by_webhook={w: int(n) for w, n in by_webhook.items()},
            dead_letters_dropped=int(stats.get("dead_letters_dropped", 0)),
        )

    async def dead_letters(self, channel: str, limit: int = 100, before: str = "") -> tuple[list[bytes], str | None]:
        """One page of dead letters, newest first, older than ``before`` (a ``dead_letter_id``).

        Each is the envelope with its id, reason, time and delivery count, as
        one JSON object's bytes: the stored envelope text with those fields
        spliced in, never parsed here (an envelope may be tens of MB, and this
        runs on the reactor thread).
        Returns the page and the cursor of the next (None: this was the last).
        """
        k = self.keys(channel)
        start = f"({before}" if before else "+"
        entries = await self._redis.execute_command("XREVRANGE", k.dead, start, "-", "COUNT", str(limit + 1))
        page = (entries or [])[:limit]
        letters = [dead_letter_bytes(str(stream_id), _fields(flat)) for stream_id, flat in page]
        more = len(entries or []) > limit
        return letters, (str(page[-1][0]) if more and page else None)

    async def last_dead_letter(self, channel: str) -> str:
        """The id of the newest dead letter ("" when there is none)."""
        k = self.keys(channel)
        entries = await self._redis.execute_command("XREVRANGE", k.dead, "+", "-", "COUNT", "1")
        return str(entries[0][0]) if entries else ""

    async def dead_letter_ids(self, channel: str, after: str, until: str, count: int) -> list[tuple[str, str]]:
        """(dead_letter_id, message_id) of up to ``count`` dead letters after ``after`` ("": from
        the oldest) up to ``until``, oldest first; the envelopes stay in Redis."""
        k = self.keys(channel)
        flat = await self._redis.eval(_DEAD_IDS, [k.dead], [f"({after}" if after else "-", until, str(count)])
        return [(str(flat[i]), str(flat[i + 1])) for i in range(0, len(flat or []) - 1, 2)]

    async def replay(self, channel: str, dead_letter_ids: list[str], ttl_seconds: float, now: float) -> int:
        """Move these dead letters back to the channel's queue; how many were still there.

        Each starts again with no deliveries and a fresh ``ttl_seconds``.
        """
        if not dead_letter_ids:
            return 0
        k = self.keys(channel)
        moved = await self._redis.eval(
            _REPLAY, [k.stream, k.counts, k.by_webhook, k.dead, k.ids], [repr(now + ttl_seconds), "", *dead_letter_ids]
        )
        return int(moved)

    async def purge(self, channel: str) -> int:
        """Delete every dead letter of the channel; how many there were."""
        k = self.keys(channel)
        count = int(await self._redis.execute_command("XLEN", k.dead))
        await self._redis.execute_command("UNLINK", k.dead)  # freed in the background: up to dead_letter_max entries
        return count
