"""A LimitedSite's channel on a StringTransport, and the JSON answer it wrote."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from cwm.web.limits import LimitedChannel, LimitedSite


def connect(resource: Resource, max_body: int = 1000) -> tuple[LimitedChannel, StringTransport]:
    site = LimitedSite(resource, max_body_bytes=max_body, reactor=Clock())
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def answer(transport: StringTransport) -> tuple[int, dict[str, str]]:
    """Status and JSON body of the one answer written so far."""
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head
    return int(head.split(b" ")[1]), json.loads(body)
