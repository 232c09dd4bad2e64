"""The trust keys of a device's config (relays and speakers): which streamer keys it pins, and
the subscription token it presents.

``stream_keys`` are the streamer's Ed25519 public keys (base64 of 32 bytes, as the streamer
logs and prints them at start, ``stream_key``), two during a rotation. ``verify_media = false``
turns verification off — only for a test bench: a device that does not verify plays whatever
reaches it (``docs/operations.md``, "Signing keys").
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from common.config import ConfigError
from common.secretfile import write_private
from wire.auth import BadKey, Keyring


@dataclass
class StreamTrustKeys:
    stream_keys: list[str] = field(default_factory=list)
    verify_media: bool = True

    @property
    def keyring(self) -> Keyring | None:
        """The pinned keys (None: verification is off); ``ConfigError`` names a bad key."""
        if not self.verify_media:
            return None
        if not self.stream_keys:
            raise ConfigError("stream_keys", "pin at least one streamer public key (the "
                              "streamer prints it at start as stream_key)")
        try:
            return Keyring.from_text(self.stream_keys)
        except BadKey as e:
            raise ConfigError("stream_keys", str(e)) from None


@dataclass
class TokenKeys:
    """The subscription token a device presents upstream (``wire/token.py``): a file holding
    it in base64, as ``loa token`` writes it. The device reads it again when it changes, so
    whatever renews it (provisioning, a cron job) needs no restart."""

    token_file: str = ""

    def token_source(self) -> TokenFile | None:
        """The token file (None: not configured). A file that does not exist yet is fine:
        the device waits for its token (over MQTT, or someone writing the file)."""
        if not self.token_file:
            return None
        source = TokenFile(self.token_file)
        try:
            source.read()
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            raise ConfigError("token_file", str(e)) from None
        return source


class TokenFile:
    """A token file, read again when its modification time changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.token = b""
        self._mtime = -1.0

    def read(self) -> bytes:
        """The token now in the file; raises OSError or ValueError (not base64, empty)."""
        with open(self.path, "rb") as f:
            text = f.read().strip()
        try:
            token = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{self.path} does not hold a base64 token") from None
        if not token:
            raise ValueError(f"{self.path} is empty")
        self.token = token
        self._mtime = os.stat(self.path).st_mtime
        return token

    def write(self, token: bytes) -> None:
        """Keep ``token`` in the file (0600, replaced atomically) as the one in use."""
        write_private(self.path, base64.b64encode(token).decode() + "\n")
        self.token = token
        self._mtime = os.stat(self.path).st_mtime

    def poll(self) -> bytes | None:
        """The new token if the file changed since it was last read (None otherwise, and
        when it cannot be read now: the old token stays in use)."""
        try:
            if os.stat(self.path).st_mtime == self._mtime:
                return None
            before = self.token
            token = self.read()
        except (OSError, ValueError):
            return None
        return token if token != before else None


def auth_metrics(enabled: bool, dropped: Mapping[str, int], loas: Mapping[str, int],
                 what: str) -> Iterable[Metric]:
    """``loa_media_auth_*`` (``docs/metrics.md``, "Signed media") from a receiver's gate
    counters, at scrape time; ``what`` says what verification guards on this kind of device."""
    yield GaugeMetricFamily("loa_media_auth_enabled", f"1 when {what} (verify_media)",
                            value=float(enabled))
    if not enabled:
        return
    drops = CounterMetricFamily("loa_media_auth_dropped",
                                "Media packets never proven, by reason", labels=["reason"])
    for reason, n in dropped.items():
        drops.add_metric([reason], n)
    yield drops
    outcomes = CounterMetricFamily("loa_media_auth_loas", "LOAS signature packets, by outcome",
                                   labels=["outcome"])
    for outcome, n in loas.items():
        outcomes.add_metric([outcome], n)
    yield outcomes
