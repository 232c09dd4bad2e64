"""Where the control plane moved this speaker, kept across restarts.

A retained config can move the speaker to another zone (``DeviceConfig.channel``: a runtime
zone edit, or ``PATCH /speakers/{id}``). The installer's config file still names the channel
the speaker was installed on, and after a restart the speaker would ask for that one until the
retained config moved it again: for ever, if the broker is out of reach then, and the old
channel may be gone (a merged commune) or refused (the token is for the new one). So a move
is kept beside the emergency cache as ``moved.json``, ``{"from": configured, "to": channel}``,
and taken at start only while the config file still names ``from``: an installer who writes
another channel into the config (the speaker re-hung elsewhere) is obeyed, and the file is
dropped. Reading never raises: a damaged file is logged and ignored (the retained config
moves the speaker again once the broker answers)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from common.secretfile import write_private
from wire.ids import valid_zone_id

log = logging.getLogger("loa.speaker")

FILE = "moved.json"


def moved_to(directory: Path, configured: str) -> str | None:
    """The channel the speaker was moved to from ``configured``, or None (never moved, moved
    back, or the config file names another channel now)."""
    path = directory / FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s unreadable, ignored: %s", path, e)
        return None
    to = data.get("to") if isinstance(data, dict) else None
    if not isinstance(to, str) or not valid_zone_id(to):
        log.warning("%s names no channel, ignored", path)
        return None
    if data.get("from") != configured:
        log.info("the config names channel %s now, not %s: the move to %s is dropped",
                 configured, data.get("from"), to)
        _drop(path)
        return None
    return to


def remember(directory: Path, configured: str, channel: str) -> None:
    """Keep that the speaker, configured on ``configured``, now plays ``channel`` (blocking: a
    worker thread's job). Moved back to its configured channel, there is nothing to keep."""
    path = directory / FILE
    if channel == configured:
        _drop(path)
        return
    try:
        write_private(path, json.dumps({"from": configured, "to": channel}))
    except OSError as e:  # a full or read-only disk: the retained config moves it again
        log.warning("the move to %s is not kept: %s", channel, e)


def _drop(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        log.warning("%s: %s", path, e)
