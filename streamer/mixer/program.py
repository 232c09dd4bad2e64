"""One distinct program: the items of a set of identical channels and the rule that picks one.

This is the per-channel arbiter of ``docs/priorities.md``: the top item (highest level, then
first come) plays; a preempted item keeps its cursor and resumes from it; switches are a 10 ms
fade-out then a 10 ms fade-in, never two voices at once. Channels whose items and cursors are
equal share one ``Program`` (one mix, one limiter, one encode); the mixer forks and merges
programs as broadcasts reach some channels and not others. Pure code: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wire.priority import Priority

from .sources.base import Source


@dataclass(eq=False, slots=True)
class Item:
    """A broadcast as the mixer sees it: the same object in every channel it reaches."""

    id: int
    priority: Priority
    source: Source
    #: arrival order; breaks ties at one level (first come, first served)
    order: int
    #: wall-clock time the request for it reached the streamer (None: no request, e.g. a
    #: schedule's occurrence; its time to air then counts from its start in the mixer)
    requested_at: float | None = None
    #: wall-clock time its first frame was handed to the fan-out (set by the mixer)
    aired_at: float | None = None


@dataclass(eq=False)
class Program:
    fade_samples: int = 480
    #: item id -> samples of it this program has played
    cursors: dict[int, int] = field(default_factory=dict)
    items: dict[int, Item] = field(default_factory=dict)
    #: the item that played last frame (None: silence)
    current: int | None = None
    #: a stopped item that was playing: faded out at the start of the next frame
    tail: tuple[Item, int] | None = None
    channels: set[str] = field(default_factory=set)
    #: item id -> the cursor from which it keeps time while not playing (live items, rule 8)
    live_from: dict[int, int] = field(default_factory=dict)

    @property
    def idle(self) -> bool:
        """Nothing to play: no item, nothing fading out (it renders silence)."""
        return not self.items and self.tail is None

    def fork(self) -> Program:
        return Program(
            fade_samples=self.fade_samples, cursors=dict(self.cursors), items=dict(self.items),
            current=self.current, tail=self.tail, live_from=dict(self.live_from),
        )

    def signature(self) -> tuple[object, ...]:
        """Equal signatures render equal audio from now on: such programs can merge."""
        return (tuple(sorted(self.cursors.items())), self.current,
                None if self.tail is None else (self.tail[0].id, self.tail[1]))

    def add(self, item: Item) -> None:
        self.items[item.id] = item
        self.cursors[item.id] = 0
        live_from = getattr(item.source, "keeps_time_from", None)
        if live_from is not None:
            self.live_from[item.id] = live_from

    def remove(self, item_id: int) -> None:
        item = self.items.pop(item_id, None)
        if item is None:
            return
        cursor = self.cursors.pop(item_id)
        self.live_from.pop(item_id, None)
        if item_id == self.current:
            self.tail = (item, cursor)
            self.current = None

    def top(self) -> Item | None:
        best: Item | None = None
        for it in self.items.values():
            if best is None or (it.priority, -it.order) > (best.priority, -best.order):
                best = it
        return best

    def render(self, n: int, finished: list[int]) -> np.ndarray:
        """Mix the next ``n`` samples; ids of items that ran out are appended to ``finished``."""
        out = np.zeros(n, dtype=np.float32)
        pos = 0
        # Live items keep time while preempted: once their live part is reached their cursors
        # advance by a frame every frame, so a live voice or relayed radio resumes at "now",
        # not where it paused, and every program holding the item reads the same position. A
        # chime before a live voice still waits its turn like any recording.
        live = [(i, self.cursors[i]) for i, start in self.live_from.items()
                if self.cursors[i] >= start] if self.live_from else ()
        top = self.top()
        f = min(self.fade_samples, n)
        # Rule 1 and 4: whatever played last frame and is not the top any more fades out first.
        leaving: tuple[Item, int] | None = self.tail
        if leaving is None and self.current is not None and (top is None or top.id != self.current):
            old = self.items[self.current]
            leaving = (old, self.cursors[old.id])
        self.tail = None
        fade_in = leaving is not None or top is None or self.current != top.id
        if leaving is not None:
            item, cur = leaving
            out[:f] = item.source.read(cur, f) * _ramp(f, down=True)
            if item.id in self.cursors:
                self.cursors[item.id] = cur + f
            pos = f
        playing: int | None = None  # the item whose samples end this frame
        while pos < n and top is not None:
            cur = self.cursors[top.id]
            length = top.source.length
            take = n - pos if length is None else min(n - pos, length - cur)
            if take > 0:
                seg = top.source.read(cur, take)
                if fade_in:
                    g = min(f, take)
                    seg = seg.copy()
                    seg[:g] *= _ramp(f, down=False)[:g]
                out[pos : pos + take] = seg
                self.cursors[top.id] = cur + take
                pos += take
                playing = top.id
            if length is not None and self.cursors[top.id] >= length:
                del self.items[top.id], self.cursors[top.id]
                self.live_from.pop(top.id, None)
                finished.append(top.id)
                playing = None
                top = self.top()
                fade_in = True
            else:
                break
        for i, cur in live:
            if i in self.cursors:
                self.cursors[i] = cur + n
        # An item that has not played a sample yet is not "current": it fades in next frame.
        self.current = playing
        return out


_RAMPS: dict[tuple[int, bool], np.ndarray] = {}


def _ramp(n: int, down: bool) -> np.ndarray:
    key = (n, down)
    r = _RAMPS.get(key)
    if r is None:
        r = np.linspace(0.0, 1.0, n, endpoint=False, dtype=np.float32)
        if down:
            r = r[::-1].copy()
        _RAMPS[key] = r
    return r
