"""The four priority levels (``docs/priorities.md``), the one definition every process uses.

The number is what the RTP priority header extension carries (``docs/protocol.md``: a speaker
plays level 3 at its emergency volume) and what the mixer's arbiter compares; the lower-case
name is what the API, the CLI and the records spell.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Literal, get_args


class Priority(IntEnum):
    BACKGROUND = 0
    NORMAL = 1
    PRIORITY = 2
    EMERGENCY = 3


#: a level by name, as API bodies and records spell it
PriorityName = Literal["emergency", "priority", "normal", "background"]
#: every level by name, highest first
PRIORITIES: tuple[PriorityName, ...] = get_args(PriorityName)
