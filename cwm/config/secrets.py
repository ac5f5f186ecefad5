"""``{$VAR}`` and ``{$vault:PATH#FIELD}`` references in configuration values.

A value is never altered beyond the substitution itself: upstream's
"sanitising" of substituted values (deleting ``;|&$(){}`` and ``..``, and
words such as ``id`` or ``cat``) corrupted passwords, tokens and URLs.
Both kinds are replaced in one pass, so a secret that happens to contain
``{$...}`` is never expanded again.

A reference that cannot be resolved and has no default holds back only its
entry (``SecretUnavailable``): never the literal "Undefined variable", and
never the whole configuration (upstream failed its whole load, or reconnected
its etcd watch forever, on one unresolvable reference). Vault values are not read here:
the caller passes a lookup over the values read so far, and a reference that
has not been read yet makes the entry wait (``SecretsPending``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cwm.config.vault import parse_reference
from cwm.errors import ConfigError

# {$NAME} or {$NAME:default}; the default runs to the first "}". {$vault:...}
# matches too, with everything after "vault:" in the second group.
_REFERENCE = re.compile(r"\{\$([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")


@dataclass(frozen=True, order=True)
class SecretRef:
    """One field of one Vault secret, as ``PATH#FIELD`` names it."""

    path: str
    field: str

    def __str__(self) -> str:
        return f"{self.path}#{self.field}"


SecretLookup = Callable[[SecretRef], "str | Exception | None"]
"""A value read from Vault, the reason it could not be read, or None: not read yet."""


class SecretUnavailable(Exception):
    """A reference without a default could not be resolved; ``reason`` never holds a value."""

    def __init__(self, reason: str, refs: frozenset[SecretRef]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refs = refs


class SecretsPending(Exception):
    """Some Vault references have not been read yet; ``refs`` are all the entry uses."""

    def __init__(
        self, missing: frozenset[SecretRef], refs: frozenset[SecretRef], reason: str | None = None
    ) -> None:
        self.reason = reason or "waiting for Vault secrets " + ", ".join(map(str, sorted(missing)))
        super().__init__(self.reason)
        self.missing = missing
        self.refs = refs


@dataclass
class Substituted:
    """A value with its references replaced, and the Vault fields it used."""

    value: Any
    refs: frozenset[SecretRef] = field(default_factory=frozenset)


def substitute(
    value: Any,
    environ: Mapping[str, str],
    where: str = "",
    vault: SecretLookup | None = None,
) -> Any:
    """Return ``value`` with every reference in its strings replaced (see ``resolve``)."""
    return resolve(value, environ, where, vault).value


def resolve(
    value: Any,
    environ: Mapping[str, str],
    where: str = "",
    vault: SecretLookup | None = None,
) -> Substituted:
    """Replace every ``{$VAR}`` and ``{$vault:...}`` in the strings of ``value``.

    Containers are copied, never mutated. Keys are left alone. A string that
    is exactly one reference becomes the referenced text (no type coercion).
    With ``vault`` None, Vault is disabled and a Vault reference takes its
    default.

    Raises:
        ConfigError: a reference is malformed, or names Vault while Vault is
            disabled and has no default.
        SecretsPending: a Vault field has not been read yet.
        SecretUnavailable: a variable is unset, or a Vault field could not be
            read, and the reference has no default.
    """
    walk = _Walk(environ, vault)
    result = walk.value(value, where)
    refs = frozenset(walk.refs)
    if walk.pending:
        raise SecretsPending(frozenset(walk.pending), refs)
    if walk.unavailable:
        raise SecretUnavailable("; ".join(walk.unavailable), refs)
    return Substituted(result, refs)


class _Walk:
    def __init__(self, environ: Mapping[str, str], vault: SecretLookup | None) -> None:
        self._environ = environ
        self._vault = vault
        self.refs: set[SecretRef] = set()
        self.pending: set[SecretRef] = set()
        self.unavailable: list[str] = []

    def value(self, value: Any, where: str) -> Any:
        if isinstance(value, str):
            return self.string(value, where) if "{$" in value else value
        if isinstance(value, dict):
            return {
                key: self.value(item, f"{where}.{key}" if where else str(key))
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [self.value(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return value

    def string(self, text: str, where: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name, rest = match.group(1), match.group(2)
            if name == "vault" and rest is not None:
                return self.secret(rest, where, match.group(0))
            found = self._environ.get(name)
            if found is not None:
                return found
            if rest is not None:
                return rest
            self.unavailable.append(f"{where}: environment variable {name} is not set")
            return ""

        return _REFERENCE.sub(replace, text)

    def secret(self, reference: str, where: str, whole: str) -> str:
        try:
            path, field_name, default = parse_reference(reference)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        ref = SecretRef(path, field_name)
        if self._vault is None:
            if default is not None:
                return default
            raise ConfigError(
                f"{where}: Vault reference {ref} needs SECRETS_BACKEND=vault (or VAULT_ENABLED)"
                " and has no default"
            )
        self.refs.add(ref)
        found = self._vault(ref)
        if isinstance(found, str):
            return found
        if found is None:
            self.pending.add(ref)
            return whole
        if default is not None:
            return default
        reason = getattr(found, "reason", None) or type(found).__name__
        self.unavailable.append(f"{where}: Vault secret {ref}: {reason}")
        return ""
