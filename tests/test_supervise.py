"""The supervisor of ``loa up`` (``streamer/supervise.py``) with small real processes: restart
with growing delays that start short again after a healthy run, stop tier by tier, SIGKILL for
a child that ignores SIGTERM past its share of the stop."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

import pytest

from streamer import supervise
from streamer.supervise import Child, Supervisor
from tests.harness.wait import until

#: a child runs ``setup``, says it serves, then runs ``body`` (Python, with ``name``, ``out``
#: and ``note`` bound)
SCRIPT = """
import json, signal, sys, time
name, out = sys.argv[1], sys.argv[2]
def note(what):
    with open(out, "a") as f:
        f.write(f"{what} {name}\\n")
"""
SERVES = 'print(json.dumps({"name": name}), flush=True)\n'


def script_child(name: str, tier: int, out: Path, body: str, grace_s: float = 2.0,
                 setup: str = "") -> Child:
    async def start(child: Child) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SCRIPT + setup + SERVES + body, name, str(out),
            stdout=asyncio.subprocess.PIPE, start_new_session=True)
        child.proc = proc
        assert proc.stdout is not None
        child.info = json.loads(await proc.stdout.readline())

    return Child(name, tier, grace_s, start)


#: until SIGTERM: note it, take a moment to close, note the exit
ON_TERM = """
def stop(*_):
    note("term"); time.sleep(0.1); note("exit"); sys.exit(0)
signal.signal(signal.SIGTERM, stop)
"""
FOREVER = "while True:\n    time.sleep(1)\n"


class RecordedBackoff(supervise.Backoff):
    """The delays asked for, before jitter."""

    nominal: list[float] = []

    def next(self) -> float:
        RecordedBackoff.nominal.append(self._next)
        return super().next()


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(supervise, "FIRST_DELAY_S", 0.01)
    monkeypatch.setattr(supervise, "MAX_DELAY_S", 0.04)
    monkeypatch.setattr(supervise, "Backoff", RecordedBackoff)
    RecordedBackoff.nominal = []


async def test_a_dead_child_is_restarted_with_growing_delays_and_on_start_hears(
        tmp_path, quick, caplog):
    caplog.set_level(logging.INFO, "loa.up")
    started: list[int] = []
    sup = Supervisor(on_start=lambda c: started.append(c.proc.pid))
    dies = script_child("dies", 0, tmp_path / "out", "sys.exit(3)")
    await sup.start(dies)
    first = dies.proc.pid
    await until(lambda: dies.restarts >= 4, 10, "four restarts")
    await sup.stop()
    assert first not in started and len(set(started)) == len(started) >= 4
    assert RecordedBackoff.nominal[:4] == [0.01, 0.02, 0.04, 0.04]  # doubling up to the cap
    assert "dies exited with code 3; restart in 0.0 s" in caplog.messages


async def test_a_child_that_ran_a_while_starts_again_from_the_first_delay(
        tmp_path, quick, monkeypatch):
    monkeypatch.setattr(supervise, "RESET_AFTER_S", 0.5)
    sup = Supervisor()
    # dies at once twice, then runs 0.7 s before it dies
    flag = tmp_path / "runs"
    body = ("n = len(open(out).read().split()) // 2 if __import__('os').path.exists(out) "
            "else 0\nnote('run')\ntime.sleep(0.7 if n == 2 else 0)\nsys.exit(1)")
    child = script_child("flaky", 0, flag, body)
    await sup.start(child)
    await until(lambda: len(RecordedBackoff.nominal) >= 4, 10, "four backoffs")
    await sup.stop()
    assert RecordedBackoff.nominal[:4] == [0.01, 0.02, 0.01, 0.02]


async def test_stop_goes_tier_by_tier_highest_first(tmp_path):
    out = tmp_path / "out"
    sup = Supervisor()
    for name, tier in [("redis", 0), ("streamer", 1), ("relay", 2), ("spk-a", 3), ("spk-b", 3)]:
        await sup.start(script_child(name, tier, out, FOREVER, setup=ON_TERM))
    await sup.stop()
    lines = out.read_text().split("\n")[:-1]
    order = [line.split()[1] for line in lines]
    assert set(order[:4]) == {"spk-a", "spk-b"}  # one tier: signalled together
    assert order[4:] == ["relay", "relay", "streamer", "streamer", "redis", "redis"]
    assert all(c.proc.returncode == 0 for c in sup.children)


async def test_a_child_that_ignores_sigterm_is_killed_when_its_share_is_spent(tmp_path, caplog):
    out = tmp_path / "out"
    sup = Supervisor()
    deaf = script_child("deaf", 1, out, FOREVER, grace_s=0.3,
                        setup="signal.signal(signal.SIGTERM, signal.SIG_IGN)\n")
    await sup.start(script_child("server", 0, out, FOREVER, setup=ON_TERM))
    await sup.start(deaf)
    await sup.stop()
    assert deaf.proc.returncode == -signal.SIGKILL
    assert "deaf did not stop in time: killed" in caplog.messages
    assert out.read_text().split() == ["term", "server", "exit", "server"]  # stopped after
