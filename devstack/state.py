"""The running stack of ``loa up`` and what it tells scripts and ops tools: ``var/loa-up.json``.

The file's fields are documented in the README; :meth:`Stack.write_state` replaces it whole
(a reader never sees half a file) and is called again whenever a child restarts, so that it
always names the pids that run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.secretfile import write_private
from devstack.supervise import Child, Supervisor


@dataclass
class Stack:
    streamer: Child
    relay: Child
    speakers: list[tuple[str, str, Child]]  # (id, leaf zone, child)
    supervisor: Supervisor
    redis_url: str  # without its password
    mqtt_url: str
    var: Path
    started: float
    redis_password_file: Path | None = None  # the private Redis's

    @property
    def state_file(self) -> Path:
        return self.var / "loa-up.json"

    def state(self) -> dict[str, Any]:
        s, r, spk_dir = self.streamer, self.relay, self.var / "speakers"
        return {
            "streamer_url": s.info["http"],
            "streamer_media": s.info["media"],
            "streamer_ingest": s.info.get("ingest", ""),
            "relay_urls": [r.info["http"]],
            "relays": [{"id": r.name, "url": r.info["http"], "media": r.info["media"],
                        "pid": _pid(r)}],
            "speakers": [{"id": sid, "zone": zone, "channel": zone, "pid": _pid(c),
                          "wav": str(spk_dir / f"{sid}.wav"),
                          "log": str(spk_dir / f"{sid}.jsonl"), "media_addr": c.info["udp"]}
                         for sid, zone, c in self.speakers],
            "processes": [{"name": c.name, "pid": _pid(c), "restarts": c.restarts}
                          for c in self.supervisor.children],
            "pid": os.getpid(),
            "started": self.started,
            "logs": str(self.var / "logs"),
            "redis_url": self.redis_url,  # no password: that is in redis_password_file
            "redis_password_file": str(self.redis_password_file or ""),
            "mqtt_url": self.mqtt_url,
            # written by the streamer when it created the first admin (mode 0600); absent
            # when the state store already had users
            "admin_credentials": str(self.var / "admin-credentials.json"),
        }

    def write_state(self) -> None:
        """Replaced whole, 0600 like everything under ``var/``."""
        write_private(self.state_file, json.dumps(self.state(), indent=2, ensure_ascii=False))


def _pid(child: Child) -> int:
    assert child.proc is not None
    return child.proc.pid
