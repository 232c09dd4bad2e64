"""The streamer's end of the MQTT control plane: :class:`Fleet`, its view of every device.

The Fleet subscribes to what every device kind publishes (``messages.DEVICE_TOPICS``),
validates each payload (``messages.py``) and hands it to a :class:`FleetSink`; it sends
commands with a fresh correlation id and waits for the matching acks, and pushes retained
desired configs. It reconnects with jittered backoff for as long as it runs (the MQTT edge it
shares with the devices' ``DeviceLink`` is ``device/edge.py``). It may never crash or stall
on a malformed payload or a dead broker: a bad payload is dropped with a (rate-limited) log
line and counted in ``loa_mqtt_bad_payloads_total{topic_kind,reason}``.

A frozen broker (a stopped process, a wedged host) keeps its TCP connections open, so the
socket alone would say "connected" for as long as MQTT's keepalive takes to notice. The Fleet
probes instead: every ``PROBE_EVERY_S`` it publishes to ``PROBE_TOPIC`` at QoS 1, and a broker
that has not acknowledged within ``PROBE_TIMEOUT_S`` is taken for dead: ``connected`` turns
false (``/readyz``) and the session is dropped and made again. A retained message (an
emergency's state, a config, a token, the key set) that could not be published is kept, the
latest per topic, and published again as soon as a session is up, so an outage delays it but
never loses it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiomqtt
from aiomqtt.exceptions import MqttCodeError
from prometheus_client import CollectorRegistry, Counter, Gauge

from device.edge import (
    Backoff,
    MqttMetrics,
    RateLimitedLog,
    cancel_and_wait,
    connect_forever,
    mqtt_client,
    payload_bytes,
)
from device.mqtt_config import parse_mqtt_url
from wire.messages import (
    DEVICE_TOPICS,
    KEYS_TOPIC,
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
    StreamKeys,
    Strict,
    Telemetry,
    TokenGrant,
    device_topic,
    encode,
    parse,
    split_device_topic,
    zone_cmd_topic,
    zone_emergency_topic,
)

log = logging.getLogger("loa.mqtt")

#: the broker must acknowledge a QoS 1 publish this often, within PROBE_TIMEOUT_S
PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 3.0
#: what the probe publishes to: nobody subscribes, the broker only acknowledges it
PROBE_TOPIC = f"{PREFIX}/streamer/probe"
#: retained configs in flight at once (``Fleet.push_configs``)
CONFIG_CONCURRENCY = 64


class BrokerStalled(aiomqtt.MqttError):
    """The broker did not acknowledge a probe in time: the session is dropped."""

#: everything the streamer listens to: what each kind of device publishes
FLEET_TOPICS = [f"{PREFIX}/{KINDS[kind]}/+/{leaf}" for kind, topics in DEVICE_TOPICS.items()
                for leaf in topics.publishes]


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
                 keepalive_s: int = 30, max_backoff_s: float = 4.0,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.addr = parse_mqtt_url(url)
        self.tls_context = tls_context  # mqtts:// (None: the system's CAs)
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
        #: retained messages not yet acknowledged by the broker, the latest per topic
        self._unsent: dict[str, bytes] = {}
        self.probe_seconds = Gauge("loa_mqtt_probe_seconds", "How long the broker took to "
                                   "acknowledge the last probe", registry=registry)
        self.stalls = Counter("loa_mqtt_broker_stalls_total", "Sessions dropped because the "
                              "broker stopped acknowledging (frozen or wedged)",
                              registry=registry)
        self.republished = Counter("loa_mqtt_republished_total", "Retained messages published "
                                   "again after the broker missed them", registry=registry)
        self.unsent = Gauge("loa_mqtt_unsent_retained", "Retained messages waiting for the "
                            "broker", registry=registry)
        self.unsent.set_function(lambda: len(self._unsent))

    async def start(self) -> None:
        self._task = asyncio.create_task(connect_forever(
            "fleet", lambda: mqtt_client(self.addr, self.user, self._password, self.client_id,
                                         self.keepalive_s, tls_context=self.tls_context),
            self._session, self.metrics, self._backoff))

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])  # a cancellation lost in a connect: again
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

    async def push_configs(self, configs: Mapping[str, DeviceConfig], *,
                           concurrency: int = CONFIG_CONCURRENCY,
                           timeout_s: float = 5.0) -> list[str]:
        """Retain each speaker's config (speaker id → config), ``concurrency`` at a time: a
        zone edit may move thousands of speakers, and the broker takes them faster together
        than one after another, but not all at once. Returns the ids the broker did not
        acknowledge within ``timeout_s`` each; those are kept and published again when a
        session is up, like any retained message."""
        gate = asyncio.Semaphore(concurrency)
        late: list[str] = []

        async def push(speaker_id: str, cfg: DeviceConfig) -> None:
            async with gate:
                try:
                    await self.push_config(speaker_id, cfg, timeout_s)
                except TimeoutError:
                    late.append(speaker_id)

        await asyncio.gather(*(push(sid, cfg) for sid, cfg in configs.items()))
        return sorted(late)

    async def push_token(self, kind: str, device_id: str, grant: TokenGrant,
                         timeout_s: float = 5.0) -> None:
        """Retain ``grant`` as the device's subscription token (``control/grants.py``)."""
        await asyncio.wait_for(self._publish(device_topic(kind, device_id, "token"), grant,
                                             retain=True), timeout_s)

    async def push_keys(self, keys: StreamKeys, timeout_s: float = 5.0) -> None:
        """Retain ``keys`` as the fleet's stream key set (``control/keys.py``)."""
        await asyncio.wait_for(self._publish(KEYS_TOPIC, keys, retain=True), timeout_s)

    async def publish_emergency(self, zone: str, state: EmergencyState,
                                timeout_s: float = 5.0) -> None:
        """Retain ``state`` on the zone's emergency topic (every speaker below reads it)."""
        await asyncio.wait_for(self._publish(zone_emergency_topic(zone), state, retain=True),
                               timeout_s)

    async def retain(self, topic: str, payload: bytes, timeout_s: float = 5.0) -> None:
        """Retain raw ``payload`` on ``topic`` (empty: clear it); store and forward's signed
        plans and clip files (``control/forward.py``)."""
        await asyncio.wait_for(self._publish(topic, payload, retain=True), timeout_s)

    async def _publish(self, topic: str, message: Strict | bytes, retain: bool = False) -> None:
        payload = message if isinstance(message, bytes) else encode(message)
        if retain:  # kept until the broker has it, even if our caller stops waiting
            self._unsent.pop(topic, None)  # the latest goes last
            self._unsent[topic] = payload
        while True:
            await self._ready.wait()
            client = self._client
            if client is None:  # between two sessions
                await asyncio.sleep(0.05)
                continue
            try:
                await client.publish(topic, payload, qos=1, retain=retain)
            except aiomqtt.MqttError as e:  # lost the connection meanwhile: retry (the
                log.info("publish to %s failed: %s", topic, e)  # caller bounds the time)
                await asyncio.sleep(0.2)
                continue
            if retain and self._unsent.get(topic) is payload:
                del self._unsent[topic]
            return

    # ------------------------------------------------------------------ reception

    async def _session(self, client: aiomqtt.Client) -> None:
        await client.subscribe([(t, 1) for t in FLEET_TOPICS])
        self._client = client
        self._ready.set()
        tasks = [asyncio.create_task(self._receive(client)),
                 asyncio.create_task(self._probe(client))]
        if self._unsent:
            tasks.append(asyncio.create_task(self._republish(client)))
        try:
            done, _ = await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()  # BrokerStalled, or the connection's own error
        finally:
            self._ready.clear()
            self._client = None
            await cancel_and_wait(tasks)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            await self.handle(str(message.topic), payload_bytes(message))

    async def _probe(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sent = loop.time()
            try:
                await client.publish(PROBE_TOPIC, b"", qos=1, timeout=PROBE_TIMEOUT_S)
            except MqttCodeError:
                raise  # the connection is gone, and says so: not a stall
            except aiomqtt.MqttError as e:  # no acknowledgement in time
                self.stalls.inc()
                log.error("the broker did not acknowledge within %g s (%s): taken for dead; "
                          "presence will read unknown until it answers again",
                          PROBE_TIMEOUT_S, e)
                raise BrokerStalled(f"no acknowledgement within {PROBE_TIMEOUT_S:g} s") from e
            self.probe_seconds.set(loop.time() - sent)
            await asyncio.sleep(PROBE_EVERY_S)

    async def _republish(self, client: aiomqtt.Client) -> None:
        """Publish again what the broker missed (oldest first); a newer message for the same
        topic, published meanwhile, replaces the one kept and is not overwritten."""
        n = 0
        for topic, payload in list(self._unsent.items()):
            if self._unsent.get(topic) is not payload:
                continue
            await client.publish(topic, payload, qos=1, retain=True)
            if self._unsent.get(topic) is payload:
                del self._unsent[topic]
            self.republished.inc()
            n += 1
        log.warning("published again %d retained messages the broker had missed", n)

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
