"""The ``save_to_disk`` module: content, atomicity, confinement, permissions, failures."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from cwm.errors import ConfigError
from cwm.modules import disk
from cwm.modules.base import ModuleContext, ModuleUnavailable, WebhookEvent
from cwm.workers import InlineWork

_sync = SynchronousTestCase()


def make_context(working_dir: Path) -> ModuleContext:
    """A context whose working directory is ``working_dir``."""
    return ModuleContext(
        clock=Clock(),
        stdout=None,  # type: ignore[arg-type]
        http=None,
        http_unguarded=None,
        working_dir=FilePath(str(working_dir)),
        files=InlineWork(),
    )


def make_event(
    payload: Any = None,
    data_type: str = "json",
    request_id: str = "req-1",
    body: bytes | None = None,
) -> WebhookEvent:
    """A webhook event received at a fixed time."""
    if payload is None:
        payload = {"event": "push", "name": "Zoë"}
    if body is None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return WebhookEvent(
        namespace="default",
        webhook_id="github",
        request_id=request_id,
        received_at=1_700_000_000.25,
        headers={},
        body=body,
        payload=payload,
        data_type=data_type,
        client_ip="203.0.113.9",
    )


def deliver(module: disk.DiskModule, event: WebhookEvent) -> None:
    """Run ``deliver`` to completion."""
    _sync.successResultOf(Deferred.fromCoroutine(module.deliver(event)))


def deliver_failure(module: disk.DiskModule, event: WebhookEvent) -> Failure:
    """Run ``deliver`` and return its ModuleUnavailable failure."""
    return _sync.failureResultOf(Deferred.fromCoroutine(module.deliver(event)), ModuleUnavailable)


def files_in(directory: Path) -> list[str]:
    """Every entry of ``directory``, hidden ones included, sorted."""
    return sorted(os.listdir(directory))


def test_json_payload_is_saved_as_json(tmp_path: Path) -> None:
    """The file holds the payload serialised as JSON (not Python repr)."""
    module = disk.build({}, make_context(tmp_path))
    payload = {"event": "push", "name": "Zoë", "n": [1, 2.5, None, True]}
    deliver(module, make_event(payload))
    (name,) = files_in(tmp_path)
    assert name == "20231114T221320250000Z_req-1.json"
    assert json.loads((tmp_path / name).read_bytes()) == payload


def test_blob_is_saved_byte_for_byte(tmp_path: Path) -> None:
    """A blob's exact bytes are written to a ``.bin`` file."""
    module = disk.build({}, make_context(tmp_path))
    raw = bytes(range(256)) * 4
    deliver(module, make_event(raw, data_type="blob"))
    (name,) = files_in(tmp_path)
    assert name.endswith(".bin")
    assert (tmp_path / name).read_bytes() == raw


def test_empty_blob_gives_an_empty_file(tmp_path: Path) -> None:
    """An empty blob is saved as an empty file."""
    module = disk.build({}, make_context(tmp_path))
    deliver(module, make_event(b"", data_type="blob"))
    (name,) = files_in(tmp_path)
    assert (tmp_path / name).read_bytes() == b""


def test_path_is_always_a_directory(tmp_path: Path) -> None:
    """``path: webhooks.log`` is a directory holding one file per webhook."""
    module = disk.build({"path": "webhooks.log"}, make_context(tmp_path))
    deliver(module, make_event(request_id="a"))
    deliver(module, make_event(request_id="b"))
    assert (tmp_path / "webhooks.log").is_dir()
    assert len(files_in(tmp_path / "webhooks.log")) == 2


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    """Only final files remain: the ``.tmp-`` file is gone after the link."""
    module = disk.build({"fsync": True}, make_context(tmp_path))
    for n in range(3):
        deliver(module, make_event({"n": n}, request_id=f"r{n}"))
    names = files_in(tmp_path)
    assert len(names) == 3
    assert not [name for name in names if name.startswith(".")]


