"""The Vault stand-in's writes and deletes, in-process over StubTreq."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cwm.config.vault import VaultClient, VaultSecretNotFound, VaultSettings
from tests.vault_standin import VaultStandin

ADDR = "http://vault.test:8200"
ROOT = "root"


class Standin:
    def __init__(self) -> None:
        self.clock = Clock()
        self.vault = VaultStandin(self.clock, mounts={"secret": 2, "kv": 1})
        self.vault.create_token(token=ROOT)
        self.http: Any = StubTreq(self.vault.resource())  # its methods are made at run time

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = ROOT,
        raw: bytes | None = None,
        namespace: str | None = None,
    ) -> tuple[int, Any]:
        """``(status, JSON answer or None)``; StubTreq answers synchronously."""
        headers = {} if token is None else {"X-Vault-Token": token}
        if namespace is not None:
            headers["X-Vault-Namespace"] = namespace
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        response = _result(self.http.request(method, ADDR + path, headers=headers, data=data))
        content = _result(response.content())
        return response.code, (json.loads(content) if content else None)

    def client(self, **overrides: Any) -> VaultClient:
        values: dict[str, Any] = {"addr": ADDR, "token": ROOT, "cache_ttl": 0.0}
        values.update(overrides)
        return VaultClient(VaultSettings(**values), self.http, self.clock)


def _result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "StubTreq left a request unanswered"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def read(client: VaultClient, path: str, field: str) -> Deferred[str]:
    return Deferred.fromCoroutine(client.read(path, field))


class KV2WriteTests(SynchronousTestCase):
    def test_post_then_put_makes_versions(self) -> None:
        s = Standin()
        status, answer = s.call("POST", "/v1/secret/data/app/db", {"data": {"password": "p1"}})
        self.assertEqual(status, 200)
        self.assertEqual(
            set(answer["data"]),
            {"created_time", "custom_metadata", "deletion_time", "destroyed", "version"},
        )
        self.assertEqual(
            (answer["data"]["version"], answer["data"]["deletion_time"], answer["data"]["destroyed"]),
            (1, "", False),
        )
        self.assertTrue(answer["data"]["created_time"].endswith("Z"))
        self.assertIn("request_id", answer)
        status, answer = s.call("PUT", "/v1/secret/data/app/db", {"data": {"password": "p2"}})
        self.assertEqual((status, answer["data"]["version"]), (200, 2))
        self.assertEqual(self.successResultOf(read(s.client(), "app/db", "password")), "p2")
        status, answer = s.call("GET", "/v1/secret/data/app/db")
        self.assertEqual(answer["data"]["metadata"]["version"], 2)

    def test_write_needs_a_valid_token(self) -> None:
        s = Standin()
        for token in (None, "wrong"):
            status, answer = s.call("POST", "/v1/secret/data/x", {"data": {"a": "b"}}, token=token)
            self.assertEqual((status, answer), (403, {"errors": ["permission denied"]}))
        self.assertIsNone(s.vault.secret("x"))

    def test_write_without_data_or_bad_json_is_400(self) -> None:
        s = Standin()
        status, answer = s.call("POST", "/v1/secret/data/x", {"password": "p"})
        self.assertEqual((status, answer["errors"]), (400, ["no data provided"]))
        status, answer = s.call("POST", "/v1/secret/data/x", raw=b"{not json")
        self.assertEqual((status, answer["errors"]), (400, ["failed to parse JSON input"]))
        self.assertIsNone(s.vault.secret("x"))

    def test_check_and_set(self) -> None:
        s = Standin()
        status, _ = s.call("POST", "/v1/secret/data/x", {"options": {"cas": 0}, "data": {"a": "1"}})
        self.assertEqual(status, 200)
        status, answer = s.call(
            "POST", "/v1/secret/data/x", {"options": {"cas": 0}, "data": {"a": "2"}}
        )
        self.assertEqual(status, 400)
        self.assertIn("check-and-set", answer["errors"][0])
        status, _ = s.call("POST", "/v1/secret/data/x", {"options": {"cas": 1}, "data": {"a": "3"}})
        self.assertEqual(status, 200)
        self.assertEqual(s.vault.secret("x"), {"a": "3"})

    def test_delete_latest_version(self) -> None:
        s = Standin()
        s.call("POST", "/v1/secret/data/app/db", {"data": {"password": "p1"}})
        status, answer = s.call("DELETE", "/v1/secret/data/app/db")
        self.assertEqual((status, answer), (204, None))
        status, answer = s.call("GET", "/v1/secret/data/app/db")
        self.assertEqual(status, 404)
        self.assertIsNone(answer["data"]["data"])
        self.assertNotEqual(answer["data"]["metadata"]["deletion_time"], "")
        self.failureResultOf(read(s.client(), "app/db", "password"), VaultSecretNotFound)
        status, answer = s.call("POST", "/v1/secret/data/app/db", {"data": {"password": "p2"}})
        self.assertEqual(answer["data"]["version"], 2)  # like Vault: deleting keeps the history
        self.assertEqual(self.successResultOf(read(s.client(), "app/db", "password")), "p2")

    def test_delete_needs_a_token_and_of_nothing_is_204(self) -> None:
        s = Standin()
        s.vault.put_secret("x", {"a": "b"})
        status, _ = s.call("DELETE", "/v1/secret/data/x", token=None)
        self.assertEqual(status, 403)
        self.assertEqual(s.vault.secret("x"), {"a": "b"})
        status, _ = s.call("DELETE", "/v1/secret/data/never-written")
        self.assertEqual(status, 204)

    def test_paths_outside_data_and_unknown_mounts(self) -> None:
        s = Standin()
        status, _ = s.call("POST", "/v1/secret/x", {"data": {"a": "b"}})
        self.assertEqual(status, 404)
        status, answer = s.call("POST", "/v1/nomount/data/x", {"data": {"a": "b"}})
        self.assertEqual(status, 404)
        self.assertIn("no handler for route", answer["errors"][0])
        status, _ = s.call("PATCH", "/v1/secret/data/x", {"data": {"a": "b"}})
        self.assertEqual(status, 405)

    def test_namespaces_are_separate(self) -> None:
        s = Standin()
        s.call("POST", "/v1/secret/data/x", {"data": {"a": "team"}}, namespace="team-a")
        self.assertEqual(s.vault.secret("x", namespace="team-a"), {"a": "team"})
        self.assertIsNone(s.vault.secret("x"))


class KV1WriteTests(SynchronousTestCase):
    def test_post_and_put_are_204_and_replace_the_secret(self) -> None:
        s = Standin()
        status, answer = s.call("POST", "/v1/kv/app/db", {"password": "p1", "user": "u"})
        self.assertEqual((status, answer), (204, None))
        client = s.client(mount_point="kv", kv_version=1)
        self.assertEqual(self.successResultOf(read(client, "app/db", "password")), "p1")
        status, _ = s.call("PUT", "/v1/kv/app/db", {"password": "p2"})
        self.assertEqual(status, 204)
        self.assertEqual(self.successResultOf(read(client, "app/db", "password")), "p2")
        self.failureResultOf(read(client, "app/db", "user"), VaultSecretNotFound)

    def test_empty_write_is_400_and_token_is_required(self) -> None:
        s = Standin()
        status, answer = s.call("POST", "/v1/kv/x", {})
        self.assertEqual((status, answer["errors"]), (400, ["missing data fields"]))
        status, _ = s.call("POST", "/v1/kv/x", {"a": "b"}, token="wrong")
        self.assertEqual(status, 403)
        self.assertIsNone(s.vault.secret("x", mount="kv"))

    def test_delete(self) -> None:
        s = Standin()
        s.call("POST", "/v1/kv/x", {"a": "b"})
        status, answer = s.call("DELETE", "/v1/kv/x")
        self.assertEqual((status, answer), (204, None))
        status, _ = s.call("GET", "/v1/kv/x")
        self.assertEqual(status, 404)
        self.assertIsNone(s.vault.secret("x", mount="kv"))


class HealthTests(SynchronousTestCase):
    def test_unsealed_is_200_without_a_token(self) -> None:
        s = Standin()
        status, answer = s.call("GET", "/v1/sys/health", token=None)
        self.assertEqual(status, 200)
        self.assertEqual(
            (answer["initialized"], answer["sealed"], answer["standby"]), (True, False, False)
        )
        self.assertTrue(answer["version"].startswith("1.16."))
        self.assertIn("cluster_name", answer)
        self.assertIsInstance(answer["server_time_utc"], int)

    def test_sealed_is_503_with_sealed_true(self) -> None:
        s = Standin()
        s.vault.sealed = True
        status, answer = s.call("GET", "/v1/sys/health", token=None)
        self.assertEqual((status, answer["sealed"], answer["initialized"]), (503, True, True))
        status, _ = s.call("GET", "/v1/sys/mounts")
        self.assertEqual(status, 503)


class MountTests(SynchronousTestCase):
    def test_list_needs_a_token(self) -> None:
        s = Standin()
        status, answer = s.call("GET", "/v1/sys/mounts", token="wrong")
        self.assertEqual((status, answer), (403, {"errors": ["permission denied"]}))

    def test_list_shows_kv_mounts_with_their_version(self) -> None:
        s = Standin()
        status, answer = s.call("GET", "/v1/sys/mounts")
        self.assertEqual(status, 200)
        self.assertEqual(set(answer["data"]), {"secret/", "kv/"})
        secret = answer["data"]["secret/"]
        self.assertEqual((secret["type"], secret["options"]), ("kv", {"version": "2"}))
        self.assertEqual(answer["data"]["kv/"]["options"], {"version": "1"})
        self.assertEqual(answer["secret/"], secret)  # also at the top level, as Vault 1.x
        self.assertIn("request_id", answer)
        _, again = s.call("GET", "/v1/sys/mounts")
        self.assertEqual(again["data"]["secret/"]["uuid"], secret["uuid"])

    def test_enable_kv_v2_both_spellings_and_kv_v1(self) -> None:
        s = Standin()
        for path, body in (
            ("webhooks", {"type": "kv", "options": {"version": "2"}}),
            ("team/apps", {"type": "kv-v2"}),
            ("old", {"type": "kv"}),
            ("old2", {"type": "kv", "options": {"version": "1"}}),
        ):
            status, answer = s.call("POST", f"/v1/sys/mounts/{path}", body)
            self.assertEqual((path, status, answer), (path, 204, None))
        self.assertEqual(
            {k: s.vault.mounts[k] for k in ("webhooks", "team/apps", "old", "old2")},
            {"webhooks": 2, "team/apps": 2, "old": 1, "old2": 1},
        )
        _, answer = s.call("GET", "/v1/sys/mounts")
        self.assertEqual(answer["data"]["team/apps/"]["options"], {"version": "2"})
        status, _ = s.call("POST", "/v1/webhooks/data/app/auth", {"data": {"t": "1"}})
        self.assertEqual(status, 200)
        self.assertEqual(s.vault.secret("app/auth", mount="webhooks"), {"t": "1"})
        status, _ = s.call("POST", "/v1/old/x", {"t": "1"})
        self.assertEqual(status, 204)
        self.assertEqual(s.vault.secret("x", mount="old"), {"t": "1"})

    def test_enable_an_existing_path_is_400(self) -> None:
        s = Standin()
        for path in ("secret", "secret/nested"):
            status, answer = s.call("POST", f"/v1/sys/mounts/{path}", {"type": "kv-v2"})
            self.assertEqual((status, answer), (400, {"errors": ["path is already in use at secret/"]}))
        self.assertEqual(s.vault.mounts, {"secret": 2, "kv": 1})

    def test_enable_needs_a_token_and_a_kv_type(self) -> None:
        s = Standin()
        status, _ = s.call("POST", "/v1/sys/mounts/x", {"type": "kv-v2"}, token=None)
        self.assertEqual(status, 403)
        status, answer = s.call("POST", "/v1/sys/mounts/x", {"type": "pki"})
        self.assertEqual(status, 400)
        self.assertIn("pki", answer["errors"][0])
        self.assertNotIn("x", s.vault.mounts)
