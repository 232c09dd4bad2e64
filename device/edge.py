"""The MQTT edge both ends of the control plane share: broker addresses, the aiomqtt client
with its settings, the reconnect loop with jittered backoff, metrics and rate-limited logs.

Used by the streamer's ``Fleet`` (``streamer/control/fleet.py``) and by every device's
:class:`~device.link.DeviceLink`. It knows no topic and no payload (``messages.py`` does) and
imports nothing of the server: a relay or a speaker runs with it alone. A dead broker or a bug
in a session must never end the loop: :func:`connect_forever` logs and reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from prometheus_client import CollectorRegistry, Counter, Gauge

from common.config import ConfigError
from common.tls import check_pair, client_context

log = logging.getLogger("loa.mqtt")

LOG_EVERY_S = 10.0


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


def check_mqtt_tls(url: str | None, ca: str | None, cert: str | None,
                   key: str | None) -> None:
    """The TLS keys of an MQTT connection: ``mqtt_url`` must parse, ``mqtt_cert`` and
    ``mqtt_key`` come together, and none of the three means anything without ``mqtts://`` (a
    CA set beside ``mqtt://`` would look like encryption and be none). Reads no file:
    :func:`mqtt_tls_context` does, at start-up. Each bad key is a ``ConfigError`` naming it."""
    addr = None
    if url:
        try:
            addr = parse_mqtt_url(url)
        except ValueError as e:
            raise ConfigError("mqtt_url", str(e)) from None
    check_pair("mqtt_cert", cert, "mqtt_key", key)
    for name, value in (("mqtt_ca", ca), ("mqtt_cert", cert), ("mqtt_key", key)):
        if value and not (addr and addr.tls):
            raise ConfigError(name, "only with an mqtts:// mqtt_url")


def mqtt_tls_context(ca: str | None = None, cert: str | None = None,
                     key: str | None = None) -> ssl.SSLContext:
    """The client side of ``mqtts://``: verifies the broker against ``ca`` (PEM; None: the
    system's CAs) and presents ``cert``/``key`` if set; ``ConfigError`` names a bad file."""
    return client_context(ca or None, cert or None, key or None, ca_field="mqtt_ca",
                          cert_field="mqtt_cert", key_field="mqtt_key")


def broker_tls_context(url: str | None, ca: str | None, cert: str | None,
                       key: str | None) -> ssl.SSLContext | None:
    """:func:`mqtt_tls_context` for an ``mqtts://`` ``url``, None for ``mqtt://`` or none."""
    return mqtt_tls_context(ca, cert, key) if url and parse_mqtt_url(url).tls else None


def mqtt_client(addr: BrokerAddress, user: str, password: str, client_id: str,
                keepalive_s: int, will: aiomqtt.Will | None = None, *,
                tls_context: ssl.SSLContext | None = None) -> aiomqtt.Client:
    """A client for ``addr``; ``mqtts://`` uses ``tls_context`` (None: the system's CAs)."""
    return aiomqtt.Client(
        addr.host, addr.port, username=user, password=password, identifier=client_id,
        keepalive=keepalive_s, will=will, clean_session=True, timeout=10,
        tls_context=(tls_context or ssl.create_default_context()) if addr.tls else None,
        max_queued_incoming_messages=10_000, logger=logging.getLogger("loa.mqtt.paho"),
    )


async def connect_forever(name: str, make_client: Callable[[], aiomqtt.Client],
                          session: Callable[[aiomqtt.Client], Awaitable[None]],
                          metrics: MqttMetrics, backoff: Backoff) -> None:
    """Run ``session`` on a fresh connection, again and again, until cancelled."""
    while True:
        connected = False
        try:
            async with make_client() as client:
                connected = True
                backoff.reset()
                metrics.connected.set(1)
                log.info("%s: connected to the broker", name)
                await session(client)
        except MqttConnectError as e:
            log.error("%s: broker refused the login: %s", name, e)
        except (aiomqtt.MqttError, OSError) as e:  # a TLS handshake refused says why here
            log.warning("%s: %s: %s", name, "broker connection lost" if connected else
                        "cannot connect to the broker", e)
        except Exception:  # a bug must not end the control plane for good: log, reconnect
            log.exception("%s: MQTT session failed", name)
        finally:
            metrics.connected.set(0)
        await asyncio.sleep(backoff.next())


def payload_bytes(message: aiomqtt.Message) -> bytes:
    p = message.payload
    return p if isinstance(p, bytes) else str(p if p is not None else "").encode()
