"""Control-plane state in Redis: the one place that knows the key layout (``docs/state.md``).

Records are pydantic models stored as JSON, one Redis hash per kind (``Collection``); the
audit log is an append-only Redis stream, trimmed by age and length (``AUDIT_RETENTION_S``,
``AUDIT_MAX_ENTRIES``). Every multi-key change is one
``MULTI`` transaction, so a crash never leaves half a record. Secrets (password hashes,
device credential hashes, token digests) live under their own keys and never reach a model
that the API serialises. The mixer never waits on this module: playout keeps going on what
it already has if Redis is away.

Redis away (degraded): the emergency and stop paths must still work. So broadcast records,
audit entries and schedule firings are written behind a journal (``journal.py``) whenever
Redis does not take them at once, and replayed in order when it answers again; broadcast
ids come from blocks reserved ahead of need; and bearer tokens and users are cached as Redis
confirmed them, so an operator who signed in before Redis went down can still act. While
degraded nothing waits for Redis on those paths: a probe task finds out when it is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
import redis.exceptions
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ValidationError
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from wire.messages import BoardItem

from .journal import Entry, Journal, new_entry
from .models import (
    AuditEntry,
    Board,
    BroadcastRecord,
    CapRecord,
    ClipMeta,
    InboundBulletin,
    LexiconEntry,
    LiveInput,
    Presence,
    Relay,
    Sender,
    Speaker,
    User,
    Zone,
)
from .schedules import Schedule

log = logging.getLogger("loa.state")

P = "loa:"
QUARANTINE = P + "quarantine:"
ID_BLOCK = 32  # broadcast ids reserved at a time (see next_broadcast_id)
MAX_CONNECTIONS = 64  # to Redis, per process: more calls than that wait for one
POOL_WAIT_S = 10.0  # how long a call may wait for a free connection before it fails
AUDIT_RETENTION_S = 400 * 86_400
AUDIT_MAX_ENTRIES = 1_000_000
#: how long a write or an auth lookup may wait for Redis before the journal or the cache
#: takes over: an emergency must never wait for a database
DEADLINE_S = 1.0
PROBE_S = 1.0  # while degraded: how often Redis is asked whether it is back
APPLIED_TTL_S = 7 * 86400  # how long Redis remembers that a journaled write was applied
#: what "Redis is away" looks like (BusyLoadingError, a restarted Redis reading its AOF, is a
#: ConnectionError); anything else is a bug and is not retried forever
UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, TimeoutError)
M = TypeVar("M", bound=BaseModel)
SENTINEL_SCHEME = "redis+sentinel://"


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool (it asks the Sentinels where the master is, and follows a
    failover), waiting for a free connection as ``BlockingConnectionPool`` does instead of
    failing past ``max_connections`` (see ``State``)."""


def redis_client(url: str, max_connections: int = MAX_CONNECTIONS) -> aioredis.Redis:
    """A client for ``url``: ``redis://``, ``rediss://`` or ``unix://`` as redis-py reads them,
    or ``redis+sentinel://[:password@]host:port[,host:port…]/service[/db]`` for a master that
    Redis Sentinel manages (``docs/operations.md``, "A standby streamer"); the password is the
    master's, and the Sentinels' too unless ``?sentinel_password=`` says otherwise.

    One retry, at once: enough for a pooled connection that a Redis restart closed;
    redis-py's default (ten, with back-off) would hold a request for seconds while Redis is
    down, and the journal is the retry here. A blocking pool: past ``max_connections`` a call
    waits for a connection instead of failing (redis-py's default pool raises
    MaxConnectionsError past 100, which lost bulletins when 300 communes' schedules were
    prepared on one frame)."""
    options: dict[str, Any] = dict(
        max_connections=max_connections, timeout=POOL_WAIT_S, decode_responses=True,
        socket_timeout=5, socket_connect_timeout=2, retry=Retry(NoBackoff(), 1))
    if not url.startswith(SENTINEL_SCHEME):
        pool = BlockingConnectionPool.from_url(url, **options)
        return aioredis.Redis.from_pool(pool)
    sentinels, service, db, password, sentinel_password = parse_sentinel_url(url)
    sentinel = Sentinel(sentinels, socket_timeout=1, socket_connect_timeout=1,
                        sentinel_kwargs={"password": sentinel_password or None,
                                         "socket_timeout": 1, "socket_connect_timeout": 1})
    client: aioredis.Redis = sentinel.master_for(
        service, connection_pool_class=_BlockingSentinelPool, db=db, password=password or None,
        **options)
    return client


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str, str]:
    """``redis+sentinel://`` → (Sentinels, service, db, password, Sentinels' password);
    ValueError naming what is wrong."""
    from urllib.parse import parse_qs, unquote, urlsplit

    rest = url[len(SENTINEL_SCHEME):]
    # urlsplit reads one host:port; the Sentinels are a comma-separated list
    userinfo, _, hostpart = rest.partition("@") if "@" in rest.split("/", 1)[0] else ("", "",
                                                                                       rest)
    hosts, _, tail = hostpart.partition("/")
    parts = urlsplit("redis://x/" + tail)
    password = unquote(userinfo.partition(":")[2])
    sentinels = []
    for h in hosts.split(","):
        host, _, port = h.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a Sentinel must be host:port, not {h!r}")
        sentinels.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("the path must be /service or /service/db")
    query = parse_qs(parts.query)
    return (sentinels, path[0], int(path[1]) if len(path) == 2 else 0, password,
            query.get("sentinel_password", [password])[0])


