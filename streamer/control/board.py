"""E-boards (bản tin điện tử): what the LED and LCD screens of each zone show (``docs/mqtt.md``,
"E-boards"; ``docs/api.md``, "boards").

Every broadcast with text becomes a **board item** for its zones when it first airs: a spoken
bulletin (its text), a CAP alert (spoken from its headline and instructions), and every
emergency, with or without text (its label, shown as an emergency). Operators also post
text-only items (``POST /board/items``). An item shows from its start until it expires: a
bulletin ``LINGER_S`` after its end, an emergency until it is stopped or expires, a posted
item when its poster said. Items live in Redis (``loa:board-items``).

A zone's board shows every item addressed to the zone, to any zone above it (a province-wide
warning) or below it (a hamlet's bulletin on its commune's board). Whenever that changes, the
zone's whole :class:`~wire.messages.BoardState` is retained on ``loa/v1/zones/{zone}/board``
for boards that speak MQTT, and pushed to the kiosk pages watching the zone over SSE
(``/board/{zone}``, ``streamer/board``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from wire.ids import ancestors
from wire.messages import BoardItem, BoardState, zone_board_topic

from .background import Background
from .models import BroadcastRecord, covers

log = logging.getLogger("loa.board")

LINGER_S = 3600.0  # a bulletin stays on the boards this long after it ended
MAX_ITEMS = 200  # per zone, emergencies first then newest
QUEUE = 16  # state snapshots a slow page may fall behind before it is dropped

_LEVEL_ORDER = {"emergency": 0, "priority": 1, "normal": 2}


def relevant(zone: str, item: BoardItem) -> bool:
    """Whether ``zone``'s boards show ``item``: addressed to it, above it or below it."""
    return any(covers(z, zone) or covers(zone, z) for z in item.zones)


def item_of(rec: BroadcastRecord) -> BoardItem | None:
    """The board item a broadcast makes when it first airs, or None (no text, no emergency)."""
    text = str(rec.source.get("text") or "") if rec.source.get("kind") == "tts" else ""
    emergency = rec.priority == "emergency"
    if not text and not emergency:
        return None
    start = rec.started or time.time()
    if emergency:
        expires = rec.emergency.expires if rec.emergency is not None else None
    else:
        seconds = rec.source.get("seconds")
        expires = start + (float(seconds) if isinstance(seconds, (int, float)) else 0) \
            + LINGER_S
    return BoardItem(id=f"b-{rec.id}", zones=list(rec.zones)[:1000],
                     title=rec.label[:200] or ("Cảnh báo khẩn cấp" if emergency else ""),
                     body=text[:5000], level=rec.priority if rec.priority in _LEVEL_ORDER
                     else "normal", start=float(start),
                     expires=None if expires is None else float(expires), broadcast=rec.id)


