"""Loaded by every Python process of ``make test-shifted`` (this directory is put first on
PYTHONPATH there, never in the normal run).

libfaketime 0.9.10 (Debian 12) with the monotonic clock left real (``DONT_FAKE_MONOTONIC=1``)
shifts the absolute deadline of ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`` as if it
were wall time: the kernel gets a negative time and every ``time.sleep`` of Python 3.11+
raises ``OSError: [Errno 22]`` (libfaketime issue #426). A relative wait does not go through
that path, so ``time.sleep`` becomes one. Faking the monotonic clock instead is worse: lock
and queue timeouts (``sem_clockwait``, not intercepted) would wait a year.
"""

from __future__ import annotations

import select
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    select.select([], [], [], seconds)  # retried on EINTR with the time left (PEP 475)


time.sleep = _sleep
