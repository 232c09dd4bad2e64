"""The streamer's key set, retained on ``loa/v1/keys`` for every device (``wire/keyset.py``).

The set says which keys sign this streamer's media, so that devices learn a new key before it
is used and a rotation needs no change on them (``docs/operations.md``, "Signing keys"):

| moment | keys in the set | endorsed (signed) by |
| --- | --- | --- |
| start, no next key | current | current |
| a next key is announced (``next_signing_key``) | current, next | current |
| after the switch (SIGHUP), until the streamer restarts | new, (next,) previous | previous |

The endorser is always a key the devices already trust: the current one, or after a switch
the previous one, so that a device that missed the announcement still takes the set. The set
is published at start and again whenever it changes; ``issued`` (Unix ms) only grows, even
if the wall clock steps back (devices refuse a set not newer than theirs). Publishing retries
in the background until the broker takes it; a newer set replaces one still waiting.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from wire import keyset
from wire.auth import SigningKey
from wire.messages import StreamKeys

from .fleet import Fleet

log = logging.getLogger("loa.keys")

PUBLISH_TIMEOUT_S = 5.0


class KeyAnnouncer:
    def __init__(self, current: SigningKey, next_key: SigningKey | None = None, *,
                 registry: CollectorRegistry | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.current = current
        self.next = next_key if next_key is None or next_key.id != current.id else None
        self.previous: SigningKey | None = None
        self.wall = wall
        self.issued_ms = 0
        self.published = Counter("loa_stream_keys_published_total",
                                 "Stream key sets retained on loa/v1/keys", registry=registry)
        self._fleet: Fleet | None = None
        self._task: asyncio.Task[None] | None = None

    def keyset(self) -> bytes:
        """The set as it stands, signed, issued now (later than any set before it)."""
        keys = [self.current.public]
        keys += [k.public for k in (self.next, self.previous) if k is not None]
        self.issued_ms = max(int(self.wall() * 1000), self.issued_ms + 1)
        return keyset.sign(self.previous or self.current, list(dict.fromkeys(keys)),
                           self.issued_ms)

    def announce(self, next_key: SigningKey | None) -> bool:
        """``next_key`` is the key to sign with after the next switch (None: none is); True
        if that changes the set."""
        if next_key is not None and next_key.id == self.current.id:
            next_key = None
        if (next_key.id if next_key else None) == (self.next.id if self.next else None):
            return False
        self.next = next_key
        log.info("next signing key: %s", f"{next_key.id:08x}" if next_key else "none")
        return True

    def switched(self, new: SigningKey) -> bool:
        """The streamer signs with ``new`` from now on; True if that changes the set."""
        if new.id == self.current.id:
            return False
        self.previous, self.current = self.current, new
        if self.next is not None and self.next.id == new.id:
            self.next = None
        return True

    # ------------------------------------------------------------------ publishing

    def start(self, fleet: Fleet) -> None:
        """Publish the set on ``fleet`` now and after each change (:meth:`publish_soon`)."""
        self._fleet = fleet
        self.publish_soon()

    def publish_soon(self) -> None:
        """Retain the set as it stands, in the background (a newer call replaces this one)."""
        if self._fleet is None:
            return
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._publish(self._fleet))

    async def _publish(self, fleet: Fleet) -> None:
        message = StreamKeys(keyset=base64.b64encode(self.keyset()).decode())
        while True:
            try:
                await fleet.push_keys(message, PUBLISH_TIMEOUT_S)
                break
            except TimeoutError:
                log.warning("stream key set not published: the broker is away; retrying")
        self.published.inc()
        log.info("stream key set published: %s",
                 ", ".join(f"{k.id:08x}" for k in (self.current, self.next, self.previous)
                           if k is not None))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
