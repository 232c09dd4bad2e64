"""What the streamer itself knows is wrong, as ``alert`` events: firing once, resolved once.

- ``zone_offline``: a leaf zone has registered speakers and none of them is online (MQTT
  presence); resolved when one comes online, or its last speaker is moved or removed. Zones:
  that zone.
- ``relay_offline``: a registered relay's MQTT status says offline (its last will); resolved
  when it says online. Zones: the relay's zone, or every root zone if it has none.
- ``mixer_degraded``: the deadline guard encodes the lower levels cheaply
  (``streamer/mixer/guard.py``); resolved when it recovers. Zones: every root zone.
- ``state_degraded``: Redis is away and state writes are journaled (``docs/state.md``);
  resolved when Redis is back and the journal replayed. Zones: every root zone.

The alerts firing now are kept, so a client that connects later gets them after its
``hello`` (``snapshot``). Prometheus has its own rules on the same facts (``ops/prometheus``);
these are what an operator on the console sees at once, without Alertmanager.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .events import Publish, nothing

log = logging.getLogger("loa.alerts")
WATCH_S = 1.0


class Alerts:
    def __init__(self, publish: Publish = nothing) -> None:
        self.publish = publish
        #: the zones of alerts about the whole system (the tree's roots)
        self.everywhere: list[str] = []
        self.firing: dict[tuple[str, str], dict[str, Any]] = {}  # (name, subject) → event

    def fire(self, name: str, subject: str, zones: list[str], summary: str) -> None:
        if (name, subject) in self.firing:
            return
        data = {"name": name, "state": "firing", "zones": zones or self.everywhere,
                "summary": summary, "subject": subject}
        self.firing[name, subject] = data
        log.info("alert %s firing: %s", name, summary)
        self.publish("alert", data, data["zones"])

    def resolve(self, name: str, subject: str, summary: str) -> None:
        data = self.firing.pop((name, subject), None)
        if data is None:
            return
        log.info("alert %s resolved: %s", name, summary)
        data = {**data, "state": "resolved", "summary": summary}
        self.publish("alert", data, data["zones"])

    def set(self, name: str, subject: str, on: bool, zones: list[str], summary: str) -> None:
        if on:
            self.fire(name, subject, zones, summary)
        else:
            self.resolve(name, subject, summary)

    def snapshot(self) -> list[dict[str, Any]]:
        return list(self.firing.values())

    async def watch(self, mixer: Any, state: Any, every_s: float = WATCH_S) -> None:
        """Follow the deadline guard and the state store until cancelled: each check reads two
        flags, on the control loop; the playout thread is never waited for."""
        while True:
            self.set("mixer_degraded", "mixer", bool(mixer.guard.degraded), [],
                     "the mixer cannot encode every programme in time: normal and background "
                     "programmes are encoded cheaply" if mixer.guard.degraded else
                     "the mixer encodes every programme at full quality again")
            degraded = bool(state.degraded())
            self.set("state_degraded", "redis", degraded, [],
                     "Redis is unavailable: emergency and stop still work, records wait in "
                     "the journal" if degraded else "Redis is back; the journal is replayed")
            await asyncio.sleep(every_s)