def test_name_collision_never_overwrites(tmp_path: Path) -> None:
    """Equal names get ``-1``, ``-2`` suffixes and the first file is kept."""
    module = disk.build({"filename_template": "hook_{webhook_id}.json"}, make_context(tmp_path))
    for n in range(3):
        deliver(module, make_event({"n": n}))
    assert files_in(tmp_path) == ["hook_github-1.json", "hook_github-2.json", "hook_github.json"]
    assert json.loads((tmp_path / "hook_github.json").read_text()) == {"n": 0}
    assert json.loads((tmp_path / "hook_github-2.json").read_text()) == {"n": 2}


def test_existing_file_is_not_overwritten(tmp_path: Path) -> None:
    """A file already present under the name is left alone."""
    (tmp_path / "fixed.json").write_text("keep me")
    module = disk.build({"filename_template": "fixed.json"}, make_context(tmp_path))
    deliver(module, make_event())
    assert (tmp_path / "fixed.json").read_text() == "keep me"
    assert (tmp_path / "fixed-1.json").exists()


def test_filename_template_placeholders(tmp_path: Path) -> None:
    """Every placeholder is filled; unsafe characters in ids become ``_``."""
    template = "{webhook_id}-{request_id}-{timestamp}-{uuid}.json"
    module = disk.build({"filename_template": template}, make_context(tmp_path))
    deliver(module, make_event(request_id="../etc/x"))
    (name,) = files_in(tmp_path)
    prefix = "github-.._etc_x-20231114T221320250000Z-"
    assert name.startswith(prefix)
    assert len(name) == len(prefix) + 36 + len(".json")


def test_upstream_filename_template_is_honoured(tmp_path: Path) -> None:
    """Upstream's compose example ``webhook_{timestamp}.json`` works."""
    module = disk.build({"filename_template": "webhook_{timestamp}.json"}, make_context(tmp_path))
    deliver(module, make_event())
    assert files_in(tmp_path) == ["webhook_20231114T221320250000Z.json"]


def test_permissions_are_0700_and_0600(tmp_path: Path) -> None:
    """The created directory is 0700 and each file 0600."""
    module = disk.build({"path": "out"}, make_context(tmp_path))
    deliver(module, make_event())
    directory = tmp_path / "out"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    (name,) = files_in(directory)
    assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600


def test_directory_is_created_at_first_write_not_at_build(tmp_path: Path) -> None:
    """Building has no effect on the file system."""
    module = disk.build({"path": "later/deeper"}, make_context(tmp_path))
    assert not (tmp_path / "later").exists()
    deliver(module, make_event())
    assert (tmp_path / "later" / "deeper").is_dir()


def test_relative_path_resolves_against_base_dir(tmp_path: Path) -> None:
    """A relative ``path`` lives under ``base_dir``, not the working directory."""
    base = tmp_path / "base"
    base.mkdir()
    module = disk.build({"base_dir": str(base), "path": "hooks"}, make_context(tmp_path))
    assert module.target_dir == str(base / "hooks")
    deliver(module, make_event())
    assert len(files_in(base / "hooks")) == 1


def test_relative_base_dir_resolves_against_working_dir(tmp_path: Path) -> None:
    """A relative ``base_dir`` is taken from the working directory."""
    module = disk.build({"base_dir": "data", "path": "x"}, make_context(tmp_path))
    assert module.target_dir == str(tmp_path / "data" / "x")


def test_absolute_path_inside_base_dir_is_accepted(tmp_path: Path) -> None:
    """An absolute ``path`` below ``base_dir`` is fine."""
    module = disk.build({"path": str(tmp_path / "abs")}, make_context(tmp_path))
    deliver(module, make_event())
    assert len(files_in(tmp_path / "abs")) == 1


