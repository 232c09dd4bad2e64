"""A real ``relay.main`` process on free loopback ports, pinning the session's stream key and
presenting a token signed with it upstream unless the test says otherwise (``keys.with_trust``);
it requires its own subscribers' tokens (the default). Killed at the end of the block."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.keys import with_trust

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RelayProcess:
    proc: asyncio.subprocess.Process
    info: dict[str, Any]
    log: Path

    @property
    def media(self) -> tuple[str, int]:
        host, _, port = str(self.info["media"]).rpartition(":")
        return host, int(port)

    @property
    def media_addr(self) -> str:
        return str(self.info["media"])

    @property
    def http(self) -> str:
        return str(self.info["http"])


@contextlib.asynccontextmanager
async def relay_process(tmp_path: Path, name: str, *args: str,
                        startup_s: float = 20.0) -> AsyncIterator[RelayProcess]:
    log = tmp_path / f"{name}.log"
    with open(log, "ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.main", "--id", name, "--media", "127.0.0.1:0",
            "--http", "127.0.0.1:0", *with_trust(args, tmp_path, name), cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), startup_s)
        assert line, log.read_text()
        yield RelayProcess(proc, json.loads(line), log)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