class BoardFeed:
    """The board items of every zone: kept, published, and watched (one per streamer, started
    with the control plane)."""

    def __init__(self, plane: Any, registry: CollectorRegistry | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.plane = plane
        self.now = now
        self.items: dict[str, BoardItem] = {}
        #: which items each zone's boards show, and the zones each item shows on: kept as
        #: items come and go, so a zone's board is read from its own items, not every item
        self._by_zone: dict[str, set[str]] = {}
        self._reach: dict[str, set[str]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        #: each kiosk page's queue of its zone's states (None: its zone was edited away)
        self._watchers: dict[str, set[asyncio.Queue[BoardState | None]]] = {}
        self._background = Background(log, "board update")
        self.m_items = Gauge("loa_board_items", "Board items showing now", registry=registry)
        self.m_published = Counter("loa_board_states_total", "Zone board states published "
                                   "(MQTT and SSE)", registry=registry)

    # -- life ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the items still showing, and publish every zone's board (a restart or a
        takeover may have missed changes)."""
        now = self.now()
        for item in await self.plane.state.board_items.all():
            if item.expires is not None and item.expires <= now:
                await self.plane.state.end_board_item(item, item.expires)
            else:
                self._keep(item)
                self._arm(item)
        self.m_items.set(len(self.items))
        self._publish(self.plane.tree.zones)

    async def reload(self, gone: Iterable[str]) -> None:
        """After a zone edit: the items as stored now (their zones renamed), every zone's
        board published again, and the retained boards of zones that are gone cleared."""
        for item in await self.plane.state.board_items.all():
            if item.id in self.items:
                self.items[item.id] = item
        self._by_zone.clear()
        self._reach.clear()
        for item in list(self.items.values()):
            self._keep(item)
        self._publish(self.plane.tree.zones)
        fleet = self.plane.fleet
        for zone in gone:
            for q in self._watchers.pop(zone, ()):  # a page on a gone zone: it reconnects
                _end(q)
            if fleet is not None:
                self._background.spawn(self._clear(fleet, zone))

    def close(self) -> None:
        """The streamer stops: every kiosk page's stream ends now, as the HTTP server waits
        for its handlers (a page gone quietly would otherwise hold it until a heartbeat)."""
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        self._background.cancel()
        for watchers in self._watchers.values():
            for q in watchers:
                _end(q)
        self._watchers.clear()

    # -- what changes it ----------------------------------------------------------------------

    async def post(self, item: BoardItem) -> BoardItem:
        await self.plane.state.board_items.put(item.id, item)
        before = self._drop(item.id)  # the same id again: it replaces the item
        self._keep(item)
        self.m_items.set(len(self.items))
        self._arm(item)
        self._publish(sorted(before | self._reach[item.id]))
        log.info("board item %s (%s) for %s", item.id, item.level, ", ".join(item.zones[:5]))
        return item

    async def take_down(self, item_id: str) -> BoardItem | None:
        item = self.items.get(item_id)
        timer = self._timers.pop(item_id, None)
        if timer is not None:
            timer.cancel()
        if item is None:
            return None
        zones = self._drop(item_id)
        await self.plane.state.end_board_item(item, min(self.now(), item.expires or math.inf))
        self.m_items.set(len(self.items))
        self._publish(sorted(zones))
        return item

    def broadcast_aired(self, rec: BroadcastRecord) -> None:
        """``Broadcasts.on_first_airing``: its text (or its emergency) on the boards."""
        item = item_of(rec)
        if item is not None:
            self._background.spawn(self.post(item))

    def emergency_over(self, rec: BroadcastRecord) -> None:
        """``Broadcasts.on_emergency_over``: its item comes down."""
        self._background.spawn(self.take_down(f"b-{rec.id}"))

    @staticmethod
    def new_id() -> str:
        return "p-" + secrets.token_hex(6)

    # -- what shows -------------------------------------------------------------------------

    def state(self, zone: str) -> BoardState:
        now = self.now()
        items = [i for i in map(self.items.__getitem__, self._by_zone.get(zone, ()))
                 if i.start <= now + 1 and (i.expires is None or i.expires > now)]
        items.sort(key=lambda i: (_LEVEL_ORDER[i.level], -i.start, i.id))  # ties: by id
        return BoardState(zone=zone, items=items[:MAX_ITEMS], ts=now)

    def watch(self, zone: str) -> asyncio.Queue[BoardState | None]:
        """A queue of ``zone``'s board states, from now on (:meth:`unwatch` it); None in it:
        the zone is gone (renamed, moved or merged), the page must ask again."""
        q: asyncio.Queue[BoardState | None] = asyncio.Queue(QUEUE)
        self._watchers.setdefault(zone, set()).add(q)
        return q

    def unwatch(self, zone: str, q: asyncio.Queue[BoardState | None]) -> None:
        watchers = self._watchers.get(zone)
        if watchers is not None:
            watchers.discard(q)
            if not watchers:
                del self._watchers[zone]

    # -- inside -------------------------------------------------------------------------------

    def shown_on(self, item: BoardItem) -> set[str]:
        """The zones whose boards show ``item`` (``relevant``): the zones it is addressed to,
        those above them and those below them."""
        tree = self.plane.tree
        out: set[str] = set()
        for z in item.zones:
            out.update(a for a in ancestors(z) if a in tree.zones)
            if z in tree.zones:
                out.update(tree.subtree(z))
        return out

    def _keep(self, item: BoardItem) -> None:
        self.items[item.id] = item
        self._reach[item.id] = zones = self.shown_on(item)
        for z in zones:
            self._by_zone.setdefault(z, set()).add(item.id)

    def _drop(self, item_id: str) -> set[str]:
        """Forget ``item_id``; returns the zones that showed it."""
        self.items.pop(item_id, None)
        zones = self._reach.pop(item_id, set())
        for z in zones:
            shown = self._by_zone.get(z)
            if shown is not None:
                shown.discard(item_id)
                if not shown:
                    del self._by_zone[z]
        return zones

    def _publish(self, zones: Iterable[str]) -> None:
        fleet = self.plane.fleet
        for zone in zones:
            state = self.state(zone)
            self.m_published.inc()
            for q in list(self._watchers.get(zone, ())):
                try:
                    q.put_nowait(state)
                except asyncio.QueueFull:  # a page that does not read: it reconnects
                    self.unwatch(zone, q)
            if fleet is not None:
                self._background.spawn(self._retain(fleet, zone, state))

    @staticmethod
    async def _retain(fleet: Any, zone: str, state: BoardState) -> None:
        try:
            await fleet.retain(zone_board_topic(zone), state.model_dump_json().encode())
        except TimeoutError:  # the broker is away: the fleet publishes it when it is back
            log.info("board of %s not retained yet (broker away)", zone)

    @staticmethod
    async def _clear(fleet: Any, zone: str) -> None:
        try:
            await fleet.retain(zone_board_topic(zone), b"")
        except TimeoutError:
            log.info("board of %s not cleared yet (broker away)", zone)

    def _arm(self, item: BoardItem) -> None:
        old = self._timers.pop(item.id, None)
        if old is not None:
            old.cancel()
        if item.expires is None:
            return
        self._timers[item.id] = asyncio.get_running_loop().call_later(
            max(0.0, item.expires - self.now()),
            lambda: self._background.spawn(self.take_down(item.id)))


def _end(q: asyncio.Queue[BoardState | None]) -> None:
    """Tell the page behind ``q`` its stream ends (None), even if it is behind: what it has
    not read yet is dropped, it asks for the state again when it reconnects."""
    while q.full():
        q.get_nowait()
    q.put_nowait(None)
