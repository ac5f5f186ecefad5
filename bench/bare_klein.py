"""The "bare Klein app" that bench/run.sh compares cwm against.

The least a Klein webhook receiver can do for the benchmark's request: read
the body, ``json.loads`` it, look the webhook up in a dict, check the
``Authorization: Bearer`` header with ``hmac.compare_digest``, write one JSON
line to stdout (as cwm's ``log`` module does) and answer
``{"message": "200 OK"}``. Served by ``twisted.web.server.Site`` with
``parsePOSTFormSubmission=False`` and no access log, as cwm is.

Run: ``python bench/bare_klein.py PORT`` (listens on 127.0.0.1 only).
"""

from __future__ import annotations

import hmac
import json
import sys
from typing import IO, Any

from klein import Klein
from twisted.web.server import Site

WEBHOOKS: dict[str, dict[str, str]] = {
    "bench": {"data_type": "json", "module": "log", "authorization": "Bearer bench-token"},
}

_OK = json.dumps({"message": "200 OK"}).encode()


def _detail(request: Any, status: int, detail: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps({"detail": detail}).encode()


class BareReceiver:
    app = Klein()

    def __init__(self, webhooks: dict[str, dict[str, str]], out: IO[str]) -> None:
        self._webhooks = webhooks
        self._out = out

    @app.route("/webhook/<webhook_id>", methods=["POST"])
    def webhook(self, request: Any, webhook_id: str) -> bytes:
        body = request.content.read()
        entry = self._webhooks.get(webhook_id)
        if entry is None:
            return _detail(request, 404, "Webhook not found")
        given = (request.getHeader(b"authorization") or b"")
        if not hmac.compare_digest(given, entry["authorization"].encode()):
            return _detail(request, 401, "Unauthorized")
        try:
            payload = json.loads(body)
        except ValueError:
            return _detail(request, 400, "Invalid JSON")
        self._out.write(
            json.dumps({"event": "webhook", "webhook_id": webhook_id, "payload": payload}) + "\n"
        )
        self._out.flush()
        request.setHeader(b"Content-Type", b"application/json")
        return _OK


class QuietSite(Site):
    """No access log: cwm has none either."""

    def log(self, request: Any) -> None:
        pass


def main(argv: list[str]) -> None:
    from twisted.internet import reactor

    port = int(argv[1])
    site = QuietSite(BareReceiver(WEBHOOKS, sys.stdout).app.resource(), parsePOSTFormSubmission=False)
    reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv)
