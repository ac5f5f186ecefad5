"""``python -m cwm.etcd.migrate``: validate, then write, idempotently (real etcd)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cwm.etcd.client import EtcdClient, EtcdOptions
from cwm.etcd.migrate import main
from tests.integration.etcd_server import EtcdServer

pytestmark = pytest.mark.integration

WEBHOOKS = {
    "_comment": "skipped",
    "github": {"module": "log", "hmac": {"provider": "github", "secret": "{$GH_SECRET}"}},
    "plain": {"module": "log", "authorization": "Bearer t"},
}
CONNECTIONS = {"_comment": "skipped", "redis_main": {"type": "redis-rq", "host": "redis", "port": 6379}}


def files(tmp_path: Path, webhooks: Any = WEBHOOKS, connections: Any = CONNECTIONS) -> list[str]:
    (tmp_path / "w.json").write_text(json.dumps(webhooks))
    (tmp_path / "c.json").write_text(json.dumps(connections))
    return ["--webhooks", str(tmp_path / "w.json"), "--connections", str(tmp_path / "c.json")]


def env(etcd: EtcdServer, prefix: str) -> dict[str, str]:
    return {"ETCD_HOST": etcd.address[0], "ETCD_PORT": str(etcd.address[1]), "ETCD_PREFIX": prefix}


def run(args: list[str], environ: dict[str, str]) -> tuple[int, str]:
    out = io.StringIO()
    return main(args, environ, out), out.getvalue()


def stored(etcd: EtcdServer, prefix: str) -> dict[str, Any]:
    with EtcdClient(EtcdOptions(endpoints=(etcd.address,))) as client:
        kvs, _ = client.range_prefix(prefix.encode())
    return {bytes(kv.key).decode(): json.loads(kv.value) for kv in kvs}


def test_migrate_writes_then_is_idempotent(tmp_path: Path, etcd: EtcdServer, etcd_prefix: str) -> None:
    """Entries land under the layout keys with their {$VAR} references kept; a rerun writes nothing."""
    args = files(tmp_path) + ["--namespace", "staging"]
    code, output = run(args, env(etcd, etcd_prefix))
    assert code == 0, output
    assert "warning: webhook 'github'" in output and "GH_SECRET" in output
    assert stored(etcd, etcd_prefix) == {
        f"{etcd_prefix}global/connections/redis_main": CONNECTIONS["redis_main"],
        f"{etcd_prefix}staging/webhooks/github": WEBHOOKS["github"],
        f"{etcd_prefix}staging/webhooks/plain": WEBHOOKS["plain"],
    }
    with EtcdClient(EtcdOptions(endpoints=(etcd.address,))) as client:
        before = client.status().header.revision
    code, output = run(args, env(etcd, etcd_prefix))
    assert code == 0 and "done: 0 written, 3 already up to date" in output
    with EtcdClient(EtcdOptions(endpoints=(etcd.address,))) as client:
        assert client.status().header.revision == before


def test_migrate_refuses_invalid_entries_and_writes_nothing(tmp_path: Path, etcd: EtcdServer, etcd_prefix: str) -> None:
    """One invalid entry: exit 1, each problem named, no key written."""
    bad = {**WEBHOOKS, "broken": {"module": "nope"}, "typo": {"module": "log", "authorisation": "x"}}
    code, output = run(files(tmp_path, bad), env(etcd, etcd_prefix))
    assert code == 1
    assert "invalid: webhook 'broken': unknown module 'nope'" in output
    assert "invalid: webhook 'typo': unknown key 'authorisation'" in output
    assert stored(etcd, etcd_prefix) == {}


def test_migrate_dry_run_writes_nothing(tmp_path: Path, etcd: EtcdServer, etcd_prefix: str) -> None:
    """--dry-run shows the plan only."""
    code, output = run(files(tmp_path) + ["--dry-run"], env(etcd, etcd_prefix))
    assert code == 0 and f"would write {etcd_prefix}default/webhooks/plain" in output
    assert stored(etcd, etcd_prefix) == {}


def test_migrate_bad_namespace_and_missing_file(tmp_path: Path, etcd: EtcdServer, etcd_prefix: str) -> None:
    """A bad namespace or an unreadable file is exit 2 with the reason."""
    code, output = run(files(tmp_path) + ["--namespace", "a.b"], env(etcd, etcd_prefix))
    assert code == 2 and "invalid --namespace='a.b'" in output
    code, output = run(["--webhooks", str(tmp_path / "missing.json")], env(etcd, etcd_prefix))
    assert code == 2 and "missing.json" in output


def test_migrate_as_a_module(tmp_path: Path, etcd: EtcdServer, etcd_prefix: str) -> None:
    """``python -m cwm.etcd.migrate`` runs from the command line."""
    result = subprocess.run(
        [sys.executable, "-m", "cwm.etcd.migrate", *files(tmp_path)],
        env={**env(etcd, etcd_prefix), "PATH": "/usr/bin:/bin", "GH_SECRET": "s"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "done: 3 written" in result.stdout and "warning" not in result.stdout


def test_validation_lets_vault_references_through_and_warns_on_unset_variables() -> None:
    """The tool does not read Vault: references pass; an unset {$VAR} is a warning, a bad entry an error."""
    from cwm.etcd.migrate import validate

    errors, warnings = validate(
        {
            "vaulted": {"module": "log", "authorization": "Bearer {$vault:app/auth#token}"},
            "env": {"module": "log", "authorization": "Bearer {$MIGRATE_UNSET_VAR}"},
            "bad": {"module": "no_such_module"},
        },
        {"db": {"type": "postgresql", "password": "{$vault:db#password}"}},
        "default",
        {},
    )
    assert warnings == ["webhook 'env': env.authorization: environment variable MIGRATE_UNSET_VAR is not set"]
    assert len(errors) == 1 and errors[0].startswith("webhook 'bad':")


def test_migrate_copies_webhook_connect_entries(tmp_path: Path, etcd: EtcdServer, etcd_prefix: str) -> None:
    """A webhook_connect entry is validated by its module-config, whatever this process's own settings."""
    relay = {
        "module": "webhook_connect",
        "module-config": {"channel": "ch-1", "channel_token": "{$CHANNEL_TOKEN}", "max_in_flight": 5},
    }
    code, output = run(files(tmp_path, {"relay": relay}, {}), {**env(etcd, etcd_prefix), "CHANNEL_TOKEN": "t"})
    assert code == 0, output
    assert "warning" not in output
    assert stored(etcd, etcd_prefix) == {f"{etcd_prefix}default/webhooks/relay": relay}
    bad = {"module": "webhook_connect", "module-config": {"channel": "ch-1"}}
    code, output = run(files(tmp_path, {"bad": bad}, {}), env(etcd, etcd_prefix))
    assert code == 1
    assert "invalid: webhook 'bad': module 'webhook_connect': module-config.channel_token: required" in output
