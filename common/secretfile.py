"""Secrets (passwords, tokens, broker logins): one way to make them, one way to write them.

Written to a temporary file created with mode 0600 (never readable by others, not even for a
moment), flushed to disk, then renamed over the real name, so a reader sees the old or the new
content and never half of one. Standard library only: ``loa ctl`` uses it too; so does the
speaker for its emergency cache, which must never be half-written either.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def new_secret(nbytes: int) -> str:
    """``nbytes`` random bytes as URL-safe text that never starts with ``-``.

    Every secret Loa makes ends up after an option on somebody's command line (``loa ctl
    --token T``, ``loa loadtest --token T``, ``--password P``), and argparse takes ``-xyz``
    there for an option of its own: one token in 64 would be refused by the tools meant to
    use it. Drawing again costs nothing and keeps the full ``nbytes`` of randomness."""
    while (text := secrets.token_urlsafe(nbytes)).startswith("-"):
        pass
    return text


def write_private(path: str | Path, content: str | bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    data = content.encode() if isinstance(content, str) else content
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
