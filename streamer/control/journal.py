"""The write-behind journal: state writes that Redis could not take yet, in order, on disk.

While Redis is away the emergency and stop paths still air and stop (``docs/state.md``); what
they would have written — broadcast records, audit entries — waits here until Redis answers
again, then ``State.replay`` applies it oldest first. Each entry is one JSON line appended to
a file under the streamer's var dir and fsynced before the caller goes on, so a streamer
restart while Redis is down loses nothing either. Every entry carries a unique ``jid`` that
Redis records with the write itself (same transaction), which makes replaying twice harmless.

The file is only ever appended to, and emptied once everything in it has been applied. A
torn last line (the machine died mid-append) is dropped with a log line: its write had not
been acknowledged. File I/O runs in a worker thread, never on the event loop's frame time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections import deque
from pathlib import Path
from typing import Any

log = logging.getLogger("loa.state")

Entry = dict[str, Any]  # {"jid": str, "op": str, "data": {...}}


def new_entry(op: str, data: dict[str, Any]) -> Entry:
    return {"jid": uuid.uuid4().hex, "op": op, "data": data}


class Journal:
    """Pending writes, oldest first, mirrored to an append-only JSON-lines file (if any)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: deque[Entry] = deque()
        self._lock = asyncio.Lock()  # keeps the file in the order of ``entries``
        if path is not None and path.exists():
            self.entries.extend(_read(path))
            if self.entries:
                log.warning("state journal %s: %d writes waiting for Redis", path,
                            len(self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    async def append(self, e: Entry) -> None:
        """Queue ``e``; returns once it is on disk. A disk that refuses it (full, read-only)
        costs only the restart case: the entry is still replayed from memory, and the
        emergency that wrote it is on the air all the same."""
        self.entries.append(e)
        if self.path is None:
            return
        line = json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n"
        async with self._lock:
            try:
                await asyncio.to_thread(_append, self.path, line)
            except OSError as err:
                log.error("state journal %s: cannot write (%s): kept in memory only, lost if "
                          "the streamer stops before Redis is back", self.path, err)

    def find(self, op: str, key: str, value: Any) -> dict[str, Any] | None:
        """The newest pending ``op`` whose data has ``key == value``."""
        for e in reversed(self.entries):
            if e["op"] == op and e["data"].get(key) == value:
                return dict(e["data"])
        return None

    async def compact(self) -> None:
        """Empty the file once every entry has been applied."""
        if self.path is None:
            return
        async with self._lock:
            if not self.entries and self.path.exists():
                await asyncio.to_thread(_empty, self.path)


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _empty(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(0)
        os.fsync(f.fileno())


def _read(path: Path) -> list[Entry]:
    out: list[Entry] = []
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            e = json.loads(raw)
            if not (isinstance(e, dict) and isinstance(e.get("jid"), str)
                    and isinstance(e.get("op"), str) and isinstance(e.get("data"), dict)):
                raise ValueError("not a journal entry")
        except ValueError as err:  # a torn append, or damage: never acknowledged as written
            log.error("state journal %s line %d dropped: %s", path, n, err)
            continue
        out.append(e)
    return out
