"""``loa up``: the whole stack on one machine, for a first run, demos and end-to-end tests.

Starts private ``redis-server`` and Mosquitto under ``var/`` (unless ``LOA_REDIS_URL`` /
``LOA_MQTT_URL`` point at existing ones), then the streamer, one relay and simulated speakers
on the sample zone tree as child processes, each of which prints one JSON line with its
addresses. The relay and speakers are registered through the API as the first admin, each
with its own broker login (password files under ``var/secrets/``). Writes ``var/loa-up.json``
(documented in the README) for scripts and ops tools. Every child is supervised
(``supervise.py``): one that dies is restarted with backoff on the ports it had, and
``loa-up.json`` follows its new pid; Ctrl-C, SIGTERM or SIGHUP stop the children in dependency
order (speakers, relay, streamer, then the broker and Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from common.secretfile import write_private
from streamer.control import broker
from streamer.control.broker import Mosquitto
from streamer.control.services import RedisServer
from streamer.supervise import Child, StartError, Supervisor, loa_process, service_process

log = logging.getLogger("loa.up")

#: (speaker id, leaf zone): two communes with several speakers each, and Côn Đảo
SAMPLE_SPEAKERS = [
    ("spk-thang-tam-1", "brvt.vung-tau.thang-tam.kp-1"),
    ("spk-thang-tam-2", "brvt.vung-tau.thang-tam.kp-1"),
    ("spk-thang-tam-3", "brvt.vung-tau.thang-tam.kp-2"),
    ("spk-kim-long-1", "brvt.chau-duc.kim-long.ap-tay"),
    ("spk-kim-long-2", "brvt.chau-duc.kim-long.ap-dong"),
    ("spk-con-dao-1", "brvt.con-dao.cum-1"),
]

#: stop tiers, the highest first (clients stop while the servers they talk to still answer),
#: and each tier's share of the stop before SIGKILL: 2.5 s in all, so that Ctrl-C is done in 3
SPEAKERS, RELAYS, STREAMER, SERVERS = 3, 2, 1, 0
GRACE_S = {SPEAKERS: 0.9, RELAYS: 0.4, STREAMER: 0.9, SERVERS: 0.3}


def _port(addr: object) -> int:
    """The port of ``host:port`` or ``http://host:port``."""
    return int(str(addr).rsplit(":", 1)[1])


def _hostport(url: object) -> str:
    return str(url).removeprefix("http://")


@dataclass
class Stack:
    streamer: Child
    relay: Child
    speakers: list[tuple[str, str, Child]]  # (id, leaf zone, child)
    supervisor: Supervisor
    redis_url: str
    mqtt_url: str
    var: Path
    started: float

    @property
    def state_file(self) -> Path:
        return self.var / "loa-up.json"

    def state(self) -> dict[str, Any]:
        s, r, spk_dir = self.streamer, self.relay, self.var / "speakers"
        return {
            "streamer_url": s.info["http"],
            "streamer_media": s.info["media"],
            "streamer_ingest": s.info.get("ingest", ""),
            "relay_urls": [r.info["http"]],
            "relays": [{"id": r.name, "url": r.info["http"], "media": r.info["media"],
                        "pid": _pid(r)}],
            "speakers": [{"id": sid, "zone": zone, "channel": zone, "pid": _pid(c),
                          "wav": str(spk_dir / f"{sid}.wav"),
                          "log": str(spk_dir / f"{sid}.jsonl"), "media_addr": c.info["udp"]}
                         for sid, zone, c in self.speakers],
            "processes": [{"name": c.name, "pid": _pid(c), "restarts": c.restarts}
                          for c in self.supervisor.children],
            "pid": os.getpid(),
            "started": self.started,
            "logs": str(self.var / "logs"),
            "redis_url": self.redis_url,
            "mqtt_url": self.mqtt_url,
            # written by the streamer when it created the first admin (mode 0600); absent
            # when the state store already had users
            "admin_credentials": str(self.var / "admin-credentials.json"),
        }

    def write_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2, ensure_ascii=False))
        tmp.replace(self.state_file)


def _pid(child: Child) -> int:
    assert child.proc is not None
    return child.proc.pid


