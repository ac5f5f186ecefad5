"""The module registry: names, lazy imports, building, unknown names."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath

from cwm.errors import ConfigError
from cwm.modules import registry
from cwm.modules.base import ModuleContext
from cwm.workers import InlineWork

REPO_ROOT = Path(__file__).resolve().parents[2]

MODULE_FILES = {
    "log": "cwm.modules.log",
    "save_to_disk": "cwm.modules.disk",
    "http_webhook": "cwm.modules.http_forward",
    "webhook_connect": "cwm.connect.module",
}


def make_context(working_dir: Path) -> ModuleContext:
    """A context good enough for every registered builder."""
    return ModuleContext(
        clock=Clock(),
        stdout=io.StringIO(),
        http=None,
        http_unguarded=None,
        working_dir=FilePath(str(working_dir)),
        files=InlineWork(),
    )


def test_known_modules() -> None:
    """The modules built so far are registered under upstream's names."""
    assert registry.known_modules() == frozenset(MODULE_FILES)


@pytest.mark.parametrize(
    ("name", "known"),
    [("log", True), ("save_to_disk", True), ("http_webhook", True), ("Log", False),
     ("kafka_x", False), ("", False)],
)
def test_is_known(name: str, known: bool) -> None:
    """``is_known`` matches registered names exactly."""
    assert registry.is_known(name) is known


@pytest.mark.parametrize("name", ["nope", "LOG", "log ", "__import__", "cwm.modules.log:build"])
def test_unknown_module_is_a_config_error(tmp_path: Path, name: str) -> None:
    """An unregistered name is ``ConfigError("unknown module '<name>'")``."""
    with pytest.raises(ConfigError) as raised:
        registry.build_module(name, {}, make_context(tmp_path))
    assert str(raised.value) == f"unknown module {name!r}"


def test_module_config_must_be_a_mapping(tmp_path: Path) -> None:
    """A non-object module-config is refused before the module is imported."""
    bad: Any = ["pretty_print"]
    with pytest.raises(ConfigError, match=r"^module-config: must be an object$"):
        registry.build_module("log", bad, make_context(tmp_path))


@pytest.mark.parametrize(
    ("name", "config", "kind"),
    [
        ("log", {"pretty_print": True}, "LogModule"),
        ("save_to_disk", {"path": "hooks"}, "DiskModule"),
        ("http_webhook", {"url": "https://hooks.example.com/in"}, "HTTPForwardModule"),
    ],
)
def test_build_module_builds_each_registered_module(
    tmp_path: Path, name: str, config: dict[str, Any], kind: str
) -> None:
    """Each name builds its module, which has ``deliver`` and ``close``."""
    module = registry.build_module(name, config, make_context(tmp_path))
    assert type(module).__name__ == kind
    assert callable(module.deliver) and callable(module.close)


def test_webhook_connect_needs_webhook_connect_enabled(tmp_path: Path) -> None:
    """With Webhook Connect off, a webhook_connect entry is rejected with the way to turn it on."""
    config = {"channel": "ch", "channel_token": "t"}
    with pytest.raises(ConfigError, match=r"^Webhook Connect is off: set WEBHOOK_CONNECT_ENABLED=true"):
        registry.build_module("webhook_connect", config, make_context(tmp_path))


def test_build_module_passes_config_errors_through(tmp_path: Path) -> None:
    """A builder's ConfigError reaches the caller unchanged."""
    with pytest.raises(ConfigError, match=r"^module-config\.typo: unknown key"):
        registry.build_module("log", {"typo": 1}, make_context(tmp_path))


_LAZINESS_PROBE = """
import io, json, sys
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from cwm.modules import registry
from cwm.modules.base import ModuleContext

files = {files!r}
seen = {{"after_import": sorted(m for m in files.values() if m in sys.modules)}}
registry.known_modules()
registry.is_known("log")
seen["after_queries"] = sorted(m for m in files.values() if m in sys.modules)
ctx = ModuleContext(clock=Clock(), stdout=io.StringIO(), http=None, http_unguarded=None,
                    working_dir=FilePath({tmp!r}))
registry.build_module("log", {{}}, ctx)
seen["after_log"] = sorted(m for m in files.values() if m in sys.modules)
print(json.dumps(seen))
"""


def test_module_files_are_imported_only_when_first_built(tmp_path: Path) -> None:
    """In a fresh interpreter, a module's file is imported by its first build, not before."""
    probe = _LAZINESS_PROBE.format(files=MODULE_FILES, tmp=str(tmp_path))
    completed = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(completed.stdout)
    assert seen == {
        "after_import": [],
        "after_queries": [],
        "after_log": ["cwm.modules.log"],
    }


def test_every_registered_path_names_a_callable() -> None:
    """Each registry entry imports and names a callable factory."""
    for name in registry.known_modules():
        factory = registry._load_factory(name)
        assert callable(factory), name
