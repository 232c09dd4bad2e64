"""Files that hold secrets (passwords, tokens, broker logins): one way to write them.

Written to a temporary file created with mode 0600 (never readable by others, not even for a
moment), flushed to disk, then renamed over the real name, so a reader sees the old or the new
content and never half of one. Standard library only: ``loa ctl`` uses it too.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
