"""What each channel plays now, as the control side knows it: the ``onair`` events.

The mixer's arbiter (``streamer/mixer/program.py``) plays, on each channel, the top item of
the channel's stack: the highest level, then first come. This board keeps the same stacks on
the control loop, fed by :class:`~streamer.control.broadcasts.Broadcasts` at every hand-over
to or from the mixer (``playing`` when a broadcast enters the mixer's channels, ``silent``
when it leaves them: stopped, finished, paused between the windows of a relayed stream or
between the airings of a repeating emergency), and publishes an ``onair`` event for every
channel whose top changed. It never asks the mixer (whose lock the playout thread holds while
it renders a frame): the mixer's ``on_finished`` reaches the control loop through
``call_soon_threadsafe`` (``streamer/app.py``) like every other report from playout.

The one difference from the arbiter is the fade: the arbiter switches 10 ms later.
"""

from __future__ import annotations

import itertools
from typing import Any

from wire.priority import Priority

from .events import PublishMany, nothing_many
from .models import BroadcastRecord


class OnAir:
    def __init__(self, publish_many: PublishMany = nothing_many) -> None:
        self.publish_many = publish_many
        self._stack: dict[str, dict[int, tuple[int, int]]] = {}  # channel → bid → (level, -order)
        self._channels: dict[int, list[str]] = {}  # bid → its channels while sounding
        self._desc: dict[int, dict[str, Any]] = {}  # bid → what an onair event says of it
        self._top: dict[str, int] = {}  # channel → bid playing
        self._arrivals = itertools.count(1)

    def playing(self, rec: BroadcastRecord, channels: list[str]) -> None:
        """``rec`` entered the mixer on ``channels`` (again: it keeps its place in line)."""
        old = self._channels.get(rec.id)
        if old is not None and old == channels:
            return
        key = (int(Priority[rec.priority.upper()]),
               -next(self._arrivals) if old is None else self._key(rec.id, old))
        for ch in old or ():
            self._stack[ch].pop(rec.id, None)
        self._channels[rec.id] = list(channels)
        self._desc[rec.id] = {
            "id": rec.id, "label": rec.label, "priority": rec.priority,
            "kind": str(rec.source.get("kind", "")), "started": rec.started,
            "emergency": rec.emergency is not None}
        for ch in channels:
            self._stack.setdefault(ch, {})[rec.id] = key
        self._settle({*(old or ()), *channels})

    def _key(self, bid: int, channels: list[str]) -> int:
        return next((self._stack[ch][bid][1] for ch in channels), -next(self._arrivals))

    def silent(self, bid: int) -> None:
        """``bid`` left the mixer (stopped, finished, paused)."""
        channels = self._channels.pop(bid, None)
        if channels is None:
            return
        for ch in channels:
            stack = self._stack[ch]
            stack.pop(bid, None)
            if not stack:
                del self._stack[ch]
        self._settle(channels)
        self._desc.pop(bid, None)

    def _settle(self, channels: Any) -> None:
        """Find each channel's top again; the ones that changed go out in one write."""
        changed = []
        for ch in sorted(channels):
            stack = self._stack.get(ch)
            top = max(stack, key=stack.__getitem__) if stack else None
            if top == self._top.get(ch):
                continue
            if top is None:
                del self._top[ch]
            else:
                self._top[ch] = top
            changed.append(({"zone": ch, "broadcast": self.now(ch)}, [ch]))
        self.publish_many("onair", changed)

    def now(self, channel: str) -> dict[str, Any] | None:
        """What ``channel`` plays (the ``broadcast`` of its ``onair`` event)."""
        bid = self._top.get(channel)
        return None if bid is None else self._desc[bid]

    def playing_on(self, channel: str) -> int | None:
        return self._top.get(channel)
