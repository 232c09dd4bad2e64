"""The device registry: speakers and relays, each with its own broker login.

A device's password is generated here, shown once to whoever provisions it, and stored only
as a Mosquitto ``$7$`` hash. From the registry this module writes the broker's password file
and ACL (``broker.py`` renders them) and asks the broker to re-read them (SIGHUP to the pid in
its pid file): a speaker may then publish only under its own topics and read only its own and
its zones' commands. With an external broker that we cannot signal, ops syncs the files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from . import broker
from .models import Relay, Speaker
from .state import State

log = logging.getLogger("loa.devices")


class Devices:
    def __init__(self, state: State, *, broker_dir: str = "", service_user: str = "",
                 service_password: str = "") -> None:
        """``broker_dir``: where the broker reads ``passwd`` and ``acl`` (and writes
        ``mosquitto.pid``); "" when the broker's accounts are managed elsewhere."""
        self.state = state
        self.broker_dir = Path(broker_dir) if broker_dir else None
        self.service = (broker.Account(service_user, broker.hash_password(service_password),
                                       "service") if service_user and service_password else None)
        self._lock = asyncio.Lock()

    async def set_password(self, device_id: str) -> str:
        """A fresh password for ``device_id`` (returned once, stored hashed)."""
        password = broker.new_password()
        await self.state.set_device_secret(device_id, broker.hash_password(password))
        return password

    async def delete(self, kind: str, device_id: str) -> None:
        await self.state.delete_device(kind, device_id)
        await self.sync_broker()

    async def accounts(self) -> list[broker.Account]:
        secrets = await self.state.device_secrets()
        out = [] if self.service is None else [self.service]
        speakers: list[Speaker] = await self.state.speakers.all()
        relays: list[Relay] = await self.state.relays.all()
        out += [broker.Account(s.id, secrets[s.id], "speaker", s.zone)
                for s in speakers if s.id in secrets]
        out += [broker.Account(r.id, secrets[r.id], "relay") for r in relays if r.id in secrets]
        out += [broker.Account(b.id, secrets[b.id], "board", b.zone)
                for b in await self.state.boards.all() if b.id in secrets]
        return out

    async def sync_broker(self) -> int:
        """Rewrite the broker's logins and ACL from the registry; returns accounts written."""
        if self.broker_dir is None:
            return 0
        async with self._lock:  # two provisionings at once must not interleave their files
            accounts = await self.accounts()
            await asyncio.to_thread(self._write, accounts)
        return len(accounts)

    def _write(self, accounts: list[broker.Account]) -> None:
        assert self.broker_dir is not None
        broker.write_password_file(self.broker_dir / "passwd", accounts)
        broker.write_acl(self.broker_dir / "acl", accounts)
        pid_file = self.broker_dir / "mosquitto.pid"
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGHUP)
        except (OSError, ValueError) as e:
            log.warning("broker accounts written to %s but not reloaded (%s)", self.broker_dir, e)
