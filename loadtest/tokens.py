"""Subscription tokens for a load test's simulated speakers and relays.

Streamers and relays require a token of every subscriber by default (``docs/operations.md``,
"Subscription tokens"), so a load test's subscribers present real ones: signed with the key
the load test gave the streamer it started (or, against a running stack, the key file the
operator passes), one per subscriber identity, issued once when its process starts, never per
packet. Without a key they present none, which only a relay with ``require_tokens = false``
accepts.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from pathlib import Path

from common.secretfile import write_private
from wire import token
from wire.auth import SigningKey

#: longer than any run (the children exit on their own well before)
LIFETIME_S = 86_400.0


def load_key(path: str) -> SigningKey | None:
    """The signing key in PEM file ``path`` ("": none)."""
    return SigningKey.from_pem(Path(path).read_bytes()) if path else None


def issue_all(key: SigningKey | None, identities: Sequence[str],
              channels: Sequence[str]) -> list[bytes]:
    """Each identity's token for its channel (``b""`` for every one without a key)."""
    if key is None:
        return [b""] * len(identities)
    now = time.time()
    return [token.issue(key, who, [ch], now, LIFETIME_S)
            for who, ch in zip(identities, channels, strict=True)]


def write_token_file(key: SigningKey, identity: str, path: Path) -> str:
    """A token for ``identity`` on every channel in ``path`` (0600, as ``loa token`` writes
    it), for a relay's ``--token-file``; returns the path."""
    data = token.issue(key, identity, ["*"], time.time(), LIFETIME_S)
    write_private(path, base64.b64encode(data).decode() + "\n")
    return str(path)
