"""The trust keys of a device's config (relays and speakers): which streamer keys it pins, the
key sets the streamer pushes, and the subscription token it presents.

``stream_keys`` are the streamer's Ed25519 public keys (base64 of 32 bytes, as the streamer
logs and prints them at start, ``stream_key``): the root of the device's trust. The streamer
pushes key sets over MQTT (``wire/keyset.py``); :class:`TrustedKeys` takes one only when a key
the device trusts signed it, and then trusts the pinned keys and the set's keys, and keeps the
set in ``keys_file`` for its next start. The pinned keys are never taken away by a push.
``verify_media = false`` turns verification off — only for a test bench: a device that does
not verify plays whatever reaches it (``docs/operations.md``, "Signing keys").
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from common.config import ConfigError
from common.secretfile import write_private
from wire import keyset
from wire.auth import REQUESTED, BadKey, Keyring, decode_public, key_id

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger("loa.trust")


@dataclass
class StreamTrustKeys:
    stream_keys: list[str] = field(default_factory=list)
    verify_media: bool = True
    #: where the last key set the streamer pushed is kept (0600), read at start ("": nowhere:
    #: a restart forgets it until the streamer's retained set arrives again)
    keys_file: str = ""

    def trusted_keys(self) -> TrustedKeys | None:
        """The pinned keys and the kept key set (None: no key pinned and verification off);
        ``ConfigError`` names a bad key or an unusable ``keys_file``."""
        if not self.stream_keys:
            if not self.verify_media:
                return None
            raise ConfigError("stream_keys", "pin at least one streamer public key (the "
                              "streamer prints it at start as stream_key)")
        try:
            pinned = [decode_public(t) for t in self.stream_keys]
        except BadKey as e:
            raise ConfigError("stream_keys", str(e)) from None
        try:
            return TrustedKeys(pinned, self.keys_file)
        except (OSError, ValueError) as e:
            raise ConfigError("keys_file", str(e)) from None

    @property
    def keyring(self) -> Keyring | None:
        """The keys media must be signed with (None: verification is off), checked."""
        trusted = self.trusted_keys()
        return trusted.keyring if trusted is not None and self.verify_media else None


class TrustedKeys:
    """The streamer keys a device trusts: the pinned ones (config), and those of the last key
    set the streamer pushed that a trusted key endorsed (``wire/keyset.py``).

    :attr:`keyring` is one :class:`~wire.auth.Keyring` for the device's whole life: its media
    gates and token checks hold it, and a set taken replaces its content in place, so they
    verify with the new keys from their next lookup. A set is taken only when it is signed by
    a key trusted now (pinned or pushed), is newer than the one held, and not dated ahead of
    this clock; every offer is counted by outcome in :attr:`outcomes`. The set taken is kept
    in ``path`` (0600, replaced atomically) and read again at start.
    """

    def __init__(self, pinned: list[bytes], path: str = "") -> None:
        """``pinned``: raw public keys. Raises ValueError for a ``path`` that does not hold a
        key set, OSError for one that cannot be read (a missing file: no set yet)."""
        self.pinned = list(pinned)
        self.path = path
        self.held: keyset.KeySet | None = None
        self.keyring = Keyring(self.pinned)
        self.outcomes = dict.fromkeys(keyset.OUTCOMES, 0)
        if path:
            self._load(path)

    def _load(self, path: str) -> None:
        try:
            with open(path, "rb") as f:
                text = f.read().strip()
        except FileNotFoundError:
            return  # nothing pushed yet
        try:
            ks = keyset.parse(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError) as e:  # MalformedPacket is a ValueError
            raise ValueError(f"{path} does not hold a key set: {e}") from None
        # Not verified again: its endorser may be a pushed key of an earlier set, long gone.
        # The file is the device's own (0600), as trusted as its config beside it.
        self._take(ks)

    def offer(self, data: bytes, now: float) -> str:
        """A key set pushed by the streamer; its outcome (``keyset.OUTCOMES``), counted. An
        ``accepted`` one is trusted from now on and kept in the file."""
        verdict = keyset.verify(self.keyring, data, now, self.held)
        if isinstance(verdict, str):
            self.outcomes[verdict] += 1
            if verdict != keyset.CURRENT:
                log.warning("stream key set refused (%s)", verdict)
            return verdict
        if self.path:
            try:
                write_private(self.path, base64.b64encode(data).decode() + "\n")
            except OSError as e:  # trusted all the same: the streamer's set is retained
                log.error("stream key set not kept in %s: %s", self.path, e)
        self._take(verdict)
        self.outcomes[keyset.ACCEPTED] += 1
        log.info("stream keys now %s (pinned) and %s (key set of %.0f, endorsed by %08x)",
                 _ids(self.pinned), _ids(verdict.keys), verdict.issued, verdict.endorser)
        return keyset.ACCEPTED

    def offer_now(self, data: bytes) -> None:
        """:meth:`offer` on this machine's clock (what a device's MQTT link calls)."""
        self.offer(data, time.time())

    def _take(self, ks: keyset.KeySet) -> None:
        self.held = ks
        self.keyring.replace([*self.pinned, *ks.keys])


def _ids(keys: Iterable[bytes]) -> str:
    return ", ".join(f"{key_id(k):08x}" for k in keys) or "none"


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
    # imported here: a speaker with no HTTP and no MQTT never loads prometheus_client
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
        if outcome != REQUESTED:
            outcomes.add_metric([outcome], n)
    yield outcomes
    yield CounterMetricFamily("loa_media_auth_loas_requested",
                              "LOAS overdue and asked for again from the upstream (RESEND)",
                              value=loas.get(REQUESTED, 0))


def keys_metrics(trusted: TrustedKeys | None) -> Iterable[Metric]:
    """``loa_stream_keys_*`` (``docs/metrics.md``, "Signed media"): the key sets the streamer
    pushed, by outcome, and the keys trusted now."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # as above

    if trusted is None:
        return
    updates = CounterMetricFamily("loa_stream_keys_updates",
                                  "Stream key sets received over MQTT, by outcome",
                                  labels=["outcome"])
    for outcome, n in trusted.outcomes.items():
        updates.add_metric([outcome], n)
    yield updates
    keys = GaugeMetricFamily("loa_stream_key_trusted", "1 for each streamer key trusted now "
                             "(source: pinned in the config, or pushed in a key set)",
                             labels=["key_id", "source"])
    pushed = trusted.held.keys if trusted.held is not None else ()
    for raw in dict.fromkeys([*trusted.pinned, *pushed]):
        keys.add_metric([f"{key_id(raw):08x}", "pinned" if raw in trusted.pinned else "pushed"],
                        1)
    yield keys
    yield GaugeMetricFamily("loa_stream_keys_issued_seconds", "When the key set held was "
                            "issued (Unix time; 0: none)",
                            value=trusted.held.issued if trusted.held is not None else 0.0)
