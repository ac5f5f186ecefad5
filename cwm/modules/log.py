"""The ``log`` module: each webhook written to stdout, secrets masked.

By default one JSON line per webhook, for log collectors; with
``pretty_print: true`` a banner and indented JSON, for people watching a
terminal. Credentials are masked before anything is written, in both
formats: always the Authorization header and every header and query
parameter the entry's own checks read a credential or a signature from
(``header_auth``'s ``X-Gitlab-Token``, ``hmac``'s signature header...);
other credential-like headers and sensitive payload keys unless
``redact_sensitive`` is false. The query string itself is not written, but a
header that quotes a URL (``Referer``, a proxy's ``X-Original-URI``) has the
entry's secret parameters masked in it.

The text goes to the module context's output (``cwm.modules.output``): a
writer thread in front of stdout, or twistd's log when twistd runs as a
daemon; the reactor thread never waits on a pipe.
"""

from __future__ import annotations

import base64
import functools
import math
import time
import json
import re
from collections.abc import Collection, Mapping
from typing import IO, Any

from twisted.logger import Logger

from cwm.body import LARGE_BODY, dismantle, encode_in_pieces
from cwm.modules._config import get_bool, reject_unknown_keys
from cwm.modules.base import ModuleContext, ModuleUnavailable, TextOutput, WebhookEvent
from cwm.modules.output import DirectOutput
from cwm.workers import BlockingWork, InlineWork, WorkersBusy

REDACTED = "[REDACTED]"

PRETTY_PAYLOAD_LIMIT = 10_000
"""Characters of payload text a pretty-printed webhook shows at most."""

_ALWAYS_REDACTED_HEADERS = frozenset({"authorization", "proxy-authorization"})
_SENSITIVE_HEADERS = _ALWAYS_REDACTED_HEADERS | frozenset(
    {"cookie", "set-cookie", "x-api-key", "x-auth-token"}
)
_SENSITIVE_HEADER_PARTS = ("signature", "hmac")

_SENSITIVE_KEY_WORDS = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "access_key",
        "private_key",
        "authorization",
        "auth",
        "cookie",
        "session",
        "session_id",
        "credential",
        "credentials",
        "ssn",
        "credit_card",
        "card_number",
        "cvv",
    }
)

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[^a-z0-9]+")

_KNOWN_KEYS = frozenset({"pretty_print", "redact_sensitive"})


def normalise_key(key: str) -> str:
    """Lower-case ``key`` with words joined by ``_`` (``clientSecret`` → ``client_secret``)."""
    return _NON_WORD.sub("_", _CAMEL_BOUNDARY.sub("_", key).lower())


@functools.lru_cache(maxsize=4096)
def is_sensitive_key(key: str) -> bool:
    """Whether a payload key names a credential.

    The normalised key must equal a sensitive word or end with ``_`` plus
    one, so ``github_token`` and ``client_secret`` match while ``monkey``
    and ``author`` do not. Sensitive words have at most two parts, so the
    last one or two parts decide; payloads repeat their keys, hence the cache.
    """
    parts = normalise_key(key).rsplit("_", 2)
    return parts[-1] in _SENSITIVE_KEY_WORDS or "_".join(parts[-2:]) in _SENSITIVE_KEY_WORDS


def is_sensitive_header(name: str) -> bool:
    """Whether a header carries a credential or a signature."""
    lowered = name.lower()
    return lowered in _SENSITIVE_HEADERS or any(
        part in lowered for part in _SENSITIVE_HEADER_PARTS
    )


def query_value_pattern(params: Collection[str]) -> re.Pattern[str] | None:
    """What matches the value of any of ``params`` in a URL's query, None for no params.

    Names are matched in any case (masking too much is harmless); the value
    runs to the next ``&``, ``#``, ``;``, quote, comma or whitespace.
    """
    if not params:
        return None
    alternatives = "|".join(re.escape(name) for name in sorted(params))
    return re.compile(rf"(?<=[?&;])((?:{alternatives})=)[^&#;\s,\"']*", re.IGNORECASE)


def redact_headers(
    headers: Mapping[str, list[str]],
    redact_sensitive: bool,
    secret_headers: Collection[str] = frozenset(),
    secret_params: re.Pattern[str] | None = None,
) -> dict[str, str]:
    """Headers as ``name: value`` (repeated values joined by ", "), masked.

    Authorization, Proxy-Authorization and ``secret_headers`` (lower case)
    are masked even when ``redact_sensitive`` is false; ``secret_params``
    (from ``query_value_pattern``) masks those parameters' values in what is
    shown of every other header.
    """
    shown: dict[str, str] = {}
    for name, values in headers.items():
        lowered = name.lower()
        if (
            lowered in _ALWAYS_REDACTED_HEADERS
            or lowered in secret_headers
            or (redact_sensitive and is_sensitive_header(lowered))
        ):
            shown[lowered] = REDACTED
        else:
            value = ", ".join(values)
            if secret_params is not None:
                value = secret_params.sub(rf"\1{REDACTED}", value)
            shown[lowered] = value
    return shown


