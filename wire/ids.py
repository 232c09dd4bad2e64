"""Zone and device ids, as topics, records and the API spell them (``docs/mqtt.md``).

A zone id is a dotted path from the province down (``brvt.vung-tau.p1``); a device id is one
token that can never escape its MQTT topic level (no ``/``, ``+`` or ``#``). Pure code.
"""

from __future__ import annotations

import re

ZONE_ID_RE = r"^[a-z0-9][a-z0-9-]{0,31}(\.[a-z0-9][a-z0-9-]{0,31})*$"
DEVICE_ID_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def ancestors(zone_id: str) -> list[str]:
    """``a.b.c`` → ``[a, a.b, a.b.c]``."""
    parts = zone_id.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def valid_device_id(device_id: str) -> bool:
    return re.fullmatch(DEVICE_ID_RE, device_id) is not None


def valid_zone_id(zone: str) -> bool:
    return len(zone) <= 400 and re.fullmatch(ZONE_ID_RE, zone) is not None