def test_absolute_path_outside_base_dir_is_rejected(tmp_path: Path) -> None:
    """Upstream's ``/tmp/webhooks`` outside the working directory is a ConfigError."""
    base = tmp_path / "base"
    base.mkdir()
    with pytest.raises(ConfigError, match=r"^module-config\.path: must be inside base_dir$"):
        disk.build(
            {"base_dir": str(base), "path": str(tmp_path / "elsewhere")}, make_context(base)
        )


@pytest.mark.parametrize("path", ["..", "../x", "a/../../b", "a/..", "sub\\..\\x"])
def test_dot_dot_is_rejected(tmp_path: Path, path: str) -> None:
    """Any ``..`` component in ``path`` is refused."""
    with pytest.raises(ConfigError, match=r"^module-config\.path: must not contain '\.\.'$"):
        disk.build({"path": path}, make_context(tmp_path))


def test_symlink_escaping_base_dir_is_rejected_at_build(tmp_path: Path) -> None:
    """A ``path`` that is a symlink leading out of ``base_dir`` is refused."""
    base = tmp_path / "base"
    outside = tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (base / "link").symlink_to(outside)
    with pytest.raises(ConfigError, match="symbolic link"):
        disk.build({"path": "link"}, make_context(base))


def test_symlink_inside_base_dir_is_accepted(tmp_path: Path) -> None:
    """A symlink that stays inside ``base_dir`` is fine."""
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    module = disk.build({"path": "alias"}, make_context(tmp_path))
    deliver(module, make_event())
    assert len(files_in(tmp_path / "real")) == 1


def test_symlink_swapped_in_after_build_is_refused_at_write(tmp_path: Path) -> None:
    """A directory replaced by an escaping symlink later fails the write."""
    base = tmp_path / "base"
    outside = tmp_path / "outside"
    (base / "hooks").mkdir(parents=True)
    outside.mkdir()
    module = disk.build({"path": "hooks"}, make_context(base))
    (base / "hooks").rmdir()
    (base / "hooks").symlink_to(outside)
    failure = deliver_failure(module, make_event())
    assert failure.value.reason == (
        "could not save the webhook: the target directory escapes base_dir"
    )
    assert files_in(outside) == []


@pytest.mark.parametrize(
    "base_dir",
    ["/", "/etc", "/etc/cwm", "/bin", "/sbin", "/usr", "/usr/bin", "/proc", "/sys", "/dev",
     "/boot", "/lib", "/lib64", "/usr/lib", "/var/lib"],
)
def test_system_base_dir_is_rejected(tmp_path: Path, base_dir: str) -> None:
    """A system directory cannot be the confinement root."""
    with pytest.raises(ConfigError, match=r"^module-config\.base_dir: must not be a system"):
        disk.build({"base_dir": base_dir}, make_context(tmp_path))


def test_working_dir_that_is_a_system_dir_is_rejected() -> None:
    """The default base_dir (the working directory) is checked as well."""
    with pytest.raises(ConfigError, match="base_dir: must not be a system directory"):
        disk.build({}, make_context(Path("/")))


@pytest.mark.parametrize("base_dir", ["/var/lib/cwm", "/srv/webhooks", "/usr/local/cwm"])
def test_data_directories_are_allowed_as_base_dir(tmp_path: Path, base_dir: str) -> None:
    """Directories below /var/lib or /usr/local are ordinary data directories."""
    module = disk.build({"base_dir": base_dir}, make_context(tmp_path))
    assert module.target_dir == base_dir


def test_parent_that_is_a_file_is_module_unavailable(tmp_path: Path) -> None:
    """An OSError at write time (parent is a regular file) is ModuleUnavailable."""
    (tmp_path / "afile").write_text("not a directory")
    module = disk.build({"path": "afile/sub"}, make_context(tmp_path))
    failure = deliver_failure(module, make_event())
    assert failure.value.reason == "could not save the webhook: the target path is not a directory"
    assert str(tmp_path) not in failure.value.reason