def redact_payload(value: Any) -> Any:
    """A copy of ``value`` with sensitive keys masked at any depth."""
    if isinstance(value, Mapping):
        return {
            key: (
                REDACTED
                if isinstance(key, str) and is_sensitive_key(key)
                else redact_payload(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_payload(item) for item in value]
    return value


def _json_fallback(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def _iso_utc(timestamp: float) -> str:
    whole = math.floor(timestamp)
    micros = min(int(round((timestamp - whole) * 1_000_000)), 999_999)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + ".%06dZ" % micros


class LogModule:
    """Writes webhooks to a text stream; built once per config entry."""

    _log = Logger()

    def __init__(
        self,
        stdout: IO[str],
        pretty_print: bool,
        redact_sensitive: bool,
        secret_headers: Collection[str] = frozenset(),
        secret_params: Collection[str] = frozenset(),
        output: TextOutput | None = None,
        files: BlockingWork | None = None,
    ) -> None:
        """``secret_headers`` and ``secret_params``: what the entry's checks read secrets from.
        ``output``: where the text goes (``cwm.modules.output``); by default
        ``stdout`` directly. ``files``: where large bodies are rendered."""
        self._output: TextOutput = output if output is not None else DirectOutput(stdout)
        self._files: BlockingWork = files if files is not None else InlineWork()
        self._pretty_print = pretty_print
        self._redact_sensitive = redact_sensitive
        self._secret_headers = frozenset(name.lower() for name in secret_headers)
        self._secret_params = query_value_pattern(secret_params)

    def render(self, event: WebhookEvent, yielding: bool = False) -> str:
        """The text written for ``event`` (newline-terminated); never mutates it.

        ``yielding``: serialise with the Python-level encoder, which lets other
        threads run (the C one holds the GIL for a whole large document), and
        free the masked copy piece by piece.
        """
        headers = redact_headers(
            event.headers, self._redact_sensitive, self._secret_headers, self._secret_params
        )
        if event.data_type == "blob" or isinstance(event.payload, (bytes, bytearray)):
            blob = (
                bytes(event.payload)
                if isinstance(event.payload, (bytes, bytearray))
                else event.body
            )
            body_key, body = "body_base64", base64.b64encode(blob).decode("ascii")
        else:
            payload = event.payload
            if self._redact_sensitive:
                payload = redact_payload(payload)
            body_key, body = "payload", payload
        if self._pretty_print:
            return self._render_pretty(event, headers, body_key, body)
        record = {
            "event": "webhook",
            "namespace": event.namespace,
            "webhook_id": event.webhook_id,
            "request_id": event.request_id,
            "received_at": _iso_utc(event.received_at),
            "headers": headers,
            body_key: body,
        }
        if yielding:
            text = encode_in_pieces(json.JSONEncoder(default=_json_fallback), record, "\n")
            if body is not event.payload:
                dismantle(body)  # the masked copy, this call's own
            return text
        return json.dumps(record, default=_json_fallback) + "\n"

    def _render_pretty(
        self, event: WebhookEvent, headers: dict[str, str], body_key: str, body: Any
    ) -> str:
        if body_key == "body_base64":
            label, text = "body (base64):", str(body)
        else:
            label, text = "payload:", json.dumps(body, indent=2, default=_json_fallback)
        if len(text) > PRETTY_PAYLOAD_LIMIT:
            hidden = len(text) - PRETTY_PAYLOAD_LIMIT
            text = text[:PRETTY_PAYLOAD_LIMIT] + f"\n... [truncated: {hidden} more characters]"
        lines = [
            f"=== WEBHOOK RECEIVED: {event.namespace}/{event.webhook_id} ===",
            f"request_id: {event.request_id}",
            f"received_at: {_iso_utc(event.received_at)}",
            "headers:",
            json.dumps(headers, indent=2),
            label,
            text,
        ]
        return "\n".join(lines) + "\n"

    async def deliver(self, event: WebhookEvent) -> None:
        """Hand the text to the output; return once it is written and flushed.

        A body over ``LARGE_BODY`` is rendered on the file threads, so that
        masking and serialising it never holds the reactor thread.

        Raises:
            ModuleUnavailable: the output's buffer is full or the write
                failed (503 with Retry-After).
        """
        if len(event.body) > LARGE_BODY:
            try:
                text = await self._files.run(self.thd_render, event)
            except WorkersBusy:
                raise ModuleUnavailable("could not log the webhook: the server is busy", retry_after=5) from None
        else:
            text = self.render(event)
        await self._output.write(text)

    def thd_render(self, event: WebhookEvent) -> str:
        """``render`` on a file thread: it reads ``event`` and the module's settings only."""
        return self.render(event, yielding=True)

    async def close(self) -> None:
        """Nothing to release: the stream belongs to the process."""


def build(module_config: Mapping[str, Any], ctx: ModuleContext) -> LogModule:
    """Build the ``log`` module from its ``module-config``.

    Keys: ``pretty_print`` (false), ``redact_sensitive`` (true). The
    headers and query parameters the entry's checks read secrets from come
    from ``ctx`` and are masked whatever ``redact_sensitive`` says.

    Raises:
        ConfigError: an unknown key or a value of the wrong type.
    """
    reject_unknown_keys(module_config, _KNOWN_KEYS)
    return LogModule(
        stdout=ctx.stdout,
        pretty_print=get_bool(module_config, "pretty_print", False),
        redact_sensitive=get_bool(module_config, "redact_sensitive", True),
        secret_headers=ctx.secret_headers,
        secret_params=ctx.secret_params,
        output=ctx.output,
        files=ctx.files,
    )
