"""Parsing helpers for check config values, shared by the check families.

Every helper raises ``ConfigError("<key>: <reason>")``. None of them ever puts
a value into a message unless the caller says the value is not a secret.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

from cwm.errors import ConfigError

# How much of a (non-secret) config value a message may quote.
_QUOTE_LIMIT = 60


def quote(value: object) -> str:
    """A short repr of a non-secret value, for a ConfigError message."""
    text = repr(value)
    if len(text) > _QUOTE_LIMIT:
        text = text[: _QUOTE_LIMIT - 3] + "..."
    return text


def require_mapping(key: str, value: object) -> Mapping[str, Any]:
    """``value`` as a mapping with string keys, or a ConfigError."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: must be an object, not {type(value).__name__}")
    for name in value:
        if not isinstance(name, str):
            raise ConfigError(f"{key}: option names must be strings")
    return value


def reject_unknown(key: str, value: Mapping[str, Any], allowed: Collection[str]) -> None:
    """Refuse options we do not know: a typo in an auth option must be loud."""
    unknown = sorted(name for name in value if name not in allowed)
    if unknown:
        names = ", ".join(quote(name) for name in unknown)
        known = ", ".join(sorted(allowed))
        raise ConfigError(f"{key}: unknown option {names} (known: {known})")


def require_text(key: str, field: str, value: object) -> str:
    """A non-blank string; the value is never quoted (it may be a secret)."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: {field} must be a non-empty string")
    if not value.strip():
        raise ConfigError(f"{key}: {field} must not be empty")
    return value


def required_text(key: str, options: Mapping[str, Any], field: str) -> str:
    """The required non-blank string option ``field``."""
    if options.get(field) is None:
        raise ConfigError(f"{key}: {field} is required")
    return require_text(key, field, options[field])


def optional_text(key: str, options: Mapping[str, Any], field: str, default: str) -> str:
    """The non-blank string option ``field``, or ``default`` when absent or None."""
    value = options.get(field)
    if value is None:
        return default
    return require_text(key, field, value)


def optional_bool(key: str, options: Mapping[str, Any], field: str, default: bool) -> bool:
    """The boolean option ``field``; strings like ``"false"`` are refused, not guessed."""
    value = options.get(field)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: {field} must be true or false, not {quote(value)}")
    return value


def optional_number(
    key: str,
    options: Mapping[str, Any],
    field: str,
    default: float,
    *,
    allow_zero: bool,
) -> float:
    """The finite, positive (or non-negative) number option ``field``."""
    value = options.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: {field} must be a number, not {quote(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{key}: {field} must be a finite number")
    if number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}: {field} must be {bound}, not {quote(value)}")
    return number


def optional_choice(
    key: str,
    options: Mapping[str, Any],
    field: str,
    choices: Collection[str],
    *,
    fold_case: bool = False,
) -> str | None:
    """The option ``field`` if it is one of ``choices``, None when absent."""
    value = options.get(field)
    if value is None:
        return None
    candidate = value.lower() if fold_case and isinstance(value, str) else value
    if not isinstance(candidate, str) or candidate not in choices:
        allowed = ", ".join(repr(choice) for choice in choices)
        raise ConfigError(f"{key}: {field} must be one of {allowed}, not {quote(value)}")
    return candidate
