"""Playout: the frame clock, the mixer's ticks and the media socket, on a thread of their own.

The control side (HTTP API, MQTT, Redis, the scheduler, TTS, uploads, password hashing) runs on
the process's main event loop. Playout runs on a second event loop, in a thread started here,
so that whatever the control side is doing — a flood of logins, a slow handler, a dead Redis
— it never holds a frame back: the most it can take from playout is the GIL for one switch
interval, which ``SWITCH_INTERVAL_S`` keeps short. The rules:

- Only the playout thread calls ``Mixer.tick`` and publishes into the fan-out; the media socket
  (subscribe handshakes, keepalives, expiry) lives on the playout loop too, so subscribers are
  answered however busy the API is.
- The control side changes the mixer through its commands (``start``, ``stop``, …), which take
  the mixer's lock for the length of the command, never longer.
- What the mixer reports (an item finished) is handed back to the control loop with
  ``call_soon_threadsafe``: no control code runs on the playout thread.
- The playout thread asks the kernel for a higher priority (``PLAYOUT_NICE``): on a machine
  whose cores are all busy hashing or synthesising, the frame still wins the CPU (best effort:
  without the privilege to raise a priority, playout keeps the default). The control side's
  worker threads keep the default priority on purpose: a thread the kernel deschedules while
  it holds the GIL holds playout back with it, so a low-priority thread is a priority
  inversion. CPU-heavy work runs where it releases the GIL (argon2:
  ``streamer/control/hashing.py``) or in another process (speech synthesis: ``espeak-ng``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streamer.mixer.clock import FrameClock, Lead
from streamer.mixer.mixer import Mixer

log = logging.getLogger("loa.playout")

T = TypeVar("T")

#: how long a thread may hold the GIL while another waits for it (CPython's default is 5 ms):
#: the longest a busy control thread can keep a due frame waiting
SWITCH_INTERVAL_S = 0.001
PLAYOUT_NICE = -10
LAG_BUCKETS_S = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.010, 0.015, 0.020,
                 0.030, 0.050, 0.100, 0.250, 0.5, 1.0)


def set_thread_nice(nice: int) -> bool:
    """Set the calling thread's nice value (Linux schedules threads, not processes); False if
    the system refused (raising a priority needs CAP_SYS_NICE)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (OSError, AttributeError):
        return False
    return True


class FrameLoop:
    """Begins each frame's tick ``lead`` before its deadline (``Lead``) and runs the mixer;
    exports how late each frame reached the socket, misses, skips and the lead."""

    def __init__(self, clock: FrameClock, mixer: Mixer, registry: CollectorRegistry,
                 lead_max_s: float | None = None,
                 after_frame: Callable[[], None] = lambda: None) -> None:
        """``after_frame``: work that must follow each frame's media but not delay it (the
        signatures, ``streamer/signing.py``)."""
        self.clock = clock
        self.mixer = mixer
        self.after_frame = after_frame
        most = clock.ptime_s if lead_max_s is None else lead_max_s
        self.lead = Lead(most, min_s=min(most, Lead.min_s))
        self.misses = Counter("loa_frame_deadline_misses_total",
                              "Frames handed to the socket later than their deadline plus 10 ms",
                              registry=registry)
        self.skipped = Counter("loa_frames_skipped_total",
                               "Frames skipped after a stall (the stream jumped)",
                               registry=registry)
        self.lag = Gauge("loa_frame_lag_seconds",
                         "How late the last frame was handed to the socket (0 if on time)",
                         registry=registry)
        self.lags = Histogram("loa_frame_lag_histogram_seconds",
                              "How late each frame was handed to the socket, after its deadline",
                              buckets=LAG_BUCKETS_S, registry=registry)
        self.lead_seconds = Gauge("loa_frame_lead_seconds",
                                  "How long before its deadline a frame's tick begins",
                                  registry=registry)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        clock, lead = self.clock, self.lead
        while True:
            ahead = lead.value
            self.lead_seconds.set(ahead)
            delay = clock.deadline() - ahead - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            skipped = clock.skipped
            for k in clock.due(loop.time(), ahead):
                try:
                    self.mixer.tick(k)
                except Exception:  # a bad frame must not stop every speaker in the province
                    log.exception("frame %d failed", k)
                handed = loop.time()
                late = handed - clock.deadline(k)
                lead.record(late + ahead)
                self.lags.observe(max(0.0, late))
                self.lag.set(max(0.0, late))
                if clock.late(k, handed):
                    self.misses.inc()
                try:
                    self.after_frame()
                except Exception:
                    log.exception("after frame %d failed", k)
            self.skipped.inc(clock.skipped - skipped)


class Playout:
    """A thread running its own event loop; ``run`` hands it a coroutine from the control
    loop and awaits the result there."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.raised_priority = False

    def start(self) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._thread = threading.Thread(target=self._main, name="loa-playout", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        self.raised_priority = set_thread_nice(PLAYOUT_NICE)
        loop = self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.call_soon(self._ready.set)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    @property
    def running(self) -> bool:
        return self.loop is not None

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` as a task on the playout loop (e.g. the frame loop, for ever)."""
        assert self.loop is not None, "start() first"
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the playout loop and await its result on the calling loop."""
        return await asyncio.wrap_future(self.submit(coro))

    def close(self) -> None:
        """Stop the loop (cancel what runs there first) and join the thread."""
        if self.loop is None or self._thread is None:
            return
        loop = self.loop

        def stop() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.call_soon(loop.stop)

        loop.call_soon_threadsafe(stop)
        self._thread.join(timeout=5)
        self.loop, self._thread = None, None
