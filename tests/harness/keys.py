"""The streamer key of the test session: in-test upstreams and the ``streamer`` fixture sign
with it, and speakers and relays the tests start pin it (``STREAM_KEY_ARGS``), so that every
test's media is signed and verified as in the field. Streamers and relays require subscription
tokens by default, so every subscriber the tests start presents one signed with this key
(``token_for``, ``with_trust``) unless the test is about having none."""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from pathlib import Path

from wire import token
from wire.auth import SigningKey

TEST_KEY = SigningKey.generate()
STREAM_KEY_ARGS = ("--stream-key", TEST_KEY.public_text)
#: the harness's subscription tokens outlast any test run, on any clock the suite is run at
TOKEN_LIFETIME_S = 2 * 86_400


def write_test_key(path: Path) -> str:
    """The session's key as a PEM file at ``path`` (a streamer's ``signing_key``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(TEST_KEY.to_pem())
    path.chmod(0o600)
    return str(path)


def listen_query(channel: str) -> str:
    """``?token=…``: a listen-in token for ``channel`` signed with the session's key, as
    ``POST /api/v1/listen`` gives one."""
    data = token.issue(TEST_KEY, token.LISTEN_PREFIX + "test", [channel], time.time(), 600)
    return "?token=" + token.to_url(data)


def with_stream_key(args: tuple[str, ...] | list[str]) -> list[str]:
    """``args`` plus the session's key unless they pin keys or turn verification off."""
    if "--stream-key" in args or "--verify-media" in args:
        return list(args)
    return [*args, *STREAM_KEY_ARGS]


def token_for(identity: str, channels: Sequence[str] = ("*",)) -> bytes:
    """A subscription token for ``identity`` on ``channels`` (default all), signed with the
    session's key, valid from now for ``TOKEN_LIFETIME_S``."""
    return token.issue(TEST_KEY, identity, channels, time.time(), TOKEN_LIFETIME_S)


def token_args(directory: Path, identity: str, channels: Sequence[str] = ("*",)) -> list[str]:
    """``--token-file <directory>/<identity>.token``, the file holding ``token_for(identity,
    channels)`` as ``loa token`` writes it."""
    path = directory / f"{identity}.token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(base64.b64encode(token_for(identity, channels)).decode() + "\n")
    return ["--token-file", str(path)]


def with_trust(args: tuple[str, ...] | list[str], directory: Path, identity: str) -> list[str]:
    """``with_stream_key(args)``, plus a token for ``identity`` unless ``args`` name a token
    file (``--token-file ""``: none, for a test about subscribing without one)."""
    out = with_stream_key(args)
    if "--token-file" in out:
        return out
    return [*out, *token_args(directory, identity)]
