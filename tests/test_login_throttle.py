"""Sign-in throttling: the rules of ``streamer/control/throttle.py``, then the API's 429."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from argon2 import extract_parameters

from common.config import ConfigError
from streamer.app import StreamerConfig
from streamer.control import auth
from streamer.control.throttle import Gate, LoginThrottle

T0 = 1_000.0  # the throttle is sans-IO: any clock will do


def test_an_address_is_throttled_after_its_limit_until_the_window_passes():
    t = LoginThrottle(per_address=3, per_user=100, window_s=60)
    for i in range(3):
        assert t.check("10.0.0.1", f"u{i}", T0 + i) is None
        t.failed("10.0.0.1", f"u{i}", T0 + i)
    r = t.check("10.0.0.1", "someone", T0 + 10)
    assert r is not None and r.by == "address" and r.first and r.failures == 3
    assert r.retry_after_s == 50  # the first failure (T0) leaves the window at T0 + 60
    again = t.check("10.0.0.1", "someone", T0 + 11)
    assert again is not None and not again.first  # one audit per burst
    assert t.check("10.0.0.2", "someone", T0 + 11) is None  # another address is not touched
    assert t.check("10.0.0.1", "someone", T0 + 60.5) is None  # T0's failure left the window
    for i in range(3):
        t.failed("10.0.0.1", "x", T0 + 61 + i / 10)
    nxt = t.check("10.0.0.1", "someone", T0 + 61.5)
    assert nxt is not None and nxt.first  # a new burst is reported again


def test_a_user_name_is_throttled_from_any_address_and_success_clears_it():
    t = LoginThrottle(per_address=100, per_user=2, window_s=60)
    t.failed("10.0.0.1", "op1", T0)
    t.failed("10.0.0.2", "op1", T0 + 1)
    r = t.check("10.0.0.3", "op1", T0 + 2)
    assert r is not None and r.by == "user"
    t.succeeded("op1")
    assert t.check("10.0.0.3", "op1", T0 + 2) is None


def test_memory_is_bounded_by_max_keys():
    t = LoginThrottle(per_address=2, per_user=2, window_s=60, max_keys=100)
    for i in range(1000):
        t.failed(f"10.0.{i // 256}.{i % 256}", f"user{i}", T0)
    assert len(t.address.failures) == 100 and len(t.user.failures) == 100
    assert "user999" in t.user.failures and "user0" not in t.user.failures


async def test_gate_lets_running_plus_waiting_in_and_reports_full():
    gate = Gate(running=1, waiting=1)
    release = asyncio.Event()

    async def hold():
        async with gate.slot():
            await release.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0)
    assert gate.full and gate.inside == 2
    release.set()
    await asyncio.gather(*tasks)
    assert not gate.full and gate.inside == 0


async def get(streamer, path):
    async with aiohttp.ClientSession() as s, s.get(streamer.http_url + path,
                                                   headers=streamer.admin) as r:
        assert r.status == 200, await r.text()
        return await (r.json() if r.content_type == "application/json" else r.text())


async def test_login_flood_gets_429_with_retry_after_audited_once(streamer):
    url = streamer.http_url + "/api/v1/login"
    statuses = []
    async with aiohttp.ClientSession() as http:
        for i in range(30):
            async with http.post(url, json={"user": f"nobody{i}", "password": "wrong"}) as r:
                statuses.append(r.status)
                if r.status == 429:
                    body = await r.json()
                    assert body["field"] == "password"
                    assert 0 < int(r.headers["Retry-After"]) <= 300
    assert statuses[:20] == [401] * 20 and statuses[20:] == [429] * 10
    audit = await get(streamer, "/api/v1/audit?action=login&limit=100")
    outcomes = [e["outcome"] for e in audit["entries"]]
    assert outcomes.count("throttled") == 1 and outcomes.count("denied") == 20
    metrics = await get(streamer, "/metrics")
    assert 'loa_login_refused_total{by="address"} 10.0' in metrics


async def test_right_password_of_a_throttled_user_is_refused(streamer):
    streamer.plane.logins = LoginThrottle(per_address=100, per_user=3, window_s=300)
    url = streamer.http_url + "/api/v1/login"
    creds = Path(streamer.cfg.var_dir) / "admin-credentials.json"
    password = json.loads(creds.read_text())["password"]
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(url, json={"user": "admin", "password": "wrong"}) as r:
                assert r.status == 401
        async with http.post(url, json={"user": "admin", "password": password}) as r:
            assert r.status == 429 and (await r.json())["field"] == "password"
        async with http.post(url, json={"user": "op-other", "password": "x"}) as r:
            assert r.status == 401  # another name from the same address is still checked


async def test_audit_stream_is_trimmed_by_length_and_by_age(redis_url):
    from streamer.control.models import AuditEntry
    from streamer.control.state import State

    state = State(redis_url)
    try:
        state.audit_max_entries = 1000
        for i in range(3000):
            await state.audit(AuditEntry(ts=float(i), user="-", action="login",
                                         outcome="denied"))
        n = await state.r.xlen("loa:audit")
        assert 1000 <= n <= 1100  # approximate trimming drops whole nodes of ~100 entries
        state.audit_retention_s = 0.2
        await asyncio.sleep(0.3)  # every entry so far is now older than the retention
        await state.audit(AuditEntry(ts=0.0, user="-", action="login", outcome="denied"))
        assert await state.r.xlen("loa:audit") <= 100
    finally:
        await state.close()


def test_the_hash_cost_is_the_streamers_setting_and_a_stored_hash_keeps_its_own():
    """``password_hash_memory_kib`` and ``_time_cost``: new hashes carry them; a hash made at
    another cost still verifies (argon2 reads the cost from the hash); a cost argon2 cannot
    take is refused at start, naming the setting."""
    try:
        auth.set_hash_cost(65_536, 3)
        strong = auth.hash_password("mật khẩu")
        assert (extract_parameters(strong).memory_cost, extract_parameters(strong).time_cost) \
            == (65_536, 3)
        auth.set_hash_cost(1024, 1)
        light = auth.hash_password("mật khẩu")
        assert (extract_parameters(light).memory_cost, extract_parameters(light).time_cost) \
            == (1024, 1)
        assert auth.verify_password(strong, "mật khẩu") and auth.verify_password(light, "mật khẩu")
        assert not auth.verify_password(strong, "sai") and not auth.verify_password(None, "x")
    finally:
        auth.set_hash_cost(1024, 1)  # as the harness's streamers run
    for field, value in (("password_hash_memory_kib", 8), ("password_hash_time_cost", 0)):
        with pytest.raises(ConfigError, match=field):
            StreamerConfig(**{field: value})
