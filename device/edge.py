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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from prometheus_client import CollectorRegistry, Counter, Gauge

from device.mqtt_config import BrokerAddress

log = logging.getLogger("loa.mqtt")

LOG_EVERY_S = 10.0


class Backoff:
    """Exponential, jittered: after a broker restart thousands of devices must not all come
    back in the same second. ``max_s`` bounds how long after the broker's return a device is
    back (and its presence right): a device's is 8 s (``DeviceLink``)."""

    def __init__(self, first_s: float = 0.5, max_s: float = 8.0) -> None:
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


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and return once every one has ended, cancelling again until it has.
    Once is not always enough: on Python 3.11, ``asyncio.wait_for`` (which aiomqtt awaits each
    acknowledgement with) drops a cancellation that arrives as its inner future completes, and
    a session's loop (the fleet's probe, a device's telemetry) that lost its cancellation that
    way would run on, keeping the session open and whoever closes it waiting for ever.

    What the tasks raise is the session's end, said elsewhere: it is retrieved as each ends,
    so that nothing says "Task exception was never retrieved" at exit, even when this wait is
    itself cancelled (a ``close`` cancelling the session again) before they have ended."""
    tasks = list(tasks)
    for t in tasks:
        t.add_done_callback(_retrieve)
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def payload_bytes(message: aiomqtt.Message) -> bytes:
    p = message.payload
    return p if isinstance(p, bytes) else str(p if p is not None else "").encode()
