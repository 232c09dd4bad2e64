"""Subscription tokens for the fleet: every registered device gets its own, over MQTT.

The streamer issues each speaker a token for its zone's channel and each relay one for its
zone (every channel when it has none), signed with the streamer's key (``wire/token.py``), and
retains it on the device's ``…/token`` topic (``docs/mqtt.md``), where the device picks it up
on every (re)connect and renews its subscriptions with it at once. Tokens are issued when a
device is registered or moved, and all of them again every third of their lifetime, so a
device that misses one renewal (its broker link was down) still has two more chances before its
token runs out. A device removed from the registry simply gets no new token: revocation is its
last token expiring (``docs/operations.md``, "Subscription tokens").
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from wire.auth import SigningKey
from wire.messages import TokenGrant
from wire.token import issue

from .fleet import Fleet
from .models import Relay, Speaker
from .state import State

log = logging.getLogger("loa.grants")

PUBLISH_TIMEOUT_S = 5.0


class TokenIssuer:
    def __init__(self, state: State, fleet: Fleet, key: Callable[[], SigningKey],
                 registry: CollectorRegistry, lifetime_s: float = 86_400.0,
                 wall: Callable[[], float] = time.time) -> None:
        self.state = state
        self.fleet = fleet
        self.key = key  # the key signing now (it changes on a rotation)
        self.lifetime_s = lifetime_s
        self.wall = wall
        self.issued = Counter("loa_tokens_issued_total",
                              "Subscription tokens issued to devices over MQTT", ["kind"],
                              registry=registry)
        self.failed = Counter("loa_tokens_failed_total", "Tokens that could not be published "
                              "(broker away); the next round tries again", registry=registry)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """All devices now, then again every third of the lifetime, until cancelled."""
        while True:
            try:
                await self.grant_all()
            except Exception:  # the next round must still come
                log.exception("issuing tokens failed")
            await asyncio.sleep(self.lifetime_s / 3)

    async def grant_all(self) -> int:
        speakers: list[Speaker] = await self.state.speakers.all()
        relays: list[Relay] = await self.state.relays.all()
        for s in speakers:
            await self.grant_speaker(s)
        for r in relays:
            await self.grant_relay(r)
        return len(speakers) + len(relays)

    async def grant_speaker(self, speaker: Speaker) -> None:
        await self._grant("speaker", speaker.id, [speaker.zone])

    async def grant_relay(self, relay: Relay) -> None:
        await self._grant("relay", relay.id, [relay.zone] if relay.zone else ["*"])

    def soon(self, device: Speaker | Relay) -> None:
        """Issue ``device``'s token in the background (a registration must not wait for the
        broker)."""
        grant = (self.grant_speaker(device) if isinstance(device, Speaker)
                 else self.grant_relay(device))
        task = asyncio.create_task(grant)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _grant(self, kind: str, device_id: str, channels: list[str]) -> None:
        now = self.wall()
        token = issue(self.key(), device_id, channels, now, self.lifetime_s)
        grant = TokenGrant(token=base64.b64encode(token).decode(),
                           expires=int(now + self.lifetime_s))
        try:
            await self.fleet.push_token(kind, device_id, grant, PUBLISH_TIMEOUT_S)
        except TimeoutError:
            self.failed.inc()
            log.warning("token for %s %s not published: the broker is away", kind, device_id)
            return
        self.issued.labels(kind).inc()
        await asyncio.sleep(0)  # thousands of devices: let the loop breathe between them

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
