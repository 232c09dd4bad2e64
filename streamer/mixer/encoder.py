"""Opus encoding of one program (libopus via opuslib): speech-friendly defaults from DESIGN.md.

VBR, in-band FEC on (so a speaker can rebuild a lost packet from the next one), DTX off (so
the stream is continuous and a silent channel is still a live channel), 32 kb/s by default.
One encoder per distinct program, never one per channel or per subscriber.
"""

from __future__ import annotations

import numpy as np
import opuslib
import opuslib.api.ctl
import opuslib.api.encoder

RATE_HZ = 48_000


class OpusEncoder:
    def __init__(self, frame_samples: int, bitrate: int = 32_000, loss_perc: int = 10) -> None:
        self.frame_samples = frame_samples
        self._enc = opuslib.Encoder(RATE_HZ, 1, opuslib.APPLICATION_AUDIO)
        self._enc.bitrate = bitrate
        self._enc.vbr = 1
        # opuslib 3.0.1's `inband_fec` property setter drops its value (TypeError), so the
        # CTL is called directly.
        opuslib.api.encoder.encoder_ctl(self._enc.encoder_state, opuslib.api.ctl.set_inband_fec, 1)
        # FEC is only emitted when the encoder expects loss; 10 % suits 4G links.
        self._enc.packet_loss_perc = loss_perc

    @property
    def lookahead_samples(self) -> int:
        """Samples by which decoded audio lags the input (312 at 48 kHz, RFC 7845 pre-skip)."""
        return int(self._enc.lookahead)

    def encode(self, pcm: np.ndarray) -> bytes:
        if pcm.dtype != np.float32 or len(pcm) != self.frame_samples:
            raise ValueError("encode wants one frame of float32 samples")
        return bytes(self._enc.encode_float(pcm.tobytes(), self.frame_samples))
