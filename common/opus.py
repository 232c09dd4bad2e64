"""Opus encoding of one program (libopus via opuslib), with the deployment's ``OpusSettings``.

Application, complexity, in-band FEC with its expected loss, and the VBR bit rate are set per
deployment (streamer keys ``opus_*`` and ``bitrate``). The defaults were chosen by
``loadtest/bench_codec.py`` (quality against CPU on Vietnamese speech and music, clean and
through 10 % loss; the table and the reasons are in ``docs/BENCHMARKS.md``, "Opus settings"):
``audio``, complexity 5 (the speech quality of 10 at half its CPU), in-band FEC on sized for
10 % loss (so a speaker rebuilds a lost packet from the next one), 32 kb/s VBR. DTX stays off,
so the stream is continuous and a silent channel is still a live channel. One encoder per
distinct program, never one per channel or per subscriber.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np
import opuslib
import opuslib.api.ctl
import opuslib.api.encoder

from common.config import ConfigError, check_range

RATE_HZ = 48_000
#: the longest Opus packet (RFC 6716, 3.4: 1275 bytes a frame, up to 3 frames)
MAX_PACKET_BYTES = 3 * 1275 + 7

#: the ``opus_application`` names a deployment may choose, and libopus's constant for each
APPLICATIONS = {
    "audio": opuslib.APPLICATION_AUDIO,
    "voip": opuslib.APPLICATION_VOIP,
    "lowdelay": opuslib.APPLICATION_RESTRICTED_LOWDELAY,
}


@dataclass(frozen=True)
class OpusSettings:
    """How the mixer encodes every program; a bad value raises ``ConfigError`` naming the
    streamer's config key (``opus_<field>``, and ``bitrate`` for the bit rate)."""

    #: ``audio`` (music and speech, CELT/hybrid), ``voip`` (speech-tuned SILK, high-pass),
    #: ``lowdelay`` (CELT only, 2.5 ms lookahead instead of 6.5 ms, no FEC: SILK carries it)
    application: str = "audio"
    #: 0–10: encoder effort; CPU per frame roughly halves from 10 to 5
    complexity: int = 5
    #: in-band FEC: a low-bit-rate copy of each frame in the next packet (SILK/hybrid only)
    fec: bool = True
    #: expected packet loss, 0–100 %; libopus sends FEC only above 0, and spends more of the
    #: bit rate on it (and on loss-robust coding) the higher it is
    loss_perc: int = 10
    #: target bit rate (VBR), bits per second
    bitrate: int = 32_000

    def __post_init__(self) -> None:
        if self.application not in APPLICATIONS:
            raise ConfigError("opus_application",
                              f"{self.application!r} is not one of {', '.join(APPLICATIONS)}")
        if isinstance(self.complexity, bool) or not isinstance(self.complexity, int):
            raise ConfigError("opus_complexity", f"expected an integer, got {self.complexity!r}")
        check_range("opus_complexity", self.complexity, 0, 10)
        if not isinstance(self.fec, bool):
            raise ConfigError("opus_fec", f"expected true or false, got {self.fec!r}")
        if isinstance(self.loss_perc, bool) or not isinstance(self.loss_perc, int):
            raise ConfigError("opus_loss_perc", f"expected an integer, got {self.loss_perc!r}")
        check_range("opus_loss_perc", self.loss_perc, 0, 100)
        if self.fec and self.loss_perc == 0:
            raise ConfigError("opus_loss_perc",
                              "in-band FEC needs an expected loss above 0 (libopus sends none "
                              "at 0 %); set opus_fec = false or a loss of 1-100")
        if self.fec and self.application == "lowdelay":
            raise ConfigError("opus_fec", "the lowdelay application has no in-band FEC "
                              "(it never uses SILK); set opus_fec = false")
        if isinstance(self.bitrate, bool) or not isinstance(self.bitrate, int):
            raise ConfigError("bitrate", f"expected an integer, got {self.bitrate!r}")
        check_range("bitrate", self.bitrate, 6_000, 510_000)  # what libopus accepts

    def label(self) -> str:
        """Short human form, e.g. ``audio c5 FEC 10% 32k``."""
        fec = f"FEC {self.loss_perc}%" if self.fec else f"no FEC (loss {self.loss_perc}%)"
        return f"{self.application} c{self.complexity} {fec} {self.bitrate // 1000}k"


def libopus_encoder(settings: OpusSettings) -> opuslib.Encoder:
    """A mono 48 kHz libopus encoder set up as ``settings`` say (VBR, DTX off)."""
    enc = opuslib.Encoder(RATE_HZ, 1, APPLICATIONS[settings.application])
    enc.bitrate = settings.bitrate
    enc.vbr = 1
    enc.complexity = settings.complexity
    # opuslib 3.0.1's `inband_fec` property setter drops its value (TypeError), so the
    # CTL is called directly.
    opuslib.api.encoder.encoder_ctl(enc.encoder_state, opuslib.api.ctl.set_inband_fec,
                                    int(settings.fec))
    enc.packet_loss_perc = settings.loss_perc
    return enc


class OpusEncoder:
    def __init__(self, frame_samples: int, settings: OpusSettings | None = None) -> None:
        self.frame_samples = frame_samples
        self.settings = settings or OpusSettings()
        self._enc = libopus_encoder(self.settings)
        self._out = (ctypes.c_char * MAX_PACKET_BYTES)()

    @property
    def lookahead_samples(self) -> int:
        """Samples by which decoded audio lags the input (RFC 7845 pre-skip): 312 at 48 kHz
        for ``audio`` and ``voip``, 120 for ``lowdelay``."""
        return int(self._enc.lookahead)

    @property
    def complexity(self) -> int:
        return int(self._enc.complexity)

    @complexity.setter
    def complexity(self, value: int) -> None:
        """Lowered for a while by the mixer's deadline guard (``guard.py``): the same encoder,
        its state kept (no click, no reset)."""
        self._enc.complexity = value

    def encode(self, pcm: np.ndarray) -> bytes:
        if pcm.dtype != np.float32 or len(pcm) != self.frame_samples:
            raise ValueError("encode wants one frame of float32 samples")
        # opuslib's own ``encode_float`` copies the samples to bytes and allocates an output
        # buffer per call, some 13 µs held under the GIL of every encode (the mixer's encoder
        # threads then queue for it); its ctypes binding of the same libopus call, given the
        # array's memory and this encoder's buffer, does without either.
        pcm = np.ascontiguousarray(pcm)
        n = opuslib.api.encoder.libopus_encode_float(
            self._enc.encoder_state, pcm.ctypes.data_as(opuslib.api.c_float_pointer),
            self.frame_samples, self._out, MAX_PACKET_BYTES)
        if n < 0:
            raise opuslib.OpusError(n)
        return self._out.raw[:n]
