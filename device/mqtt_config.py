"""The MQTT settings of a device (a speaker or a relay) and of the streamer's broker
connection, checked before any socket opens: broker URLs, TLS files, passwords.

Pure configuration: it imports no MQTT client, no metrics and no message schema, so that a
speaker without a control plane never loads them (``docs/operations.md``, "A small speaker";
the MQTT side is ``edge.py`` and ``link.py``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from common.config import ConfigError, check_range
from common.tls import check_pair, client_context
from wire.ids import valid_device_id


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


@dataclass(frozen=True)
class DeviceMqtt:
    """The MQTT settings of a speaker or a relay, checked (:func:`device_mqtt` makes them):
    the broker, the login (``user`` is the device id unless set) and the two periods."""

    url: str
    user: str
    password_file: str
    keepalive_s: int = 30
    telemetry_s: float = 10.0
    #: ``mqtts://`` only: PEM files of the CA that signed the broker's certificate (None: the
    #: system's CAs) and of a client certificate and its key for a broker that asks for one
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def tls_context(self) -> ssl.SSLContext | None:
        """The client TLS context of an ``mqtts://`` broker, None for ``mqtt://``; reads the
        files, so a bad one raises a ``ConfigError`` naming ``mqtt_ca``/``mqtt_cert``/
        ``mqtt_key`` before any socket opens."""
        return broker_tls_context(self.url, self.ca, self.cert, self.key)

    def password(self) -> str:
        """The password, read from its file; raises ``ConfigError("mqtt_password_file")``
        naming the file, never its content."""
        try:
            return read_password_file(self.password_file)
        except (OSError, ValueError) as e:
            raise ConfigError("mqtt_password_file", f"{self.password_file}: {e}") from None


def device_mqtt(device_id: str, url: str | None, user: str, password_file: str | None,
                keepalive_s: int, telemetry_s: float, ca: str | None = None,
                cert: str | None = None, key: str | None = None) -> DeviceMqtt | None:
    """A device config's flat MQTT keys (``mqtt_url``, ``mqtt_user``, ``mqtt_password_file``,
    ``mqtt_keepalive_s``, ``telemetry_s``, ``mqtt_ca``, ``mqtt_cert``, ``mqtt_key``, and its
    ``id``) checked into a :class:`DeviceMqtt`; None without ``mqtt_url`` (no control plane).
    Each bad one raises a ``ConfigError`` naming it; the periods are checked even with no
    broker, so that a typo never waits for one."""
    check_range("mqtt_keepalive_s", keepalive_s, 1, 3600)
    check_range("telemetry_s", telemetry_s, 0.2, 86_400)
    check_mqtt_tls(url, ca, cert, key)
    if not url:
        return None
    if not password_file:
        raise ConfigError("mqtt_password_file", "required with mqtt_url")
    if not valid_device_id(device_id):
        raise ConfigError("id", f"{device_id!r} cannot name MQTT topics "
                                "(letters, digits, '.', '_', '-')")
    return DeviceMqtt(url=url, user=user or device_id, password_file=password_file,
                      keepalive_s=keepalive_s, telemetry_s=telemetry_s, ca=ca, cert=cert,
                      key=key)


@dataclass
class DeviceMqttKeys:
    """The MQTT keys of a device's config, written once for relays and speakers: their configs
    (``RelayConfig``, ``SpeakerConfig``) are dataclasses built on this one.

    The keys stay flat (``mqtt_url``, not ``mqtt.url``) so that the flags, ``LOA_RELAY_MQTT_*``
    and ``LOA_SPEAKER_MQTT_*`` variables and TOML keys the docs name keep working as they are
    (``common.config.load`` reads flat fields only); :attr:`mqtt` builds the checked
    :class:`DeviceMqtt` from them, as the streamer's ``opus`` settings are built from its
    ``opus_*`` keys. A config overrides ``id`` with a default of its own.
    """

    id: str = ""
    mqtt_url: str | None = None
    mqtt_user: str = ""
    mqtt_password_file: str | None = None
    mqtt_keepalive_s: int = 30
    telemetry_s: float = 10.0
    mqtt_ca: str | None = None
    mqtt_cert: str | None = None
    mqtt_key: str | None = None

    @property
    def mqtt(self) -> DeviceMqtt | None:
        """The checked MQTT settings (None: no control plane); ``ConfigError`` names a bad key."""
        return device_mqtt(self.id, self.mqtt_url, self.mqtt_user, self.mqtt_password_file,
                           self.mqtt_keepalive_s, self.telemetry_s, self.mqtt_ca,
                           self.mqtt_cert, self.mqtt_key)


def read_password_file(path: str) -> str:
    """The first line of ``path``, stripped; raises OSError or ValueError (empty)."""
    with open(path, encoding="utf-8") as f:
        password = f.readline().strip()
    if not password:
        raise ValueError("the file is empty")
    return password

