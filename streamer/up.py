"""``loa up``: the whole stack on one machine, for a first run, demos and end-to-end tests.

Starts private ``redis-server`` and Mosquitto under ``var/`` (unless ``LOA_REDIS_URL`` /
``LOA_MQTT_URL`` point at existing ones), then the streamer, one relay and simulated speakers
on the sample zone tree as child processes, each of which prints one JSON line with its
addresses. The relay and speakers are registered through the API as the first admin, each
with its own broker login (password files under ``var/secrets/``). Writes ``var/loa-up.json``
(documented in the README) for scripts and ops tools; on Ctrl-C or SIGTERM stops every child
and waits for it. A child that dies takes the stack down rather than leaving it half-alive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from streamer.control import broker
from streamer.control.broker import Mosquitto
from streamer.control.services import RedisServer, Service, ServiceError
from streamer.secretfile import write_private

#: (speaker id, leaf zone): two communes with several speakers each, and Côn Đảo
SAMPLE_SPEAKERS = [
    ("spk-thang-tam-1", "brvt.vung-tau.thang-tam.kp-1"),
    ("spk-thang-tam-2", "brvt.vung-tau.thang-tam.kp-1"),
    ("spk-thang-tam-3", "brvt.vung-tau.thang-tam.kp-2"),
    ("spk-kim-long-1", "brvt.chau-duc.kim-long.ap-tay"),
    ("spk-kim-long-2", "brvt.chau-duc.kim-long.ap-dong"),
    ("spk-con-dao-1", "brvt.con-dao.cum-1"),
]
START_TIMEOUT_S = 20.0


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    info: dict[str, object]


async def spawn_child(name: str, args: list[str], logs: Path) -> Child:
    log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child for its life
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamer.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL,
    )
    log.close()
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        info = json.loads(line)
    except (TimeoutError, json.JSONDecodeError):
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{name} did not start; see {logs / (name + '.log')}") from None
    return Child(name, proc, info)


async def stop_children(children: list[Child]) -> None:
    for c in reversed(children):
        if c.proc.returncode is None:
            c.proc.send_signal(signal.SIGTERM)
    for c in reversed(children):
        try:
            await asyncio.wait_for(c.proc.wait(), 5.0)
        except TimeoutError:
            c.proc.kill()
            await c.proc.wait()


async def up(args: argparse.Namespace) -> int:
    var = Path(args.var_dir).resolve()
    logs, spk_dir = var / "logs", var / "speakers"
    for d in (logs, spk_dir):
        d.mkdir(parents=True, exist_ok=True)
    host = args.host
    services: list[Service] = []
    redis_url = os.environ.get("LOA_REDIS_URL", "")
    if not redis_url:  # a private redis-server, its data kept under var/ across runs
        redis = RedisServer(var / "redis")
        try:
            await asyncio.to_thread(redis.start)
        except ServiceError as e:
            print(f"loa up: {e}", file=sys.stderr)
            return 1
        services.append(redis)
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
        try:
            await asyncio.to_thread(mosquitto.start)
        except ServiceError as e:
            print(f"loa up: {e}", file=sys.stderr)
            _stop_services(services)
            return 1
        services.append(mosquitto)
        mqtt_url = mosquitto.url
    mqtt_args = ["--mqtt-url", mqtt_url]
    children: list[Child] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        streamer = await spawn_child("streamer", [
            "streamer", "--http-host", host, "--http-port", str(args.http_port),
            "--media-host", host, "--media-port", "0", "--public-host", host,
            "--ingest-host", host, "--ingest-port", str(args.ingest_port),
            "--ptime-ms", str(args.ptime_ms), "--var-dir", str(var),
            "--redis-url", redis_url, "--admin-credentials", str(credentials),
            *mqtt_args, "--mqtt-user", broker.STREAMER_USER,
            *(["--mqtt-password-file", str(streamer_password), "--mqtt-broker-dir",
                str(mqtt_dir)] if streamer_password.exists() else []),
        ], logs)
        children.append(streamer)
        chosen = SAMPLE_SPEAKERS[: args.speakers]
        secrets = await _provision(str(streamer.info["http"]), credentials, var / "secrets",
                                   ["relay-1"], chosen)
        relay = await spawn_child("relay-1", [
            "relay", "--id", "relay-1", "--media", f"{host}:0",
            "--http", f"{host}:{args.relay_http_port}",
            "--upstream", str(streamer.info["media"]), "--public-host", host,
            "--ptime-ms", str(args.ptime_ms), *_mqtt("relay-1", mqtt_url, secrets),
        ], logs)
        children.append(relay)
        # speakers start in parallel: each takes a second to import numpy, opus and friends
        spawned = await asyncio.gather(*(spawn_child(sid, [
            "speaker", "--id", sid, "--channel", zone, "--bind", f"{host}:0",
            # the relay first; the streamer itself if the relay is down
            "--upstream", str(relay.info["media"]), "--upstream", str(streamer.info["media"]),
            "--wav", str(spk_dir / f"{sid}.wav"), "--log", str(spk_dir / f"{sid}.jsonl"),
            "--delay-ms", str(args.delay_ms), "--var-dir", str(var),
            *_mqtt(sid, mqtt_url, secrets),
        ], logs) for sid, zone in chosen), return_exceptions=True)
        children += [c for c in spawned if isinstance(c, Child)]
        failed = [c for c in spawned if isinstance(c, BaseException)]
        if failed:
            raise RuntimeError(str(failed[0]))
        speakers = [{"id": sid, "zone": zone, "channel": zone, "pid": c.proc.pid,
                     "wav": str(spk_dir / f"{sid}.wav"), "log": str(spk_dir / f"{sid}.jsonl"),
                     "media_addr": c.info["udp"]}
                    for (sid, zone), c in zip(chosen, spawned, strict=True)
                    if isinstance(c, Child)]
    except RuntimeError as e:
        print(f"loa up: {e}", file=sys.stderr)
        await stop_children(children)
        _stop_services(services)
        return 1
    state = {
        "streamer_url": streamer.info["http"],
        "streamer_media": streamer.info["media"],
        "streamer_ingest": streamer.info.get("ingest", ""),
        "relay_urls": [relay.info["http"]],
        "relays": [{"id": "relay-1", "url": relay.info["http"], "media": relay.info["media"],
                    "pid": relay.proc.pid}],
        "speakers": speakers,
        "pid": os.getpid(),
        "started": time.time(),
        "logs": str(logs),
        "redis_url": redis_url,
        "mqtt_url": mqtt_url,
        # written by the streamer when it created the first admin (mode 0600); absent when
        # the state store already had users
        "admin_credentials": str(credentials),
    }
    state_file = var / "loa-up.json"
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, ensure_ascii=False))
    tmp.replace(state_file)
    url = state["streamer_url"]
    print(f"Loa is up.\n  streamer   {url}  (API {url}/api/v1/broadcasts)\n"
          f"  studio     {url}/studio  (browser microphone, push to talk)\n"
          f"  ingest     srtp://{state['streamer_ingest']}  (register: loa ctl input add)\n"
          f"  relay      {relay.info['http']}\n  speakers   {len(speakers)}, recording to "
          f"{spk_dir}\n  state      {state_file}\n  listen     {url}/listen/"
          f"{SAMPLE_SPEAKERS[0][1]}.ogg\n  try        loa ctl login && loa ctl broadcast "
          f"--zone brvt.vung-tau.thang-tam --tone 1000 --seconds 5 --wait-reach\n"
          f"  admin      credentials in {credentials}\nCtrl-C stops everything.",
          flush=True)
    waits = [asyncio.create_task(c.proc.wait()) for c in children]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *waits], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if stopper not in done:
        dead = [c.name for c in children if c.proc.returncode is not None]
        print(f"loa up: {', '.join(dead)} exited; stopping the stack", file=sys.stderr)
        code = 1
    await stop_children(children)
    _stop_services(services)
    stopper.cancel()
    state_file.unlink(missing_ok=True)
    print("Loa stopped.", flush=True)
    return code


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


def _stop_services(services: list[Service]) -> None:
    for srv in reversed(services):
        srv.stop()


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loa up", description="Run the whole stack on this machine.")
    p.add_argument("--var-dir", default="var", help="state, logs and recordings (default var/)")
    p.add_argument("--host", default="127.0.0.1", help="address every process binds")
    p.add_argument("--http-port", type=int, default=8000, help="streamer HTTP port (0 = any)")
    p.add_argument("--relay-http-port", type=int, default=8081,
                   help="the relay's HTTP port, scraped by ops/prometheus (0 = any)")
    p.add_argument("--ingest-port", type=int, default=5006,
                   help="streamer SRTP ingest UDP port (0 = any)")
    p.add_argument("--speakers", type=int, default=len(SAMPLE_SPEAKERS),
                   choices=range(0, len(SAMPLE_SPEAKERS) + 1), metavar="N")
    p.add_argument("--ptime-ms", type=int, default=20, choices=(20, 40, 60))
    p.add_argument("--delay-ms", type=int, default=300, help="speaker playout delay")
    return asyncio.run(up(p.parse_args(argv)))
