"""``{$VAR}`` references in configuration values, resolved from the environment.

A value is never altered beyond the substitution itself: upstream's
"sanitising" of substituted values corrupted passwords and URLs (its W19).
A reference to a variable that is not set and has no default makes the entry
fail with a clear reason instead of becoming the literal "Undefined variable".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cwm.errors import ConfigError

# {$NAME} or {$NAME:default}; the default runs to the first "}".
_REFERENCE = re.compile(r"\{\$([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")


def substitute(value: Any, environ: Mapping[str, str], where: str = "") -> Any:
    """Return ``value`` with every ``{$VAR}`` in its strings replaced.

    Containers are copied, never mutated. Keys are left alone. A string that
    is exactly one reference becomes the variable's text (no type coercion).

    Raises:
        ConfigError: a referenced variable is unset and has no default; the
            message names the variable and where it was used, never a value.
    """
    if isinstance(value, str):
        if "{$" not in value:
            return value
        return _substitute_string(value, environ, where)
    if isinstance(value, dict):
        return {
            key: substitute(item, environ, f"{where}.{key}" if where else str(key))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [substitute(item, environ, f"{where}[{i}]") for i, item in enumerate(value)]
    return value


def _substitute_string(text: str, environ: Mapping[str, str], where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name == "vault":
            # {$vault:...} belongs to the secrets backend (its own issue).
            raise ConfigError(f"{where}: Vault references are not enabled in this build")
        found = environ.get(name)
        if found is not None:
            return found
        if default is not None:
            return default
        raise ConfigError(
            f"{where}: environment variable {name} is not set and the reference has no default"
        )

    return _REFERENCE.sub(replace, text)
