"""Both ends of the MQTT control plane: :class:`Fleet`, the streamer's view of every device,
and :class:`DeviceLink`, one device's connection (used by ``loa speaker`` and ``loa relay``).

The Fleet subscribes to every device's status, telemetry, ack and played topics, validates
each payload (``messages.py``) and hands it to a :class:`FleetSink`; it sends commands with a
fresh correlation id and waits for the matching acks, and pushes retained desired configs.
A DeviceLink keeps a device's retained status (last will: offline), publishes telemetry and
proof of play, and runs the commands it receives. Both reconnect with jittered backoff for as
long as they run. Neither may ever crash, stall, or stop the audio on a malformed payload or a
dead broker: a bad payload is dropped with a (rate-limited) log line and counted in
``loa_mqtt_bad_payloads_total{topic_kind,reason}``; playout never waits on MQTT.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from prometheus_client import CollectorRegistry, Counter, Gauge

from common.config import ConfigError, check_range
from streamer.control.messages import (
    KINDS,
    PREFIX,
    TELEMETRY,
    Ack,
    BadPayload,
    Command,
    DeviceConfig,
    EmergencyState,
    Played,
    Status,
    Strict,
    Telemetry,
    command_args,
    correlation_id_of,
    device_topic,
    encode,
    parse,
    split_device_topic,
    valid_device_id,
    valid_zone_id,
    zone_cmd_topic,
    zone_cmd_topics,
    zone_emergency_topic,
    zone_emergency_topics,
)

log = logging.getLogger("loa.mqtt")

#: everything the streamer listens to
FLEET_TOPICS = [f"{PREFIX}/{plural}/+/{leaf}" for plural in KINDS.values()
                for leaf in ("status", "telemetry", "ack", "played")]
LOG_EVERY_S = 10.0


# --------------------------------------------------------------------------- shared edge


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool


def parse_mqtt_url(url: str) -> BrokerAddress:
    """``mqtt://host[:1883]`` or ``mqtts://host[:8883]``; raises ValueError. Credentials do
    not belong in the URL (they would end up in logs): use the user and password file."""
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as e:
        raise ValueError(f"{url!r}: {e}") from None
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise ValueError(f"{url!r} is not mqtt://host:port or mqtts://host:port")
    if u.username or u.password:
        raise ValueError("credentials do not belong in the URL")
    if u.path not in ("", "/") or u.query:
        raise ValueError(f"{url!r}: no path or query expected")
    tls = u.scheme == "mqtts"
    return BrokerAddress(u.hostname, port or (8883 if tls else 1883), tls)


class Backoff:
    """Exponential, jittered: after a broker restart thousands of devices must not all come
    back in the same second."""

    def __init__(self, first_s: float = 0.5, max_s: float = 30.0) -> None:
        self.first_s, self.max_s = first_s, max_s
        self._next = first_s

    def reset(self) -> None:
        self._next = self.first_s

    def next(self) -> float:
        delay = self._next * random.uniform(0.5, 1.0)
        self._next = min(self._next * 2, self.max_s)
        return delay


class RateLimitedLog:
    """At most one line per key every ``every_s``; says how many were held back."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[Any, tuple[float, int]] = {}

    def warning(self, key: Any, msg: str, *args: Any) -> None:
        now = time.monotonic()
        last, held = self._last.get(key, (float("-inf"), 0))
        if now - last < self.every_s:
            self._last[key] = (last, held + 1)
            return
        if len(self._last) > 10_000:  # keys come from the network: stay bounded
            self._last.clear()
        self._last[key] = (now, 0)
        suffix = f" ({held} more like it not logged)" if held else ""
        log.warning(msg + suffix, *args)


