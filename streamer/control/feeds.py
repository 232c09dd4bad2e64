"""A relayed radio stream ("tiếp sóng") feeding one broadcast, and what its health means.

The puller (``streamer/mixer/sources/pull.py``) runs on its own thread and reports states;
this class brings them onto the event loop and keeps what the broadcast needs to pause and
resume: a dead or silent upstream is taken off the air (lower levels play, the operator sees
``down`` on the broadcast, an audit entry and a metric), not aired as an hour of silence; when
the upstream comes back inside its window, the broadcast airs again, live.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from streamer.mixer.sources.live import LiveBuffer, LiveReader

#: a pulled stream arrives in decoder-sized bursts (an MP3 frame, an HLS segment's packets):
#: play it a little further behind than a studio voice
LATENCY_S = 0.3
SLACK_S = 0.7
#: states in which the broadcast is off the air until the upstream is back
OFF_AIR = frozenset({"down", "silent"})


class RelayFeed:
    def __init__(self, url: str, on_state: Callable[[RelayFeed, str, str], None],
                 registry: CollectorRegistry | None = None) -> None:
        self.url = url
        self.bid = 0  # set once the broadcast has its id
        self.state = "connecting"
        self.detail = ""
        self.paused = False
        #: frame at which the window ends (None: until stopped); kept while paused
        self.end_frame: int | None = None
        self.channels: list[str] = []
        self.buffer = LiveBuffer()
        loop = asyncio.get_running_loop()

        def report(state: str, detail: str) -> None:  # on the puller's thread
            try:
                loop.call_soon_threadsafe(on_state, self, state, detail)
            except RuntimeError:  # the loop closed under a last report: no one is left to tell
                pass

        from streamer.mixer.sources.pull import PulledStream  # PyAV: loaded when used

        self.stream = PulledStream(url, self.buffer, on_state=report, registry=registry)
        self.stream.start()

    def reader(self) -> LiveReader:
        return self.buffer.reader(LATENCY_S, SLACK_S)

    def close(self) -> None:
        """Stop the puller without holding the event loop while its thread winds down."""
        asyncio.get_running_loop().run_in_executor(None, self.stream.stop)