async def bring_up(args: argparse.Namespace, var: Path, sup: Supervisor) -> Stack:
    """Start every child under ``sup``; raises :class:`StartError` if one does not start."""
    logs, spk_dir = var / "logs", var / "speakers"
    for d in (logs, spk_dir):
        d.mkdir(parents=True, exist_ok=True)
    host = args.host
    redis_url = os.environ.get("LOA_REDIS_URL", "")
    if not redis_url:  # a private redis-server, its data kept under var/ across runs
        redis = RedisServer(var / "redis")
        await sup.start(Child("redis", SERVERS, GRACE_S[SERVERS], service_process(redis)))
        redis_url = redis.url
    credentials = var / "admin-credentials.json"
    mqtt_url = os.environ.get("LOA_MQTT_URL", "")
    mqtt_dir = var / "mosquitto"
    streamer_password = mqtt_dir / "streamer.password"
    if not mqtt_url:  # a private mosquitto; the streamer keeps its logins and ACL in step
        mosquitto = Mosquitto(mqtt_dir)
        mqtt_dir.mkdir(parents=True, exist_ok=True)
        password = broker.new_password()
        write_private(streamer_password, password + "\n")
        mosquitto.set_accounts([broker.Account(broker.STREAMER_USER,
                                               broker.hash_password(password), "service")])
        await sup.start(Child("mosquitto", SERVERS, GRACE_S[SERVERS],
                              service_process(mosquitto)))
        mqtt_url = mosquitto.url

    # A restart reuses the ports of the first start: the relay and speakers keep their
    # upstream addresses, loa-up.json its URLs.
    def streamer_args() -> list[str]:
        info = streamer.info
        ingest = _port(info["ingest"]) if info.get("ingest") else args.ingest_port
        return [
            "streamer", "--http-host", host,
            "--http-port", str(_port(info["http"]) if info else args.http_port),
            "--media-host", host,
            "--media-port", str(_port(info["media"]) if info else args.media_port),
            "--public-host", host, "--ingest-host", host, "--ingest-port", str(ingest),
            "--ptime-ms", str(args.ptime_ms), "--var-dir", str(var),
            "--redis-url", redis_url, "--admin-credentials", str(credentials),
            "--mqtt-url", mqtt_url, "--mqtt-user", broker.STREAMER_USER,
            *(["--mqtt-password-file", str(streamer_password), "--mqtt-broker-dir",
               str(mqtt_dir)] if streamer_password.exists() else []),
        ]

    streamer = Child("streamer", STREAMER, GRACE_S[STREAMER],
                     loa_process(streamer_args, logs / "streamer.log"))
    await sup.start(streamer)
    chosen = SAMPLE_SPEAKERS[: args.speakers]
    secrets = await _provision(str(streamer.info["http"]), credentials, var / "secrets",
                               ["relay-1"], chosen)

    def relay_args() -> list[str]:
        info = relay.info
        return [
            "relay", "--id", "relay-1",
            "--media", str(info["media"]) if info else f"{host}:{args.relay_media_port}",
            "--http", _hostport(info["http"]) if info else f"{host}:{args.relay_http_port}",
            "--upstream", str(streamer.info["media"]), "--public-host", host,
            "--ptime-ms", str(args.ptime_ms), *_mqtt("relay-1", mqtt_url, secrets),
        ]

    relay = Child("relay-1", RELAYS, GRACE_S[RELAYS], loa_process(relay_args, logs / "relay-1.log"))
    await sup.start(relay)

    def speaker_child(sid: str, zone: str) -> Child:
        def speaker_args() -> list[str]:
            return [
                "speaker", "--id", sid, "--channel", zone,
                "--bind", str(child.info["udp"]) if child.info else f"{host}:0",
                # the relay first; the streamer itself while the relay is down
                "--upstream", str(relay.info["media"]),
                "--upstream", str(streamer.info["media"]),
                "--wav", str(spk_dir / f"{sid}.wav"), "--log", str(spk_dir / f"{sid}.jsonl"),
                "--delay-ms", str(args.delay_ms), "--var-dir", str(var),
                *_mqtt(sid, mqtt_url, secrets),
            ]

        child = Child(sid, SPEAKERS, GRACE_S[SPEAKERS], loa_process(speaker_args,
                                                                    logs / f"{sid}.log"))
        return child

    speakers = [(sid, zone, speaker_child(sid, zone)) for sid, zone in chosen]
    # in parallel: each speaker takes a second to import numpy, opus and friends
    started = await asyncio.gather(*(sup.start(c) for _, _, c in speakers),
                                   return_exceptions=True)
    for result in started:
        if isinstance(result, BaseException):
            raise result
    return Stack(streamer, relay, speakers, sup, redis_url, mqtt_url, var, time.time())


