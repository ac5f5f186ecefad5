"""Fixtures shared by every test: no logged failure may go unnoticed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import globalLogPublisher


@pytest.fixture(autouse=True)
def logged_failures(request: pytest.FixtureRequest) -> Iterator[list[dict[str, Any]]]:
    """Fail the test if anything logged a failure it did not expect.

    A test that expects failures to be logged takes this fixture and clears
    the list after checking it.
    """
    failures: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield failures
    finally:
        globalLogPublisher.removeObserver(observe)
    if failures:
        descriptions = []
        for event in failures:
            failure = event.get("log_failure")
            descriptions.append(
                failure.getTraceback() if failure is not None else repr(event.get("log_format"))
            )
        pytest.fail("unexpected logged failure(s):\n" + "\n".join(descriptions))
