"""Child processes of the load tests: driven by JSON lines, and always stopped.

The simulated speakers, the ``loa loadtest`` workers and the benchmarks' receivers and senders
are children that read one command per stdin line and answer with one JSON line on stdout;
relays and the streamer are children stopped by a signal. These are the few functions they
share, so that a child can never be left running after its parent's run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any


async def read_line(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    """The next JSON line a child driven by JSON lines wrote on its stdout."""
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not raw:
        raise RuntimeError(f"{proc.pid} exited ({await proc.wait()})")
    return dict(json.loads(raw))


async def ask(proc: asyncio.subprocess.Process, command: str, timeout: float,
              who: str) -> dict[str, Any]:
    """Send one command line to such a child and read its answer; its ``error`` raises."""
    assert proc.stdin is not None
    proc.stdin.write(command.encode() + b"\n")
    await proc.stdin.drain()
    answer = await read_line(proc, timeout)
    if "error" in answer:
        raise RuntimeError(f"{who}: {answer['error']}")
    return answer


async def quit_child(proc: asyncio.subprocess.Process) -> None:
    """Ask such a child to quit, and kill it if it does not within 10 s."""
    if proc.returncode is not None:
        return
    try:
        if proc.stdin is not None:
            proc.stdin.write(b"quit\n")
            proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 10)
    except (TimeoutError, BrokenPipeError, ConnectionResetError):
        proc.kill()
        await proc.wait()


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, and SIGKILL after 5 s: a child never outlives its parent's run."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # it exited, not yet reaped
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
