"""Waiting for a condition in tests: poll it until it holds, or fail with what was awaited.

``until`` takes its timeout at the call site, so that no caller inherits another's default.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def until(pred: Callable[[], Any | Awaitable[Any]], timeout_s: float,
                what: str = "condition", *, every_s: float = 0.05) -> None:
    """Poll ``pred`` (plain or async; any truthy value counts) every ``every_s`` until it holds;
    an AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        ok = pred()
        if inspect.isawaitable(ok):
            ok = await ok
        if ok:
            return
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s} s"
        await asyncio.sleep(every_s)


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "") -> None:
    """The blocking ``until`` for tests without an event loop (a ``loa up`` stack)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out{': ' + what if what else ''}")
