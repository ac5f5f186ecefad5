"""Copy webhooks.json and connections.json into etcd: ``python -m cwm.etcd.migrate``.

Every entry is validated first with the receiver's own rules; nothing is
written unless all entries pass (an unset ``{$VAR}`` is only a warning: the
servers may have it; a ``webhook_connect`` entry is checked by its
module-config, as Webhook Connect is the servers' to run). Writing is idempotent: a key already holding the same
JSON is left alone, so running it twice changes nothing. Values are written
as they are in the files, ``{$VAR}`` references included.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from twisted.internet.task import Clock
from twisted.python.filepath import FilePath

from cwm.config.model import namespace_problem
from cwm.config.etcd import connection_key, webhook_key
from cwm.config.files import read_document
from cwm.config.secrets import SecretRef
from cwm.config.store import ConfigStore, EntryKey
from cwm.errors import ConfigError
from cwm.modules.base import ModuleContext
from cwm.settings import parse_settings



class _AnySecret:
    """Vault references pass validation: the servers read them, this tool does not."""

    notify: Callable[[set[EntryKey]], None] | None = None

    def lookup(self, ref: SecretRef) -> str:
        return "validation-placeholder"

    def track(self, key: object, refs: object, reread: bool) -> None:
        return None


class _NoHub:
    """Stands in for the Webhook Connect hub: registering a channel validates nothing more."""

    def register(self, owner: object, config: object) -> Callable[[], None]:
        return lambda: None


def plan(
    webhooks: Mapping[str, Any],
    connections: Mapping[str, Any],
    prefix: str,
    namespace: str,
) -> list[tuple[str, str]]:
    """The (key, JSON text) pairs to write; skips ``_comment``-style keys."""
    writes = [
        (connection_key(prefix, name), _canonical(value))
        for name, value in connections.items()
        if not name.startswith("_")
    ]
    writes += [
        (webhook_key(prefix, namespace, webhook_id), _canonical(value))
        for webhook_id, value in webhooks.items()
        if not webhook_id.startswith("_")
    ]
    return writes


def validate(
    webhooks: Mapping[str, Any],
    connections: Mapping[str, Any],
    namespace: str,
    environ: Mapping[str, str],
) -> tuple[list[str], list[str]]:
    """(errors, warnings) for the documents, by the receiver's rules."""
    context = ModuleContext(
        clock=Clock(),
        stdout=sys.stdout,
        http=None,
        http_unguarded=None,
        working_dir=FilePath(os.getcwd()),
        connect=_NoHub(),
    )
    store = ConfigStore(context, environ, secrets=_AnySecret())
    store.replace_all(
        {namespace: {k: v for k, v in webhooks.items() if not k.startswith("_")}},
        {k: v for k, v in connections.items() if not k.startswith("_")},
    )
    errors: list[str] = []
    warnings: list[str] = []
    for rejection in store.rejections:
        errors.append(f"{rejection.kind} {rejection.name!r}: {rejection.reason}")
    for held in store.unavailable:  # an unset {$VAR}: the servers may well set it
        warnings.append(f"{held.kind} {held.name!r}: {held.reason}")
    return errors, warnings


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _load(path: str | None, label: str) -> dict[str, Any]:
    return {} if path is None else read_document(path, label)[0]


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None, out: TextIO = sys.stdout) -> int:
    """Validate, then write; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m cwm.etcd.migrate", description=__doc__.split("\n")[0])
    parser.add_argument("--webhooks", required=True, help="webhooks.json to copy")
    parser.add_argument("--connections", help="connections.json to copy")
    parser.add_argument("--namespace", help="target namespace (default: ETCD_NAMESPACE or 'default')")
    parser.add_argument("--dry-run", action="store_true", help="validate and show the plan, write nothing")
    args = parser.parse_args(argv)
    environ = dict(os.environ if environ is None else environ)
    environ["CONFIG_BACKEND"] = "etcd"
    try:
        settings = parse_settings({}, environ, os.getcwd())
        assert settings.etcd is not None
        namespace = args.namespace or settings.etcd.namespace
        problem = namespace_problem(namespace)
        if problem:
            raise ConfigError(f"invalid --namespace={namespace!r}: {problem}")
        webhooks, connections = _load(args.webhooks, "webhooks"), _load(args.connections, "connections")
    except (ConfigError, OSError, ValueError) as e:
        out.write(f"error: {e}\n")
        return 2
    errors, warnings = validate(webhooks, connections, namespace, environ)
    for line in warnings:
        out.write(f"warning: {line} (fine if the servers set it)\n")
    for line in errors:
        out.write(f"invalid: {line}\n")
    if errors:
        out.write(f"nothing written: {len(errors)} invalid entries\n")
        return 1
    writes = plan(webhooks, connections, settings.etcd.prefix, namespace)
    if args.dry_run:
        for key, _ in writes:
            out.write(f"would write {key}\n")
        return 0
    from cwm.etcd.client import EtcdClient, EtcdError

    client = EtcdClient(settings.etcd.options)
    written = unchanged = 0
    try:
        for key, text in writes:
            current = client.range_key(key.encode())
            if current is not None and _same_json(bytes(current.value), text):
                unchanged += 1
                continue
            client.put(key.encode(), text.encode())
            written += 1
            out.write(f"wrote {key}\n")
    except EtcdError as e:
        out.write(f"error: {e} ({written} written before it)\n")
        return 1
    finally:
        client.close()
    out.write(f"done: {written} written, {unchanged} already up to date\n")
    return 0


def _same_json(stored: bytes, text: str) -> bool:
    try:
        return _canonical(json.loads(stored)) == text
    except ValueError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