class Unreadable:
    """Stored records that no longer parse as their model: written by an old bug (a PATCH
    that stored a ``null``), by hand, or by another version of Loa. Every read skips such a
    record, counts it and logs it (once per record and process), so one bad record costs
    that record and never a listing or a start-up; :meth:`State.quarantine` moves them aside
    when the streamer starts (``docs/state.md``)."""

    def __init__(self) -> None:
        # registered on the process's registry by the plane (``register``); State has none
        self.skipped = Counter("loa_state_unreadable_records_total", "Stored records a read "
                               "skipped because they no longer parse, by kind", ["kind"],
                               registry=None)
        self.quarantined = Counter("loa_state_quarantined_records_total", "Stored records "
                                   "moved to loa:quarantine:<kind> at start because they no "
                                   "longer parse, by kind", ["kind"], registry=None)
        self._logged: set[tuple[str, str]] = set()

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self.skipped)
        registry.register(self.quarantined)

    def skip(self, kind: str, rid: str, reason: str) -> None:
        self.skipped.labels(kind).inc()
        if (kind, rid) not in self._logged:
            self._logged.add((kind, rid))
            log.error("state: skipping %s%s field %r: does not parse (%s)", P, kind, rid, reason)


def reason(e: ValidationError) -> str:
    """Why a stored record does not parse, in one line."""
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'record'}: {err['msg']}"
                     for err in e.errors(include_url=False)[:3])


class Collection(Generic[M]):
    """Records of one kind in one Redis hash, field = record id, value = JSON. A value that
    does not parse is skipped (``Unreadable``): ``get`` answers None, listings leave it out."""

    def __init__(self, r: aioredis.Redis, kind: str, model: type[M], unreadable: Unreadable,
                 cache: dict[str, M] | None = None) -> None:
        """``cache``: kept equal to what was last read from or written to Redis (users, for
        authentication while Redis is away)."""
        self.r = r
        self.kind = kind
        self.key = P + kind
        self.model = model
        self.unreadable = unreadable
        self.cache = cache

    def parse(self, rid: str, raw: str) -> M | None:
        try:
            return self.model.model_validate_json(raw)
        except ValidationError as e:
            self.unreadable.skip(self.kind, rid, reason(e))
            return None

    async def get(self, rid: str | int) -> M | None:
        raw = await self.r.hget(self.key, str(rid))
        rec = None if raw is None else self.parse(str(rid), raw)
        if self.cache is not None:
            if rec is None:
                self.cache.pop(str(rid), None)
            else:
                self.cache[str(rid)] = rec
        return rec

    async def all(self) -> list[M]:
        raw = await self.r.hgetall(self.key)
        return [m for k, v in raw.items() if (m := self.parse(k, v)) is not None]

    async def many(self, ids: Iterable[str | int]) -> list[M | None]:
        ids = [str(i) for i in ids]
        if not ids:
            return []
        raw = await self.r.hmget(self.key, ids)
        return [None if v is None else self.parse(k, v) for k, v in zip(ids, raw, strict=True)]

    async def put(self, rid: str | int, rec: M) -> None:
        await self.r.hset(self.key, str(rid), rec.model_dump_json())
        if self.cache is not None:
            self.cache[str(rid)] = rec

    async def put_many(self, recs: dict[str, M]) -> None:
        if recs:
            await self.r.hset(self.key, mapping={k: v.model_dump_json() for k, v in recs.items()})
            if self.cache is not None:
                self.cache.update(recs)

    async def delete(self, rid: str | int) -> bool:
        if self.cache is not None:
            self.cache.pop(str(rid), None)
        return bool(await self.r.hdel(self.key, str(rid)))

    async def count(self) -> int:
        return int(await self.r.hlen(self.key))


