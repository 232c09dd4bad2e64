"""The MQTT side of a test: Mosquitto accounts for the streamer, speakers and relays, a
Mosquitto that speaks only TLS, a streamer ``Fleet`` whose sink records what arrived, and a
plain MQTT client."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
from prometheus_client import CollectorRegistry

from devstack.services import Mosquitto, Service
from streamer.control.broker import STREAMER_USER, Account, hash_password, new_password
from streamer.control.fleet import Fleet
from wire.messages import Played, RelayTelemetry, SpeakerTelemetry, Status


def start_broker(broker: Service, speakers: dict[str, str], relays: tuple[str, ...] = ()
                 ) -> dict[str, str]:
    """Accounts for the streamer, ``speakers`` (id → leaf zone) and ``relays``; starts the
    broker; returns each user's password."""
    passwords = {u: new_password() for u in (STREAMER_USER, *speakers, *relays)}
    accounts = [Account(STREAMER_USER, hash_password(passwords[STREAMER_USER]), "service")]
    accounts += [Account(s, hash_password(passwords[s]), "speaker", z) for s, z in speakers.items()]
    accounts += [Account(r, hash_password(passwords[r]), "relay") for r in relays]
    broker.set_accounts(accounts)  # type: ignore[attr-defined]
    broker.start()
    return passwords


class TlsMosquitto(Mosquitto):
    """A :class:`Mosquitto` whose one listener speaks TLS only (``mqtts://``), with the
    server certificate ``cert``/``key``; with ``require_certificate`` a client must also
    present a certificate signed by ``ca``."""

    def __init__(self, directory: Path, cert: Path, key: Path, ca: Path, *,
                 require_certificate: bool = False) -> None:
        super().__init__(directory)
        self.cert, self.key, self.ca = cert, key, ca
        self.require_certificate = require_certificate

    @property
    def url(self) -> str:
        return f"mqtts://{self.host}:{self.port}"

    def config(self) -> str:
        # after the ``listener`` line, so these apply to it
        return super().config() + "\n".join([
            f"certfile {self.cert}", f"keyfile {self.key}", f"cafile {self.ca}",
            "tls_version tlsv1.2",
            f"require_certificate {'true' if self.require_certificate else 'false'}",
        ]) + "\n"


class Recorder:
    """The test's own FleetSink: remembers what arrived."""

    def __init__(self) -> None:
        self.statuses: list[tuple[str, str, Status]] = []
        self.reports: list[tuple[str, str, SpeakerTelemetry | RelayTelemetry]] = []
        self.plays: list[tuple[str, Played]] = []

    async def presence(self, kind: str, device_id: str, status: Status) -> None:
        self.statuses.append((kind, device_id, status))

    async def telemetry(self, kind: str, device_id: str,
                        t: SpeakerTelemetry | RelayTelemetry) -> None:
        self.reports.append((kind, device_id, t))

    async def played(self, speaker_id: str, ev: Played) -> None:
        self.plays.append((speaker_id, ev))

    def status(self, device_id: str) -> Status | None:
        return next((s for _, d, s in reversed(self.statuses) if d == device_id), None)

    def state(self, device_id: str) -> str | None:
        s = self.status(device_id)
        return s.state if s else None


@contextlib.asynccontextmanager
async def fleet_on(broker: Any, passwords: dict[str, str],
                   registry: CollectorRegistry | None = None,
                   tls_context: ssl.SSLContext | None = None
                   ) -> AsyncIterator[tuple[Fleet, Recorder]]:
    rec = Recorder()
    fleet = Fleet(broker.url, STREAMER_USER, passwords[STREAMER_USER], rec,
                  registry or CollectorRegistry(), max_backoff_s=1.0, tls_context=tls_context)
    async with fleet:
        await fleet.wait_connected(5)
        yield fleet, rec


def client(broker: Any, user: str, password: str, **kw: Any) -> aiomqtt.Client:
    return aiomqtt.Client(broker.host, broker.port, username=user, password=password, **kw)
