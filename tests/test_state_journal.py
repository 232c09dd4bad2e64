"""Degraded state: writes behind a journal while Redis is down, replayed in order and once when
it returns, also after a restart of the streamer; bearer tokens answered from what Redis last
confirmed. Real redis-server, killed the hard way; no clock reads asserted."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from streamer.control import state as state_mod
from streamer.control.models import AuditEntry, BroadcastRecord, BroadcastState, Grant, Role, User
from streamer.control.state import State


def record(bid: int, state: BroadcastState = BroadcastState.QUEUED) -> BroadcastRecord:
    return BroadcastRecord(id=bid, zones=["brvt"], priority="emergency",
                           source={"kind": "tone", "hz": 440, "seconds": 1.0},
                           created=1795402800.0 + bid, state=state)


def entry(action: str, target: str) -> AuditEntry:
    return AuditEntry(ts=1795402800.0, user="officer", action=action, target=target,
                      zones=["brvt"])


async def audit_actions(st: State) -> list[tuple[str, str]]:
    page, _ = await st.audit_page()
    return [(e.action, e.target) for e in reversed(page)]  # oldest first


async def test_journaled_writes_survive_a_restart_and_replay_once_in_order(redis_server,
                                                                             tmp_path):
    path = tmp_path / "var" / "state-journal.jsonl"
    st = State(redis_server.url, path)
    await st.audit(entry("before", "0"))  # Redis up: written at once, nothing journaled
    assert len(st.journal) == 0 and st.degraded() == []
    redis_server.kill()
    await st.put_broadcast(record(7))
    await st.audit(entry("broadcast", "7"))
    await st.put_broadcast(record(7, BroadcastState.STOPPED))
    await st.audit(entry("stop_broadcast", "7"))
    assert len(st.journal) == 4 and st.degraded() == ["state"]
    assert st.journaled_broadcast(7).state == BroadcastState.STOPPED  # the newest state
    assert len(path.read_text().splitlines()) == 4  # on disk before the calls returned
    await st.close()  # the streamer stops while Redis is still down

    copy = tmp_path / "copy.jsonl"
    shutil.copy(path, copy)
    redis_server.start()
    again = State(redis_server.url, path)  # the streamer starts again
    assert len(again.journal) == 4 and again.degraded() == ["state"]
    assert await again.replay() == 4
    assert len(again.journal) == 0 and again.degraded() == [] and path.read_text() == ""
    assert (await again.broadcasts.get(7)).state == BroadcastState.STOPPED  # order kept
    assert await again.recent_broadcasts() == [record(7, BroadcastState.STOPPED)]
    expected = [("before", "0"), ("broadcast", "7"), ("stop_broadcast", "7")]
    assert await audit_actions(again) == expected

    # the same journal replayed again (a crash before it was emptied) changes nothing
    third = State(redis_server.url, copy)
    assert len(third.journal) == 4
    assert await third.replay() == 0
    assert await audit_actions(third) == expected
    for s in (again, third):
        await s.close()


async def test_writes_queue_behind_the_journal_until_it_is_replayed(redis_server, tmp_path):
    st = State(redis_server.url, tmp_path / "j.jsonl")
    redis_server.kill()
    await st.audit(entry("first", "1"))
    redis_server.start()
    # Redis is back but the journal is not replayed yet: a newer write must not overtake it
    await st.audit(entry("second", "2"))
    await st.replay()
    await st.audit(entry("third", "3"))  # replayed: straight to Redis again
    assert len(st.journal) == 0
    assert await audit_actions(st) == [("first", "1"), ("second", "2"), ("third", "3")]
    await st.close()


async def test_a_torn_last_line_is_dropped_and_the_rest_replayed(redis_server, tmp_path):
    path = tmp_path / "j.jsonl"
    st = State(redis_server.url, path)
    redis_server.kill()
    await st.audit(entry("kept", "1"))
    await st.close()
    with open(path, "a") as f:
        f.write('{"jid": "abc", "op": "au')  # the machine died mid-append
    redis_server.start()
    again = State(redis_server.url, path)
    assert len(again.journal) == 1
    await again.replay()
    assert await audit_actions(again) == [("kept", "1")]
    await again.close()


async def test_broadcast_ids_come_from_the_reserved_block_while_redis_is_down(redis_server,
                                                                             tmp_path):
    st = State(redis_server.url, tmp_path / "j.jsonl")
    await st.reserve_broadcast_ids()
    before = [await st.next_broadcast_id() for _ in range(3)]
    redis_server.kill()
    await st.audit(entry("noticed", "down"))  # how the streamer finds out
    during = [await st.next_broadcast_id() for _ in range(state_mod.ID_BLOCK - 3)]
    with pytest.raises(state_mod.redis.exceptions.ConnectionError):
        await st.next_broadcast_id()  # the block is used up: refused, never made up
    redis_server.start()
    await st.replay()
    after = await st.next_broadcast_id()
    ids = before + during + [after]
    assert len(set(ids)) == len(ids) and after > max(during)
    await st.close()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def time(self) -> float:
        return self.t


async def test_tokens_redis_confirmed_work_while_it_is_down_until_they_expire(
        redis_server, tmp_path, monkeypatch):
    clock = Clock(1795402800.0)
    monkeypatch.setattr(state_mod, "time", clock)
    st = State(redis_server.url, tmp_path / "j.jsonl")
    officer = User(name="officer", created=clock.t, grants=[Grant(role=Role.EMERGENCY,
                                                                  zone="brvt")])
    await st.create_user(officer, "not-a-real-hash")
    await st.put_token("a" * 64, "officer", 3600)  # issued by this streamer
    await st.r.set(state_mod.P + "token:" + "b" * 64, "officer", ex=3600)  # by another one
    await st.r.set(state_mod.P + "token:" + "c" * 64, "officer", ex=3600)
    await st.r.set(state_mod.P + "token:" + "d" * 64, "officer", ex=3600)
    assert (await st.token_owner("b" * 64)).name == "officer"  # read once: cached
    assert (await st.token_owner("d" * 64)).name == "officer"
    await st.r.delete(state_mod.P + "token:" + "d" * 64)  # revoked elsewhere ...
    assert await st.token_owner("d" * 64) is None  # ... and seen here
    await st.put_token("e" * 64, "officer", 3600)
    await st.delete_token("e" * 64)  # revoked here
    redis_server.kill()
    assert (await st.token_owner("a" * 64)).grants == officer.grants
    assert (await st.token_owner("b" * 64)).name == "officer"
    assert st.degraded() == ["state"]
    assert await st.token_owner("c" * 64) is None  # valid in Redis, never confirmed here
    assert await st.token_owner("d" * 64) is None
    assert await st.token_owner("e" * 64) is None
    assert await st.token_owner("f" * 64) is None  # never issued at all
    clock.t += 3601
    assert await st.token_owner("a" * 64) is None  # expired while Redis was down
    await st.close()


async def test_a_users_change_reaches_the_cache(redis_server, tmp_path):
    st = State(redis_server.url, tmp_path / "j.jsonl")
    officer = User(name="officer", created=time.time(), grants=[])
    await st.create_user(officer, "x")
    await st.put_token("a" * 64, "officer", 3600)
    await st.users.put("officer", officer.model_copy(update={"disabled": True}))
    redis_server.kill()
    assert (await st.token_owner("a" * 64)).disabled  # the API edge refuses a disabled user
    await st.close()


async def test_more_calls_at_once_than_the_pool_has_connections_wait_instead_of_failing(
        redis_url):
    state = State(redis_url)
    try:
        # the 300-commune peak prepares every commune's occurrence on one frame
        got = await asyncio.gather(*(state.users.get(f"nobody-{i}")
                                     for i in range(5 * state_mod.MAX_CONNECTIONS)))
        assert got == [None] * (5 * state_mod.MAX_CONNECTIONS)
    finally:
        await state.close()
