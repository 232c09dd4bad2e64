"""Moving speakers to other leaf zones: the registry, the broker's ACL, their tokens and the
config that makes each speaker follow (``docs/mqtt.md``, "Config").

A speaker plays its leaf zone's channel. Moving it changes its registry record, then the
broker ACL (its new zone's topics), then issues it a token for the new channel, and retains a
:class:`~wire.messages.DeviceConfig` naming the channel: the speaker switches when it reads
it, now if it is online, else at its next connection. The retained config is the whole of
what the registry says the speaker should be (:func:`speaker_config`), so that pushing it
for one reason (a move, new relays) never drops what an earlier push set.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from wire.messages import DeviceConfig

from .models import Speaker

if TYPE_CHECKING:  # the plane builds the zone editor, which moves speakers with this
    from .plane import Plane

log = logging.getLogger("loa.control")


def speaker_config(speaker: Speaker) -> DeviceConfig:
    """The retained config of ``speaker``, from its record: its zone's channel and its
    relays (none: the upstreams it was installed with stay)."""
    return DeviceConfig(channel=speaker.zone, upstream=speaker.relays or None)


async def move_speakers(plane: Plane, moves: Mapping[str, str]) -> list[Speaker]:
    """Move each speaker (id → new leaf zone) and tell it; returns the records as they are
    now. Ids not in the registry are skipped; the zones are the caller's to check (leaf
    zones that exist). The broker's ACL is written once for all of them."""
    moved: list[Speaker] = []
    for sid, zone in moves.items():
        s = await plane.state.speakers.get(sid)
        if s is None:
            log.warning("move of speaker %s to %s: no such speaker", sid, zone)
            continue
        if s.zone != zone:
            s = s.model_copy(update={"zone": zone})
            await plane.state.speakers.put(s.id, s)
            plane.recorder.place(s.id, s.zone)
        moved.append(s)
    await follow(plane, moved)
    return moved


async def follow(plane: Plane, speakers: list[Speaker]) -> None:
    """After their records changed zone: the broker's ACL (their zone topics follow them),
    a token for each one's new channel, and the retained config that moves them."""
    if not speakers:
        return
    await plane.devices.sync_broker()
    if plane.tokens is not None:
        for s in speakers:
            plane.tokens.soon(s)
    if plane.fleet is not None:
        late = await plane.fleet.push_configs({s.id: speaker_config(s) for s in speakers})
        if late:
            log.warning("config of %d moved speakers not acknowledged yet (kept, sent when "
                        "the broker is back): %s", len(late), ", ".join(late[:20]))
