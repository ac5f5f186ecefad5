"""Vault references in the live configuration: the store, the resolver and the client together.

The client talks to the Vault stand-in in-process (StubTreq) and every timer
runs on a Clock, so rotation, expiry, outages and retries are stepped exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.filepath import FilePath

from cwm.config.resolver import SecretResolver
from cwm.config.store import ConfigStore
from cwm.config.vault import VaultClient, VaultSettings
from cwm.modules.base import ModuleContext
from tests.unit.test_config import CountingModule, known
from tests.vault_standin import VaultStandin

ADDR = "http://vault.test:8200"
ROOT = "root-token-never-shown"
V1 = "token-v1-never-shown"
V2 = "token-v2-never-shown"
TTL = 30.0


class World:
    """A store wired to a resolver and a client over the stand-in, on one Clock."""

    def __init__(self, ttl: float = TTL, environ: Mapping[str, str] | None = None, **vault: Any) -> None:
        self.clock = Clock()
        self.vault = VaultStandin(self.clock, mounts={"secret": 2, "kv": 1})
        self.vault.create_token(token=ROOT)
        self.vault.put_secret("app/auth", {"token": V1, "hmac": "h1"})
        settings = VaultSettings(addr=ADDR, token=ROOT, cache_ttl=ttl, **vault)
        self.http = StubTreq(self.vault.resource())
        self.client = VaultClient(settings, self.http, self.clock)
        self.resolver = SecretResolver(
            self.client, self.clock, ttl=ttl, random_fraction=lambda: 1.0
        )
        self.built: list[CountingModule] = []
        self.contexts: list[ModuleContext] = []

        def build(name: str, config: Mapping[str, Any], ctx: ModuleContext) -> CountingModule:
            module = CountingModule()
            self.built.append(module)
            self.contexts.append(ctx)
            return module

        context = ModuleContext(self.clock, None, None, None, FilePath("."))  # type: ignore[arg-type]
        self.store = ConfigStore(
            context, environ or {}, build=build, known_module=known, secrets=self.resolver
        )

    def load(self, webhooks: dict[str, Any], connections: dict[str, Any] | None = None) -> None:
        self.store.replace_all({"default": webhooks}, connections or {})
        self.store.mark_loaded()

    def turn(self, seconds: float = 0.0) -> None:
        """Let time pass, then run what became due on the next turn (the store's rebuild)."""
        self.clock.advance(seconds)
        self.clock.advance(0)

    def authorization(self, webhook_id: str) -> str | None:
        webhook = self.store.lookup("default", webhook_id)
        return None if webhook is None else webhook.entry.raw.get("authorization")

    def reads(self, path: str = "app/auth") -> int:
        return self.vault.request_count(f"/v1/secret/data/{path}")


BEARER = {"module": "log", "authorization": "Bearer {$vault:app/auth#token}"}


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def test_entry_waits_for_its_first_read_then_serves_the_value() -> None:
    """Until the first read the store is not loaded (503 "not loaded"); then the value serves."""
    w = World()
    w.load({"a": BEARER, "plain": {"module": "log"}})
    assert not w.store.loaded
    held = w.store.held_back("default", "a")
    assert held is not None and held.waiting and "app/auth#token" in held.reason
    w.turn()
    assert w.store.loaded and w.store.unavailable == ()
    assert w.authorization("a") == f"Bearer {V1}"
    assert w.authorization("plain") is None and w.store.lookup("default", "plain") is not None


def test_one_read_serves_every_entry_that_uses_the_field() -> None:
    """Fifty entries naming the same field cost one request."""
    w = World()
    w.load({f"h{i}": BEARER for i in range(50)})
    w.turn()
    assert w.reads() == 1 and w.resolver.reads == 1
    assert all(w.authorization(f"h{i}") == f"Bearer {V1}" for i in range(50))


def test_rotation_in_vault_takes_effect_at_expiry_without_config_change() -> None:
    """After the TTL the field is read again; the new value serves, the old stops working."""
    w = World()
    w.load({"a": BEARER})
    w.turn()
    first = w.store.lookup("default", "a")
    w.vault.put_secret("app/auth", {"token": V2, "hmac": "h1"})
    w.turn(TTL - 1)
    assert w.authorization("a") == f"Bearer {V1}" and w.reads() == 1
    w.turn(1)
    assert w.reads() == 2
    assert w.authorization("a") == f"Bearer {V2}"
    assert first is not None and first.module.closed  # the old version is gone
    # An unchanged value does not rebuild the entry.
    second = w.store.lookup("default", "a")
    w.turn(TTL)
    assert w.reads() == 3 and w.store.lookup("default", "a") is second


def test_entry_change_reads_again_only_when_the_value_is_no_longer_fresh() -> None:
    """Re-publishing an entry re-reads its fields once the cache entry has expired (upstream's rule)."""
    w = World(ttl=0)  # no cache: no timer either, only entry changes read again
    w.load({"a": BEARER})
    w.turn()
    assert w.reads() == 1 and w.clock.getDelayedCalls() == []
    w.vault.put_secret("app/auth", {"token": V2})
    w.store.update({("default", "a"): dict(BEARER)})
    w.turn()
    assert w.reads() == 2 and w.authorization("a") == f"Bearer {V2}"

    fresh = World()
    fresh.load({"a": BEARER})
    fresh.turn()
    fresh.store.update({("default", "a"): dict(BEARER)})
    fresh.turn()
    assert fresh.resolver.reads == 1 and fresh.reads() == 1  # still fresh: not read again


def test_vault_down_cache_serves_then_entry_held_back_then_recovers(events: list[LogEvent]) -> None:
    """An outage is invisible while the value is fresh; after expiry only the entry answers 503."""
    w = World()
    w.load({"a": BEARER, "other": {"module": "log"}})
    w.turn()
    w.vault.sealed = True
    w.turn(TTL - 1)
    assert w.authorization("a") == f"Bearer {V1}"
    w.turn(1)  # expiry: the refresh fails
    assert w.store.lookup("default", "a") is None
    held = w.store.held_back("default", "a")
    assert held is not None and not held.waiting
    assert held.reason == "a.authorization: Vault secret app/auth#token: Vault answered HTTP 503 for app/auth#token"
    assert w.store.lookup("default", "other") is not None
    assert w.resolver.status()["unavailable"] == {"app/auth#token": "Vault answered HTTP 503 for app/auth#token"}
    # Retries back off: 1 s, 2 s, 4 s (random_fraction=1.0 takes the ceiling).
    before = w.reads()
    w.turn(1)
    w.turn(2)
    w.turn(4)
    assert w.reads() == before + 3
    w.vault.sealed = False
    w.vault.put_secret("app/auth", {"token": V2})
    w.turn(8)
    assert w.authorization("a") == f"Bearer {V2}" and w.store.unavailable == ()
    text = "\n".join(formatEvent(e) for e in events)
    assert "app/auth#token" in text
    for secret in (V1, V2, ROOT):
        assert secret not in text
        assert secret not in repr(w.store.unavailable) and secret not in repr(w.resolver.status())


def test_entry_change_while_fresh_does_not_read_and_outage_shows_at_expiry() -> None:
    """Re-publishing an entry within the TTL sends nothing to Vault; the outage shows at expiry."""
    w = World()
    w.load({"a": BEARER})
    w.turn()
    w.turn(TTL)  # second read, fresh until 2*TTL
    w.vault.sealed = True
    requests = sum(w.vault.requests.values())
    assert w.resolver.reads == 2
    w.store.update({("default", "a"): dict(BEARER)})
    w.turn()
    assert sum(w.vault.requests.values()) == requests and w.resolver.reads == 2
    assert w.authorization("a") == f"Bearer {V1}"
    w.turn(TTL)
    assert sum(w.vault.requests.values()) == requests + 1 and w.resolver.reads == 3
    held = w.store.held_back("default", "a")
    assert held is not None and not held.waiting and "HTTP 503" in held.reason


def test_missing_secret_without_default_holds_back_only_its_entry() -> None:
    """A field that does not exist: listed with the reason, store loaded, the rest serve."""
    w = World()
    w.load({"a": {"module": "log", "authorization": "{$vault:app/nope#token}"}, "b": BEARER})
    w.turn()
    assert w.store.loaded and w.store.rejections == ()
    held = w.store.held_back("default", "a")
    assert held is not None and "Vault secret not found: app/nope#token" in held.reason
    assert w.authorization("b") == f"Bearer {V1}"
    # Created later in Vault: picked up by the retry.
    w.vault.put_secret("app/nope", {"token": "late"})
    w.turn(1)
    assert w.authorization("a") == "late"


def test_default_serves_until_the_secret_can_be_read() -> None:
    """A reference with a default uses it when the read fails, and the real value once it exists."""
    w = World()
    w.load({"a": {"module": "log", "authorization": "Bearer {$vault:app/new#token:fall:back}"}})
    w.turn()
    assert w.authorization("a") == "Bearer fall:back" and w.store.unavailable == ()
    w.vault.put_secret("app/new", {"token": "real"})
    w.turn(1)
    assert w.authorization("a") == "Bearer real"


def test_embedded_vault_and_env_in_one_string_and_a_secret_is_never_expanded_again() -> None:
    """Both kinds in one string; a secret that contains {$X} stays exactly as read."""
    w = World(environ={"PREFIX": "Bearer", "X": "expanded"})
    w.vault.put_secret("app/odd", {"v": "a{$X}b"})
    w.load({"a": {"module": "log", "authorization": "{$PREFIX} {$vault:app/auth#token}"},
            "b": {"module": "log", "authorization": "{$vault:app/odd#v}"}})
    w.turn()
    assert w.authorization("a") == f"Bearer {V1}"
    assert w.authorization("b") == "a{$X}b"


def test_kv_version_1_and_a_mount() -> None:
    """KV v1 reads the field from the secret itself, under the configured mount."""
    w = World(mount_point="kv", kv_version=1)
    w.vault.put_secret("db", {"password": "pw1"}, mount="kv")
    w.load(
        {"uses": {"module": "log", "connection": "db"}},
        {"db": {"type": "postgresql", "host": "h", "password": "{$vault:db#password}"}},
    )
    w.turn()
    assert w.vault.request_count("/v1/kv/db") == 1 and w.store.unavailable == ()
    # The module of the webhook that uses the connection sees the resolved password.
    assert w.contexts[-1].connections["db"]["password"] == "pw1"


def test_connection_secret_holds_back_the_webhooks_that_use_it() -> None:
    """A connection whose secret fails holds back its webhooks (503), and they return with it."""
    w = World()
    connections = {"r": {"type": "redis", "host": "h", "password": "{$vault:app/conn#pw}"}}
    w.load({"uses": {"module": "log", "connection": "r"}, "other": {"module": "log"}}, connections)
    waiting = w.store.held_back("default", "uses")
    assert waiting is not None and waiting.waiting and not w.store.loaded
    w.turn()
    held = w.store.held_back("default", "uses")
    assert held is not None and not held.waiting
    assert held.reason.startswith("connection 'r': r.password: Vault secret app/conn#pw:")
    assert w.store.lookup("default", "other") is not None
    w.vault.put_secret("app/conn", {"pw": "pw"})
    w.turn(1)
    assert w.store.lookup("default", "uses") is not None and w.store.unavailable == ()
    assert w.contexts[-1].connections["r"]["password"] == "pw"


def test_deleted_entry_stops_its_reads() -> None:
    """When no entry uses a field any more its refresh timer goes too."""
    w = World()
    w.load({"a": BEARER})
    w.turn()
    assert w.clock.getDelayedCalls()
    w.load({})
    assert w.clock.getDelayedCalls() == [] and w.resolver.status()["fields"] == {}


def test_vault_disabled_uses_the_default_or_rejects_the_entry() -> None:
    """Without Vault a reference takes its default; with none, its entry is rejected with why."""
    from tests.unit.test_config import make_store

    store, _ = make_store()
    store.replace_all(
        {"default": {"a": {"module": "log", "authorization": "{$vault:x#y:dflt}"},
                     "b": {"module": "log", "authorization": "{$vault:x#y}"}}},
        {},
    )
    a = store.lookup("default", "a")
    assert a is not None and a.entry.raw["authorization"] == "dflt"
    assert store.lookup("default", "b") is None
    assert "needs SECRETS_BACKEND=vault" in store.rejections[0].reason


def test_malformed_reference_rejects_the_entry() -> None:
    """A path with '..' is a configuration error, not a secret outage."""
    w = World()
    w.load({"a": {"module": "log", "authorization": "{$vault:app/../x#token}"}})
    assert w.store.loaded and w.store.unavailable == ()
    assert "must not contain '..'" in w.store.rejections[0].reason
