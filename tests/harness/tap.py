"""What an in-process streamer's fan-out hands out on one channel, decoded: for tests that judge
a broadcast by what a speaker of that channel would hear."""

from __future__ import annotations

from typing import Any

import numpy as np
import opuslib

from wire.packet import HEADER_LEN
from wire.packet import parse as parse_rtp


class Tap:
    """The packets the fan-out hands out on one channel (priority, broadcast id, PCM)."""

    def __init__(self, streamer: Any, channel: str) -> None:
        self.channel = channel
        self.packets: list[tuple[int, int, bytes]] = []
        streamer.fanout.add_listener(channel, self._heard)

    def _heard(self, data: bytes) -> None:
        if len(data) > HEADER_LEN and 200 > data[1] & 0x7F:
            p = parse_rtp(data)
            self.packets.append((p.priority, p.broadcast_id, p.payload))

    def pcm(self, broadcast_id: int) -> np.ndarray:
        dec = opuslib.Decoder(48_000, 1)
        frames = [np.frombuffer(dec.decode(payload, 960), dtype=np.int16)
                  for _, bid, payload in self.packets if bid == broadcast_id]
        return np.concatenate(frames).astype(np.float32) / 32768.0 if frames else np.zeros(0)

    def priorities(self, broadcast_id: int) -> set[int]:
        return {prio for prio, bid, _ in self.packets if bid == broadcast_id}
