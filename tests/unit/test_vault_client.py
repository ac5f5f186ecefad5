"""VaultClient against the Vault stand-in, in-process: no reactor, no sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import BrowserLikePolicyForHTTPS, HTTPConnectionPool
from zope.interface import implementer

from cwm.config.vault import (
    VaultClient,
    VaultError,
    VaultPermissionDenied,
    VaultSecretNotFound,
    VaultSettings,
    VaultTimeout,
    VaultUnavailable,
    lookup_retry_delay,
    parse_reference,
    vault_http_client,
    vault_tls_policy,
)
from cwm.errors import ConfigError
from tests.vault_standin import VaultStandin

ADDR = "http://vault.test:8200"
SECRET = "s3cr3t-value-never-logged"
ROOT = "root-token-never-logged"
STATIC = "static-token-never-logged"
DATA_URL = "/v1/secret/data/app/auth"
LOOKUP_URL = "/v1/auth/token/lookup-self"
RENEW_URL = "/v1/auth/token/renew-self"


def settings(**overrides: Any) -> VaultSettings:
    values: dict[str, Any] = {"addr": ADDR, "token": ROOT}
    values.update(overrides)
    return VaultSettings(**values)


class Fixture:
    def __init__(self, **overrides: Any) -> None:
        self.clock = Clock()
        self.vault = VaultStandin(self.clock, mounts={"secret": 2, "kv": 1})
        self.vault.create_token(token=ROOT)
        self.vault.put_secret("app/auth", {"token": SECRET, "nested": {"a": [1, 2]}, "n": 5})
        self.http = StubTreq(self.vault.resource())
        self.client = VaultClient(settings(**overrides), self.http, self.clock)

    def read(self, path: str = "app/auth", field: str = "token") -> Deferred[str]:
        return Deferred.fromCoroutine(self.client.read(path, field))


class ReadTests(SynchronousTestCase):
    def test_kv2_read(self) -> None:
        f = Fixture()
        self.assertEqual(self.successResultOf(f.read()), SECRET)
        self.assertEqual(f.vault.request_count(DATA_URL), 1)
        self.assertEqual(f.vault.seen_headers[-1]["x-vault-token"], ROOT)
        self.assertNotIn("x-vault-namespace", f.vault.seen_headers[-1])
        self.assertEqual(f.clock.getDelayedCalls(), [])

    def test_dict_list_and_number_values_become_json(self) -> None:
        f = Fixture()
        self.assertEqual(self.successResultOf(f.read(field="nested")), '{"a":[1,2]}')
        self.assertEqual(self.successResultOf(f.read(field="n")), "5")

    def test_kv1_read(self) -> None:
        f = Fixture(mount_point="kv", kv_version=1)
        f.vault.put_secret("db", {"password": SECRET}, mount="kv")
        self.assertEqual(self.successResultOf(f.read("db", "password")), SECRET)
        self.assertEqual(f.vault.request_count("/v1/kv/db"), 1)

    def test_missing_field_is_not_retryable_and_named(self) -> None:
        f = Fixture()
        failure = self.failureResultOf(f.read(field="nope"), VaultSecretNotFound)
        self.assertFalse(failure.value.retryable)
        self.assertIn("app/auth#nope", failure.value.reason)

    def test_missing_secret_is_not_retryable_and_named(self) -> None:
        f = Fixture()
        failure = self.failureResultOf(f.read("app/gone", "token"), VaultSecretNotFound)
        self.assertFalse(failure.value.retryable)
        self.assertIn("app/gone#token", failure.value.reason)

    def test_sealed_is_retryable(self) -> None:
        f = Fixture()
        f.vault.sealed = True
        failure = self.failureResultOf(f.read(), VaultUnavailable)
        self.assertTrue(failure.value.retryable)
        self.assertIn("503", failure.value.reason)

    def test_timeout_leaves_no_delayed_calls(self) -> None:
        f = Fixture(timeout=5.0)
        f.vault.hold = True
        reading = f.read()
        self.assertNoResult(reading)
        f.clock.advance(4.9)
        self.assertNoResult(reading)
        f.clock.advance(0.2)
        failure = self.failureResultOf(reading, VaultTimeout)
        self.assertTrue(failure.value.retryable)
        self.assertEqual(f.clock.getDelayedCalls(), [])

    def test_static_token_refused_is_permission_denied(self) -> None:
        f = Fixture(token="not-a-token")
        failure = self.failureResultOf(f.read(), VaultPermissionDenied)
        self.assertFalse(failure.value.retryable)
        self.assertEqual(f.vault.request_count(DATA_URL), 1)

    def test_namespace_header_and_per_namespace_secrets(self) -> None:
        f = Fixture(namespace="team-a")
        f.vault.put_secret("app/auth", {"token": "team-a-value"}, namespace="team-a")
        self.assertEqual(self.successResultOf(f.read()), "team-a-value")
        self.assertEqual(f.vault.seen_headers[-1]["x-vault-namespace"], "team-a")

    def test_stop_fails_reads_in_flight_and_clears_timers(self) -> None:
        f = Fixture()
        f.vault.hold = True
        reading = f.read()
        f.client.stop()
        failure = self.failureResultOf(reading, VaultUnavailable)
        self.assertIn("stopped", failure.value.reason)
        self.assertEqual(f.clock.getDelayedCalls(), [])


class CacheTests(SynchronousTestCase):
    def test_hit_then_expiry(self) -> None:
        f = Fixture(cache_ttl=30.0)
        self.assertEqual(self.successResultOf(f.read()), SECRET)
        f.clock.advance(29)
        self.assertEqual(self.successResultOf(f.read()), SECRET)
        self.assertEqual(f.vault.request_count(DATA_URL), 1)
        self.assertEqual(f.client.cached("app/auth", "token"), SECRET)
        f.clock.advance(2)
        self.assertIsNone(f.client.cached("app/auth", "token"))
        f.vault.put_secret("app/auth", {"token": "rotated"})
        self.assertEqual(self.successResultOf(f.read()), "rotated")
        self.assertEqual(f.vault.request_count(DATA_URL), 2)

    def test_ttl_zero_disables_caching(self) -> None:
        f = Fixture(cache_ttl=0.0)
        self.successResultOf(f.read())
        self.successResultOf(f.read())
        self.assertEqual(f.vault.request_count(DATA_URL), 2)
        self.assertIsNone(f.client.cached("app/auth", "token"))

    def test_bounded_eviction_expired_first_then_soonest(self) -> None:
        f = Fixture(cache_ttl=10.0, cache_max_size=2)
        for name in ("a", "b", "c", "d"):
            f.vault.put_secret(f"p/{name}", {"f": name})
        self.successResultOf(f.read("p/a", "f"))  # expires at 10
        f.clock.advance(5)
        self.successResultOf(f.read("p/b", "f"))  # expires at 15
        f.clock.advance(6)  # a has expired
        self.successResultOf(f.read("p/c", "f"))  # evicts a (expired)
        self.assertIsNone(f.client.cached_until("p/a", "f"))
        self.assertEqual(f.client.cached("p/b", "f"), "b")
        self.successResultOf(f.read("p/d", "f"))  # evicts b (soonest to expire)
        self.assertIsNone(f.client.cached_until("p/b", "f"))
        self.assertEqual(f.client.cached("p/c", "f"), "c")
        self.assertEqual(f.client.cached("p/d", "f"), "d")


class SingleFlightTests(SynchronousTestCase):
    def test_concurrent_reads_share_one_request(self) -> None:
        f = Fixture()
        f.vault.hold = True
        first, second = f.read(), f.read()
        self.assertEqual(f.vault.request_count(DATA_URL), 1)
        self.assertNoResult(first)
        f.vault.hold = False
        f.vault.answer_held()
        f.http.flush()
        self.assertEqual(f.vault.request_count(DATA_URL), 1)
        self.assertEqual(self.successResultOf(first), SECRET)
        self.assertEqual(self.successResultOf(second), SECRET)

    def test_cancelling_one_caller_keeps_the_shared_request(self) -> None:
        f = Fixture()
        f.vault.hold = True
        first, second = f.read(), f.read()
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertNoResult(second)
        f.vault.hold = False
        f.vault.answer_held()
        f.http.flush()
        self.assertEqual(self.successResultOf(second), SECRET)
        self.assertEqual(f.client.cached("app/auth", "token"), SECRET)
        self.assertEqual(f.clock.getDelayedCalls(), [])

    def test_different_fields_are_separate_requests(self) -> None:
        f = Fixture()
        self.successResultOf(f.read(field="token"))
        self.successResultOf(f.read(field="n"))
        self.assertEqual(f.vault.request_count(DATA_URL), 2)


class AppRoleTests(SynchronousTestCase):
    def approle_fixture(self, **overrides: Any) -> Fixture:
        f = Fixture(token=None, role_id="role-1", secret_id="secret-id-never-logged", **overrides)
        f.vault.create_approle("role-1", "secret-id-never-logged", token_ttl=300.0)
        return f

    def test_login_then_read(self) -> None:
        f = self.approle_fixture()
        self.assertEqual(self.successResultOf(f.read()), SECRET)
        self.assertEqual(f.vault.request_count("/v1/auth/approle/login"), 1)
        self.successResultOf(f.read(field="n"))
        self.assertEqual(f.vault.request_count("/v1/auth/approle/login"), 1)

    def test_bad_credentials_are_permission_denied(self) -> None:
        f = self.approle_fixture()
        f.vault.approles["role-1"] = ("other", 300.0, True)
        failure = self.failureResultOf(f.read(), VaultPermissionDenied)
        self.assertNotIn("secret-id-never-logged", str(failure.value))

    def test_relogin_once_on_403(self) -> None:
        f = self.approle_fixture()
        self.successResultOf(f.read(field="n"))
        for token in list(f.vault.tokens):
            if token != ROOT:
                f.vault.revoke_token(token)
        self.assertEqual(self.successResultOf(f.read()), SECRET)
        self.assertEqual(f.vault.request_count("/v1/auth/approle/login"), 2)

    def test_403_after_relogin_is_not_retryable(self) -> None:
        f = self.approle_fixture()
        original = f.vault.handle

        def refuse_reads(request: Any) -> Any:
            if request.path.startswith(b"/v1/secret/"):
                request.requestHeaders.removeHeader(b"x-vault-token")
            return original(request)

        f.vault.handle = refuse_reads  # type: ignore[method-assign]
        failure = self.failureResultOf(f.read(), VaultPermissionDenied)
        self.assertFalse(failure.value.retryable)
        self.assertEqual(f.vault.request_count("/v1/auth/approle/login"), 2)
        self.assertEqual(f.vault.request_count(DATA_URL), 2)

    def test_renew_self_scheduled_and_performed(self) -> None:
        f = self.approle_fixture()
        f.client.start()
        self.assertEqual(f.clock.getDelayedCalls(), [])  # no token yet
        self.successResultOf(f.read())
        (renewal,) = f.clock.getDelayedCalls()
        self.assertAlmostEqual(renewal.getTime(), 200.0)
        f.clock.advance(199)
        self.assertEqual(f.vault.request_count("/v1/auth/token/renew-self"), 0)
        f.clock.advance(1)
        self.assertEqual(f.vault.request_count("/v1/auth/token/renew-self"), 1)
        (renewed,) = [t for t in f.vault.tokens.values() if t.token != ROOT]
        self.assertEqual(renewed.renewals, 1)
        self.assertEqual(renewed.expires_at, 500.0)
        (next_renewal,) = f.clock.getDelayedCalls()
        self.assertAlmostEqual(next_renewal.getTime(), 400.0)
        f.clock.advance(200)
        self.assertEqual(f.vault.request_count("/v1/auth/token/renew-self"), 2)
        f.client.stop()
        self.assertEqual(f.clock.getDelayedCalls(), [])

    def test_failed_renewal_logs_in_again_on_next_read(self) -> None:
        f = self.approle_fixture()
        f.client.start()
        self.successResultOf(f.read(field="n"))
        for token in list(f.vault.tokens):
            if token != ROOT:
                f.vault.revoke_token(token)
        f.clock.advance(200)  # renew-self gets 403
        self.assertEqual(f.clock.getDelayedCalls(), [])
        self.assertEqual(self.successResultOf(f.read()), SECRET)
        self.assertEqual(f.vault.request_count("/v1/auth/approle/login"), 2)
        f.client.stop()
        self.assertEqual(f.clock.getDelayedCalls(), [])

    def test_start_after_login_schedules_from_login_time(self) -> None:
        f = self.approle_fixture()
        self.successResultOf(f.read())
        self.assertEqual(f.clock.getDelayedCalls(), [])
        f.clock.advance(50)
        f.client.start()
        (renewal,) = f.clock.getDelayedCalls()
        self.assertAlmostEqual(renewal.getTime(), 200.0)
        f.client.stop()
        self.assertEqual(f.clock.getDelayedCalls(), [])


class Events:
    """Collects every log event while in a ``with`` block."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

        @implementer(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            self.events.append(event)

        self._observe = observe

    def __enter__(self) -> Events:
        globalLogPublisher.addObserver(self._observe)
        return self

    def __exit__(self, *exc_info: object) -> None:
        globalLogPublisher.removeObserver(self._observe)

    def formats(self) -> list[str]:
        return [str(e.get("log_format")) for e in self.events]


class StaticTokenTests(SynchronousTestCase):
    """A static ``VAULT_TOKEN`` is looked up on start and renewed if it may be."""

    def static_fixture(self, ttl: float | None, renewable: bool) -> Fixture:
        f = Fixture(token=STATIC, cache_ttl=0.0)
        f.vault.create_token(ttl=ttl, renewable=renewable, token=STATIC)
        return f

    def test_renewable_token_is_renewed_before_it_expires(self) -> None:
        f = self.static_fixture(ttl=300.0, renewable=True)
        with Events() as log:
            f.client.start()
            self.assertEqual(f.vault.request_count(LOOKUP_URL), 1)
            (renewal,) = f.clock.getDelayedCalls()
            self.assertAlmostEqual(renewal.getTime(), 200.0)
            f.clock.advance(199)
            self.assertEqual(f.vault.tokens[STATIC].renewals, 0)
            f.clock.advance(1)
            self.assertEqual(f.vault.tokens[STATIC].renewals, 1)
            self.assertEqual(f.vault.tokens[STATIC].expires_at, 500.0)
            f.clock.advance(150)  # 350: the original TTL has passed
            self.assertEqual(self.successResultOf(f.read()), SECRET)
            for _ in range(10):
                f.clock.advance(100)
                self.assertEqual(self.successResultOf(f.read()), SECRET)
            self.assertEqual(f.vault.tokens[STATIC].renewals, 6)  # every 200 s up to 1350
            self.assertEqual(f.vault.request_count(LOOKUP_URL), 1)
            f.client.stop()
        self.assertEqual(f.clock.getDelayedCalls(), [])
        self.assertNotIn(STATIC, repr(log.events))

    def test_root_token_needs_nothing(self) -> None:
        f = self.static_fixture(ttl=None, renewable=False)
        f.client.start()
        self.assertEqual(f.vault.request_count(LOOKUP_URL), 1)
        self.assertEqual(f.clock.getDelayedCalls(), [])
        f.clock.advance(100_000)
        self.assertEqual(self.successResultOf(f.read()), SECRET)
        self.assertEqual(f.vault.request_count(RENEW_URL), 0)
        f.client.stop()
        self.assertEqual(f.clock.getDelayedCalls(), [])

    def test_non_renewable_token_is_left_alone_with_a_warning(self) -> None:
        f = self.static_fixture(ttl=300.0, renewable=False)
        with Events() as log:
            f.client.start()
        self.assertEqual(f.clock.getDelayedCalls(), [])
        self.assertTrue(any("cannot be renewed" in text for text in log.formats()))
        f.clock.advance(1000)
        self.assertEqual(f.vault.request_count(RENEW_URL), 0)

    def test_failed_lookup_is_retried_with_backoff(self) -> None:
        f = self.static_fixture(ttl=300.0, renewable=True)
        f.vault.sealed = True
        with Events() as log:
            f.client.start()
            self.assertEqual(f.vault.request_count(LOOKUP_URL), 1)
            for expected_delay in (5.0, 10.0, 20.0):
                (retry,) = f.clock.getDelayedCalls()
                self.assertAlmostEqual(retry.getTime() - f.clock.seconds(), expected_delay)
                f.clock.advance(expected_delay)
            self.assertEqual(f.vault.request_count(LOOKUP_URL), 4)
            f.vault.sealed = False
            f.clock.advance(40)  # the fifth lookup, at 75 s, works
            self.assertEqual(f.vault.request_count(LOOKUP_URL), 5)
            (renewal,) = f.clock.getDelayedCalls()
            # two thirds of the 225 s the token has left
            self.assertAlmostEqual(renewal.getTime(), 75.0 + 150.0)
            f.client.stop()
        self.assertEqual(f.clock.getDelayedCalls(), [])
        warnings = [t for t in log.formats() if "lookup failed" in t]
        self.assertEqual(len(warnings), 4)
        self.assertNotIn(STATIC, repr(log.events))

    def test_lookup_that_times_out_is_retried(self) -> None:
        f = Fixture(token=STATIC, timeout=3.0)
        f.vault.create_token(ttl=300.0, renewable=True, token=STATIC)
        f.vault.hold = True
        f.client.start()
        f.clock.advance(3)  # timed out; the retry waits 5 s
        (retry,) = f.clock.getDelayedCalls()
        self.assertAlmostEqual(retry.getTime(), 8.0)
        f.vault.hold = False
        f.clock.advance(5)
        self.assertEqual(f.vault.request_count(LOOKUP_URL), 2)
        (renewal,) = f.clock.getDelayedCalls()
        self.assertAlmostEqual(renewal.getTime(), 8.0 + (300.0 - 8.0) * 2 / 3)
        f.client.stop()
        self.assertEqual(f.clock.getDelayedCalls(), [])

    def test_stop_cancels_a_pending_retry_and_a_lookup_in_flight(self) -> None:
        f = self.static_fixture(ttl=300.0, renewable=True)
        f.vault.sealed = True
        f.client.start()
        self.assertEqual(len(f.clock.getDelayedCalls()), 1)
        f.client.stop()
        self.assertEqual(f.clock.getDelayedCalls(), [])
        f.vault.sealed = False
        f.vault.hold = True
        f.client.start()
        self.assertEqual(len(f.vault.held), 1)  # the second lookup waits for an answer
        self.assertTrue(f.clock.getDelayedCalls())  # its timeouts
        f.client.stop()
        self.assertEqual(f.clock.getDelayedCalls(), [])

    def test_start_twice_looks_up_once(self) -> None:
        f = self.static_fixture(ttl=300.0, renewable=True)
        f.client.start()
        f.client.start()
        self.assertEqual(f.vault.request_count(LOOKUP_URL), 1)
        self.assertEqual(len(f.clock.getDelayedCalls()), 1)
        f.client.stop()

    def test_retry_delays_are_bounded(self) -> None:
        self.assertEqual(
            [lookup_retry_delay(n) for n in range(1, 9)],
            [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0],
        )
        self.assertEqual(lookup_retry_delay(10_000), 300.0)


# ``vault_http_client`` and ``VAULT_VERIFY``; connections are tested in integration.


def test_http_client_on_a_persistent_pool() -> None:
    http, pool = vault_http_client(MemoryReactorClock(), settings(addr="https://vault:8200"))
    assert isinstance(http, HTTPClient)
    assert isinstance(pool, HTTPConnectionPool)
    assert pool.persistent
    assert isinstance(vault_tls_policy(True), BrowserLikePolicyForHTTPS)


def test_missing_ca_bundle_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    with pytest.raises(ConfigError) as raised:
        vault_http_client(MemoryReactorClock(), settings(verify=str(missing)))
    message = str(raised.value)
    assert str(missing) in message
    assert "VAULT_VERIFY" in message
    assert "\n" not in message


def test_ca_bundle_without_certificates(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    path.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="no PEM certificate"):
        vault_tls_policy(str(path))


def test_malformed_certificate(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="malformed certificate") as raised:
        vault_tls_policy(str(path))
    assert str(path) in str(raised.value)


def test_verification_off_warns_once() -> None:
    with Events() as log:
        policy = vault_tls_policy(False)
        policy.creatorForNetloc(b"vault.example", 8200)
        policy.creatorForNetloc(b"127.0.0.1", 8200)
    assert sum("VAULT_VERIFY is off" in t for t in log.formats()) == 1


class NoSecretLeakTests(SynchronousTestCase):
    def test_reprs_and_errors_hide_secrets(self) -> None:
        s = settings(role_id="r", secret_id="secret-id-never-logged")
        self.assertNotIn(ROOT, repr(s))
        self.assertNotIn("secret-id-never-logged", repr(s))
        f = Fixture()
        self.successResultOf(f.read())
        self.assertNotIn(SECRET, repr(f.client))
        self.assertNotIn(ROOT, repr(f.client))
        f.vault.sealed = True
        f.clock.advance(301)
        failure = self.failureResultOf(f.read())
        for text in (str(failure.value), repr(failure.value), failure.getTraceback()):
            self.assertNotIn(SECRET, text)
            self.assertNotIn(ROOT, text)

    def test_logs_hide_secrets(self) -> None:
        from twisted.logger import ILogObserver, globalLogPublisher
        from zope.interface import implementer

        events: list[dict[str, Any]] = []

        @implementer(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            events.append(event)

        globalLogPublisher.addObserver(observe)
        try:
            f = Fixture(token=None, role_id="r", secret_id="secret-id-never-logged")
            f.vault.create_approle("r", "secret-id-never-logged")
            f.client.start()
            self.successResultOf(f.read())
            f.clock.advance(2400)
            f.client.stop()
        finally:
            globalLogPublisher.removeObserver(observe)
        tokens = [t for t in f.vault.tokens if t != ROOT]
        text = repr(events)
        self.assertTrue(events)
        for secret in [SECRET, "secret-id-never-logged", *tokens]:
            self.assertNotIn(secret, text)


class SettingsTests(SynchronousTestCase):
    def test_parsed_from_the_environment(self) -> None:
        from cwm.settings import parse_settings

        environ = {
            "SECRETS_BACKEND": "vault",
            "VAULT_ADDR": "http://vault:8200/",
            "VAULT_TOKEN": "t",
            "VAULT_MOUNT_POINT": "/webhooks/",
            "VAULT_KV_VERSION": "1",
            "VAULT_VERIFY": "false",
            "VAULT_TIMEOUT_SECONDS": "900",
            "VAULT_CACHE_TTL_SECONDS": "1",
            "VAULT_CACHE_MAX_SIZE": "5",
        }
        s = parse_settings({}, environ, "/").vault
        assert s is not None
        self.assertEqual(
            (s.addr, s.mount_point, s.kv_version, s.verify, s.timeout, s.cache_ttl, s.cache_max_size),
            ("http://vault:8200", "webhooks", 1, False, 300.0, 1.0, 5),
        )
        self.assertIsNone(parse_settings({}, {"VAULT_ADDR": "http://v"}, "/").vault)
        enabled = parse_settings({}, {"VAULT_ENABLED": "yes", "VAULT_ADDR": "http://v", "VAULT_TOKEN": "t"}, "/")
        assert enabled.vault is not None and enabled.vault.kv_version == 2
        self.assertEqual(enabled.vault.mount_point, "secret")

    def test_bad_values_are_one_line_errors(self) -> None:
        from cwm.settings import parse_settings

        base = {"SECRETS_BACKEND": "vault", "VAULT_ADDR": "http://v", "VAULT_TOKEN": "t"}
        for extra, message in [
            ({"VAULT_ADDR": ""}, "invalid VAULT_ADDR"),
            ({"VAULT_ADDR": "vault:8200"}, "invalid VAULT_ADDR"),
            ({"VAULT_TOKEN": ""}, "VAULT_ROLE_ID and VAULT_SECRET_ID"),
            ({"VAULT_KV_VERSION": "3"}, "invalid VAULT_KV_VERSION"),
            ({"VAULT_VERIFY": "/no/such/ca.pem"}, "invalid VAULT_VERIFY"),
            ({"VAULT_CACHE_TTL_SECONDS": "-1"}, "invalid VAULT_CACHE_TTL_SECONDS"),
            ({"SECRETS_BACKEND": "vualt"}, "invalid SECRETS_BACKEND"),
        ]:
            with pytest.raises(ConfigError, match=message):
                parse_settings({}, {**base, **extra}, "/")


class ReferenceTests(SynchronousTestCase):
    def test_good(self) -> None:
        self.assertEqual(parse_reference("app/auth#token"), ("app/auth", "token", None))
        self.assertEqual(parse_reference("/app/auth/#token:"), ("app/auth", "token", ""))
        self.assertEqual(
            parse_reference("app#url:postgres://u:p@h:5432/db"),
            ("app", "url", "postgres://u:p@h:5432/db"),
        )
        self.assertEqual(parse_reference("a.b_c-d#f.g-h_i"), ("a.b_c-d", "f.g-h_i", None))

    def test_bad(self) -> None:
        for text in [
            "",
            "app/auth",
            "#token",
            "app/auth#",
            "app/../etc#token",
            "app auth#token",
            "app/auth#to ken",
            "app/auth#tok$en:x",
            "///#token",
            "a" * 513 + "#f",
            "app#" + "f" * 129,
        ]:
            with pytest.raises(ConfigError, match="invalid Vault reference"):
                parse_reference(text)

    def test_bad_message_hides_default(self) -> None:
        with pytest.raises(ConfigError) as raised:
            parse_reference("app/../x#f:hunter2")
        self.assertNotIn("hunter2", str(raised.value))


def test_vault_error_fields() -> None:
    error = VaultError("why", retryable=True)
    assert (error.reason, error.retryable, str(error)) == ("why", True, "why")
