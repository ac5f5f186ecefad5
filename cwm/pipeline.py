"""One webhook's way: namespace and id -> lookup -> checks -> body -> module -> the answer.

The answer tells the truth: 200 only once the module has accepted the webhook;
503 with Retry-After when its sink failed; 202 when it has not finished within
the entry's ``response_timeout`` (it then finishes in the background, and that
outcome is logged too). Every request ends in exactly one outcome event.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cwm.auth import PayloadCheck
from cwm.body import LARGE_BODY, parse_body
from cwm.collector import NoHold, PayloadHold, Release
from cwm.config.model import DEFAULT_NAMESPACE, namespace_problem, webhook_id_problem
from cwm.config.store import ConfigStore, Webhook
from cwm.errors import HTTPError
from cwm.modules.base import ModuleRefused, ModuleUnavailable, WebhookEvent
from cwm.request import InboundRequest
from cwm.workers import BlockingWork, WorkersBusy

BUSY_RETRY_AFTER = 1
FAILED_RETRY_AFTER = 30
NOT_LOADED_RETRY_AFTER = 5
SECRET_RETRY_AFTER = 5


@dataclass(frozen=True)
class Answer:
    """A successful answer: status and the JSON body as sent."""

    status: int
    body: bytes


# Every success shares one of these two answers, encoded once.
OK = Answer(200, json.dumps({"message": "200 OK"}).encode())
ACCEPTED = Answer(
    202,
    json.dumps(
        {
            "message": "202 Accepted",
            "status": "accepted",
            "note": "Request accepted, processing continues in the background",
        }
    ).encode(),
)

_TIMED_OUT = object()


def parse_and_check(
    data_type: str, payload_check: PayloadCheck | None, request: InboundRequest, yielding: bool = False
) -> Any:
    """The parsed payload, checked against the entry's schema; pure, so it may run on any thread.

    ``yielding``: see ``parse_body``.

    Raises:
        HTTPError: 4xx for a body that cannot be parsed or fails the schema.
    """
    payload = parse_body(data_type, request.body, request.header("content-type"), yielding=yielding)
    if payload_check is not None:
        payload_check(request, payload)
    return payload


def thd_parse_and_check(data_type: str, payload_check: PayloadCheck | None, request: InboundRequest) -> Any:
    """``parse_and_check`` on a body thread, leaving the GIL to the reactor thread every few milliseconds."""
    return parse_and_check(data_type, payload_check, request, yielding=True)


class WebhookPipeline:
    """Runs each webhook request through the configured checks and module."""

    _log = Logger()

    def __init__(
        self,
        store: ConfigStore,
        clock: IReactorTime,
        max_in_flight: int,
        default_namespace: str = DEFAULT_NAMESPACE,
        body_work: BlockingWork | None = None,
        payload_hold: PayloadHold | None = None,
    ) -> None:
        """``body_work``: the threads large bodies are parsed on (None parses every body here).
        ``payload_hold``: held from before a large body is parsed until its delivery ends,
        so that no full garbage collection walks its payload (``cwm.collector``)."""
        self._body_work = body_work
        self._payload_hold: PayloadHold = payload_hold if payload_hold is not None else NoHold()
        self._store = store
        self._clock = clock
        self._max_in_flight = max_in_flight
        self._default_namespace = default_namespace
        self.in_flight = 0

    async def handle(self, namespace: str | None, webhook_id: str, request: InboundRequest) -> Answer:
        """Process one request; raise HTTPError for every answer but 200 and 202."""
        request_id = uuid.uuid4().hex
        where = f"{namespace or self._default_namespace}/{webhook_id}"
        # A large body's payload is alive from its parsing to the end of its
        # delivery (which may outlive the answer); the delivery releases it.
        # Releases wait for the next turn of the reactor, once this frame
        # and the delivery's have let go of the payload.
        release = self._payload_hold.hold() if len(request.body) > LARGE_BODY else None
        delivering = [False]
        try:
            webhook = self._find(namespace, webhook_id)
            request = replace(request, client_ip=webhook.checks.client_ip(request))
            payload = await self._verify(webhook, request)
            challenge = webhook.checks.slack_challenge(request)
            if challenge is not None:  # Slack's Request URL handshake: echoed, never delivered
                self._outcome(where, request_id, request, 200, "Slack URL verification")
                return Answer(200, json.dumps({"challenge": challenge}).encode())
            event = WebhookEvent(
                namespace=webhook.namespace,
                webhook_id=webhook_id,
                request_id=request_id,
                received_at=request.received_at,
                headers=request.headers,
                body=request.body,
                payload=payload,
                data_type=webhook.entry.data_type,
                client_ip=request.client_ip,
            )
            answer = await self._dispatch(webhook, event, release, delivering)
        except HTTPError as e:
            self._outcome(where, request_id, request, e.status, e.detail)
            raise
        except CancelledError:
            self._outcome(where, request_id, request, 499, "client went away; delivery continues")
            raise
        finally:
            if release is not None and not delivering[0]:
                self._clock.callLater(0, release)
        self._outcome(where, request_id, request, answer.status, "")
        return answer

    def _find(self, namespace: str | None, webhook_id: str) -> Webhook:
        if namespace is not None:
            problem = namespace_problem(namespace)
            if problem:
                raise HTTPError(400, problem)
        problem = webhook_id_problem(webhook_id)
        if problem:
            raise HTTPError(400, problem)
        if not self._store.loaded:
            # Not a 404: the webhook may well exist once the source answers.
            raise HTTPError(
                503, "Configuration not loaded yet", {"Retry-After": str(NOT_LOADED_RETRY_AFTER)}
            )
        where = namespace or self._default_namespace
        found = self._store.lookup(where, webhook_id)
        if found is None:
            if self._store.held_back(where, webhook_id):
                # Its secret cannot be read now; the reason is in /health, not here.
                raise HTTPError(
                    503, "Secret unavailable", {"Retry-After": str(SECRET_RETRY_AFTER)}
                )
            if namespace is None:
                raise HTTPError(404, "Webhook ID not found")
            raise HTTPError(404, f"Webhook ID not found in namespace '{namespace}'")
        return found

    async def _verify(self, webhook: Webhook, request: InboundRequest) -> Any:
        """Run the checks and parse the body; a failure (CheckFailed) is an HTTPError as it is.

        The request checks run here (some keep state, such as rate limits); a
        body over ``LARGE_BODY`` is parsed and schema-checked on the body
        threads, so that no request holds the reactor thread for long.
        """
        for check in webhook.checks.checks:
            check(request)
        if self._body_work is None or len(request.body) <= LARGE_BODY:
            return parse_and_check(webhook.entry.data_type, webhook.checks.payload_check, request)
        try:
            return await self._body_work.run(
                thd_parse_and_check, webhook.entry.data_type, webhook.checks.payload_check, request
            )
        except WorkersBusy:
            raise HTTPError(
                503, "Server busy: too many large bodies are being parsed", {"Retry-After": str(BUSY_RETRY_AFTER)}
            ) from None

    async def _dispatch(
        self, webhook: Webhook, event: WebhookEvent, release: Release | None = None, delivering: list[bool] | None = None
    ) -> Answer:
        """Run the module; ``release`` is called once the delivery ends (``delivering[0]`` says it will be)."""
        if self.in_flight >= self._max_in_flight:
            raise HTTPError(
                503,
                f"Server busy: {self.in_flight} deliveries in flight",
                {"Retry-After": str(BUSY_RETRY_AFTER)},
            )
        self.in_flight += 1
        answered: Deferred[tuple[object]] = Deferred()

        def finished(result: object) -> None:
            # Results travel wrapped in a tuple so a Failure is a value here,
            # never an unhandled error.
            self.in_flight -= 1
            if release is not None:
                self._clock.callLater(0, release)
            if answered.called:  # timed out, or the client went away
                self._background_outcome(event, result)
            else:
                answered.callback((result,))

        if delivering is not None:
            delivering[0] = True
        delivery: Deferred[None] = Deferred.fromCoroutine(webhook.module.deliver(event))
        delivery.addBoth(finished)

        def timed_out() -> None:
            if not answered.called:
                answered.callback((_TIMED_OUT,))

        # A module that finished synchronously needs no timer.
        timer = None if answered.called else self._clock.callLater(webhook.entry.response_timeout, timed_out)
        try:
            (result,) = await answered
        finally:
            if timer is not None and timer.active():
                timer.cancel()
        return self._answer(webhook, event, result)

    def _answer(self, webhook: Webhook, event: WebhookEvent, result: object) -> Answer:
        if result is _TIMED_OUT:
            return ACCEPTED
        if isinstance(result, Failure):
            if result.check(ModuleUnavailable, ModuleRefused):
                result.raiseException()  # an HTTPError: 503 with Retry-After, or the 4xx
            self._log.failure(
                "module {module} failed for {namespace}/{webhook_id}",
                result,
                module=webhook.entry.module,
                namespace=event.namespace,
                webhook_id=event.webhook_id,
            )
            raise HTTPError(
                503,
                f"Module '{webhook.entry.module}' failed",
                {"Retry-After": str(FAILED_RETRY_AFTER)},
            )
        return OK

    def _background_outcome(self, event: WebhookEvent, result: object) -> None:
        if isinstance(result, Failure):
            reason = (
                result.value.reason
                if result.check(ModuleUnavailable, ModuleRefused)
                else f"{result.type.__name__}"
            )
            self._log.error(
                "webhook {namespace}/{webhook_id} request {request_id}: background delivery failed: {reason}",
                namespace=event.namespace,
                webhook_id=event.webhook_id,
                request_id=event.request_id,
                reason=reason,
            )
        else:
            self._log.info(
                "webhook {namespace}/{webhook_id} request {request_id}: background delivery done",
                namespace=event.namespace,
                webhook_id=event.webhook_id,
                request_id=event.request_id,
            )

    def _outcome(
        self, where: str, request_id: str, request: InboundRequest, status: int, detail: str
    ) -> None:
        # Few substitutions in the text (formatting is most of a log line's
        # cost); every field is in the event for structured observers.
        self._log.info(
            "webhook {where} {status} {detail}",
            where=where,
            status=status,
            detail=detail or "OK",
            request_id=request_id,
            peer=request.peer_ip,
            duration=self._clock.seconds() - request.received_at,
        )
