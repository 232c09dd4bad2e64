"""Which streamer of a pair is active: a lease in the shared Redis (``docs/operations.md``,
"A standby streamer").

Two streamers (or more) with ``ha_lease_ms`` set share one Redis, behind Redis Sentinel in
production (``state.py``, ``redis+sentinel://``). The one holding the lease is *active*: it
runs the control plane (schedules, emergencies, approvals, the fleet) and takes subscribers.
The others are *standby*: media plane warm, every subscriber refused with REJECT 8 (so relays
listing both move straight on to the active one), and a try for the lease every
``ttl / 6``. The lease is one key holding its holder's id, with a time to live: the active
streamer renews it every ``ttl / 3``, so it lapses ``ttl`` after the active streamer dies
(or at once when it stops cleanly: it deletes the key). The key is Redis's own ``SET NX PX``,
and renewing and releasing are compare-and-set scripts, so that a streamer never extends or
deletes a lease another one took meanwhile. Each new holder increments ``epoch``, written
into the log and ``/readyz`` (which holder an operator saw when).

What the lease does not do is stop a streamer that cannot reach Redis: the active streamer
keeps playing through a Redis outage (playout is never held up by the control side). If the
standby could still reach Redis and took the lease meanwhile (a network split), the old
active streamer learns it at its next renewal once it reaches Redis again and steps down
(``Lease.keep`` returns, the process exits, systemd starts it again as a standby). Until
then relays hear whichever of the two they are subscribed to: the same programme twice, not
silence.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge

from .state import UNAVAILABLE

log = logging.getLogger("loa.lease")

KEY = "loa:lease:streamer"
EPOCH_KEY = "loa:lease:epoch"
URL_KEY = "loa:lease:url"  # where the holder's HTTP is, for its standby (``peer.py``)

# Set the key if nobody holds it; a new holder gets the next epoch.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
"""
# Extend our own lease; take it again if it lapsed and nobody took it; 0 if another holds it.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""
_ADVERTISE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def default_holder() -> str:
    """This process's id in the lease: the host, the pid and a random part (a pid repeats
    after a reboot)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Lease:
    """The lease for ``holder`` in Redis ``r``; ``ttl_s`` long. :meth:`acquire` waits for it,
    :meth:`keep` renews it until another holder has it, :meth:`release` gives it up."""

    def __init__(self, r: aioredis.Redis, holder: str, ttl_s: float,
                 registry: CollectorRegistry | None = None) -> None:
        self.r = r
        self.holder = holder
        self.ttl_ms = int(ttl_s * 1000)
        self.epoch = 0
        self.held = False
        self._acquire = r.register_script(_ACQUIRE)
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)
        self._advertise = r.register_script(_ADVERTISE)
        self.m_active = Gauge("loa_streamer_active", "1 while this streamer holds the lease "
                              "(or runs without one), 0 while it is the standby",
                              registry=registry)
        self.m_renew_failed = Counter("loa_lease_renew_failures_total", "Lease renewals Redis "
                                      "did not answer in time (the streamer stays active)",
                                      registry=registry)
        self.m_lost = Counter("loa_lease_lost_total", "Leases found held by another streamer "
                              "at renewal (this one steps down)", registry=registry)

    @property
    def deadline_s(self) -> float:
        """How long one call to Redis may take: a third of the renewal period."""
        return self.ttl_ms / 9000

    async def holder_now(self) -> str | None:
        """Who holds the lease now (None: nobody, or Redis did not answer)."""
        try:
            value = await asyncio.wait_for(self.r.get(KEY), self.deadline_s)
        except (*UNAVAILABLE, TimeoutError):
            return None
        return str(value) if value is not None else None

    async def url_now(self) -> str | None:
        """Where the holder's HTTP is, as it advertised it (None: not said, or no answer)."""
        try:
            value = await asyncio.wait_for(self.r.get(URL_KEY), self.deadline_s)
        except (*UNAVAILABLE, TimeoutError):
            return None
        return str(value) if value else None

    async def advertise(self, url: str) -> bool:
        """Say where this holder's HTTP is (``url_now``), if it holds the lease."""
        try:
            return bool(await asyncio.wait_for(
                self._advertise(keys=[KEY, URL_KEY], args=[self.holder, url]),
                self.deadline_s))
        except (*UNAVAILABLE, TimeoutError):
            return False

    async def try_acquire(self) -> bool:
        """One try; True if this streamer holds the lease now."""
        try:
            epoch = await asyncio.wait_for(
                self._acquire(keys=[KEY, EPOCH_KEY], args=[self.holder, self.ttl_ms]),
                self.deadline_s)
        except (*UNAVAILABLE, TimeoutError):
            return False
        if not epoch:
            return False
        self.epoch, self.held = int(epoch), True
        self.m_active.set(1)
        return True

    async def acquire(self) -> int:
        """Wait until this streamer holds the lease (trying every sixth of its time to live);
        returns the epoch."""
        while not await self.try_acquire():
            await asyncio.sleep(self.ttl_ms / 6000)
        return self.epoch

    async def keep(self) -> None:
        """Renew the lease every third of its time to live; return once another streamer
        holds it. Redis not answering is not a loss: the lease is kept as far as this
        streamer can tell, and renewed again at the next turn."""
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                kept = await asyncio.wait_for(
                    self._renew(keys=[KEY], args=[self.holder, self.ttl_ms]), self.deadline_s)
            except (*UNAVAILABLE, TimeoutError) as e:
                self.m_renew_failed.inc()
                log.warning("lease not renewed (%s): still active", str(e) or type(e).__name__)
                continue
            if kept == 2:
                log.warning("the lease had lapsed (Redis slow or away) and nobody took it: "
                            "taken again")
            elif not kept:
                self.held = False
                self.m_active.set(0)
                self.m_lost.inc()
                log.critical("another streamer (%s) holds the lease: stepping down",
                             await self.holder_now())
                return

    async def release(self) -> None:
        """Give the lease up (a clean stop): the standby takes over at its next try."""
        if not self.held:
            return
        self.held = False
        self.m_active.set(0)
        try:
            await asyncio.wait_for(self._release(keys=[KEY], args=[self.holder]),
                                   self.deadline_s)
        except (*UNAVAILABLE, TimeoutError):
            log.warning("lease not released (Redis away): the standby takes over when it "
                        "lapses")
