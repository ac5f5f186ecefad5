"""Small validators the module factories share for their ``module-config``.

Every error names the key as ``module-config.<key>`` and says what is wrong,
so one bad config entry is rejected with a precise line.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from cwm.errors import ConfigError


def reject_unknown_keys(module_config: Mapping[str, Any], allowed: Collection[str]) -> None:
    """Raise ConfigError naming the first key outside ``allowed`` (typos)."""
    for key in module_config:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ConfigError(f"module-config.{key}: unknown key (known keys: {known})")


def get_bool(module_config: Mapping[str, Any], key: str, default: bool) -> bool:
    """The boolean at ``key``, or ``default`` if absent."""
    value = module_config.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"module-config.{key}: must be true or false")
    return value


def get_str(
    module_config: Mapping[str, Any], key: str, default: str | None = None
) -> str | None:
    """The non-empty string at ``key``, or ``default`` if absent."""
    if key not in module_config:
        return default
    value = module_config[key]
    if not isinstance(value, str):
        raise ConfigError(f"module-config.{key}: must be a string")
    if not value.strip():
        raise ConfigError(f"module-config.{key}: must not be empty")
    return value


def get_str_list(module_config: Mapping[str, Any], key: str) -> list[str] | None:
    """The list of non-empty strings at ``key``, or None if absent."""
    if key not in module_config:
        return None
    value = module_config[key]
    if not isinstance(value, list):
        raise ConfigError(f"module-config.{key}: must be a list of strings")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"module-config.{key}[{index}]: must be a non-empty string")
    return list(value)
