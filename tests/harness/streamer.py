"""An in-process streamer signed in as its first admin (``in_process``: the ``streamer``
fixture's), and a real ``loa streamer`` process on free loopback ports, signing with the
session's stream key (``keys.py``) and requiring tokens signed with it, as relays and speakers
of the harness present; its Redis URL (password included) goes in its environment, never on its
command line. Stopped (SIGTERM, then SIGKILL) at the end of the block unless the test killed
it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness.keys import write_test_key

REPO = Path(__file__).resolve().parents[2]


@dataclass
class StreamerProcess:
    proc: asyncio.subprocess.Process
    info: dict[str, Any]
    log: Path
    var: Path

    @property
    def http(self) -> str:
        return str(self.info["http"])

    @property
    def media_addr(self) -> str:
        return str(self.info["media"])

    async def get(self, path: str, headers: dict[str, str] | None = None
                  ) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.get(
                self.http + path, headers=headers,
                timeout=aiohttp.ClientTimeout(total=5)) as r:
            return r.status, await r.json(content_type=None)

    async def call(self, method: str, path: str, headers: dict[str, str] | None = None,
                   **kw: Any) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.request(
                method, self.http + path, headers=headers,
                timeout=aiohttp.ClientTimeout(total=10), **kw) as r:
            return r.status, await r.json(content_type=None)

    async def role(self) -> str | None:
        """What its ``/readyz`` says it is (None: it does not answer)."""
        try:
            return str((await self.get("/readyz"))[1].get("role"))
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def sign_in(self, credentials: Path) -> dict[str, str]:
        creds = json.loads(credentials.read_text())
        status, body = await self.call("POST", "/api/v1/login", json={
            "user": creds["user"], "password": creds["password"]})
        assert status == 200, body
        return {"Authorization": f"Bearer {body['token']}"}


async def in_process(tmp_path: Path, redis_url: str, now: float, **settings: Any) -> Any:
    """A started in-process :class:`~streamer.app.Streamer` on free loopback ports, signing with
    the session's key, its quiet hours judged at ``now`` (they must not depend on when the test
    runs), with ``admin``: the Authorization headers of its first admin, signed in through the
    API. ``settings``: more of its config. The caller closes it. Its passwords are hashed at
    argon2's least cost (1 MiB, 1 pass: milliseconds, not a fifth of a second for every
    sign-in of every test); the stack under ``loa up`` keeps the default."""
    from streamer.app import Streamer, StreamerConfig

    settings = {"password_hash_memory_kib": 1024, "password_hash_time_cost": 1, **settings}
    cfg = StreamerConfig(media_host="127.0.0.1", media_port=0, http_host="127.0.0.1",
                         http_port=0, var_dir=str(tmp_path / "var"), redis_url=redis_url,
                         ingest_host="127.0.0.1", ingest_port=0,
                         signing_key=write_test_key(tmp_path / "signing-key.pem"), **settings)
    s = Streamer(cfg)
    await s.start()
    s.plane.now = lambda: now
    creds = json.loads((tmp_path / "var" / "admin-credentials.json").read_text())
    async with aiohttp.ClientSession() as http, http.post(
            f"{s.http_url}/api/v1/login",
            json={"user": creds["user"], "password": creds["password"]}) as r:
        assert r.status == 200, await r.text()
        s.admin = {"Authorization": f"Bearer {(await r.json())['token']}"}
    return s


@contextlib.asynccontextmanager
async def streamer_process(tmp_path: Path, name: str, redis_url: str, *args: str,
                           startup_s: float = 30.0) -> AsyncIterator[StreamerProcess]:
    var = tmp_path / name
    var.mkdir(exist_ok=True)
    log = tmp_path / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOA_")}
    env["LOA_STREAMER_REDIS_URL"] = redis_url
    argv = ["streamer", "--http-host", "127.0.0.1", "--http-port", "0", "--media-host",
            "127.0.0.1", "--media-port", "0", "--public-host", "127.0.0.1", "--ingest-port", "-1",
            "--var-dir", str(var), "--admin-credentials", str(tmp_path / "admin.json"),
            "--signing-key", write_test_key(tmp_path / "signing-key.pem"), *args]
    with open(log, "ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loa", *argv, cwd=REPO, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), startup_s)
        assert line, log.read_text()
        yield StreamerProcess(proc, json.loads(line), log, var)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def with_fleet(tmp_path: Path, redis_url: str, broker: Any) -> tuple[Any, dict[str, str]]:
    """An in-process streamer (``in_process``) with its fleet on ``broker`` (a real Mosquitto
    from the ``mosquitto`` fixture) whose logins and ACL it writes itself, connected; and the
    broker's passwords by login (the streamer's; add the devices' as they are registered).
    The caller closes it."""
    from streamer.control.broker import STREAMER_USER
    from tests.conftest import DAYTIME
    from tests.harness.broker import start_broker

    pw = start_broker(broker, {})
    (tmp_path / "streamer.password").write_text(pw[STREAMER_USER] + "\n")
    streamer = await in_process(tmp_path, redis_url, DAYTIME, mqtt_url=broker.url,
                                mqtt_password_file=str(tmp_path / "streamer.password"),
                                mqtt_broker_dir=str(broker.directory))
    try:
        await streamer.plane.fleet.wait_connected(10)
    except BaseException:
        await streamer.close()
        raise
    return streamer, pw
