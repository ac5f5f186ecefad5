"""Each cwm process announces itself under ``{prefix}global/instances/{id}`` on a kept-alive lease.

The key disappears on a clean stop (the lease is revoked) and by itself a TTL
after a crash; after a pause or outage long enough to lose the lease, the
publisher takes a new one and announces the instance again.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cwm import __version__
from cwm.config.etcd import instance_key
from cwm.etcd.publisher import LeasedPublisher, PublisherClient

INSTANCE_TTL = 15


def instance_id() -> str:
    """A name unique to this process: host, pid and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class InstanceRegistration(Service):
    """Publishes this instance's record while the service runs."""

    _log = Logger()

    def __init__(
        self,
        client_factory: Callable[[], PublisherClient],
        reactor: Any,
        prefix: str,
        record: Mapping[str, Any],
        ttl: int = INSTANCE_TTL,
    ) -> None:
        self.instance_id = str(record["id"])
        self.key = instance_key(prefix, self.instance_id).encode()
        self._record = json.dumps(dict(record), sort_keys=True).encode()
        self._publisher = LeasedPublisher(client_factory, reactor, ttl=ttl, name="etcd-instance")

    def startService(self) -> None:
        super().startService()
        self._publisher.startService()
        self._publisher.publish(self.key, self._record).addCallbacks(
            lambda revision: self._log.info(
                "registered instance {id} at revision {revision}", id=self.instance_id, revision=revision
            ),
            lambda failure: self._log.warn(
                "could not register instance {id} yet: {error}; retrying with the lease keep-alive",
                id=self.instance_id,
                error=failure.getErrorMessage(),
            ),
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._publisher.stopService()


def instance_record(address: str, started_at: float) -> dict[str, Any]:
    """What an instance announces about itself."""
    return {
        "id": instance_id(),
        "address": address,
        "version": __version__,
        "started_at": started_at,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }
