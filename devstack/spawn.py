"""Start ``loa up``'s children under a supervisor: the servers, the streamer, one relay and
the simulated speakers, in the order each needs the one before.

Private ``redis-server`` and Mosquitto under ``var/`` unless ``LOA_REDIS_URL`` /
``LOA_MQTT_URL`` point at existing ones; then the streamer; then the relay and speakers,
registered through the API first (``provision.py``). Each child's arguments are read again at
every restart and reuse the ports of its first start, so that the relay and speakers keep
their upstream addresses and ``loa-up.json`` its URLs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

from common.secretfile import write_private
from devstack.provision import mqtt_args, provision
from devstack.services import Mosquitto, RedisServer
from devstack.state import Stack
from devstack.supervise import Child, Supervisor, loa_process, service_process
from streamer.control import broker

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


@dataclass
class Servers:
    """Where Redis and the broker answer; ``streamer_password`` exists only when the broker is
    private (the streamer then keeps its logins and ACL in ``mqtt_dir``)."""

    redis_url: str
    mqtt_url: str
    mqtt_dir: Path
    streamer_password: Path


def _port(addr: object) -> int:
    """The port of ``host:port`` or ``http://host:port``."""
    return int(str(addr).rsplit(":", 1)[1])


def _hostport(url: object) -> str:
    return str(url).removeprefix("http://")


async def bring_up(args: argparse.Namespace, var: Path, sup: Supervisor) -> Stack:
    """Start every child under ``sup``; raises :class:`StartError` if one does not start."""
    for d in (var / "logs", var / "speakers"):
        d.mkdir(parents=True, exist_ok=True)
    servers = await start_servers(var, sup)
    credentials = var / "admin-credentials.json"
    streamer = await start_streamer(args, var, servers, credentials, sup)
    chosen = SAMPLE_SPEAKERS[: args.speakers]
    secrets = await provision(str(streamer.info["http"]), credentials, var / "secrets",
                              ["relay-1"], chosen)
    relay = await start_relay(args, var, servers, streamer, secrets, sup)
    speakers = await start_speakers(args, var, servers, relay, streamer, chosen, secrets, sup)
    return Stack(streamer, relay, speakers, sup, servers.redis_url, servers.mqtt_url, var,
                 time.time())


async def start_servers(var: Path, sup: Supervisor) -> Servers:
    """Private Redis and Mosquitto, unless the environment names existing ones."""
    redis_url = os.environ.get("LOA_REDIS_URL", "")
    if not redis_url:  # a private redis-server, its data kept under var/ across runs
        redis = RedisServer(var / "redis")
        await sup.start(Child("redis", SERVERS, GRACE_S[SERVERS], service_process(redis)))
        redis_url = redis.url
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
    return Servers(redis_url, mqtt_url, mqtt_dir, streamer_password)


async def start_streamer(args: argparse.Namespace, var: Path, servers: Servers,
                         credentials: Path, sup: Supervisor) -> Child:
    host = args.host

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
            "--redis-url", servers.redis_url, "--admin-credentials", str(credentials),
            "--mqtt-url", servers.mqtt_url, "--mqtt-user", broker.STREAMER_USER,
            *(["--mqtt-password-file", str(servers.streamer_password), "--mqtt-broker-dir",
               str(servers.mqtt_dir)] if servers.streamer_password.exists() else []),
        ]

    streamer = Child("streamer", STREAMER, GRACE_S[STREAMER],
                     loa_process(streamer_args, var / "logs" / "streamer.log"))
    await sup.start(streamer)
    return streamer


async def start_relay(args: argparse.Namespace, var: Path, servers: Servers, streamer: Child,
                      secrets: dict[str, Path], sup: Supervisor) -> Child:
    host = args.host

    def relay_args() -> list[str]:
        info = relay.info
        return [
            "relay", "--id", "relay-1",
            "--media", str(info["media"]) if info else f"{host}:{args.relay_media_port}",
            "--http", _hostport(info["http"]) if info else f"{host}:{args.relay_http_port}",
            "--upstream", str(streamer.info["media"]), "--public-host", host,
            "--ptime-ms", str(args.ptime_ms), *mqtt_args("relay-1", servers.mqtt_url, secrets),
        ]

    relay = Child("relay-1", RELAYS, GRACE_S[RELAYS],
                  loa_process(relay_args, var / "logs" / "relay-1.log"))
    await sup.start(relay)
    return relay


async def start_speakers(args: argparse.Namespace, var: Path, servers: Servers,
                         relay: Child, streamer: Child, chosen: list[tuple[str, str]],
                         secrets: dict[str, Path],
                         sup: Supervisor) -> list[tuple[str, str, Child]]:
    """One simulated speaker per (id, leaf zone) in ``chosen``, started in parallel."""
    spk_dir = var / "speakers"

    def speaker_child(sid: str, zone: str) -> Child:
        def speaker_args() -> list[str]:
            return [
                "speaker", "--id", sid, "--channel", zone,
                "--bind", str(child.info["udp"]) if child.info else f"{args.host}:0",
                # the relay first; the streamer itself while the relay is down
                "--upstream", str(relay.info["media"]),
                "--upstream", str(streamer.info["media"]),
                "--wav", str(spk_dir / f"{sid}.wav"), "--log", str(spk_dir / f"{sid}.jsonl"),
                "--delay-ms", str(args.delay_ms), "--var-dir", str(var),
                *mqtt_args(sid, servers.mqtt_url, secrets),
            ]

        child = Child(sid, SPEAKERS, GRACE_S[SPEAKERS],
                      loa_process(speaker_args, var / "logs" / f"{sid}.log"))
        return child

    speakers = [(sid, zone, speaker_child(sid, zone)) for sid, zone in chosen]
    # in parallel: each speaker takes a second to import numpy, opus and friends
    started = await asyncio.gather(*(sup.start(c) for _, _, c in speakers),
                                   return_exceptions=True)
    for result in started:
        if isinstance(result, BaseException):
            raise result
    return speakers
