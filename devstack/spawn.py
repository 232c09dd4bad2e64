"""Start ``loa up``'s children under a supervisor: the servers, the streamer, one relay and
the simulated speakers, in the order each needs the one before.

Private ``redis-server`` and Mosquitto under ``var/`` unless ``LOA_REDIS_URL`` /
``LOA_MQTT_URL`` point at existing ones (the private Redis asks for a password: the streamer
gets its URL in its environment, never on its command line); then the streamer; then the relay
and speakers, registered through the API first (``provision.py``). Each child's arguments are
read again at every restart and reuse the ports of its first start, so that the relay and
speakers keep their upstream addresses and ``loa-up.json`` its URLs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from common.secretfile import write_private
from devstack.provision import SampleSpeaker, mqtt_args, provision
from devstack.services import Mosquitto, RedisServer, private_dir
from devstack.state import Stack
from devstack.supervise import Child, Supervisor, loa_process, service_process
from streamer.control import broker

log = logging.getLogger("loa.up")

#: two communes with several speakers each, and Côn Đảo; each placed inside its leaf zone (the
#: sample zone file's approximate geography), so that the console's map draws them and CAP
#: polygons and circles find them (docs/cap.md, "The examples against loa up")
SAMPLE_SPEAKERS = [
    SampleSpeaker("spk-thang-tam-1", "brvt.vung-tau.thang-tam.kp-1", 10.3425, 107.0855),
    SampleSpeaker("spk-thang-tam-2", "brvt.vung-tau.thang-tam.kp-1", 10.3418, 107.0872),
    SampleSpeaker("spk-thang-tam-3", "brvt.vung-tau.thang-tam.kp-2", 10.3472, 107.0818),
    SampleSpeaker("spk-kim-long-1", "brvt.chau-duc.kim-long.ap-tay", 10.6295, 107.2385),
    SampleSpeaker("spk-kim-long-2", "brvt.chau-duc.kim-long.ap-dong", 10.6330, 107.2660),
    SampleSpeaker("spk-con-dao-1", "brvt.con-dao.cum-1", 8.6829, 106.6075),
]

#: stop tiers, the highest first (clients stop while the servers they talk to still answer),
#: and each tier's share of the stop before SIGKILL: 2.5 s in all, so that Ctrl-C is done in 3
SPEAKERS, RELAYS, STREAMER, SERVERS = 3, 2, 1, 0
GRACE_S = {SPEAKERS: 0.9, RELAYS: 0.4, STREAMER: 0.9, SERVERS: 0.3}


@dataclass
class Servers:
    """Where Redis and the broker answer; ``streamer_password`` exists only when the broker is
    private (the streamer then keeps its logins and ACL in ``mqtt_dir``). ``redis_url`` may
    hold a password; ``redis_public_url`` is the same without it."""

    redis_url: str
    redis_public_url: str
    redis_password_file: Path | None  # the private Redis's
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
    tighten(var)
    for d in (var / "logs", var / "speakers", var / "secrets"):
        private_dir(d)
    servers = await start_servers(var, sup)
    credentials = var / "admin-credentials.json"
    streamer = await start_streamer(args, var, servers, credentials, sup)
    chosen = SAMPLE_SPEAKERS[: args.speakers]
    secrets = await provision(str(streamer.info["http"]), credentials, var / "secrets",
                              ["relay-1"], chosen)
    relay = await start_relay(args, var, servers, streamer, secrets, sup)
    speakers = await start_speakers(args, var, servers, relay, streamer, chosen, secrets, sup)
    return Stack(streamer, relay, speakers, sup, servers.redis_public_url, servers.mqtt_url,
                 var, time.time(), servers.redis_password_file)


def tighten(var: Path) -> None:
    """``var`` and every directory under it 0700, every file 0600: what ``loa up`` and its
    children write there is for this user alone (they run with umask 077), and a ``var/``
    left by an older version is tightened once here. Symbolic links are not followed."""
    private_dir(var)
    for root, dirs, files in os.walk(var):
        for name, mode in [*((d, 0o700) for d in dirs), *((f, 0o600) for f in files)]:
            path = Path(root, name)
            if not path.is_symlink():
                try:
                    os.chmod(path, mode)
                except OSError as e:  # not ours (a root-owned leftover): say so and go on
                    log.warning("cannot make %s private: %s", path, e)


async def start_servers(var: Path, sup: Supervisor) -> Servers:
    """Private Redis and Mosquitto, unless the environment names existing ones."""
    redis_url = os.environ.get("LOA_REDIS_URL", "")
    redis_public_url, redis_password_file = without_password(redis_url), None
    if not redis_url:  # a private redis-server, its data and password kept under var/
        redis = RedisServer(var / "redis")
        await sup.start(Child("redis", SERVERS, GRACE_S[SERVERS], service_process(redis)))
        redis_url, redis_public_url = redis.url, redis.public_url
        redis_password_file = redis.password_path
    mqtt_url = os.environ.get("LOA_MQTT_URL", "")
    mqtt_dir = var / "mosquitto"
    streamer_password = mqtt_dir / "streamer.password"
    if not mqtt_url:  # a private mosquitto; the streamer keeps its logins and ACL in step
        mosquitto = Mosquitto(mqtt_dir)
        private_dir(mqtt_dir)
        password = broker.new_password()
        write_private(streamer_password, password + "\n")
        mosquitto.set_accounts([broker.Account(broker.STREAMER_USER,
                                               broker.hash_password(password), "service")])
        await sup.start(Child("mosquitto", SERVERS, GRACE_S[SERVERS],
                              service_process(mosquitto)))
        mqtt_url = mosquitto.url
    return Servers(redis_url, redis_public_url, redis_password_file, mqtt_url, mqtt_dir,
                   streamer_password)


def without_password(url: str) -> str:
    """``url`` with any password in it removed (``redis://:secret@h:1/0`` → ``redis://h:1/0``,
    a user name kept): what may be shown and written to ``loa-up.json``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}@" if parts.username else ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=user + host))


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
            "--admin-credentials", str(credentials), "--require-tokens", "on",
            "--mqtt-url", servers.mqtt_url, "--mqtt-user", broker.STREAMER_USER,
            *(["--mqtt-password-file", str(servers.streamer_password), "--mqtt-broker-dir",
               str(servers.mqtt_dir)] if servers.streamer_password.exists() else []),
        ]

    streamer = Child("streamer", STREAMER, GRACE_S[STREAMER],
                     loa_process(streamer_args, var / "logs" / "streamer.log",
                                 env={"LOA_STREAMER_REDIS_URL": servers.redis_url}))
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
            "--keys-file", str(var / "keys" / "relay-1.keys"),  # the key set pushed over MQTT
            "--stream-key", str(streamer.info["stream_key"]),
            # speakers need a token; its own comes over MQTT and is kept in var/tokens
            "--require-tokens", "on", "--token-file", str(var / "tokens" / "relay-1.token"),
        ]

    relay = Child("relay-1", RELAYS, GRACE_S[RELAYS],
                  loa_process(relay_args, var / "logs" / "relay-1.log"))
    await sup.start(relay)
    return relay


async def start_speakers(args: argparse.Namespace, var: Path, servers: Servers,
                         relay: Child, streamer: Child, chosen: list[SampleSpeaker],
                         secrets: dict[str, Path],
                         sup: Supervisor) -> list[tuple[str, str, Child]]:
    """One simulated speaker per sample speaker in ``chosen``, started in parallel."""
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
                "--keys-file", str(var / "keys" / f"{sid}.keys"),
                "--stream-key", str(streamer.info["stream_key"]),
                "--token-file", str(var / "tokens" / f"{sid}.token"),
            ]

        child = Child(sid, SPEAKERS, GRACE_S[SPEAKERS],
                      loa_process(speaker_args, var / "logs" / f"{sid}.log"))
        return child

    speakers = [(s.id, s.zone, speaker_child(s.id, s.zone)) for s in chosen]
    # in parallel: each speaker takes a second to import numpy, opus and friends
    started = await asyncio.gather(*(sup.start(c) for _, _, c in speakers),
                                   return_exceptions=True)
    for result in started:
        if isinstance(result, BaseException):
            raise result
    return speakers
