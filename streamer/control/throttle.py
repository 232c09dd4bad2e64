"""Sign-in throttling: how many wrong passwords a client address, or a user name, may try.

The rules (``docs/api.md``, "Sign-in throttling"):

- Every failed sign-in counts against the client's address and against the user name tried.
- A key with ``limit`` failures inside the last ``window_s`` seconds is throttled: a sign-in
  from that address, or for that user name, is refused at once (HTTP 429 with Retry-After,
  no password hashed) until its oldest counted failure leaves the window.
- A successful sign-in clears the user name's failures, not the address's (one good password
  in a flood does not reopen the flood).
- The first refusal of a burst is reported (so the API audits it once); later refusals of
  the same burst are only counted.
- Memory is bounded: at most ``max_keys`` keys are remembered, the least recently failed
  forgotten first, so a flood of made-up user names cannot grow it.

Sans-IO: the caller passes ``now``. ``Gate`` bounds the password checks themselves: so many at
once, so many more waiting, and past that the caller answers "busy" instead of queueing.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Refusal:
    #: "address" or "user": which limit refused the attempt
    by: str
    key: str
    retry_after_s: float
    #: True for the first refusal of this burst (to audit it once)
    first: bool
    failures: int


@dataclass
class _Limit:
    by: str
    limit: int
    window_s: float
    max_keys: int
    #: key -> times of its recent failures (at most ``limit``), least recently failed first
    failures: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)
    #: keys whose current burst has been reported
    reported: set[str] = field(default_factory=set)

    def refusal(self, key: str, now: float) -> Refusal | None:
        times = self.failures.get(key)
        if times is None or len(times) < self.limit:
            return None
        wait = times[0] + self.window_s - now
        if wait <= 0:
            self.reported.discard(key)
            return None
        first = key not in self.reported
        self.reported.add(key)
        return Refusal(self.by, key, wait, first, len(times))

    def failed(self, key: str, now: float) -> None:
        times = self.failures.pop(key, None)
        if times is None:
            times = deque(maxlen=self.limit)
        times.append(now)
        self.failures[key] = times  # to the end: the most recently failed
        while len(self.failures) > self.max_keys:
            old, _ = self.failures.popitem(last=False)
            self.reported.discard(old)

    def clear(self, key: str) -> None:
        self.failures.pop(key, None)
        self.reported.discard(key)


class LoginThrottle:
    def __init__(self, *, per_address: int = 20, per_user: int = 5, window_s: float = 300.0,
                 max_keys: int = 100_000) -> None:
        self.address = _Limit("address", per_address, window_s, max_keys)
        self.user = _Limit("user", per_user, window_s, max_keys)

    def check(self, address: str, user: str, now: float) -> Refusal | None:
        """Before hashing: the refusal of this attempt, or None to go ahead."""
        return self.address.refusal(address, now) or self.user.refusal(user, now)

    def failed(self, address: str, user: str, now: float) -> None:
        self.address.failed(address, now)
        self.user.failed(user, now)

    def succeeded(self, user: str) -> None:
        self.user.clear(user)


class Gate:
    """At most ``running`` holders at once and ``waiting`` more queued behind them."""

    def __init__(self, running: int, waiting: int) -> None:
        self._slots = asyncio.Semaphore(running)
        self.capacity = running + waiting
        self.inside = 0

    @property
    def full(self) -> bool:
        return self.inside >= self.capacity

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self.inside += 1
        try:
            async with self._slots:
                yield
        finally:
            self.inside -= 1
