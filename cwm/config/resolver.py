"""The Vault fields the live configuration uses, read on the reactor and kept fresh.

The store resolves entries synchronously against ``lookup``; this table does
the reading. Each field is read once however many entries use it, read again
when its cache lifetime runs out (so a secret rotated in Vault takes effect
within ``VAULT_CACHE_TTL_SECONDS`` without a config change), and read again
when an entry that uses it changes and the value is no longer fresh. A read
that fails is retried with jittered exponential backoff; as reads only
start once a value is no longer fresh, a fresh value always serves, and
after a failed read the entries that need it are held back. Whenever what an entry would see changes, the store is told (batched,
on the next reactor turn) and rebuilds just those entries.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cwm.config.secrets import SecretRef
from cwm.config.vault import VaultError

EntryKey = tuple[str, str | None, str]
"""("webhook", namespace, id) or ("connection", None, name)."""


class SecretReader(Protocol):
    """What the table needs from a Vault client."""

    def read(self, path: str, field: str) -> Coroutine[Any, Any, str]: ...

    def cached_until(self, path: str, field: str) -> float | None: ...


class _Secret:
    __slots__ = ("value", "error", "users", "timer", "reading", "expires_at", "failures")

    def __init__(self) -> None:
        self.value: str | None = None
        self.error: Exception | None = None
        self.users: set[EntryKey] = set()
        self.timer: IDelayedCall | None = None
        self.reading = False
        self.expires_at = 0.0
        self.failures = 0

    def __repr__(self) -> str:
        return f"<_Secret users={len(self.users)} reading={self.reading} failed={self.error is not None}>"


class SecretResolver:
    """Vault fields by reference, with the entries that use each one."""

    _log = Logger()

    def __init__(
        self,
        reader: SecretReader,
        clock: IReactorTime,
        notify: Callable[[set[EntryKey]], None] | None = None,
        ttl: float = 300.0,
        retry_initial: float = 1.0,
        retry_maximum: float = 60.0,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self._reader = reader
        self._clock = clock
        self.notify = notify
        self._ttl = ttl
        self._retry_initial = retry_initial
        self._retry_maximum = retry_maximum
        self._random = random_fraction
        self._secrets: dict[SecretRef, _Secret] = {}
        self._by_entry: dict[EntryKey, frozenset[SecretRef]] = {}
        self._dirty: set[EntryKey] = set()
        self._flush_call: IDelayedCall | None = None
        self._stopped = False
        self.reads = 0
        self.failed_reads = 0

    # -- what the store asks --------------------------------------------------

    def lookup(self, ref: SecretRef) -> str | Exception | None:
        """The value, the reason it could not be read, or None: not read yet."""
        secret = self._secrets.get(ref)
        if secret is None:
            return None
        if secret.value is not None:
            return secret.value
        return secret.error

    def track(self, key: EntryKey, refs: frozenset[SecretRef], reread: bool) -> None:
        """``key`` now uses exactly ``refs``; read what is missing.

        With ``reread`` (the entry itself changed), fields whose value is no
        longer fresh are read again, as upstream re-reads on a config change.
        """
        old = self._by_entry.get(key, frozenset())
        for ref in old - refs:
            self._release(ref, key)
        if refs:
            self._by_entry[key] = refs
        else:
            self._by_entry.pop(key, None)
        for ref in refs:
            secret = self._secrets.get(ref)
            if secret is None:
                secret = self._secrets[ref] = _Secret()
                secret.users.add(key)
                self._read(ref, secret)
                continue
            secret.users.add(key)
            if reread and not secret.reading and not self._fresh(secret):
                self._read(ref, secret)

    def stop(self) -> None:
        """Cancel every timer; results that arrive later are dropped."""
        self._stopped = True
        for secret in self._secrets.values():
            self._cancel(secret)
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None

    def status(self) -> dict[str, Any]:
        """Counts, and each field's state (never its value) for /health."""
        now = self._clock.seconds()
        fields = {}
        failing = {}
        for ref, secret in sorted(self._secrets.items()):
            if secret.value is not None:
                state = "ok"
            elif secret.error is not None:
                state = "failed"
                failing[str(ref)] = getattr(secret.error, "reason", None) or type(secret.error).__name__
            else:
                state = "reading"
            fields[str(ref)] = {
                "state": state,
                "entries": len(secret.users),
                "fresh_for": round(max(0.0, secret.expires_at - now), 3) if state == "ok" else 0.0,
            }
        return {
            "reads": self.reads,
            "failed_reads": self.failed_reads,
            "fields": fields,
            "unavailable": failing,
        }

    def unreachable(self) -> dict[str, str]:
        """Fields in use that cannot be read because Vault is unreachable (retryable errors), with the reason."""
        return {
            str(ref): getattr(secret.error, "reason", None) or type(secret.error).__name__
            for ref, secret in sorted(self._secrets.items())
            if secret.value is None and secret.error is not None and getattr(secret.error, "retryable", True)
        }

    def not_read_yet(self) -> list[str]:
        """Fields in use whose first read has not answered yet."""
        return [str(ref) for ref, s in sorted(self._secrets.items()) if s.value is None and s.error is None]

    @property
    def in_use(self) -> int:
        """How many Vault fields the configuration references now."""
        return len(self._secrets)

    # -- reading --------------------------------------------------------------

    def _fresh(self, secret: _Secret) -> bool:
        return secret.value is not None and self._clock.seconds() < secret.expires_at

    def _release(self, ref: SecretRef, key: EntryKey) -> None:
        secret = self._secrets.get(ref)
        if secret is None:
            return
        secret.users.discard(key)
        if not secret.users:
            self._cancel(secret)
            del self._secrets[ref]

    def _cancel(self, secret: _Secret) -> None:
        if secret.timer is not None and secret.timer.active():
            secret.timer.cancel()
        secret.timer = None

    def _read(self, ref: SecretRef, secret: _Secret) -> None:
        if self._stopped:
            return
        self._cancel(secret)
        secret.reading = True
        self.reads += 1
        d: Deferred[str] = Deferred.fromCoroutine(self._reader.read(ref.path, ref.field))
        d.addBoth(self._settled, ref, secret)

    def _settled(self, result: str | Failure, ref: SecretRef, secret: _Secret) -> None:
        secret.reading = False
        if self._stopped or self._secrets.get(ref) is not secret:
            return None  # stopped, or no entry uses it any more
        now = self._clock.seconds()
        if isinstance(result, Failure):
            self._failed(ref, secret, result, now)
            return None
        changed = secret.value != result or secret.error is not None
        if secret.error is not None:
            self._log.info("Vault secret {ref} can be read again", ref=str(ref))
        secret.value, secret.error, secret.failures = result, None, 0
        until = self._reader.cached_until(ref.path, ref.field)
        secret.expires_at = until if until is not None and until > now else now + self._ttl
        if self._ttl > 0:
            secret.timer = self._clock.callLater(
                max(0.0, secret.expires_at - now), self._refresh, ref, secret
            )
        if changed:
            self._changed(secret)
        return None

    def _failed(self, ref: SecretRef, secret: _Secret, failure: Failure, now: float) -> None:
        """A read failed. Reads only start once the value is no longer fresh (or
        was never read), so the value goes and its entries are held back."""
        self.failed_reads += 1
        error = failure.value
        if not isinstance(error, VaultError):
            self._log.failure("reading Vault secret {ref} failed", failure, ref=str(ref))
        assert isinstance(error, Exception)
        secret.failures += 1
        ceiling = min(self._retry_maximum, self._retry_initial * 2.0 ** min(secret.failures - 1, 32))
        delay = ceiling * (0.5 + 0.5 * self._random())
        reason = getattr(error, "reason", None) or type(error).__name__
        newly = secret.value is not None or getattr(secret.error, "reason", None) != reason
        secret.value, secret.error = None, error
        if newly:
            self._log.error(
                "Vault secret {ref} cannot be read ({reason}); {count} entries that need it "
                "without a default are held back; retrying with backoff",
                ref=str(ref),
                reason=reason,
                count=len(secret.users),
            )
            self._changed(secret)
        secret.timer = self._clock.callLater(delay, self._refresh, ref, secret)

    def _refresh(self, ref: SecretRef, secret: _Secret) -> None:
        secret.timer = None
        if self._secrets.get(ref) is secret and not secret.reading:
            self._read(ref, secret)

    # -- telling the store ------------------------------------------------------

    def _changed(self, secret: _Secret) -> None:
        self._dirty.update(secret.users)
        if self._flush_call is None and not self._stopped:
            self._flush_call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        dirty, self._dirty = self._dirty, set()
        if dirty and self.notify is not None:
            self.notify(dirty)
