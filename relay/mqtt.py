"""The relay's side of the MQTT control plane: status, telemetry, ``reconnect`` and ``ping``.

:class:`RelayDevice` is the relay as a ``device.link.DeviceLink`` sees it. It
reads counters the fan-out and upstream already keep; it never touches the packet path, and a
command can only re-run handshakes, never stop the fan-out.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from device.link import VERSION, CommandFailed
from fanout.endpoint import FanoutEndpoint
from wire.addr import fmt_addr
from wire.messages import RELAY_COMMANDS, DeviceConfig, RelayTelemetry, Status, Strict
from wire.subscribe import ClientState

from .upstream import Upstream


class RelayDevice:
    """The relay as its DeviceLink sees it (``device.link.Device``)."""

    kind = "relay"
    commands = RELAY_COMMANDS

    def __init__(self, fanout: FanoutEndpoint, upstream: Upstream) -> None:
        self.fanout = fanout
        self.upstream = upstream
        self.started = time.monotonic()

    def current_upstream(self) -> str:
        """The upstream most channel subscriptions use now (each fails over on its own)."""
        # Upstream keeps its subscriptions private; reading them here beats a second copy.
        used = Counter(s.client.upstream for s in self.upstream._subs.values())
        addr = used.most_common(1)[0][0] if used else self.upstream.upstreams[0]
        return fmt_addr(addr)

    def status(self) -> Status:
        return Status(state="online", ts=time.time(), upstream=self.current_upstream(),
                      version=VERSION)

    def packets_out(self) -> int:
        return int(sum(s.value for metric in self.fanout.metrics.packets.collect()
                       for s in metric.samples if s.name.endswith("_total")))

    def telemetry(self) -> RelayTelemetry:
        return RelayTelemetry(
            ts=time.time(), subscribers=self.fanout.server.count,
            channels=len(self.fanout.channels()), packets_out=self.packets_out(),
            uptime_s=round(time.monotonic() - self.started, 1),
            upstream=self.current_upstream(),
        )

    def state(self) -> dict[str, Any]:
        return {"upstream": self.current_upstream(),
                "upstreams": [fmt_addr(u) for u in self.upstream.upstreams],
                "channels": self.upstream.subscribed(), "subscribers": self.fanout.server.count}

    async def execute(self, cmd: str, args: Strict) -> None:
        if cmd == "reconnect":
            self.resubscribe()
        elif cmd != "ping":
            raise CommandFailed(f"cmd: {cmd} is not implemented by this relay")

    async def configure(self, cfg: DeviceConfig) -> None:
        pass  # relays take no retained config (yet): they do not subscribe to one

    def resubscribe(self) -> None:
        """BYE and handshake again every upstream subscription, on the first upstream."""
        now = self.upstream._clock()
        for sub in self.upstream._subs.values():
            c = sub.client
            if c.state is ClientState.SUBSCRIBED:
                self.upstream._send_all(c.close())
            c.index = 0
            self.upstream._send_all(c.start(now))