async def up(args: argparse.Namespace) -> int:
    var = Path(args.var_dir).resolve()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed
        loop.add_signal_handler(sig, stop.set)
    sup = Supervisor()
    starting = asyncio.create_task(bring_up(args, var, sup))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # stopped while coming up
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, StartError, RuntimeError):
            await starting
        await sup.stop()
        print("Loa stopped.", flush=True)
        return 0
    try:
        stack = starting.result()
    except (StartError, RuntimeError) as e:
        print(f"loa up: {e}", file=sys.stderr)
        stopping.cancel()
        await sup.stop()
        return 1
    stack.write_state()
    sup.on_start = lambda child: stack.write_state()
    state, spk_dir = stack.state(), var / "speakers"
    url = state["streamer_url"]
    print(f"Loa is up.\n  streamer   {url}  (API {url}/api/v1/broadcasts)\n"
          f"  studio     {url}/studio  (browser microphone, push to talk)\n"
          f"  ingest     srtp://{state['streamer_ingest']}  (register: loa ctl input add)\n"
          f"  relay      {state['relay_urls'][0]}\n  speakers   {len(state['speakers'])}, "
          f"recording to {spk_dir}\n  state      {stack.state_file}\n  listen     {url}/listen/"
          f"{SAMPLE_SPEAKERS[0][1]}.ogg\n  try        loa ctl login && loa ctl broadcast "
          f"--zone brvt.vung-tau.thang-tam --tone 1000 --seconds 5 --wait-reach\n"
          f"  admin      credentials in {state['admin_credentials']}\n"
          f"A child that dies is restarted; Ctrl-C stops everything.", flush=True)
    await stopping
    t = time.monotonic()
    await sup.stop()
    stack.state_file.unlink(missing_ok=True)
    log.info("stopped %d processes in %.2f s", len(sup.children), time.monotonic() - t)
    print("Loa stopped.", flush=True)
    return 0


def _mqtt(device: str, mqtt_url: str, secrets: dict[str, Path]) -> list[str]:
    if device not in secrets:
        return []
    return ["--mqtt-url", mqtt_url, "--mqtt-password-file", str(secrets[device])]


async def _provision(url: str, credentials: Path, secrets_dir: Path, relays: list[str],
                     speakers: list[tuple[str, str]]) -> dict[str, Path]:
    """Register the relay and speakers through the API as the first admin (a fresh MQTT
    password each run, kept in 0600 files); {} when there are no admin credentials here."""
    try:
        creds = json.loads(credentials.read_text())
    except (OSError, ValueError):
        print(f"loa up: no admin credentials in {credentials}; devices run without MQTT",
              file=sys.stderr)
        return {}
    out: dict[str, Path] = {}
    async with aiohttp.ClientSession(base_url=url) as http:
        async with http.post("/api/v1/login", json=creds) as r:
            if r.status != 200:
                raise RuntimeError(f"cannot sign in as {creds.get('user')}: {await r.text()}")
            headers = {"Authorization": f"Bearer {(await r.json())['token']}"}
        devices = [("relays", {"id": rid}) for rid in relays] + [
            ("speakers", {"id": sid, "zone": zone}) for sid, zone in speakers]
        for kind, body in devices:
            async with http.post(f"/api/v1/{kind}", json=body, headers=headers) as r:
                if r.status == 201:
                    password = (await r.json())["mqtt"]["password"]
                elif r.status == 409:  # registered by an earlier run: issue a new password
                    async with http.post(f"/api/v1/{kind}/{body['id']}/credentials",
                                         headers=headers) as r2:
                        if r2.status != 201:
                            raise RuntimeError(f"{body['id']}: {await r2.text()}")
                        password = (await r2.json())["password"]
                else:
                    raise RuntimeError(f"cannot register {body['id']}: {await r.text()}")
            out[str(body["id"])] = secrets_dir / f"{body['id']}.mqtt"
            write_private(out[str(body["id"])], password + "\n")
    return out


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loa up", description="Run the whole stack on this machine.")
    p.add_argument("--var-dir", default="var", help="state, logs and recordings (default var/)")
    p.add_argument("--host", default="127.0.0.1", help="address every process binds")
    p.add_argument("--http-port", type=int, default=8000, help="streamer HTTP port (0 = any)")
    p.add_argument("--media-port", type=int, default=0,
                   help="streamer media UDP port (default 0 = any, kept across restarts)")
    p.add_argument("--relay-media-port", type=int, default=0,
                   help="the relay's media UDP port (default 0 = any, kept across restarts)")
    p.add_argument("--relay-http-port", type=int, default=8081,
                   help="the relay's HTTP port, scraped by ops/prometheus (0 = any)")
    p.add_argument("--ingest-port", type=int, default=5006,
                   help="streamer SRTP ingest UDP port (0 = any)")
    p.add_argument("--speakers", type=int, default=len(SAMPLE_SPEAKERS),
                   choices=range(0, len(SAMPLE_SPEAKERS) + 1), metavar="N")
    p.add_argument("--ptime-ms", type=int, default=20, choices=(20, 40, 60))
    p.add_argument("--delay-ms", type=int, default=300, help="speaker playout delay")
    return asyncio.run(up(p.parse_args(argv)))
