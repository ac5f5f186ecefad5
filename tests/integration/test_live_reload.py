"""Live reload of webhooks.json while requests stream in: never a non-2xx, never a half file."""

from __future__ import annotations

import http.client
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cwm_process import CwmProcess

pytestmark = pytest.mark.integration

REWRITES = 20


def variant(n: int) -> dict[str, Any]:
    """Config number ``n``: the steady webhook changes its module-config; a marker webhook comes and goes."""
    return {
        "steady": {
            "module": "save_to_disk",
            "authorization": "Bearer steady-token",
            "module-config": {"path": f"logs/variant{n % 3}"},
        },
        f"marker{n}": {"module": "log"},
    }


class Load:
    """Posts to the steady webhook in a loop on a keep-alive connection; records every status."""

    def __init__(self, process: CwmProcess) -> None:
        self.process = process
        self.statuses: list[int] = []
        self.details: dict[int, Any] = {}  # the first answer of each status but 200
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.process.port, timeout=10)
        n = 0
        while not self.stop.is_set():
            n += 1
            body = json.dumps({"webhook_number": n}).encode()
            try:
                code, answer, _ = self.process.request(
                    "POST",
                    "/webhook/steady",
                    body,
                    {"Content-Type": "application/json", "Authorization": "Bearer steady-token"},
                    connection=conn,
                )
                if code != 200:
                    self.details.setdefault(code, answer)
            except (OSError, http.client.HTTPException) as e:
                code = -1
                self.details.setdefault(code, repr(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.process.port, timeout=10)
            self.statuses.append(code)
        conn.close()

    def finish(self) -> list[int]:
        self.stop.set()
        self.thread.join(15)
        return self.statuses


def in_place(path: Path) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        with open(path, "r+b" if path.exists() else "wb") as f:
            f.truncate(0)
            f.write(data)

    return write


def by_rename(path: Path) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        temp = path.with_name(".incoming")
        temp.write_bytes(data)
        os.replace(temp, path)

    return write


def by_symlink_swap(path: Path) -> Callable[[bytes], None]:
    """Kubernetes ConfigMap style: webhooks.json -> ..data/webhooks.json, ..data -> a versioned dir."""
    base = path.parent
    counter = [0]

    def write(data: bytes) -> None:
        counter[0] += 1
        version = base / f"..v{counter[0]}"
        version.mkdir()
        (version / path.name).write_bytes(data)
        link = base / "..data_tmp"
        os.symlink(version.name, link)
        os.replace(link, base / "..data")

    return write


@pytest.mark.parametrize("mode", [in_place, by_rename, by_symlink_swap], ids=["in-place", "rename", "symlink-swap"])
def test_rewrites_under_load_never_fail_a_request(tmp_path: Path, mode: Callable[[Path], Callable[[bytes], None]]) -> None:
    """20 rewrites, each preceded by a half-written version, with requests streaming: all 200."""
    webhooks = tmp_path / "webhooks.json"
    connections = tmp_path / "connections.json"
    connections.write_text("{}")
    write = mode(webhooks)
    if mode is by_symlink_swap:
        write(json.dumps(variant(0)).encode())
        os.symlink("..data/webhooks.json", webhooks)
    else:
        webhooks.write_text(json.dumps(variant(0)))
    process = CwmProcess(
        tmp_path,
        webhooks,
        connections,
        env={"CONFIG_FILE_WATCHING_ENABLED": "true", "CONFIG_RELOAD_DEBOUNCE_SECONDS": "0.1"},
    )
    # twistd listens before the services start: rewriting before the first read races it.
    process.wait_for(r"configuration loaded \(start\)")
    load = Load(process)
    try:
        for n in range(1, REWRITES + 1):
            full = json.dumps(variant(n)).encode()
            mark = len(process.lines)
            write(full[: len(full) // 2])  # a half-written file
            process.wait_for(r"is not valid JSON: .*; the last good webhooks configuration keeps serving", start=mark)
            mark = len(process.lines)
            write(full)
            process.wait_for(r"configuration loaded \(file changed\)", start=mark)
            assert process.post(f"/webhook/marker{n}")[0] == 200
            assert process.post(f"/webhook/marker{n - 1}")[0] == 404
            process.wait_until(lambda: len(load.statuses) >= 3 * n)
    finally:
        statuses = load.finish()
        process.stop()
    assert len(statuses) > REWRITES
    assert set(statuses) == {200}, ({s: statuses.count(s) for s in set(statuses)}, load.details)
    saved = [p for d in (tmp_path / "logs").iterdir() for p in d.iterdir()]
    assert len(saved) == len(statuses)
    assert {len(list(d.iterdir())) > 0 for d in (tmp_path / "logs").iterdir()} == {True}