class State:
    """Typed access to everything the control plane keeps. One instance per process.

    ``journal``: the file of writes waiting for Redis (None: kept in memory only).
    """

    def __init__(self, url: str, journal: Path | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.url = url
        self.r: aioredis.Redis = redis_client(url)  # closed by close()
        #: False from the first failed call until the probe finds Redis back and the journal
        #: is replayed: writes go to the journal, auth to the cache, without asking Redis
        self.available = True
        self.journal = Journal(journal)
        self._probe: asyncio.Task[None] | None = None
        self._refill: asyncio.Task[None] | None = None
        self._replaying = asyncio.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}  # digest -> (user, expires epoch s)
        self._users: dict[str, User] = {}
        self.m_pending = Gauge("loa_state_pending_writes", "State writes journaled on the "
                               "streamer, waiting for Redis", registry=registry)
        self.m_errors = Counter("loa_state_write_errors_total", "State writes Redis did not "
                                "take at once (they were journaled)", ["op"], registry=registry)
        self.m_degraded = Gauge("loa_state_degraded", "1 while Redis is away (or its journal "
                                "is being replayed), else 0", registry=registry)
        self.m_replayed = Counter("loa_state_replayed_total", "Journaled state writes applied "
                                  "to Redis after it came back", registry=registry)
        self.m_pending.set(len(self.journal))
        self.unreadable = Unreadable()
        u = self.unreadable
        self.zones = Collection(self.r, "zones", Zone, u)
        self.users = Collection(self.r, "users", User, u, cache=self._users)
        self.speakers = Collection(self.r, "speakers", Speaker, u)
        self.relays = Collection(self.r, "relays", Relay, u)
        self.presence = Collection(self.r, "presence", Presence, u)
        self.clips = Collection(self.r, "clips", ClipMeta, u)
        self.broadcasts = Collection(self.r, "broadcasts", BroadcastRecord, u)
        self.schedules = Collection(self.r, "schedules", Schedule, u)
        self.inputs = Collection(self.r, "inputs", LiveInput, u)
        self.cap = Collection(self.r, "cap", CapRecord, u)
        self.senders = Collection(self.r, "senders", Sender, u)
        self.boards = Collection(self.r, "boards", Board, u)
        self.board_items = Collection(self.r, "board-items", BoardItem, u)
        self.inbound = Collection(self.r, "inbound", InboundBulletin, u)
        self.lexicon = Collection(self.r, "lexicon", LexiconEntry, u)  # term -> entry
        self._ids: deque[int] = deque()
        self._move = self.r.register_script(_MOVE)

    @property
    def collections(self) -> list[Collection[Any]]:
        return [self.zones, self.users, self.speakers, self.relays, self.presence, self.clips,
                self.broadcasts, self.schedules, self.inputs, self.cap, self.senders,
                self.inbound, self.boards, self.board_items, self.lexicon]

    async def ping(self) -> bool:
        return bool(await self.r.ping())

    async def close(self) -> None:
        for task in (self._probe, self._refill):
            if task is not None:
                task.cancel()
        await self.r.aclose()

    async def quarantine(self) -> dict[str, int]:
        """Move every stored record that no longer parses from ``loa:<kind>`` to
        ``loa:quarantine:<kind>`` (same field, value ``{"record", "reason", "ts"}``), log it
        and count it; returns how many per kind. Run at start, before anything reads."""
        moved: dict[str, int] = {}
        for c in self.collections:
            async for rid, raw in c.r.hscan_iter(c.key, count=1000):
                try:
                    c.model.model_validate_json(raw)
                    continue
                except ValidationError as e:
                    why = reason(e)
                kept = json.dumps({"record": raw, "reason": why, "ts": time.time()})
                # moved only if nobody rewrote it since it was read
                if await self._move(keys=[c.key, QUARANTINE + c.kind], args=[rid, raw, kept]):
                    log.error("state: %s field %r does not parse (%s); moved to %s%s",
                              c.key, rid, why, QUARANTINE, c.kind)
                    self.unreadable.quarantined.labels(c.kind).inc()
                    moved[c.kind] = moved.get(c.kind, 0) + 1
        return moved

    # -- degraded mode: the write-behind journal -------------------------------------------

    def degraded(self) -> list[str]:
        """What is degraded, for ``/readyz``: "state" while writes are journaled."""
        return [] if self.available and not self.journal.entries else ["state"]

    def _lost(self, why: BaseException) -> None:
        """Redis failed a call: journal and cache from now on, and probe until it is back."""
        if self.available:
            log.error("Redis unavailable (%s): emergency and stop go on; their records and "
                      "audit entries are journaled until it is back",
                      str(why) or type(why).__name__)
        self.available = False
        self.m_degraded.set(1)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._wait_for_redis())

    async def _wait_for_redis(self) -> None:
        while True:
            await asyncio.sleep(PROBE_S)
            try:
                await asyncio.wait_for(self.r.ping(), DEADLINE_S)
                n = await self.replay()
            except UNAVAILABLE:
                continue
            except redis.exceptions.RedisError:  # e.g. MISCONF (its disk is full): retried
                log.exception("replaying the state journal failed; retrying")
                continue
            log.warning("Redis is back: %d journaled writes applied", n)
            return

    async def replay(self) -> int:
        """Apply the journal to Redis, oldest first, then leave degraded mode. A write Redis
        already has (its ``jid`` is recorded) is skipped. Raises when Redis fails again."""
        n = 0
        async with self._replaying:  # the probe and Plane.load must not apply an entry twice
            while self.journal.entries:
                e = self.journal.entries[0]
                if not await self.r.exists(P + "applied:" + e["jid"]):
                    try:
                        await asyncio.wait_for(self._apply(e), DEADLINE_S * 5)
                    except (KeyError, TypeError, ValueError) as err:
                        # damaged on disk: it can never apply, and must not block the rest
                        log.error("state journal entry dropped (%s): %s", err, json.dumps(e))
                    else:
                        n += 1
                        self.m_replayed.inc()
                self.journal.entries.popleft()
                self.m_pending.set(len(self.journal))
            # nothing awaited since the journal was seen empty: no write can slip in between
            self.available = True
            self.m_degraded.set(0)
        await self.journal.compact()
        self._reserve_ahead()
        return n

    async def _write(self, op: str, data: dict[str, Any]) -> None:
        """Apply one write now if Redis takes it within ``DEADLINE_S``, else journal it.
        While anything is journaled, later writes queue behind it: Redis sees them in order."""
        e = new_entry(op, data)
        if self.available and not self.journal.entries:
            try:
                await asyncio.wait_for(self._apply(e), DEADLINE_S)
                return
            except UNAVAILABLE as err:
                self.m_errors.labels(op).inc()
                self._lost(err)
        else:
            self.m_errors.labels(op).inc()
        await self.journal.append(e)
        self.m_pending.set(len(self.journal))

    async def _apply(self, e: Entry) -> None:
        """One write and the record that it was applied, in one transaction."""
        op, d = e["op"], e["data"]
        async with self.r.pipeline(transaction=True) as p:
            if op == "broadcast":
                p.hset(self.broadcasts.key, str(d["id"]), json.dumps(d))
                p.zadd(P + "broadcasts-by-time", {str(d["id"]): d["created"]})
            elif op == "audit":
                # Bounded by length and by age: stream ids are milliseconds since the epoch,
                # so age is an id. Both trims are approximate ("~"): Redis drops whole nodes
                # of the stream, which costs nothing.
                oldest = int((time.time() - self.audit_retention_s) * 1000)
                p.xadd(P + "audit", {k: json.dumps(v) if isinstance(v, dict | list) else str(v)
                                     for k, v in d.items()},
                       maxlen=self.audit_max_entries, approximate=True)
                p.xtrim(P + "audit", minid=f"{max(oldest, 0)}-0", approximate=True)
            elif op == "last_fired":
                p.hset(P + "schedule-last-fired", d["schedule"], repr(d["ts"]))
            else:
                raise ValueError(f"unknown journal op {op!r}")
            p.set(P + "applied:" + e["jid"], 1, ex=APPLIED_TTL_S)
            await p.execute()

    # -- secrets ---------------------------------------------------------------------------

    async def set_password_hash(self, user: str, argon2_hash: str) -> None:
        await self.r.hset(P + "passwords", user, argon2_hash)

    async def password_hash(self, user: str) -> str | None:
        v = await self.r.hget(P + "passwords", user)
        return None if v is None else str(v)

    async def set_device_secret(self, device_id: str, mosquitto_hash: str) -> None:
        await self.r.hset(P + "device-secrets", device_id, mosquitto_hash)

    async def device_secrets(self) -> dict[str, str]:
        return dict(await self.r.hgetall(P + "device-secrets"))

    async def put_input(self, rec: LiveInput, key: str | None = None) -> None:
        """An ingest input and (when given) its SRTP key, in one transaction. The key must
        be readable (the streamer decrypts with it), so it is a secret of its own, never in
        the record the API returns."""
        async with self.r.pipeline(transaction=True) as p:
            p.hset(P + "inputs", rec.id, rec.model_dump_json())
            if key is not None:
                p.hset(P + "input-keys", rec.id, key)
            await p.execute()

    async def input_keys(self) -> dict[str, str]:
        return dict(await self.r.hgetall(P + "input-keys"))

    async def delete_input(self, input_id: str) -> bool:
        async with self.r.pipeline(transaction=True) as p:
            p.hdel(P + "inputs", input_id)
            p.hdel(P + "input-keys", input_id)
            gone, _ = await p.execute()
        return bool(gone)

    async def delete_device(self, kind: str, device_id: str) -> None:
        """Remove a speaker or relay with its credentials, presence and telemetry."""
        async with self.r.pipeline(transaction=True) as p:
            p.hdel(P + {"speaker": "speakers", "relay": "relays"}.get(kind, "boards"), device_id)
            for key in ("device-secrets", "presence", "telemetry"):
                p.hdel(P + key, device_id)
            await p.execute()

    async def device_ids(self) -> set[str]:
        """Every registered speaker's, relay's and board's id."""
        async with self.r.pipeline(transaction=False) as p:
            for c in (self.speakers, self.relays, self.boards):
                p.hkeys(c.key)
            found = await p.execute()
        return {i for ids in found for i in ids}

    async def add_devices(self, speakers: list[Speaker], relays: list[Relay],
                          secrets: dict[str, str], boards: list[Board] | None = None) -> None:
        """Register many devices with their broker password hashes in one transaction: all
        of them or, if Redis fails, none (a bulk import, ``provision.py``)."""
        async with self.r.pipeline(transaction=True) as p:
            for c, devices in ((self.speakers, speakers), (self.relays, relays),
                               (self.boards, boards or [])):
                if devices:
                    p.hset(c.key, mapping={d.id: d.model_dump_json() for d in devices})
            if secrets:
                p.hset(P + "device-secrets", mapping=secrets)
            await p.execute()

    # -- e-boards (board.py) ---------------------------------------------------------------

    async def end_board_item(self, item: BoardItem, until: float) -> None:
        """An item came down: out of the items showing, into the log reports read."""
        async with self.r.pipeline(transaction=True) as p:
            p.hdel(self.board_items.key, item.id)
            p.hset(P + "board-log", item.id, json.dumps(
                {"item": item.model_dump(mode="json"), "until": until}))
            await p.execute()

    async def board_log(self) -> list[tuple[BoardItem, float]]:
        """Every item that came down, with when."""
        out = []
        for rid, raw in (await self.r.hgetall(P + "board-log")).items():
            try:
                d = json.loads(raw)
                out.append((BoardItem.model_validate(d["item"]), float(d["until"])))
            except (ValueError, KeyError, TypeError, ValidationError):
                self.unreadable.skip("board-log", rid, "does not parse")
        return out

    # -- bulletins from above (inbound.py) ----------------------------------------------------

    async def next_inbound_id(self) -> str:
        return f"in-{await self.r.incr(P + 'inbound-seq')}"

    async def inbound_by_ref(self, sender: str, ref: str) -> InboundBulletin | None:
        """The bulletin ``sender`` sent under its own id ``ref``, if any."""
        rid = await self.r.hget(P + "inbound-ref", f"{sender}\n{ref}")
        return None if rid is None else await self.inbound.get(rid)

    async def put_inbound(self, rec: InboundBulletin) -> None:
        """Store a bulletin and its sender's reference to it, in one transaction."""
        async with self.r.pipeline(transaction=True) as p:
            p.hset(self.inbound.key, rec.id, rec.model_dump_json())
            p.hset(P + "inbound-ref", f"{rec.sender}\n{rec.ref}", rec.id)
            await p.execute()

    async def set_telemetry(self, device_id: str, data: dict[str, Any]) -> None:
        await self.r.hset(P + "telemetry", device_id, json.dumps(data))

    async def telemetry(self, ids: list[str]) -> list[dict[str, Any] | None]:
        if not ids:
            return []
        raw = await self.r.hmget(P + "telemetry", ids)
        return [None if v is None else json.loads(v) for v in raw]

    async def put_token(self, digest: str, user: str, ttl_s: int) -> None:
        await self.r.set(P + "token:" + digest, user, ex=ttl_s)
        self._cache_token(digest, user, time.time() + ttl_s)

    def token_expires(self, digest: str) -> float | None:
        """When a token :meth:`token_owner` answered for expires (Unix s; None: unknown)."""
        hit = self._tokens.get(digest)
        return None if hit is None else hit[1]

    async def token_owner(self, digest: str) -> User | None:
        """The user a bearer token belongs to (None: unknown, expired or revoked).

        Redis decides while it answers, and each answer is cached (token → user, expiry;
        the user's record with its grants). While Redis is away the cache answers: a token
        Redis confirmed before it went away works until its expiry; one Redis never
        confirmed, or revoked, does not.
        """
        if self.available:
            try:
                return await asyncio.wait_for(self._token_owner(digest), DEADLINE_S)
            except UNAVAILABLE as err:
                self._lost(err)
        hit = self._tokens.get(digest)
        if hit is None or hit[1] <= time.time():
            return None
        return self._users.get(hit[0])

    async def _token_owner(self, digest: str) -> User | None:
        async with self.r.pipeline(transaction=False) as p:
            p.get(P + "token:" + digest)
            p.pttl(P + "token:" + digest)
            name, ttl_ms = await p.execute()
        if name is None or ttl_ms == -2:
            self._tokens.pop(digest, None)  # revoked or expired: no longer honoured anywhere
            return None
        # a token without expiry (never written by Loa) is cached for a login's lifetime
        ttl_s = ttl_ms / 1000 if ttl_ms > 0 else 12 * 3600
        self._cache_token(digest, str(name), time.time() + ttl_s)
        return await self.users.get(str(name))

    def _cache_token(self, digest: str, user: str, expires: float) -> None:
        if len(self._tokens) >= 10_000:  # expired sign-ins would otherwise pile up
            now = time.time()
            self._tokens = {d: v for d, v in self._tokens.items() if v[1] > now}
        self._tokens[digest] = (user, expires)

    async def delete_token(self, digest: str) -> None:
        self._tokens.pop(digest, None)  # revoked here at once, even if Redis fails below
        await self.r.delete(P + "token:" + digest)

    # -- users -----------------------------------------------------------------------------

    async def create_user(self, user: User, argon2_hash: str) -> bool:
        """Atomically create ``user``; False if the name is taken."""
        async with self.r.pipeline(transaction=True) as p:
            await p.watch(self.users.key)
            if await p.hexists(self.users.key, user.name):
                await p.unwatch()
                return False
            p.multi()
            p.hset(self.users.key, user.name, user.model_dump_json())
            p.hset(P + "passwords", user.name, argon2_hash)
            await p.execute()
        self._users[user.name] = user
        return True

    # -- zones -----------------------------------------------------------------------------

    async def import_zones(self, zones: list[Zone]) -> int:
        """Load the zone tree from a data file into an empty store; returns zones added.

        Only zones that are not stored yet are added: settings an operator changed through
        the API (quiet hours, approval) survive a restart with the same data file.
        """
        existing = set(await self.r.hkeys(self.zones.key))
        new = {z.id: z for z in zones if z.id not in existing}
        await self.zones.put_many(new)
        return len(new)

    # -- broadcasts and reach --------------------------------------------------------------

    async def reserve_broadcast_ids(self) -> None:
        top = int(await self.r.incrby(P + "broadcast-seq", ID_BLOCK))
        self._ids.extend(range(top - ID_BLOCK + 1, top + 1))

    async def next_broadcast_id(self) -> int:
        """Ids are reserved from Redis's counter in blocks, ahead of need, so that an
        emergency or a scheduled occurrence still gets one while Redis is away. The counter
        only grows, so an id handed out here cannot be handed out again, after Redis returns
        or the streamer restarts (a restart leaves the rest of its block unused)."""
        if not self._ids:
            if not self.available:
                raise redis.exceptions.ConnectionError(
                    f"all {ID_BLOCK} broadcast ids reserved ahead are used")
            await self.reserve_broadcast_ids()
        bid = self._ids.popleft()
        self._reserve_ahead()
        return bid

    def _reserve_ahead(self) -> None:
        """Top the block up in the background (never on the path of a request)."""
        if len(self._ids) >= ID_BLOCK // 2 or not self.available or (
                self._refill is not None and not self._refill.done()):
            return

        async def refill() -> None:
            try:
                await asyncio.wait_for(self.reserve_broadcast_ids(), DEADLINE_S)
            except UNAVAILABLE as err:
                self._lost(err)

        self._refill = asyncio.get_running_loop().create_task(refill())

    async def put_broadcast(self, rec: BroadcastRecord) -> None:
        """Write behind the journal if Redis does not take it at once (see ``_write``)."""
        await self._write("broadcast", rec.model_dump(mode="json"))

    def journaled_broadcast(self, bid: int) -> BroadcastRecord | None:
        """The newest state of broadcast ``bid`` still waiting in the journal."""
        d = self.journal.find("broadcast", "id", bid)
        return None if d is None else BroadcastRecord.model_validate(d)

    async def recent_broadcasts(self, limit: int = 100, offset: int = 0) -> list[BroadcastRecord]:
        ids = await self.r.zrevrange(P + "broadcasts-by-time", offset, offset + limit - 1)
        return [b for b in await self.broadcasts.many(ids) if b is not None]

    async def broadcasts_between(self, t0: float, t1: float) -> list[BroadcastRecord]:
        ids = await self.r.zrangebyscore(P + "broadcasts-by-time", t0, t1)
        return [b for b in await self.broadcasts.many(ids) if b is not None]

    async def record_played(self, broadcast: int, speaker: str, event: dict[str, Any]) -> None:
        await self.r.hset(f"{P}reach:{broadcast}", speaker, json.dumps(event))

    async def played(self, broadcast: int) -> dict[str, dict[str, Any]]:
        raw = await self.r.hgetall(f"{P}reach:{broadcast}")
        return {k: json.loads(v) for k, v in raw.items()}

    async def played_by(self, broadcast: int) -> list[str]:
        """The speakers that confirmed playing ``broadcast`` (their ids only)."""
        return [str(k) for k in await self.r.hkeys(f"{P}reach:{broadcast}")]

    # -- schedules ---------------------------------------------------------------------------

    async def next_schedule_id(self) -> str:
        return f"s{int(await self.r.incr(P + 'schedule-seq'))}"

    async def set_last_fired(self, schedule_id: str, ts: float) -> None:
        await self._write("last_fired", {"schedule": schedule_id, "ts": ts})

    async def last_fired(self) -> dict[str, float]:
        raw = await self.r.hgetall(P + "schedule-last-fired")
        return {k: float(v) for k, v in raw.items()}

    async def delete_schedule(self, schedule_id: str) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.hdel(self.schedules.key, schedule_id)
            p.hdel(P + "schedule-last-fired", schedule_id)
            await p.execute()

    async def delete_broadcast(self, bid: int) -> None:
        """Only for a record prepared ahead of a scheduled occurrence that never aired."""
        async with self.r.pipeline(transaction=True) as p:
            p.hdel(self.broadcasts.key, str(bid))
            p.zrem(P + "broadcasts-by-time", str(bid))
            await p.execute()

    # -- presence history (for availability reports) ---------------------------------------

    async def set_presence(self, device_id: str, p: Presence) -> bool:
        """Store ``p``; returns True (and logs the transition) if the state changed."""
        old = await self.presence.get(device_id)
        changed = old is None or old.state != p.state
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(self.presence.key, device_id, p.model_dump_json())
            if changed:
                pipe.xadd(P + "presence-log", {"device": device_id, "state": p.state,
                                               "ts": repr(p.ts)})
            await pipe.execute()
        return changed

    async def presence_log(self, t0: float, t1: float) -> list[tuple[float, str, str]]:
        """(ts, device, state) transitions with t0 <= ts < t1, oldest first."""
        out: list[tuple[float, str, str]] = []
        start = f"{int(t0 * 1000)}-0"
        while True:
            batch = await self.r.xrange(P + "presence-log", min=start, max="+", count=1000)
            for _, f in batch:
                ts = float(f["ts"])
                if ts >= t1:
                    return out
                if ts >= t0:
                    out.append((ts, f["device"], f["state"]))
            if len(batch) < 1000:
                return out
            start = "(" + batch[-1][0]

    async def presence_before(self, t: float, devices: Iterable[str]) -> dict[str, str]:
        """Each device's state as of ``t``: the state of its newest transition with ts < t.

        Reads the presence log backwards from its newest entry and stops once every device
        is found, so it costs the transitions logged since ``t`` plus the way back to the
        oldest answer. Devices with no transition before ``t`` are left out (never seen).
        """
        want = set(devices)
        out: dict[str, str] = {}
        end = "+"
        while want:
            batch = await self.r.xrevrange(P + "presence-log", max=end, min="-", count=1000)
            for _, f in batch:
                if f["device"] in want and float(f["ts"]) < t:
                    out[f["device"]] = f["state"]
                    want.discard(f["device"])
            if len(batch) < 1000:
                break
            end = "(" + batch[-1][0]
        return out

    # -- reports upward (``upward.py``) ------------------------------------------------------

    async def upward_since(self) -> date | None:
        """The first local day the webhook pusher is responsible for (set on its first run)."""
        raw = await self.r.get(P + "upward-since")
        return date.fromisoformat(raw) if raw else None

    async def set_upward_since(self, day: date) -> None:
        await self.r.set(P + "upward-since", day.isoformat(), nx=True)

    async def upward_delivered(self) -> dict[str, dict[str, Any]]:
        """Report id -> {from, to, delivered}: the reports the central system took."""
        raw = await self.r.hgetall(P + "upward-delivered")
        return {k: json.loads(v) for k, v in raw.items()}

    async def mark_upward_delivered(self, report_id: str, first: date, last: date,
                                    ts: float) -> None:
        await self.r.hset(P + "upward-delivered", report_id, json.dumps(
            {"from": first.isoformat(), "to": last.isoformat(), "delivered": ts}))

    # -- audit -----------------------------------------------------------------------------

    #: audit entries older than this are dropped (a year and a month: a yearly review)
    audit_retention_s: float = AUDIT_RETENTION_S
    #: and never more than this many are kept, whatever their age (a flood of refusals)
    audit_max_entries: int = AUDIT_MAX_ENTRIES

    async def audit(self, entry: AuditEntry) -> None:
        """Append to the audit stream, behind the journal if Redis does not take it at once
        (its ``ts`` is when it happened; its stream id, when Redis got it)."""
        await self._write("audit", entry.model_dump(mode="json", exclude={"id"}))

    async def audit_page(self, before: str = "+", count: int = 500) -> tuple[
            list[AuditEntry], str | None]:
        """Entries older than stream id ``before`` ("+": newest), newest first, and the
        ``before`` of the next page (None at the oldest)."""
        rows = await self.r.xrevrange(P + "audit", max=before, min="-", count=count)
        nxt = "(" + rows[-1][0] if len(rows) == count else None
        entries = []
        for sid, f in rows:
            try:
                entries.append(_audit_entry(sid, f))
            except (KeyError, ValueError) as e:  # a stream entry is never moved: skip it
                self.unreadable.skip("audit", sid, f"{type(e).__name__}: {e}")
        return entries, nxt


#: KEYS: the record's hash, its quarantine hash; ARGV: field, the value read, what to keep
_MOVE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""


def _audit_entry(sid: str, f: dict[str, str]) -> AuditEntry:
    return AuditEntry(id=sid, ts=float(f["ts"]), user=f["user"], action=f["action"],
                      target=f.get("target", ""), zones=json.loads(f.get("zones", "[]")),
                      outcome=f.get("outcome", "ok"), detail=json.loads(f.get("detail", "{}")))
