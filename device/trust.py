"""The trust keys of a device's config (relays and speakers): which streamer keys it pins.

``stream_keys`` are the streamer's Ed25519 public keys (base64 of 32 bytes, as the streamer
logs and prints them at start, ``stream_key``), two during a rotation. ``verify_media = false``
turns verification off — only for a test bench: a device that does not verify plays whatever
reaches it (``docs/operations.md``, "Signing keys").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config import ConfigError
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
