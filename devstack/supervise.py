"""Keep ``loa up``'s children running, and stop them in dependency order.

The rules:

- A child that exits while the stack runs is started again after a delay that begins at
  0.5 s and doubles up to ``MAX_DELAY_S`` (jittered, :class:`~streamer.control.fleet.Backoff`);
  a child that had run ``RESET_AFTER_S`` before it died begins again at 0.5 s. Each death is
  one log line: the child, its exit code or signal, and the delay. A restart that fails (the
  process exits or says nothing within its start timeout) is one more death: the delay grows.
- ``on_start`` hears of every restart, so that what describes the stack (``var/loa-up.json``)
  names the pids that run.
- :meth:`Supervisor.stop` restarts nothing more and stops the children tier by tier, highest
  first: each tier gets SIGTERM at once, and whatever is left of it when its share of the stop
  (``grace_s``) has run out gets SIGKILL. A tier that is done early leaves the rest of its share
  to the next, so the whole stop never takes longer than the sum of the shares. ``loa up``
  gives speakers, relays, the streamer, then the broker and Redis their own tiers, so that
  nobody loses a server it still talks to.
- Every child runs in a session of its own (``start_new_session``): a Ctrl-C in a terminal goes
  to the whole foreground process group, and would otherwise kill Redis and the broker at the
  same time as their clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol

from device.edge import Backoff
from devstack.services import UMASK, Service, ServiceError, open_private_log

log = logging.getLogger("loa.up")

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0
#: a child that ran this long before it died was healthy: its next delay is short again
RESET_AFTER_S = 30.0
#: a ``loa`` child prints one JSON line with its addresses once it serves
START_TIMEOUT_S = 20.0


class StartError(RuntimeError):
    pass


class Process(Protocol):
    """What the supervisor needs of a running child (``asyncio.subprocess.Process`` has it)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


