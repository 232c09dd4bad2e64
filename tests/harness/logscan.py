"""No secret in any log: every secret the suite wrote to a file (passwords, tokens, private
keys, admin credentials) looked for in every log it wrote (``*.log``, ``*.stderr``,
``*.jsonl``, anything under a ``logs`` directory). ``tests/conftest.py`` runs it over the
session's temporary directory when the session ends and fails the run on a find."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

LOG_SUFFIXES = {".log", ".stderr", ".jsonl"}
#: a directory holding this file planted secrets on purpose (the scanner's own test)
PLANTED = ".logscan-planted"
MIN_SECRET = 12  # shorter strings are test fixtures' placeholders, and would match anything
PEM_MARK = "PRIVATE KEY-----"


def is_log(path: Path) -> bool:
    return path.suffix in LOG_SUFFIXES or "logs" in path.parts[-3:-1]


def secrets_in(path: Path) -> list[str]:
    """The secret strings a file holds, by its name: a password file, a token file, the
    first admin's credentials, a PEM private key (its base64 lines)."""
    name = path.name
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    if name.endswith(".pem") and PEM_MARK in text:
        return [line for line in text.splitlines() if line and not line.startswith("-----")]
    if name == "admin-credentials.json":
        try:
            return [str(json.loads(text)["password"])]
        except (ValueError, KeyError, TypeError):
            return []
    if "password" in name or name.endswith(".token"):
        first = text.strip().splitlines()[0] if text.strip() else ""
        return [first]
    return []


def leaks(root: Path, extra: Iterable[str] = (), *, skip_planted: bool = True
          ) -> Iterator[tuple[Path, str]]:
    """(log file, what leaked) for every secret found in a log under ``root`` (but under a
    directory marked ``PLANTED``, unless ``skip_planted`` is false)."""
    planted = [p.parent for p in root.rglob(PLANTED)] if skip_planted else []
    files = [p for p in root.rglob("*")
             if p.is_file() and not any(d in p.parents for d in planted)]
    found = {s for p in files if not is_log(p) for s in secrets_in(p)} | set(extra)
    found = {s for s in found if len(s) >= MIN_SECRET}
    for path in files:
        if not is_log(path):
            continue
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if PEM_MARK in text:
            yield path, "a PEM private key"
        for s in found:
            if s in text:
                yield path, f"a secret ({s[:4]}…, {len(s)} chars)"
