"""One device's end of the MQTT control plane, used by ``loa speaker`` and ``loa relay``:
:class:`DeviceLink` and the :class:`Device` protocol a process offers it; the MQTT settings
every device config embeds are ``mqtt_config.py``.

A DeviceLink keeps a device's retained status (last will: offline), publishes telemetry and
proof of play, and runs the commands it receives; which topics it publishes and reads comes
from ``messages.DEVICE_TOPICS``. It reconnects with jittered backoff for as long as it runs
(``edge.py``). It may never crash, stall, or stop the audio on a malformed payload or a dead
broker: a bad payload is dropped with a (rate-limited) log line and counted in
``loa_mqtt_bad_payloads_total{topic_kind,reason}``; playout never waits on MQTT. Nothing here
imports the server (``streamer``) beyond the contract (``messages.py``).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any, Protocol, TypeVar

import aiomqtt
from prometheus_client import CollectorRegistry

from device.edge import (
    Backoff,
    MqttMetrics,
    RateLimitedLog,
    cancel_and_wait,
    connect_forever,
    mqtt_client,
    payload_bytes,
)
from device.mqtt_config import parse_mqtt_url, read_password_file
from wire.ids import valid_zone_id
from wire.messages import (
    DEVICE_TOPICS,
    KEYS_TOPIC,
    KINDS,
    Ack,
    BadPayload,
    Command,
    DeviceConfig,
    EmergencyState,
    Played,
    Status,
    StreamKeys,
    Strict,
    Telemetry,
    TokenGrant,
    command_args,
    correlation_id_of,
    device_topic,
    encode,
    parse,
    zone_cmd_topics,
    zone_emergency_topics,
)

log = logging.getLogger("loa.mqtt")
M = TypeVar("M", bound=Strict)

try:
    VERSION = metadata.version("loa")  # what a device reports in its status
except metadata.PackageNotFoundError:  # running from a checkout that was never installed
    VERSION = "dev"


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
    the speaker's business); a bad one is dropped and counted like any other payload. A
    device given ``on_keys`` reads the fleet's retained key set (``loa/v1/keys``) the same
    way: the raw signed set goes to ``on_keys``, which judges it (``device/trust.py``).
    """

    MAX_PLAYED_QUEUE = 1000
    SEEN_IDS = 256

    def __init__(self, device: Device, *, url: str, device_id: str, password: str,
                 registry: CollectorRegistry, user: str | None = None,
                 zone: str | None = None, telemetry_s: float = 10.0, keepalive_s: int = 30,
                 max_backoff_s: float = 8.0,
                 on_emergency: Callable[[EmergencyState], None] | None = None,
                 tls_context: ssl.SSLContext | None = None,
                 on_token: Callable[[bytes], None] | None = None,
                 password_file: str | None = None,
                 on_keys: Callable[[bytes], None] | None = None) -> None:
        """``password_file``: read again at every connection, so that a device's password can
        be changed (written to the file, then the new one set at the broker) without a
        restart: the session goes on, and the next one uses the new password. ``on_keys``
        gets each stream key set the streamer retains on ``loa/v1/keys`` (``wire/keyset.py``:
        whether to trust it is for the callee to judge)."""
        if device.kind not in KINDS:
            raise ValueError(f"kind {device.kind!r}")
        if zone is not None and not valid_zone_id(zone):
            raise ValueError(f"zone {zone!r} is not a zone id")
        self.device = device
        self.addr = parse_mqtt_url(url)
        self.tls_context = tls_context  # mqtts:// (None: the system's CAs)
        self.device_id = device_id
        self.user = user or device_id
        self._password = password
        self._password_file = password_file
        self.telemetry_s = telemetry_s
        self.keepalive_s = keepalive_s
        self.metrics = MqttMetrics(registry)
        self._backoff = Backoff(max_s=max_backoff_s)
        topics = DEVICE_TOPICS[device.kind]
        self._topic = {leaf: device_topic(device.kind, device_id, leaf)
                       for leaf in topics.publishes + topics.reads}
        self.on_emergency = on_emergency
        self.on_token = on_token
        self.on_keys = on_keys
        self._own_topics = [self._topic[leaf] for leaf in topics.reads]
        if on_keys is not None:
            self._own_topics += list(topics.fleet)
        self._emergency_topics: set[str] = set()
        self.zone: str | None = None
        self.subscriptions: list[str] = []
        self._set_zone(zone)
        self._client: aiomqtt.Client | None = None
        self._played: collections.deque[Played] = collections.deque(maxlen=self.MAX_PLAYED_QUEUE)
        self._played_ready = asyncio.Event()
        self._seen: collections.deque[str] = collections.deque(maxlen=self.SEEN_IDS)
        self._last_status: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._log = RateLimitedLog()

    def zone_topics(self, zone: str | None) -> list[str]:
        """The zone-scoped topics this device reads as a member of leaf zone ``zone``: the
        group commands and (with ``on_emergency``) the emergency states of the zone and of
        each ancestor."""
        if zone is None or not DEVICE_TOPICS[self.device.kind].zones:
            return []
        topics = zone_cmd_topics(zone)
        if self.on_emergency is not None:
            topics += zone_emergency_topics(zone)
        return topics

    def _set_zone(self, zone: str | None) -> None:
        self.zone = zone
        zoned = self.zone_topics(zone)
        self._emergency_topics = set(zone_emergency_topics(zone)) & set(zoned) if zone else set()
        self.subscriptions = self._own_topics + zoned

    async def move(self, zone: str) -> None:
        """The device now belongs to leaf zone ``zone``: read that zone's topics instead of
        the old one's, now if connected and in every later session. The new zone's topics are
        all subscribed again, those it shares with the old one included, so that the broker
        sends their retained emergency states again (the device forgot the old zone's)."""
        if not valid_zone_id(zone):
            raise ValueError(f"zone {zone!r} is not a zone id")
        old = set(self.zone_topics(self.zone))
        self._set_zone(zone)
        client = self._client
        if client is None:  # between sessions: the next one subscribes them
            return
        new = self.zone_topics(zone)
        if drop := old - set(new):
            await client.unsubscribe(sorted(drop))
        if new:
            await client.subscribe([(t, 1) for t in new])

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
            await cancel_and_wait([self._task])  # a cancellation lost in a connect: again
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
        return mqtt_client(self.addr, self.user, self._current_password(), cid,
                           self.keepalive_s, will, tls_context=self.tls_context)

    def _offline_will(self) -> Status:
        return self.device.status().model_copy(update={"state": "offline", "ts": None})

    async def _session(self, client: aiomqtt.Client) -> None:
        await self._publish_status(client)
        await client.subscribe([(t, 1) for t in self.subscriptions])
        self._client = client
        tasks = [asyncio.create_task(self._telemetry_loop(client))]
        if "played" in self._topic:
            tasks.append(asyncio.create_task(self._played_loop(client)))
        try:
            async for message in client.messages:
                await self.handle(client, str(message.topic), payload_bytes(message))
        finally:
            self._client = None
            await cancel_and_wait(tasks)

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
                "token" if topic == self._topic.get("token") else
                "keys" if topic == KEYS_TOPIC else
                "emergency" if topic in self._emergency_topics else "cmd")
        self.metrics.messages.labels(kind).inc()
        if kind == "emergency":
            self._emergency(topic, payload)
            return
        if kind == "token":
            self._token(topic, payload)
            return
        if kind == "keys":
            on_keys = self.on_keys
            if on_keys is not None:
                self._retained("keys", StreamKeys, topic, payload,
                               lambda m: on_keys(base64.b64decode(m.keyset)))
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

    def _current_password(self) -> str:
        if self._password_file:
            try:
                self._password = read_password_file(self._password_file)
            except (OSError, ValueError) as e:  # the last good one, and say why
                log.warning("MQTT password file %s unreadable (%s): using the previous one",
                            self._password_file, e)
        return self._password

    def _token(self, topic: str, payload: bytes) -> None:
        """A new subscription token: handed to the device, which renews its subscriptions."""
        on_token = self.on_token
        if on_token is not None:
            self._retained("token", TokenGrant, topic, payload,
                           lambda grant: on_token(base64.b64decode(grant.token)))

    def _emergency(self, topic: str, payload: bytes) -> None:
        if self.on_emergency is not None:
            self._retained("emergency", EmergencyState, topic, payload, self.on_emergency)

    def _retained(self, kind: str, model: type[M], topic: str, payload: bytes,
                  apply: Callable[[M], None]) -> None:
        """A retained message handed to ``apply``: a bad one dropped and counted, a failure
        to apply it logged. An empty payload is a retained message being cleared."""
        if not payload:
            return
        try:
            message = parse(model, payload)
        except BadPayload as e:
            self._bad(kind, e, topic)
            return
        try:
            apply(message)
        except Exception:
            log.exception("%s from %s not applied", kind, topic)

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
