"""The ``save_to_disk`` module: one file per webhook, written atomically.

Each webhook becomes one new file in a directory confined to ``base_dir``:
its JSON payload serialised as JSON, or for ``data_type: blob`` the exact
received bytes. A file is written under a temporary name and hard-linked to
its final name, so readers never see a partial file and an existing file is
never overwritten. Upstream wrote Python ``repr`` text; cwm writes JSON.

Every file system call (realpath, makedirs, open, write, fsync, link) runs on
the module context's file threads (``ctx.files``), never on the reactor
thread: a slow or stuck disk delays only the webhooks written to it, and the
entry's ``response_timeout`` still answers 202.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import re
import string
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from twisted.logger import Logger

from cwm.body import LARGE_BODY, encode_in_pieces
from cwm.errors import ConfigError
from cwm.modules._config import get_bool, get_str, reject_unknown_keys
from cwm.modules.base import ModuleContext, ModuleUnavailable, WebhookEvent
from cwm.workers import BlockingWork, InlineWork, WorkersBusy

_KNOWN_KEYS = frozenset({"path", "base_dir", "filename_template", "fsync", "format", "append"})
_IGNORED_KEYS = ("format", "append")

_PLACEHOLDERS = frozenset({"timestamp", "uuid", "request_id", "webhook_id"})
_DEFAULT_TEMPLATE_JSON = "{timestamp}_{request_id}.json"
_DEFAULT_TEMPLATE_BLOB = "{timestamp}_{request_id}.bin"
_TEMP_PREFIX = ".tmp-"
_MAX_NAME_BYTES = 255
_MAX_COLLISIONS = 1000
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")

# A base_dir equal to one of these is refused ...
_SYSTEM_DIRS = frozenset({"/", "/usr", "/var", "/var/lib", "/usr/local"})
# ... and so is one at or below one of these.
_SYSTEM_TREES = (
    "/etc",
    "/bin",
    "/sbin",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/usr/bin",
    "/usr/sbin",
)
_SYSTEM_LIB_TREE = re.compile(r"^/(usr/)?lib[^/]*(/|$)")

BUSY_RETRY_AFTER = 5
"""Seconds a sender waits before retrying when too many writes already wait for the disk."""

_DIR_MODE = 0o700
_FILE_MODE = 0o600

_ERRNO_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "the target path is not a directory",
    errno.EEXIST: "the target path is not a directory",
    errno.ELOOP: "the target directory was replaced by a symbolic link",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files",
    errno.EIO: "I/O error",
}


def is_system_directory(path: str) -> bool:
    """Whether ``path`` (absolute, normalised) is a system directory."""
    if path in _SYSTEM_DIRS or _SYSTEM_LIB_TREE.match(path):
        return True
    return any(path == tree or path.startswith(tree + "/") for tree in _SYSTEM_TREES)


def _is_within(path: str, root: str) -> bool:
    return path == root or posixpath.commonpath([path, root]) == root


def _check_template(template: str) -> None:
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ConfigError(f"module-config.filename_template: {error}") from None
    for literal, field_name, format_spec, conversion in fields:
        if "/" in literal or "\\" in literal or "\0" in literal:
            raise ConfigError(
                "module-config.filename_template: must be a plain file name "
                "(no '/', '\\' or NUL)"
            )
        if field_name is None:
            continue
        if field_name not in _PLACEHOLDERS or format_spec or conversion:
            known = ", ".join("{" + name + "}" for name in sorted(_PLACEHOLDERS))
            raise ConfigError(
                f"module-config.filename_template: unknown placeholder "
                f"{{{field_name}}} (known: {known})"
            )
    sample = _render_name(template, "20240101T000000000000Z", str(uuid.UUID(int=0)), "r", "w")
    if not _is_plain_name(sample):
        raise ConfigError(
            "module-config.filename_template: must produce a plain file name "
            "that does not start with '.'"
        )


def _render_name(
    template: str, timestamp: str, unique: str, request_id: str, webhook_id: str
) -> str:
    def safe(value: str) -> str:
        return _UNSAFE_NAME_CHARS.sub("_", value)

    return template.format(
        timestamp=timestamp,
        uuid=unique,
        request_id=safe(request_id),
        webhook_id=safe(webhook_id),
    )


def _is_plain_name(name: str) -> bool:
    return (
        bool(name)
        and not name.startswith(".")
        and "/" not in name
        and "\0" not in name
        and len(name.encode("utf-8")) <= _MAX_NAME_BYTES
    )


def _describe(error: OSError) -> str:
    reason = _ERRNO_REASONS.get(error.errno or 0)
    if reason is None:
        code = errno.errorcode.get(error.errno or 0, "unknown error")
        reason = f"file system error ({code})"
    return reason


def _write_all(fd: int, content: bytes) -> None:
    view = memoryview(content)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class DiskModule:
    """Saves each webhook as one new file in a confined directory."""

    _log = Logger()

    def __init__(
        self,
        base_dir: str,
        target_dir: str,
        filename_template: str | None,
        fsync: bool,
        ignored_keys: tuple[str, ...] = (),
        files: BlockingWork | None = None,
    ) -> None:
        self._files: BlockingWork = files if files is not None else InlineWork()
        self._base_dir = base_dir
        self._target_dir = target_dir
        self._filename_template = filename_template
        self._fsync = fsync
        for key in ignored_keys:
            self._log.warn(
                "module-config.{key} of save_to_disk is accepted for compatibility "
                "and ignored: every webhook is its own new JSON file",
                key=key,
            )

    @property
    def target_dir(self) -> str:
        """The directory files are written to (absolute, normalised)."""
        return self._target_dir

    def file_content(self, event: WebhookEvent) -> bytes:
        """The bytes saved for ``event``: raw for blobs, else JSON."""
        if event.data_type == "blob":
            if isinstance(event.payload, (bytes, bytearray)):
                return bytes(event.payload)
            return event.body
        return json.dumps(event.payload, ensure_ascii=False).encode("utf-8")

    def file_name(self, event: WebhookEvent) -> str:
        """The file name for ``event`` before collision suffixes."""
        template = self._filename_template
        if template is None:
            blob = event.data_type == "blob"
            template = _DEFAULT_TEMPLATE_BLOB if blob else _DEFAULT_TEMPLATE_JSON
        timestamp = datetime.fromtimestamp(event.received_at, tz=timezone.utc)
        name = _render_name(
            template,
            timestamp.strftime("%Y%m%dT%H%M%S%fZ"),
            str(uuid.uuid4()),
            event.request_id,
            event.webhook_id,
        )
        if not _is_plain_name(name):
            raise ModuleUnavailable("could not save the webhook: invalid file name")
        return name

    async def deliver(self, event: WebhookEvent) -> None:
        """Write the file on the file threads; return once it is complete under its final name."""
        try:
            await self._files.run(self.thd_save, event)
        except WorkersBusy:
            self._log.warn(
                "could not save webhook {request_id}: too many writes wait for the disk",
                request_id=event.request_id,
            )
            raise ModuleUnavailable(
                "could not save the webhook: too many writes wait for the disk", retry_after=BUSY_RETRY_AFTER
            ) from None
        except OSError as error:
            reason = _describe(error)
            self._log.error(
                "could not save webhook {request_id}: {reason}",
                request_id=event.request_id,
                reason=reason,
                errno=error.errno,
            )
            raise ModuleUnavailable(f"could not save the webhook: {reason}") from error
        except ModuleUnavailable as error:
            self._log.error(
                "could not save webhook {request_id}: {reason}", request_id=event.request_id, reason=error.reason
            )
            raise

    def thd_save(self, event: WebhookEvent) -> str:
        """Serialise and write ``event`` (on a file thread); returns the file's name.

        A large JSON payload is serialised by the Python-level encoder: the C
        one holds the GIL for the whole document, stalling the reactor thread.

        Raises:
            OSError: the file system refused.
            ModuleUnavailable: no free name, or the target escapes base_dir.
        """
        if event.data_type != "blob" and len(event.body) > LARGE_BODY:
            content = encode_in_pieces(json.JSONEncoder(ensure_ascii=False), event.payload).encode("utf-8")
        else:
            content = self.file_content(event)
        return self.thd_write(content, self.file_name(event))

    def thd_write(self, content: bytes, name: str) -> str:
        """Runs on the file threads only (from ``thd_save``)."""
        real_base = os.path.realpath(self._base_dir)
        real_target = os.path.realpath(self._target_dir)
        if not _is_within(real_target, real_base):
            raise ModuleUnavailable(
                "could not save the webhook: the target directory escapes base_dir"
            )
        os.makedirs(real_target, mode=_DIR_MODE, exist_ok=True)  # off-reactor
        dir_fd = os.open(
            real_target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        )
        try:
            temp_name = f"{_TEMP_PREFIX}{uuid.uuid4().hex}"
            file_fd = os.open(
                temp_name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                _FILE_MODE,
                dir_fd=dir_fd,
            )
            try:
                try:
                    _write_all(file_fd, content)
                    if self._fsync:
                        os.fsync(file_fd)  # off-reactor
                finally:
                    os.close(file_fd)
                saved_as = self._link_unused_name(temp_name, name, dir_fd)
                if self._fsync:
                    os.fsync(dir_fd)  # off-reactor
            finally:
                try:
                    os.unlink(temp_name, dir_fd=dir_fd)
                except FileNotFoundError:
                    pass
        finally:
            os.close(dir_fd)
        return saved_as

    def _link_unused_name(self, temp_name: str, name: str, dir_fd: int) -> str:
        stem, extension = os.path.splitext(name)
        for attempt in range(_MAX_COLLISIONS):
            candidate = name if attempt == 0 else f"{stem}-{attempt}{extension}"
            try:
                os.link(
                    temp_name,
                    candidate,
                    src_dir_fd=dir_fd,
                    dst_dir_fd=dir_fd,
                    follow_symlinks=False,
                )
            except FileExistsError:
                continue
            return candidate
        raise ModuleUnavailable("could not save the webhook: no free file name")

    async def close(self) -> None:
        """Nothing to release: each write opens and closes its own files."""


def _resolve_base_dir(module_config: Mapping[str, Any], ctx: ModuleContext) -> str:
    working_dir = os.path.abspath(ctx.working_dir.path)
    raw = get_str(module_config, "base_dir")
    if raw is None:
        base_dir = working_dir
    else:
        if "\0" in raw:
            raise ConfigError("module-config.base_dir: must not contain NUL")
        base_dir = os.path.normpath(os.path.join(working_dir, raw))
    if is_system_directory(base_dir) or is_system_directory(os.path.realpath(base_dir)):
        raise ConfigError(
            "module-config.base_dir: must not be a system directory "
            "(/, /etc, /bin, /sbin, /usr, /proc, /sys, /dev, /boot, /lib*, /var, /var/lib)"
        )
    return base_dir


def _resolve_target_dir(module_config: Mapping[str, Any], base_dir: str) -> str:
    path = get_str(module_config, "path", ".")
    assert path is not None
    if "\0" in path:
        raise ConfigError("module-config.path: must not contain NUL")
    if ".." in path.replace("\\", "/").split("/"):
        raise ConfigError("module-config.path: must not contain '..'")
    target_dir = os.path.normpath(os.path.join(base_dir, path))
    if not _is_within(target_dir, base_dir):
        raise ConfigError("module-config.path: must be inside base_dir")
    if not _is_within(os.path.realpath(target_dir), os.path.realpath(base_dir)):
        raise ConfigError(
            "module-config.path: resolves outside base_dir through a symbolic link"
        )
    return target_dir


def build(module_config: Mapping[str, Any], ctx: ModuleContext) -> DiskModule:
    """Build the ``save_to_disk`` module from its ``module-config``.

    Keys: ``path`` (".", always a directory), ``base_dir`` (the working
    directory; the confinement root), ``filename_template``
    (``{timestamp}_{request_id}.json``, ``.bin`` for blobs), ``fsync``
    (false); upstream's ``format`` (only "json") and ``append`` are accepted
    and ignored.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, a path
            outside ``base_dir``, or a system directory as ``base_dir``.
    """
    reject_unknown_keys(module_config, _KNOWN_KEYS)
    base_dir = _resolve_base_dir(module_config, ctx)
    target_dir = _resolve_target_dir(module_config, base_dir)
    template = get_str(module_config, "filename_template")
    if template is not None:
        _check_template(template)
    fsync = get_bool(module_config, "fsync", False)
    output_format = get_str(module_config, "format", "json")
    if output_format != "json":
        raise ConfigError('module-config.format: only "json" is supported')
    get_bool(module_config, "append", False)
    return DiskModule(
        base_dir=base_dir,
        target_dir=target_dir,
        filename_template=template,
        fsync=fsync,
        ignored_keys=tuple(key for key in _IGNORED_KEYS if key in module_config),
        files=ctx.files,
    )