@dataclass
class MqttMetrics:
    registry: CollectorRegistry
    messages: Counter = field(init=False)
    bad: Counter = field(init=False)
    connected: Gauge = field(init=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.messages = Counter("loa_mqtt_messages", "MQTT messages received, by topic kind "
                                "(bad ones included)", ("kind",), registry=r)
        self.bad = Counter("loa_mqtt_bad_payloads", "MQTT payloads dropped, by topic kind "
                           "and reason", ("topic_kind", "reason"), registry=r)
        self.connected = Gauge("loa_mqtt_connected", "1 while connected to the broker",
                               registry=r)


def _client(addr: BrokerAddress, user: str, password: str, client_id: str, keepalive_s: int,
            will: aiomqtt.Will | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(
        addr.host, addr.port, username=user, password=password, identifier=client_id,
        keepalive=keepalive_s, will=will, clean_session=True, timeout=10,
        tls_context=ssl.create_default_context() if addr.tls else None,
        max_queued_incoming_messages=10_000, logger=logging.getLogger("loa.mqtt.paho"),
    )


async def connect_forever(name: str, make_client: Callable[[], aiomqtt.Client],
                          session: Callable[[aiomqtt.Client], Awaitable[None]],
                          metrics: MqttMetrics, backoff: Backoff) -> None:
    """Run ``session`` on a fresh connection, again and again, until cancelled."""
    while True:
        try:
            async with make_client() as client:
                backoff.reset()
                metrics.connected.set(1)
                log.info("%s: connected to the broker", name)
                await session(client)
        except MqttConnectError as e:
            log.error("%s: broker refused the login: %s", name, e)
        except (aiomqtt.MqttError, OSError) as e:
            log.warning("%s: broker connection lost: %s", name, e)
        except Exception:  # a bug must not end the control plane for good: log, reconnect
            log.exception("%s: MQTT session failed", name)
        finally:
            metrics.connected.set(0)
        await asyncio.sleep(backoff.next())


def _payload(message: aiomqtt.Message) -> bytes:
    p = message.payload
    return p if isinstance(p, bytes) else str(p if p is not None else "").encode()


# --------------------------------------------------------------------------- streamer side


class FleetSink(Protocol):
    async def presence(self, kind: str, device_id: str, status: Status) -> None: ...

    async def telemetry(self, kind: str, device_id: str, t: Telemetry) -> None: ...

    async def played(self, speaker_id: str, ev: Played) -> None: ...


@dataclass
class ZoneCommand:
    """A group command: its correlation id and the acks that came back, by speaker id."""

    id: str
    acks: dict[str, Ack]


class Fleet:
    """The streamer's MQTT client (see the module docstring). ``start`` returns at once;
    commands wait up to their timeout for the broker to be there."""

    def __init__(self, url: str, user: str, password: str, sink: FleetSink,
                 registry: CollectorRegistry, *, client_id: str | None = None,
                 keepalive_s: int = 30, max_backoff_s: float = 10.0) -> None:
        self.addr = parse_mqtt_url(url)
        self.user = user
        self._password = password
        self.sink = sink
        self.client_id = client_id or f"loa-streamer-{socket.gethostname()}-{secrets.token_hex(3)}"
        self.keepalive_s = keepalive_s
        self.metrics = MqttMetrics(registry)
        self._backoff = Backoff(max_s=max_backoff_s)
        self._client: aiomqtt.Client | None = None
        self._ready = asyncio.Event()
        self._waiters: dict[str, Callable[[str, Ack], None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._log = RateLimitedLog()

    async def start(self) -> None:
        self._task = asyncio.create_task(connect_forever(
            "fleet", lambda: _client(self.addr, self.user, self._password, self.client_id,
                                     self.keepalive_s),
            self._session, self.metrics, self._backoff))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    async def wait_connected(self, timeout_s: float) -> None:
        """Raises TimeoutError if the broker is not reachable within ``timeout_s``."""
        await asyncio.wait_for(self._ready.wait(), timeout_s)

    # ------------------------------------------------------------------ commands

    async def command(self, kind: str, device_id: str, cmd: str,
                      args: Mapping[str, Any] | None = None, timeout_s: float = 5.0) -> Ack:
        """Send one command; returns the device's ack. Raises TimeoutError when no ack comes
        back in ``timeout_s`` (device offline, broker away), ValueError for a bad id or
        command name (arguments are the device's to judge: it answers ``ok: false``)."""
        topic = device_topic(kind, device_id, "cmd")
        cid = secrets.token_hex(8)
        done: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()

        def deliver(sender: str, ack: Ack) -> None:
            if sender == device_id and not done.done():
                done.set_result(ack)

        async def send_and_wait() -> Ack:
            await self._publish(topic, Command(id=cid, cmd=cmd, args=dict(args or {})))
            return await done

        self._waiters[cid] = deliver
        try:
            return await asyncio.wait_for(send_and_wait(), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"no ack from {kind} {device_id} to {cmd} within "
                               f"{timeout_s:g} s") from None
        finally:
            del self._waiters[cid]

    async def zone_command(self, zone: str, cmd: str, args: Mapping[str, Any] | None = None,
                           timeout_s: float = 3.0) -> ZoneCommand:
        """Send one command to every speaker in ``zone``'s subtree and collect their acks for
        ``timeout_s`` (the Fleet cannot know who is listening, so it always waits that long).
        Raises TimeoutError only if the command could not even be published."""
        topic = zone_cmd_topic(zone)
        result = ZoneCommand(secrets.token_hex(8), {})

        def deliver(sender: str, ack: Ack) -> None:
            result.acks.setdefault(sender, ack)

        self._waiters[result.id] = deliver
        try:
            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(
                self._publish(topic, Command(id=result.id, cmd=cmd, args=dict(args or {}))),
                timeout_s)
            await asyncio.sleep(max(0.0, started + timeout_s - asyncio.get_running_loop().time()))
        finally:
            del self._waiters[result.id]
        return result

    async def push_config(self, speaker_id: str, cfg: DeviceConfig,
                          timeout_s: float = 5.0) -> None:
        """Retain ``cfg`` as the speaker's desired config (applied now if it is online, and on
        each reconnect)."""
        topic = device_topic("speaker", speaker_id, "config")
        await asyncio.wait_for(self._publish(topic, cfg, retain=True), timeout_s)

    async def publish_emergency(self, zone: str, state: EmergencyState,
                                timeout_s: float = 5.0) -> None:
        """Retain ``state`` on the zone's emergency topic (every speaker below reads it)."""
        await asyncio.wait_for(self._publish(zone_emergency_topic(zone), state, retain=True),
                               timeout_s)

    async def _publish(self, topic: str, message: Strict, retain: bool = False) -> None:
        while True:
            await self._ready.wait()
            client = self._client
            if client is None:  # between two sessions
                await asyncio.sleep(0.05)
                continue
            try:
                await client.publish(topic, encode(message), qos=1, retain=retain)
                return
            except aiomqtt.MqttError as e:  # lost the connection meanwhile: retry (the
                log.info("publish to %s failed: %s", topic, e)  # caller bounds the time)
                await asyncio.sleep(0.2)

    # ------------------------------------------------------------------ reception

    async def _session(self, client: aiomqtt.Client) -> None:
        await client.subscribe([(t, 1) for t in FLEET_TOPICS])
        self._client = client
        self._ready.set()
        try:
            async for message in client.messages:
                await self.handle(str(message.topic), _payload(message))
        finally:
            self._ready.clear()
            self._client = None

    async def handle(self, topic: str, payload: bytes) -> None:
        """One received message: validate, then route to the sink or a waiting command."""
        leaf = "unknown"
        try:
            kind, device_id, leaf = split_device_topic(topic)
            self.metrics.messages.labels(leaf).inc()
            if leaf == "status":
                if not payload:  # a retained status being cleared (device removed)
                    return
                await self._to_sink(self.sink.presence(kind, device_id, parse(Status, payload)))
            elif leaf == "telemetry":
                t = parse(TELEMETRY[kind], payload)
                await self._to_sink(self.sink.telemetry(kind, device_id, t))
            elif leaf == "ack":
                ack = parse(Ack, payload)
                deliver = self._waiters.get(ack.id)
                if deliver is not None:
                    deliver(device_id, ack)
            elif leaf == "played" and kind == "speaker":
                await self._to_sink(self.sink.played(device_id, parse(Played, payload)))
            else:
                raise BadPayload("bad_topic", f"{topic!r} is not a topic the streamer reads")
        except BadPayload as e:
            self.metrics.bad.labels(leaf, e.reason).inc()
            self._log.warning((topic, e.reason), "dropped a message on %s: %s", topic[:200],
                              e.message)

    async def _to_sink(self, call: Awaitable[None]) -> None:
        try:
            await call
        except Exception:  # the sink's own failure (Redis away?) must not stop reception
            log.exception("fleet sink failed")


# --------------------------------------------------------------------------- device side


try:
    VERSION = metadata.version("loa")  # what a device reports in its status
except metadata.PackageNotFoundError:  # running from a checkout that was never installed
    VERSION = "dev"


def fmt_addr(addr: tuple[str, int]) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


class CommandFailed(Exception):
    """A command that was understood but could not be carried out; ``str`` names the field."""


class Device(Protocol):
    """What a process offers to its :class:`DeviceLink`."""

    kind: str
    commands: dict[str, type[Strict]]

    def status(self) -> Status: ...

    def telemetry(self) -> Telemetry: ...

    def state(self) -> dict[str, Any]:
        """Current volume, mute, upstream…: sent back in every ack."""
        ...

    async def execute(self, cmd: str, args: Strict) -> None:
        """Carry out a validated command; raise :class:`CommandFailed` to answer ok=false."""
        ...

    async def configure(self, cfg: DeviceConfig) -> None:
        """Apply the retained desired config; raise :class:`CommandFailed` if it cannot be."""
        ...


class DeviceLink:
    """One device's MQTT session (see the module docstring); ``run`` until cancelled, then
    ``close`` to say offline cleanly.

    A speaker given ``on_emergency`` also reads the retained emergency state of its zone and
    of each ancestor and hands every valid one to it (duplicates included: judging them is
    the speaker's business); a bad one is dropped and counted like any other payload.
    """

    MAX_PLAYED_QUEUE = 1000
    SEEN_IDS = 256

    def __init__(self, device: Device, *, url: str, device_id: str, password: str,
                 registry: CollectorRegistry, user: str | None = None,
                 zone: str | None = None, telemetry_s: float = 10.0, keepalive_s: int = 30,
                 max_backoff_s: float = 30.0,
                 on_emergency: Callable[[EmergencyState], None] | None = None) -> None:
        if device.kind not in KINDS:
            raise ValueError(f"kind {device.kind!r}")
        if zone is not None and not valid_zone_id(zone):
            raise ValueError(f"zone {zone!r} is not a zone id")
        self.device = device
        self.addr = parse_mqtt_url(url)
        self.device_id = device_id
        self.user = user or device_id
        self._password = password
        self.zone = zone
        self.telemetry_s = telemetry_s
        self.keepalive_s = keepalive_s
        self.metrics = MqttMetrics(registry)
        self._backoff = Backoff(max_s=max_backoff_s)
        self._topic = {leaf: device_topic(device.kind, device_id, leaf)
                       for leaf in ("status", "telemetry", "ack", "cmd")}
        subs = [self._topic["cmd"]]
        self.on_emergency = on_emergency
        self._emergency_topics: set[str] = set()
        if device.kind == "speaker":
            self._topic["played"] = device_topic("speaker", device_id, "played")
            self._topic["config"] = device_topic("speaker", device_id, "config")
            subs.append(self._topic["config"])
            subs += zone_cmd_topics(zone) if zone else []
            if zone and on_emergency is not None:
                self._emergency_topics = set(zone_emergency_topics(zone))
                subs += zone_emergency_topics(zone)
        self.subscriptions = subs
        self._client: aiomqtt.Client | None = None
        self._played: collections.deque[Played] = collections.deque(maxlen=self.MAX_PLAYED_QUEUE)
        self._played_ready = asyncio.Event()
        self._seen: collections.deque[str] = collections.deque(maxlen=self.SEEN_IDS)
        self._last_status: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._log = RateLimitedLog()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run())

    async def run(self) -> None:
        await connect_forever(f"{self.device.kind} {self.device_id}", self._make_client,
                              self._session, self.metrics, self._backoff)

    async def close(self, timeout_s: float = 2.0) -> None:
        """Publish ``offline`` (a clean disconnect sends no last will) and disconnect."""
        client = self._client
        if client is not None:
            status = self.device.status().model_copy(update={"state": "offline",
                                                             "ts": time.time()})
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await asyncio.wait_for(client.publish(
                    self._topic["status"], encode(status), qos=1, retain=True), timeout_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def report_played(self, event: Mapping[str, Any]) -> None:
        """A play-log ``play`` record; queued (bounded, oldest dropped) until the broker takes
        it, so a short outage loses no proof of play. Safe to call from playout code."""
        try:  # ``local``: replayed by the speaker on its own (ignored by a Played without it)
            played = Played.model_validate({k: event.get(k) for k in
                                            ("broadcast", "start", "end", "level_dbfs")}
                                           | ({"local": True} if event.get("local") else {}))
        except ValueError as e:
            log.warning("play record not reported: %s", e)
            return
        self._played.append(played)
        self._played_ready.set()

    # ------------------------------------------------------------------ session

    def _make_client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(self._topic["status"], encode(self._offline_will()), qos=1,
                            retain=True)
        cid = f"{self.device.kind}-{self.device_id}"  # one session per device: a twin kicks it
        return _client(self.addr, self.user, self._password, cid, self.keepalive_s, will)

    def _offline_will(self) -> Status:
        return self.device.status().model_copy(update={"state": "offline", "ts": None})

    async def _session(self, client: aiomqtt.Client) -> None:
        await self._publish_status(client)
        await client.subscribe([(t, 1) for t in self.subscriptions])
        self._client = client
        tasks = [asyncio.create_task(self._telemetry_loop(client))]
        if self.device.kind == "speaker":
            tasks.append(asyncio.create_task(self._played_loop(client)))
        try:
            async for message in client.messages:
                await self.handle(client, str(message.topic), _payload(message))
        finally:
            self._client = None
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await t

    async def _publish_status(self, client: aiomqtt.Client) -> None:
        status = self.device.status()
        await client.publish(self._topic["status"], encode(status), qos=1, retain=True)
        self._last_status = status.model_dump(exclude={"ts"})

    async def _telemetry_loop(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.telemetry_s)
            try:
                if self.device.status().model_dump(exclude={"ts"}) != self._last_status:
                    await self._publish_status(client)  # e.g. failed over to another relay
                await client.publish(self._topic["telemetry"], encode(self.device.telemetry()),
                                     qos=0)
            except aiomqtt.MqttError:
                return  # the session is over; the message loop notices too
            except Exception:
                log.exception("telemetry failed")

    async def _played_loop(self, client: aiomqtt.Client) -> None:
        while True:
            await self._played_ready.wait()
            self._played_ready.clear()
            while self._played:
                played = self._played[0]
                await client.publish(self._topic["played"], encode(played), qos=1)
                self._played.popleft()  # only once the broker has it

    async def handle(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        """One message to this device: its config, a zone's emergency state, or a command
        (own or group)."""
        kind = ("config" if topic == self._topic.get("config") else
                "emergency" if topic in self._emergency_topics else "cmd")
        self.metrics.messages.labels(kind).inc()
        if kind == "emergency":
            self._emergency(topic, payload)
            return
        if kind == "config":
            if not payload:  # retained config cleared: nothing desired
                return
            try:
                cfg = parse(DeviceConfig, payload)
            except BadPayload as e:
                self._bad(kind, e, topic)
                return
            try:
                await self.device.configure(cfg)
            except CommandFailed as e:
                log.warning("config on %s not applied: %s", topic, e)
            except Exception:
                log.exception("applying the config failed")
            return
        await self._command(client, topic, payload)

    def _emergency(self, topic: str, payload: bytes) -> None:
        if not payload or self.on_emergency is None:  # a retained state being cleared
            return
        try:
            state = parse(EmergencyState, payload)
        except BadPayload as e:
            self._bad("emergency", e, topic)
            return
        try:
            self.on_emergency(state)
        except Exception:
            log.exception("emergency state from %s not applied", topic)

    async def _command(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        command: Command | None = None
        try:
            command = parse(Command, payload)
            args = command_args(self.device.commands, command)
        except BadPayload as e:
            self._bad("cmd", e, topic)
            cid = command.id if command is not None else correlation_id_of(payload)
            if cid is not None:  # someone is waiting for this: tell them why not
                await self._ack(client, Ack(id=cid, ok=False, error=e.message,
                                            state=self.device.state()))
            return
        if command.id in self._seen:  # QoS 1 may deliver twice
            return
        self._seen.append(command.id)
        ok, error = True, None
        try:
            await self.device.execute(command.cmd, args)
        except CommandFailed as e:
            ok, error = False, str(e)
        except Exception:
            log.exception("command %s failed", command.cmd)
            ok, error = False, f"{command.cmd}: internal error (see the device log)"
        log.info("command %s (%s) from %s: %s", command.cmd, command.id, topic,
                 "ok" if ok else error)
        await self._ack(client, Ack(id=command.id, ok=ok, error=error,
                                    state=self.device.state()))

    async def _ack(self, client: aiomqtt.Client, ack: Ack) -> None:
        await client.publish(self._topic["ack"], encode(ack), qos=1)

    def _bad(self, kind: str, e: BadPayload, topic: str) -> None:
        self.metrics.bad.labels(kind, e.reason).inc()
        self._log.warning((kind, e.reason), "dropped a message on %s: %s", topic, e.message)


def check_device_mqtt(cfg: Any) -> None:
    """The MQTT settings a speaker or relay config shares (``mqtt_url``, ``mqtt_user``,
    ``mqtt_password_file``, ``mqtt_keepalive_s``, ``telemetry_s``, ``id``): checked, each bad
    one a ``ConfigError`` naming it; ``mqtt_user`` defaults to the device id."""
    check_range("mqtt_keepalive_s", cfg.mqtt_keepalive_s, 1, 3600)
    check_range("telemetry_s", cfg.telemetry_s, 0.2, 86_400)
    if not cfg.mqtt_url:
        return
    try:
        parse_mqtt_url(cfg.mqtt_url)
    except ValueError as e:
        raise ConfigError("mqtt_url", str(e)) from None
    if not cfg.mqtt_password_file:
        raise ConfigError("mqtt_password_file", "required with mqtt_url")
    if not valid_device_id(cfg.id):
        raise ConfigError("id", f"{cfg.id!r} cannot name MQTT topics "
                                "(letters, digits, '.', '_', '-')")
    cfg.mqtt_user = cfg.mqtt_user or cfg.id


def read_password_file(path: str) -> str:
    """The first line of ``path``, stripped; raises OSError or ValueError (empty)."""
    with open(path, encoding="utf-8") as f:
        password = f.readline().strip()
    if not password:
        raise ValueError("the file is empty")
    return password

