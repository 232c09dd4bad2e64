"""Shared fixtures (an in-process streamer, redis-server, mosquitto), the pinned clock times,
and the rerun rule of realtime tests. Helpers that tests import live in ``tests/harness/``."""

from __future__ import annotations

import pytest

# The harness asserts on the tests' behalf (a sign-in's status, a window recorded): pytest
# explains those failures as it does a test's own asserts.
pytest.register_assert_rewrite("tests.harness")

#: Tests marked ``realtime`` run audio through real processes against the wall clock and judge
#: it by what a listener hears: levels over a window, one play not two, a tone within its
#: deadline. The machine they run on is a shared 2-core VM whose hypervisor can take the CPU
#: away for a second or more (steal: seen at 20 % of the time, with 0.8-1.5 s stalls), and a
#: stall is, to the audio, a real dropout. Such a test is run again, at most twice, after a
#: pause (pytest-rerunfailures); the summary lists every rerun, and a defect fails all three.
REALTIME_RERUNS = 2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("realtime") is not None:
            item.add_marker(pytest.mark.flaky(reruns=REALTIME_RERUNS, reruns_delay=2))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No secret in any log the suite wrote (``tests/harness/logscan.py``): a find fails the
    run, naming the file."""
    from tests.harness.keys import TEST_KEY
    from tests.harness.logscan import leaks

    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    pem = TEST_KEY.to_pem().decode().splitlines()
    found = sorted({(str(p), what) for p, what in leaks(
        factory.getbasetemp(), [line for line in pem if not line.startswith("-----")])})
    if found:
        for path, what in found:
            print(f"\nSECRET IN A LOG: {path}: {what}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


#: 2026-11-23 10:00 in Asia/Ho_Chi_Minh: outside the default quiet hours
DAYTIME = 1795402800.0
#: 2026-11-24 00:00 in Asia/Ho_Chi_Minh: inside the default quiet hours (22:00-05:00)
NIGHT = 1795453200.0


@pytest.fixture
async def streamer(tmp_path, redis_url):
    """An in-process streamer on a real redis-server; ``streamer.admin`` holds the
    Authorization headers of the first admin (signed in through the API)."""
    from tests.harness.streamer import in_process

    s = await in_process(tmp_path, redis_url, DAYTIME)
    yield s
    await s.close()


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free port, AOF on, data in the test's tmp dir."""
    from devstack.services import RedisServer

    srv = RedisServer(tmp_path / "redis")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def redis_url(redis_server):
    return redis_server.url


@pytest.fixture
def mosquitto(tmp_path):
    """A real mosquitto on a free port, not started: no anonymous access, persistence in the
    test's tmp dir. Call ``set_accounts([...])`` then ``start()``; ``set_accounts`` on a
    running broker re-reads logins and ACL (SIGHUP)."""
    from devstack.services import Mosquitto

    srv = Mosquitto(tmp_path / "mosquitto")
    yield srv
    srv.stop()
