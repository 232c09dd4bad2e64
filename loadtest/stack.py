"""A Loa stack for load measurements: redis-server, Mosquitto, the streamer, relays, an admin.

Benchmarks and ``loa loadtest`` need the real path (API → mixer → streamer fan-out → relay →
speaker sockets) on one machine, started in a temporary directory and always stopped. The
streamer runs either in the caller's process (``bench_emergency`` reads the mixer directly) or
as a ``loa streamer`` child started as ``loa up`` starts it (``devstack.supervise``), so that
its CPU time and memory are its own in a report. Relays are ``relay.main`` children. :meth:`attach`
points the same object at a stack that is already running (a URL, relay addresses and
credentials) instead. The streamer and relays require subscription tokens, as they do by
default: the relays and simulated speakers present tokens signed with the streamer's key
(``loadtest/tokens.py``). Every process this module starts is in :attr:`Stack.pids`, and
nothing it starts outlives the ``AsyncExitStack`` it was given.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import IO, Any

import aiohttp

from common.secretfile import write_private
from devstack.services import Mosquitto, RedisServer
from devstack.supervise import Child, loa_process, stop
from streamer.app import Streamer, StreamerConfig
from streamer.control import broker
from streamer.signing import default_key_path

from ._report import ROOT, process_cpu_s
from .bench_relay import relay_counter
from .children import stop_process
from .lag import Snapshot
from .simspeakers import SimSpeakersProcess
from .tokens import load_key, write_token_file

Addr = tuple[str, int]
STEADY_S = 16.0  # longer than the relays' expire_s (15 s): a lost keepalive would show
STEADY_TIMEOUT_S = 120.0
KEEP_UP = 0.99  # relays must forward this share of what the streamer sends them, as it comes
OVERLOADED = "overloaded: try a longer --ptime-ms, or fewer --speakers"


class Stack:
    """Redis, the streamer, relays and the admin's API session."""

    def __init__(self, stack: AsyncExitStack, tmp: Path, log: IO[bytes]) -> None:
        self.exits, self.tmp, self.log = stack, tmp, log
        self.relays: list[Addr] = []
        self.stream_key = ""  # the streamer's public key, which the relays started here pin
        #: PEM file of the streamer's key, which signs the subscription tokens ("": unknown,
        #: the speakers present none)
        self.signing_key = ""
        self.relay_http: list[str] = []
        self.district_http: list[str] = []  # relays between the streamer and ``relays``
        self.auth: dict[str, str] = {}  # the admin's bearer token, once signed in
        self.pids: dict[str, int] = {}  # every process this stack started, by name
        self.children: list[Child] = []  # started by start_streamer_process
        self.http_url = ""
        self.media_addr = ""

    def _start_redis(self) -> str:
        redis = RedisServer(self.tmp / "redis")
        redis.start()
        self.exits.callback(redis.stop)
        assert redis.proc is not None
        self.pids["redis"] = redis.proc.pid
        return redis.url

    async def start_streamer(self, ptime_ms: int) -> None:
        """The streamer in this process (``self.streamer``), on a private redis-server."""
        cfg = StreamerConfig(media_host="127.0.0.1", media_port=0, http_host="127.0.0.1",
                             http_port=0, var_dir=str(self.tmp / "var"),
                             redis_url=self._start_redis(), ptime_ms=ptime_ms,
                             ingest_port=-1)  # no live input here
        self.streamer = Streamer(cfg)
        await self.streamer.start()
        self.exits.push_async_callback(self.streamer.close)
        self.http_url, self.media_addr = self.streamer.http_url, self.streamer.media_addr
        self.stream_key = self.streamer.signing.key.public_text
        self.signing_key = str(self.streamer.key_path)
        await self._login_as_first_admin()

    def _start_mosquitto(self) -> list[str]:
        """A private Mosquitto that knows the streamer's login, as ``loa up`` starts one
        (``devstack/spawn.py``); returns the streamer's arguments to use it."""
        directory = self.tmp / "mosquitto"
        directory.mkdir(parents=True, exist_ok=True)
        password, password_file = broker.new_password(), directory / "streamer.password"
        write_private(password_file, password + "\n")
        mosquitto = Mosquitto(directory)
        mosquitto.set_accounts([broker.Account(broker.STREAMER_USER,
                                               broker.hash_password(password), "service")])
        mosquitto.start()
        self.exits.callback(mosquitto.stop)
        assert mosquitto.proc is not None
        self.pids["mosquitto"] = mosquitto.proc.pid
        return ["--mqtt-url", mosquitto.url, "--mqtt-user", broker.STREAMER_USER,
                "--mqtt-password-file", str(password_file),
                "--mqtt-broker-dir", str(directory)]

    async def start_streamer_process(self, ptime_ms: int, *, zones: Path | None = None,
                                     mqtt: bool = False) -> None:
        """The streamer as a ``loa streamer`` child (logs in ``tmp/logs``), on a private
        redis-server; on the zone file ``zones`` (default: the sample tree), and with its
        fleet control plane on a private Mosquitto if ``mqtt``."""
        var, logs = self.tmp / "var", self.tmp / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        args = ["streamer", "--http-host", "127.0.0.1", "--http-port", "0",
                "--media-host", "127.0.0.1", "--media-port", "0", "--ingest-port", "-1",
                "--ptime-ms", str(ptime_ms), "--var-dir", str(var),
                *(["--zones", str(zones)] if zones else []),
                *(self._start_mosquitto() if mqtt else [])]
        # not supervised: a streamer that dies is a finding of the measurement (dead())
        # the Redis URL holds its password: in the environment, not on the command line
        env = {"LOA_STREAMER_REDIS_URL": self._start_redis()}
        child = Child("streamer", 0, 5.0,
                      loa_process(lambda: args, logs / "streamer.log", env=env))
        self.exits.push_async_callback(stop, [child])  # also one that is half started
        await child.start()
        assert child.proc is not None
        self.pids["streamer"] = child.proc.pid
        self.children.append(child)
        self.http_url, self.media_addr = str(child.info["http"]), str(child.info["media"])
        self.stream_key = str(child.info["stream_key"])
        self.signing_key = str(default_key_path(str(var)))
        await self._login_as_first_admin()

    async def snapshot(self) -> Snapshot:
        """The streamer's frame lag and counters now, with its CPU time (``loadtest/lag.py``);
        for a streamer started with :meth:`start_streamer_process`."""
        async with self.http.get(self.http_url + "/metrics") as r:
            text = await r.text()
        return Snapshot(text, process_cpu_s(self.pids["streamer"]))

    def dead(self) -> list[str]:
        """Names of the children started with :meth:`start_streamer_process` that exited."""
        return [c.name for c in self.children if c.proc and c.proc.returncode is not None]

    async def attach(self, url: str, relays: list[Addr], *, token: str = "", user: str = "",
                     password: str = "", signing_key: str = "") -> None:
        """Use a running stack: its API at ``url`` and its relays' media addresses;
        ``signing_key``, the streamer's key file, signs the speakers' subscription tokens."""
        self.http_url, self.relays = url.rstrip("/"), list(relays)
        self.signing_key = signing_key
        await self._session()
        if token:
            self.auth = {"Authorization": f"Bearer {token}"}
        else:
            await self.login(user, password)

    async def _session(self) -> None:
        if not hasattr(self, "http"):
            self.http = await self.exits.enter_async_context(aiohttp.ClientSession())

    async def _login_as_first_admin(self) -> None:
        await self._session()
        creds = json.loads((self.tmp / "var" / "admin-credentials.json").read_text())
        await self.login(creds["user"], creds["password"])

    async def login(self, user: str, password: str) -> None:
        login = await self.api("POST", "/api/v1/login", {"user": user, "password": password})
        self.auth = {"Authorization": f"Bearer {login['token']}"}

    async def api(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        async with self.http.request(method, self.http_url + path, json=body,
                                     headers=self.auth) as r:
            if r.status >= 300:
                raise RuntimeError(f"{method} {path}: {r.status} {await r.text()}")
            return dict(await r.json())

    async def channels(self) -> list[str]:
        """Every leaf channel the signed-in user can see, in the zone file's order."""
        return [str(c["id"]) for c in (await self.api("GET", "/api/v1/channels"))["channels"]]

    async def start_relay(self, k: int, ptime_ms: int, *, upstream: str = "",
                          district: bool = False) -> str:
        """Relay ``k``, subscribed to the streamer or to ``upstream`` (another relay's media
        address: a chain). A ``district`` relay serves only other relays: it is not in
        ``relays``, and ``forwarded`` counts from it. Returns its media address."""
        name = f"bench-relay-{k}"
        key = load_key(self.signing_key)
        assert key is not None, "start the streamer first"
        token_file = write_token_file(key, name, self.tmp / "tokens" / f"{name}.token")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.main", "--id", name, "--media",
            "127.0.0.1:0", "--http", "127.0.0.1:0", "--upstream", upstream or self.media_addr,
            "--ptime-ms", str(ptime_ms), "--stream-key", self.stream_key,
            "--token-file", token_file, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=self.log)
        self.exits.push_async_callback(stop_process, proc)
        self.pids[f"relay-{k}"] = proc.pid
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        if not line:
            raise RuntimeError(f"relay {k} exited ({await proc.wait()})")
        info = json.loads(line)
        if district:
            self.district_http.append(str(info["http"]))
            return str(info["media"])
        host, port = str(info["media"]).rsplit(":", 1)
        self.relays.append((host, int(port)))
        self.relay_http.append(str(info["http"]))
        return str(info["media"])

    async def relay_sum(self, metric: str) -> float:
        return sum([await relay_counter(h, metric) for h in self.relay_http])

    async def forwarded(self) -> tuple[float, float]:
        """(packets the streamer, or the district relays, sent to the relays; packets the
        relays took in) so far."""
        sent = "loa_fanout_packets_out_total"
        out = (sum([await relay_counter(h, sent) for h in self.district_http])
               if self.district_http else await relay_counter(self.http_url, sent))
        return out, await self.relay_sum("loa_upstream_packets_in_total")

    async def frames_skipped(self) -> int:
        """Frames the streamer's clock has skipped so far: a starved streamer jumps over a
        stall rather than bursting it (``loa_frames_skipped_total``), so its channels carried
        fewer packets than the frame rate, through no fault of the network."""
        return round(await relay_counter(self.http_url, "loa_frames_skipped_total"))

    async def steady(self, n: int) -> float:
        """Wait until the relays have held all ``n`` subscribers, with none expiring, for
        ``STEADY_S`` while forwarding what the streamer sent them: time-to-air on a fleet
        still re-handshaking, or through relays falling behind, means nothing. A window that
        falls short (a stall) is measured again; returns how long it all took."""
        t0 = time.monotonic()
        since, held, counts, keep_up = t0, (-1.0, -1.0), (0.0, 0.0), math.nan
        while True:
            if time.monotonic() - t0 > STEADY_TIMEOUT_S:
                raise RuntimeError(
                    f"within {STEADY_TIMEOUT_S:g} s the relays did not hold {n} subscribers for "
                    f"{STEADY_S:g} s while keeping up (last: {held[0]:.0f} subscribers, "
                    f"{keep_up:.1%} forwarded); {OVERLOADED}")
            await asyncio.sleep(1.0)
            now = (await self.relay_sum("loa_fanout_subscribers"),
                   await self.relay_sum("loa_fanout_dropped_subscribers_total"))
            if now[0] != n or now != held:
                since, held, counts = time.monotonic(), now, await self.forwarded()
            elif time.monotonic() - since >= STEADY_S:
                keep_up = ratio(counts, await self.forwarded())
                if keep_up >= KEEP_UP:
                    return time.monotonic() - t0
                since, counts = time.monotonic(), await self.forwarded()

    async def start_speakers(self, n: int) -> SimSpeakersProcess:
        fleet = await SimSpeakersProcess.spawn(n, await self.channels(), self.relays,
                                               handshake_timeout_s=120, stderr=self.log,
                                               signing_key=self.signing_key)
        self.exits.push_async_callback(fleet.close)
        return fleet


def ratio(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Relays' packets in ÷ streamer's packets out between two ``forwarded`` readings."""
    return (after[1] - before[1]) / max(1.0, after[0] - before[0])
