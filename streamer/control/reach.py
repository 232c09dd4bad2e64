"""Reach as it fills: a ``reach`` event when proof of play comes in, at most ``RATE_HZ`` per
broadcast.

A thousand speakers confirming one bulletin within a second make one event every
``1 / RATE_HZ`` s, not a thousand: a confirmation marks its broadcast, and the count is read
(one ``HKEYS`` in Redis) and told when the broadcast's gap since its last event has passed, so
the last confirmation is always told. ``confirmed`` and ``expected`` count as
``GET /api/v1/broadcasts/{id}/reach`` does: speakers registered in the broadcast's channels,
and those of them that confirmed it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from typing import Any

import redis.exceptions

from .events import Publish, nothing

log = logging.getLogger("loa.reach")
RATE_HZ = 4.0
_KEEP = 256  # broadcasts whose zones and last event time are remembered


class ReachFeed:
    def __init__(self, broadcasts: Any, recorder: Any, publish: Publish = nothing) -> None:
        self.broadcasts = broadcasts
        self.recorder = recorder
        self.publish = publish
        self._last: OrderedDict[int, float] = OrderedDict()  # bid → loop time of its last event
        self._zones: OrderedDict[int, list[str]] = OrderedDict()
        self._due: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def played(self, bid: int) -> None:
        """A speaker confirmed ``bid`` (its record is written already)."""
        if bid in self._due:
            return
        self._due.add(bid)
        loop = asyncio.get_running_loop()
        last = self._last.get(bid, -math.inf)
        loop.call_later(max(0.0, last + 1 / RATE_HZ - loop.time()), self._start, bid)

    def _start(self, bid: int) -> None:
        task = asyncio.get_running_loop().create_task(self._tell(bid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tell(self, bid: int) -> None:
        self._due.discard(bid)  # a confirmation from now on is told next time
        self._last[bid] = asyncio.get_running_loop().time()
        self._last.move_to_end(bid)
        while len(self._last) > _KEEP:
            self._last.popitem(last=False)
        try:
            zones = await self._zones_of(bid)
            if zones is None:
                return
            channels = set(self.broadcasts.channels_of(zones))
            who = await self.broadcasts.state.played_by(bid)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            log.warning("reach of broadcast %d not told: state store unavailable (%s)", bid, e)
            return
        zone_of = self.recorder.zone_of
        self.publish("reach", {
            "broadcast": bid, "confirmed": sum(zone_of.get(s) in channels for s in who),
            "expected": self.recorder.registered_in(channels), "zones": zones}, zones)

    async def _zones_of(self, bid: int) -> list[str] | None:
        zones = self._zones.get(bid)
        if zones is None:
            rec = await self.broadcasts.get(bid)
            if rec is None:
                return None  # proof of play of a broadcast this streamer never made
            zones = self._zones[bid] = list(rec.zones)
            while len(self._zones) > _KEEP:
                self._zones.popitem(last=False)
        return zones

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
