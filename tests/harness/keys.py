"""The streamer key of the test session: in-test upstreams and the ``streamer`` fixture sign
with it, and speakers and relays the tests start pin it (``STREAM_KEY_ARGS``), so that every
test's media is signed and verified as in the field."""

from __future__ import annotations

import time
from pathlib import Path

from wire import token
from wire.auth import SigningKey

TEST_KEY = SigningKey.generate()
STREAM_KEY_ARGS = ("--stream-key", TEST_KEY.public_text)


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
