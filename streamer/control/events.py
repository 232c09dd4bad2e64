"""The event hub behind ``GET /api/v1/events``: what changed, pushed to every signed-in client
that may see it.

Rules:

1. ``publish(name, data, zones)`` is synchronous, never awaits and never blocks: it encodes
   the event once per distinct set of visible zones and appends the frame to each
   subscriber's queue, O(subscribers). It runs on the control loop only; a source on another
   thread (the playout thread) hands over with ``loop.call_soon_threadsafe`` first.
2. Each subscriber's queue is bounded (``QUEUE_LIMIT`` writes: one per ``publish``, and one
   per ``publish_many``, whose events go out together, so a province-wide broadcast that
   changes a thousand channels at once costs a client one slot). A client that falls that far
   behind is dropped (its connection aborted, ``loa_api_event_clients_dropped_total{reason=
   "slow"}``): a slow or stuck reader never holds back a publisher, another client or a frame.
3. A subscriber sees an event only if one of its zones is visible to its user (granted on it
   or an ancestor, or on the path to a grant: ``auth.visible``, as the rest of the API), and
   an event's ``zones`` field lists only the visible ones.
4. Every event gets the next id of one process-wide counter, so ids grow on every stream.

The stream's framing (SSE) is built here too (``frame``); the HTTP side is
``streamer/control/api/events.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger("loa.events")

#: frames a client may have waiting before it is dropped as too slow
QUEUE_LIMIT = 256
#: a comment line this often keeps proxies and NAT from closing an idle stream
PING_S = 15.0
PING = b": ping\n\n"
#: the names a client may receive (the metrics' label values)
EVENTS = ("hello", "onair", "reach", "presence", "approval", "emergency", "alert")

Publish = Callable[[str, dict[str, Any], list[str]], None]
PublishMany = Callable[[str, list[tuple[dict[str, Any], list[str]]]], None]


def frame(name: str, event_id: int, data: dict[str, Any]) -> bytes:
    """One SSE event: ``event:``, ``id:`` and a one-line JSON ``data:``."""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return f"event: {name}\nid: {event_id}\ndata: {body}\n\n".encode()


def nothing(name: str, data: dict[str, Any], zones: list[str]) -> None:
    """The publisher of a part with no hub (unit tests, tools)."""


def nothing_many(name: str, events: list[tuple[dict[str, Any], list[str]]]) -> None:
    """The same for several events at once."""


class Subscriber:
    """One connected client: what it may see, and the frames waiting for it."""

    def __init__(self, sees: Callable[[str], bool], limit: int = QUEUE_LIMIT) -> None:
        self._sees = sees
        self._seen: dict[str, bool] = {}
        self.limit = limit
        self.queue: deque[bytes] = deque()
        self.wake = asyncio.Event()
        #: why the hub ended this subscription (None: still subscribed)
        self.dropped: str | None = None
        #: called when the hub drops it (aborts the connection, so a blocked write ends)
        self.on_drop: Callable[[], None] = lambda: None

    def visible(self, zones: Iterable[str]) -> list[str]:
        out = []
        for z in zones:
            seen = self._seen.get(z)
            if seen is None:
                seen = self._seen[z] = self._sees(z)
            if seen:
                out.append(z)
        return out

    def take(self) -> bytes:
        """Everything waiting, as one write."""
        out = b"".join(self.queue)
        self.queue.clear()
        self.wake.clear()
        return out


class EventHub:
    def __init__(self, registry: CollectorRegistry | None = None,
                 limit: int = QUEUE_LIMIT, ping_s: float = PING_S) -> None:
        registry = registry or CollectorRegistry()
        self.limit = limit
        self.ping_s = ping_s
        self.subscribers: set[Subscriber] = set()
        self.closed = False
        self._ids = itertools.count(1)
        self.clients = Gauge("loa_api_event_clients", "Clients connected to the event stream "
                             "(GET /api/v1/events)", registry=registry)
        self.published = Counter("loa_api_events_total", "Events published on the event "
                                 "stream, by name (once per event, whoever receives it)",
                                 ["event"], registry=registry)
        self.dropped = Counter("loa_api_event_clients_dropped_total", "Event stream clients "
                               "the streamer disconnected, by reason: slow (fell "
                               f"{limit} writes behind), signed_out (token expired or "
                               "revoked, user disabled or regranted)", ["reason"],
                               registry=registry)
        for name in EVENTS:
            self.published.labels(name)
        for reason in ("slow", "signed_out"):
            self.dropped.labels(reason)

    def next_id(self) -> int:
        return next(self._ids)

    def subscribe(self, sees: Callable[[str], bool]) -> Subscriber:
        sub = Subscriber(sees, self.limit)
        if self.closed:
            sub.dropped = "closing"
            return sub
        self.subscribers.add(sub)
        self.clients.set(len(self.subscribers))
        return sub

    def unsubscribe(self, sub: Subscriber, reason: str | None = None) -> None:
        """The client left (``reason`` None) or the stream ends for ``reason``."""
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            self.clients.set(len(self.subscribers))
            if reason is not None:
                self.dropped.labels(reason).inc()

    def publish(self, name: str, data: dict[str, Any], zones: list[str]) -> None:
        """Queue ``name`` for every subscriber that sees one of ``zones``. Never blocks, and
        never raises into its caller (a broadcast's start, a device's report): an event that
        cannot be told is logged and lost."""
        self.publish_many(name, [(data, zones)])

    def publish_many(self, name: str, events: list[tuple[dict[str, Any], list[str]]]) -> None:
        """Several ``name`` events at once (``(data, zones)`` each), in one write to each
        subscriber: one slot of its queue."""
        self.published.labels(name).inc(len(events))
        if not self.subscribers or not events:
            return
        try:
            self._publish(name, events)
        except Exception:
            log.exception("event %s not published", name)

    def _publish(self, name: str, events: list[tuple[dict[str, Any], list[str]]]) -> None:
        ids = [self.next_id() for _ in events]
        frames: dict[tuple[int, tuple[str, ...]], bytes] = {}
        for sub in list(self.subscribers):
            parts = []
            for i, (data, zones) in enumerate(events):
                visible = tuple(sub.visible(zones))
                if not visible:
                    continue
                out = frames.get((i, visible))
                if out is None:
                    out = frames[i, visible] = frame(name, ids[i], {
                        **data, "zones": list(visible)} if "zones" in data else data)
                parts.append(out)
            if not parts:
                continue
            if len(sub.queue) >= sub.limit:
                self._drop(sub)
                continue
            sub.queue.append(parts[0] if len(parts) == 1 else b"".join(parts))
            sub.wake.set()

    def close(self) -> None:
        """The streamer stops: every stream ends now (the HTTP server waits for them)."""
        self.closed = True
        for sub in list(self.subscribers):
            sub.dropped = "closing"
            self.unsubscribe(sub)
            sub.wake.set()

    def _drop(self, sub: Subscriber) -> None:
        log.warning("event stream client dropped: %d writes behind", len(sub.queue))
        sub.dropped = "slow"
        sub.queue.clear()
        self.unsubscribe(sub, "slow")
        sub.wake.set()
        sub.on_drop()
