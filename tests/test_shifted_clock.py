"""The shifted-clock run (``make test-shifted``): the time-sensitive modules again, with
libfaketime preloaded into the Python processes so that the wall clock reads 03:30 in
Asia/Ho_Chi_Minh one year from now (inside the default quiet hours), while redis-server and
Mosquitto keep the real clock. Here: that the run really sees that clock, and that the
servers are started without the shim (it kills redis-server at start)."""

from __future__ import annotations

import os
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from devstack.services import real_clock_env

VN = ZoneInfo("Asia/Ho_Chi_Minh")
#: the epoch seconds the run's clock started at, set by ``make test-shifted``
SHIFTED_AT = os.environ.get("LOA_SHIFTED_AT")


def test_servers_start_without_the_clock_shim() -> None:
    env = real_clock_env({
        "LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1:/opt/libkeep.so",
        "FAKETIME": "+31536000", "FAKETIME_NO_CACHE": "1", "DONT_FAKE_MONOTONIC": "1",
        "PATH": "/usr/bin"})
    assert env == {"LD_PRELOAD": "/opt/libkeep.so", "PATH": "/usr/bin"}
    assert real_clock_env({"LD_PRELOAD": "/usr/lib/faketime/libfaketimeMT.so.1"}) == {}


@pytest.mark.skipif(SHIFTED_AT is None, reason="only in the shifted-clock run (make test-shifted)")
def test_the_shifted_run_reads_0330_next_year_and_redis_the_real_clock(redis_server) -> None:
    import redis

    assert SHIFTED_AT is not None
    now = time.time()
    # the clock started at 03:30 local when make began and runs at the real rate since
    assert 0 <= now - float(SHIFTED_AT) < 3600, (now, SHIFTED_AT)
    local = datetime.now(VN)
    assert local.hour in (3, 4), local  # inside the default quiet hours (22:00-05:00)
    seconds, _ = redis.Redis.from_url(redis_server.url).time()
    # redis-server runs on the real clock: about a year behind this process
    assert 364 * 86400 < now - seconds < 367 * 86400, (now, seconds)
    print(f"shifted clock: {local.isoformat()}; redis-server: "
          f"{datetime.fromtimestamp(seconds, VN).isoformat()}")