def test_path_that_is_a_file_is_module_unavailable(tmp_path: Path) -> None:
    """``path`` naming an existing regular file fails the write cleanly."""
    (tmp_path / "webhooks.log").write_text("old log")
    module = disk.build({"path": "webhooks.log"}, make_context(tmp_path))
    failure = deliver_failure(module, make_event())
    assert failure.value.reason == "could not save the webhook: the target path is not a directory"


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.ENOSPC, "disk full"),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only file system"),
        (errno.EIO, "I/O error"),
        (errno.EXDEV, "file system error (EXDEV)"),
    ],
)
def test_write_errors_are_module_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, reason: str
) -> None:
    """An OSError while writing names the problem and leaves no temp file behind."""
    module = disk.build({}, make_context(tmp_path))

    def fail(fd: int, content: bytes) -> None:
        raise OSError(code, os.strerror(code), str(tmp_path / "secret-name"))

    monkeypatch.setattr(disk, "_write_all", fail)
    failure = deliver_failure(module, make_event())
    assert failure.value.reason == f"could not save the webhook: {reason}"
    assert files_in(tmp_path) == []


def test_json_keeps_unicode_readable(tmp_path: Path) -> None:
    """Non-ASCII text is written as UTF-8, not escaped."""
    module = disk.build({}, make_context(tmp_path))
    deliver(module, make_event({"name": "Zoë"}))
    (name,) = files_in(tmp_path)
    assert (tmp_path / name).read_bytes() == '{"name": "Zoë"}'.encode()


def test_ignored_upstream_keys_are_accepted(tmp_path: Path) -> None:
    """``format: json`` and ``append`` are accepted (and ignored)."""
    module = disk.build({"format": "json", "append": True}, make_context(tmp_path))
    deliver(module, make_event())
    assert len(files_in(tmp_path)) == 1


def test_close_does_nothing(tmp_path: Path) -> None:
    """``close`` completes at once."""
    module = disk.build({}, make_context(tmp_path))

    async def close() -> None:
        await module.close()

    _sync.successResultOf(Deferred.fromCoroutine(close()))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"dir": "x"}, "module-config.dir: unknown key"),
        ({"path": 5}, "module-config.path: must be a string"),
        ({"path": ""}, "module-config.path: must not be empty"),
        ({"path": "a\0b"}, "module-config.path: must not contain NUL"),
        ({"base_dir": ["x"]}, "module-config.base_dir: must be a string"),
        ({"base_dir": "a\0b"}, "module-config.base_dir: must not contain NUL"),
        ({"fsync": "yes"}, "module-config.fsync: must be true or false"),
        ({"format": "text"}, 'module-config.format: only "json" is supported'),
        ({"append": "yes"}, "module-config.append: must be true or false"),
        ({"filename_template": 3}, "module-config.filename_template: must be a string"),
        ({"filename_template": "a/{uuid}"}, "module-config.filename_template: must be a plain"),
        ({"filename_template": "{name}.json"}, "module-config.filename_template: unknown place"),
        ({"filename_template": "{uuid.hex}"}, "module-config.filename_template: unknown place"),
        ({"filename_template": "{uuid!r}"}, "module-config.filename_template: unknown place"),
        ({"filename_template": "{uuid:>5}"}, "module-config.filename_template: unknown place"),
        ({"filename_template": "{uuid"}, "module-config.filename_template: "),
        ({"filename_template": ".hidden_{uuid}"}, "module-config.filename_template: must produce"),
        ({"filename_template": ".."}, "module-config.filename_template: must produce"),
        ({"filename_template": "x" * 300}, "module-config.filename_template: must produce"),
    ],
)
def test_build_rejects_malformed_config(
    tmp_path: Path, config: dict[str, Any], message: str
) -> None:
    """Every malformed key is a ConfigError naming it."""
    with pytest.raises(ConfigError) as raised:
        disk.build(config, make_context(tmp_path))
    assert str(raised.value).startswith(message)
