"""Which output modules exist, and how to build one, importing it lazily.

A module's file (and its client library) is imported only when the first
config entry that uses it is built, so an unused broker client never costs
start-up time or needs to be installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, cast

from cwm.errors import ConfigError
from cwm.modules.base import Module, ModuleContext, ModuleFactory

_FACTORIES: Mapping[str, str] = MappingProxyType(
    {
        "log": "cwm.modules.log:build",
        "save_to_disk": "cwm.modules.disk:build",
        "http_webhook": "cwm.modules.http_forward:build",
        "webhook_connect": "cwm.connect.module:build",
    }
)
"""Module name (as in ``webhooks.json``) to ``"package.module:function"``."""


def known_modules() -> frozenset[str]:
    """The names a config entry's ``module`` may use."""
    return frozenset(_FACTORIES)


def is_known(name: str) -> bool:
    """Whether ``name`` is a registered module name."""
    return name in _FACTORIES


def _load_factory(name: str) -> ModuleFactory:
    import_path = _FACTORIES[name]
    module_name, _, function_name = import_path.partition(":")
    python_module = importlib.import_module(module_name)
    return cast(ModuleFactory, getattr(python_module, function_name))


def build_module(
    name: str, module_config: Mapping[str, Any], ctx: ModuleContext
) -> Module:
    """Build the module ``name`` from its ``module-config``.

    Raises:
        ConfigError: ``name`` is not registered, or ``module_config`` is
            invalid for it.
    """
    if not isinstance(name, str) or name not in _FACTORIES:
        raise ConfigError(f"unknown module {name!r}")
    if not isinstance(module_config, Mapping):
        raise ConfigError("module-config: must be an object")
    factory = _load_factory(name)
    return factory(module_config, ctx)