def send(proc: Process, sig: int) -> None:
    """Signal a child that has not been reaped yet. Not ``Popen.send_signal``: it polls first,
    and a poll that reaps the child takes its exit status from asyncio's child watcher."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


class Child:
    """One supervised process. ``start`` launches it: it sets ``proc`` as soon as the process
    exists (so that a stop in the middle of a start still reaches it), returns once the process
    serves, and raises :class:`StartError` (with the process gone) if it does not."""

    def __init__(self, name: str, tier: int, grace_s: float,
                 start: Callable[[Child], Awaitable[None]]) -> None:
        self.name, self.tier, self.grace_s = name, tier, grace_s
        self._start = start
        self.proc: Process | None = None
        self.info: dict[str, object] = {}
        self.restarts = 0
        self.started_at = 0.0

    async def start(self) -> None:
        await self._start(self)
        self.started_at = time.monotonic()


class Supervisor:
    def __init__(self, on_start: Callable[[Child], None] = lambda child: None) -> None:
        self.children: list[Child] = []
        self.on_start = on_start
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self, child: Child) -> None:
        """The first start: a failure raises (``loa up`` does not come up half) and the child
        is stopped with the others."""
        self.children.append(child)
        await child.start()
        self._watchers.append(asyncio.create_task(self._watch(child), name=child.name))

    async def _watch(self, child: Child) -> None:
        backoff = Backoff(FIRST_DELAY_S, MAX_DELAY_S)
        while True:
            assert child.proc is not None
            what = f"{child.name} {describe_exit(await child.proc.wait())}"
            if time.monotonic() - child.started_at >= RESET_AFTER_S:
                backoff.reset()
            while True:
                delay = backoff.next()
                log.warning("%s; restart in %.1f s", what, delay)
                await asyncio.sleep(delay)
                try:
                    await child.start()
                    break
                except StartError as e:
                    what = str(e)
                except OSError as e:  # could not even spawn it (fds, memory): try again later
                    what = f"{child.name} did not start ({e})"
            child.restarts += 1
            log.info("%s restarted (pid %d)", child.name, child.proc.pid)
            self.on_start(child)

    async def stop(self) -> None:
        for w in self._watchers:
            w.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        await stop(self.children)


async def stop(children: list[Child]) -> None:
    """Stop ``children`` tier by tier, the highest first (the rules above)."""
    deadline = asyncio.get_running_loop().time()
    for tier in sorted({c.tier for c in children}, reverse=True):
        group = [c for c in children if c.tier == tier]
        deadline += max(c.grace_s for c in group)
        await stop_tier(group, deadline)


async def stop_tier(children: list[Child], deadline: float) -> None:
    """SIGTERM to every child of one tier, SIGKILL to those still there at ``deadline`` (on
    the event loop's clock)."""
    waits: dict[asyncio.Task[int], Child] = {}
    for c in children:
        if c.proc is None:
            continue
        send(c.proc, signal.SIGTERM)
        waits[asyncio.create_task(c.proc.wait())] = c
    if not waits:
        return
    timeout = max(0.0, deadline - asyncio.get_running_loop().time())
    _, late = await asyncio.wait(waits, timeout=timeout)
    for task in late:
        c = waits[task]
        log.warning("%s did not stop in time: killed", c.name)
        assert c.proc is not None
        send(c.proc, signal.SIGKILL)
    await asyncio.gather(*waits)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


# --------------------------------------------------------------------- the two kinds of child


StartFn = Callable[[Child], Awaitable[None]]


def loa_process(args: Callable[[], list[str]], log_path: Path,
                env: Mapping[str, str] | None = None) -> StartFn:
    """A ``loa`` subcommand (``args()`` read at each start: ports are pinned after the first);
    ready when it prints its JSON line, which becomes ``child.info``. ``env`` is added to this
    process's environment: the place for a secret such as a Redis URL with its password,
    which a command line would show to every user (``ps``). The child runs with umask 077 and
    its log (stderr, appended to) is 0600."""

    async def start(child: Child) -> None:
        with os.fdopen(open_private_log(log_path), "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "loa", *args(),
                stdout=asyncio.subprocess.PIPE, stderr=err, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True, umask=UMASK,
                env=None if env is None else {**os.environ, **env})
        child.proc = proc
        assert proc.stdout is not None
        line: bytes | None = None
        with contextlib.suppress(TimeoutError):
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        with contextlib.suppress(ValueError):
            child.info = json.loads(line or b"")
            return
        send(proc, signal.SIGKILL)
        code = await proc.wait()
        how = (f"no address line within {START_TIMEOUT_S:.0f} s" if line is None
               else describe_exit(code) if not line else f"printed {line[:60]!r}")
        raise StartError(f"{child.name} did not start ({how}; see {log_path})")

    return start


class _ServiceProcess:
    """A :class:`Service`'s ``Popen`` as a :class:`Process`: its exit is awaited on a pidfd,
    without a thread."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    async def wait(self) -> int:
        if self.popen.poll() is None:
            loop = asyncio.get_running_loop()
            exited: asyncio.Future[None] = loop.create_future()
            fd = os.pidfd_open(self.popen.pid)

            def readable() -> None:
                if not exited.done():
                    exited.set_result(None)

            loop.add_reader(fd, readable)
            try:
                await exited
            finally:
                loop.remove_reader(fd)
                os.close(fd)
        return self.popen.wait()


def service_process(service: Service) -> StartFn:
    """A private server (Redis, Mosquitto) on its fixed port; ready once the port accepts."""

    async def start(child: Child) -> None:
        starting = asyncio.ensure_future(asyncio.to_thread(service.start))
        try:
            await asyncio.shield(starting)
        except ServiceError as e:
            raise StartError(f"{child.name} did not start ({e})") from None
        finally:
            if not starting.done():  # a stop came: let the thread finish, then stop what it ran
                with contextlib.suppress(ServiceError):
                    await starting
            if starting.done() and not starting.exception() and service.proc is not None:
                child.proc = _ServiceProcess(service.proc)

    return start
