"""The streamers' lease (``streamer/control/lease.py``) on a real redis-server, and the state
store behind a real Redis Sentinel (``redis+sentinel://``, ``state.py``): when the master dies,
Sentinel promotes its replica and the streamer's writes and lease follow it."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import redis.asyncio as aioredis

from devstack.services import RedisSentinel, RedisServer
from streamer.control.lease import KEY, Lease
from streamer.control.models import Zone
from streamer.control.state import State, parse_sentinel_url, redis_client
from tests.harness.wait import until

TTL_S = 0.6


async def held(lease: Lease) -> str | None:
    return await lease.holder_now()


@pytest.mark.realtime  # leases against the wall clock: see conftest.py
async def test_one_holder_at_a_time_and_the_other_takes_over_when_it_lapses(redis_url) -> None:
    ra, rb = redis_client(redis_url, 2), redis_client(redis_url, 2)
    a, b = Lease(ra, "a", TTL_S), Lease(rb, "b", TTL_S)
    try:
        assert await a.try_acquire() and a.epoch >= 1
        assert not await b.try_acquire()
        keeping = asyncio.create_task(a.keep())
        await asyncio.sleep(TTL_S * 3)  # renewed all along: b never gets it
        assert not await b.try_acquire() and await held(b) == "a"
        keeping.cancel()  # a dies: it renews no more
        died = time.monotonic()
        epoch = await asyncio.wait_for(b.acquire(), TTL_S * 3)
        lapsed_s = time.monotonic() - died
        assert epoch == a.epoch + 1 and await held(a) == "b"
        assert lapsed_s <= 2 * TTL_S + 0.5, lapsed_s  # its time to live and a try, with room
        # a comes back and renews: the lease is b's, so a learns it lost and steps down
        await asyncio.wait_for(a.keep(), TTL_S * 2)
        assert not a.held and a.m_lost._value.get() == 1
        # a clean stop hands over at once, not after the time to live
        await b.release()
        assert await held(a) is None and await a.try_acquire()
        await b.release()  # b holds nothing: releases nothing
        assert await held(b) == "a"
    finally:
        await ra.aclose()
        await rb.aclose()


@pytest.mark.realtime
async def test_a_holder_that_cannot_reach_redis_stays_active(redis_server) -> None:
    r = redis_client(redis_server.url, 2)
    lease = Lease(r, "a", TTL_S)
    try:
        assert await lease.try_acquire()
        keeping = asyncio.create_task(lease.keep())
        redis_server.kill()
        await asyncio.sleep(TTL_S * 3)
        assert not keeping.done() and lease.held  # renewals fail; it plays on
        assert lease.m_renew_failed._value.get() >= 2
        redis_server.start()
        # its lease lapsed meanwhile and nobody took it: taken again at the next renewal
        await until(lambda: _holder_is(r, "a"), TTL_S * 10, "the lease taken again")
        assert not keeping.done()
        keeping.cancel()
    finally:
        await r.aclose()


async def _holder_is(r: aioredis.Redis, holder: str) -> bool:
    with contextlib.suppress(Exception):
        return bool(await r.get(KEY) == holder)
    return False


def test_sentinel_urls_are_read_and_bad_ones_named() -> None:
    assert parse_sentinel_url("redis+sentinel://:p%40w@10.0.0.1:26379,10.0.0.2:26380/loa/2") \
        == ([("10.0.0.1", 26379), ("10.0.0.2", 26380)], "loa", 2, "p@w", "p@w")
    assert parse_sentinel_url("redis+sentinel://h:1/loa?sentinel_password=s")[3:] == ("", "s")
    for bad in ("redis+sentinel://h/loa", "redis+sentinel://h:1", "redis+sentinel://h:1/a/b",
                "redis+sentinel://h:x/loa"):
        with pytest.raises(ValueError):
            parse_sentinel_url(bad)


@pytest.fixture
def replicated(tmp_path):
    """A master, its replica and one Sentinel (quorum 1) watching them."""
    master = RedisServer(tmp_path / "master")
    replica = RedisServer(tmp_path / "replica", replica_of=master)
    sentinel = RedisSentinel(tmp_path / "sentinel", master)
    master.start()
    replica.start()
    sentinel.start()
    yield master, replica, sentinel
    for s in (sentinel, replica, master):
        s.stop()


@pytest.mark.realtime
async def test_state_and_lease_follow_sentinel_to_the_promoted_replica(replicated,
                                                                        tmp_path) -> None:
    master, replica, sentinel = replicated
    url = sentinel.url()
    state = State(url, tmp_path / "journal.jsonl")
    lease = Lease(redis_client(url, 2), "a", 1.5)
    try:
        await until(lambda: _replicating(replica), 10, "the replica in sync")
        await state.zones.put("z1", Zone(id="z1", name="before"))
        assert await lease.try_acquire()
        keeping = asyncio.create_task(lease.keep())
        await until(lambda: _known_replica(sentinel, replica), 15,
                    "Sentinel knows the replica")
        master.kill()
        killed = time.monotonic()
        # writes meanwhile are journaled, then land on whichever server Sentinel promotes
        await state.set_last_fired("s1", 1234.5)
        await until(lambda: _master_is(sentinel, replica), 30, "the replica promoted")
        promoted_s = time.monotonic() - killed
        await until(lambda: _fired(replica), 15, "the journaled write on the new master")
        assert (await state.zones.get("z1")).name == "before"
        await until(lambda: _holder_is(_direct(replica), "a"), 10, "the lease on the new master")
        assert not keeping.done() and lease.held
        print(f"\nsentinel: replica promoted {promoted_s:.1f} s after the master died")
        keeping.cancel()
    finally:
        await lease.r.aclose()
        await state.close()


def _direct(server: RedisServer) -> aioredis.Redis:
    return aioredis.from_url(server.url, decode_responses=True)


async def _replicating(replica: RedisServer) -> bool:
    r = _direct(replica)
    try:
        info = await r.info("replication")
        return info.get("master_link_status") == "up"
    finally:
        await r.aclose()


async def _sentinel_call(sentinel: RedisSentinel, *args: str):
    r = aioredis.Redis(host=sentinel.host, port=sentinel.port,
                       password=sentinel.master.password, decode_responses=True)
    try:
        return await r.execute_command(*args)
    finally:
        await r.aclose()


async def _known_replica(sentinel: RedisSentinel, replica: RedisServer) -> bool:
    replicas = await _sentinel_call(sentinel, "SENTINEL", "REPLICAS", sentinel.service)
    return any(str(replica.port) in str(r) for r in replicas)


async def _master_is(sentinel: RedisSentinel, server: RedisServer) -> bool:
    host, port = await _sentinel_call(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                      sentinel.service)
    return int(port) == server.port


async def _fired(server: RedisServer) -> bool:
    r = _direct(server)
    try:
        return bool(await r.hget("loa:schedule-last-fired", "s1") == "1234.5")
    finally:
        await r.aclose()


@pytest.mark.parametrize(("field", "value"), [
    ("redis_url", "redis+sentinel://h/loa"), ("redis_url", "sentinel://h:1/loa"),
    ("ha_lease_ms", 100), ("ha_lease_ms", 120_000)])
def test_a_bad_pair_setting_is_refused_by_name(field, value) -> None:
    from common.config import ConfigError
    from streamer.app import StreamerConfig

    kw = {"redis_url": "redis://127.0.0.1:6379/0", field: value}
    with pytest.raises(ConfigError) as e:
        StreamerConfig(**kw)
    assert e.value.field == field
