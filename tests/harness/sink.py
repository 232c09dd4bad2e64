"""A packet sink for a mixer under test, in place of the fan-out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class Sent(list[tuple[str, bytes]]):
    """A packet sink for a mixer under test: every datagram handed out, as (channel, bytes),
    in the order the fan-out would send them; ``paused``: the channels the mixer said fell
    quiet, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.paused: list[str] = []

    def publish_block(self, channels: Sequence[str], block: np.ndarray) -> None:
        assert block.dtype == np.uint8 and block.flags.c_contiguous
        assert block.shape[0] == len(channels)
        self.extend(zip(channels, map(bytes, block), strict=True))

    def pause(self, channels: Sequence[str]) -> None:
        self.paused.extend(channels)
