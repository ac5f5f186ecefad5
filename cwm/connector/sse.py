"""An incremental parser of ``text/event-stream`` (the WHATWG rules the connector needs)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_EVENT_BYTES = 64 * 1024 * 1024


class EventTooLarge(ValueError):
    """One event (or one unterminated line) is over the parser's limit."""


@dataclass(frozen=True)
class Event:
    """One dispatched event: its type (``message`` by default), its data, its id if it had one."""

    name: str
    data: str
    id: str | None


class EventStreamParser:
    """Feed it the bytes as they arrive; it returns the events they complete.

    Lines end with LF, CR or CRLF (a CRLF split across two chunks counts
    once). ``field: value`` and ``field:value`` are both read; comment lines
    (``:...``) and unknown fields are skipped; several ``data`` lines join
    with LF; an event without data is not dispatched.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._buffer = bytearray()  # bytes not yet ending a line
        self._scanned = 0  # how much of it is known to hold no line end
        self._skip_lf = False
        self._name = ""
        self._data: list[str] = []
        self._size = 0
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """Parse ``chunk``; the events it completes, in order.

        Only the new bytes are searched for line ends, so an event arriving in
        many small chunks costs time in proportion to its size.

        Raises:
            EventTooLarge: an event or a line is over the limit.
        """
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        buffer = self._buffer
        buffer += chunk
        events: list[Event] = []
        start = 0
        search = self._scanned
        while True:
            cr, lf = buffer.find(b"\r", search), buffer.find(b"\n", search)
            end = lf if cr < 0 else cr if lf < 0 else min(cr, lf)
            if end < 0:
                break
            line = bytes(buffer[start:end])
            if buffer[end] == 13:  # CR
                if end + 1 == len(buffer):
                    self._skip_lf = True  # the LF of a CRLF may come in the next chunk
                    start = end + 1
                elif buffer[end + 1] == 10:
                    start = end + 2
                else:
                    start = end + 1
            else:
                start = end + 1
            search = start
            event = self._line(line)
            if event is not None:
                events.append(event)
        del buffer[:start]
        self._scanned = len(buffer)
        if len(buffer) + self._size > self._max:
            raise EventTooLarge(f"an event of the stream is over {self._max} bytes")
        return events

    def _line(self, raw: bytes) -> Event | None:
        if not raw:
            return self._dispatch()
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._name = value
        elif name == "data":
            self._data.append(value)
            self._size += len(raw)
            if self._size > self._max:
                raise EventTooLarge(f"an event of the stream is over {self._max} bytes")
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> Event | None:
        name, data = self._name or "message", self._data
        self._name, self._data, self._size = "", [], 0
        if not data:
            return None
        return Event(name, "\n".join(data), self._id)
