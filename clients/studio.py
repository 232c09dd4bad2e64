"""``loa studio``: send live audio (a file, a sound card or a test tone) to the streamer's
RTP ingest as one live input, exactly as ffmpeg or a hardware encoder would.

Opus (libopus, 20 ms, mono, 48 kHz, in-band FEC) in RTP, protected by SRTP under the input's
key (RFC 3711, AES_CM_128_HMAC_SHA1_80), ending with an SRTCP BYE so that the streamer ends the
input at once instead of after its idle timeout. Packets carry Loa's own RTP header
(``wire/packet.py``): one builder for every Loa sender, and its capture-time extension
lets the streamer measure studio-to-streamer latency; any RTP receiver skips the extension.
A file or a tone is paced against the monotonic clock (frame ``k`` leaves at ``t0 + k·20 ms``,
so sleep jitter never accumulates); a sound card (captured by the ffmpeg program's ALSA input)
is its own clock and is sent as captured.
The key is best given with ``--key-file``: a key on the command line shows in ``ps``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import av
import numpy as np
import pylibsrtp

from common.opus import OpusEncoder, OpusSettings
from wire.ingest import parse_key
from wire.packet import RtpPacket, unix_to_ntp64
from wire.rtcp import Bye, SenderReport

RATE_HZ = 48_000
FRAME = 960  # 20 ms
TONE_AMPLITUDE = 0.25  # -12 dBFS peak: loud enough to check, far from clipping


class StudioError(Exception):
    """A problem the user can fix: printed as one line, exit code 2."""


def main(argv: list[str]) -> int:
    p = _parser()
    a = p.parse_args(argv)
    if a.seconds is not None and not a.seconds > 0:
        p.error("--seconds: must be positive")
    if not 6_000 <= a.bitrate <= 510_000:  # what libopus accepts
        p.error("--bitrate: must be between 6000 and 510000")
    if a.tone is not None and not 0 < a.tone < RATE_HZ / 2:
        p.error(f"--tone: must be between 0 and {RATE_HZ // 2} Hz")
    try:
        key = _key(a.key, a.key_file)
        dest = _resolve(a.to)
        frames, paced = _source(a)
    except StudioError as e:
        print(f"loa studio: {e}", file=sys.stderr)
        return 2
    if a.seconds is not None:
        frames = itertools.islice(frames, round(a.seconds * RATE_HZ / FRAME))
    sender = Sender(dest, key, a.bitrate)
    try:
        sender.send_all(frames, paced)
    except av.error.FFmpegError as e:
        print(f"loa studio: cannot decode the audio: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"loa studio: cannot send to {a.to}: {e}", file=sys.stderr)
        return 1
    finally:
        sender.close()
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loa studio", description="Send live audio to the streamer's SRTP ingest.")
    p.add_argument("--to", required=True, metavar="HOST:PORT", help="the ingest address")
    keys = p.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key-file", metavar="PATH", help="file holding the input's key")
    keys.add_argument("--key", help="the input's key (visible in `ps`: prefer --key-file)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--file", metavar="PATH", help="any audio file ffmpeg reads")
    what.add_argument("--tone", type=float, metavar="HZ", help="a sine test tone")
    what.add_argument("--device", nargs="?", const="default", metavar="ALSA_NAME",
                      help="capture a sound card through ALSA (default device: 'default')")
    p.add_argument("--seconds", type=float, help="stop after this long (default: the end)")
    p.add_argument("--bitrate", type=int, default=64_000,
                   help="Opus bit rate, 6000-510000 (default 64000)")
    return p


def _key(key: str | None, key_file: str | None) -> bytes:
    if key_file is not None:
        try:
            key = Path(key_file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise StudioError(f"cannot read the key file {key_file}: {e}") from None
    try:
        return parse_key(key or "")
    except ValueError as e:
        raise StudioError(str(e)) from None


def _resolve(to: str) -> tuple[str, int]:
    host, sep, port = to.rpartition(":")
    host = host.strip("[]")  # [2001:db8::1]:5006
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StudioError(f"--to: {to!r} is not HOST:PORT")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise StudioError(f"--to: cannot resolve {host}: {e.strerror}") from None
    addr = infos[0][4]
    return (str(addr[0]), int(addr[1]))


def _source(a: argparse.Namespace) -> tuple[Iterator[np.ndarray], bool]:
    """20 ms frames of 48 kHz mono float32, and whether they need pacing."""
    if a.tone is not None:
        return _tone(a.tone), True
    if a.file is not None:
        return _frames(_decode(_open(a.file))), True
    return _capture(a.device), False


def _tone(hz: float) -> Iterator[np.ndarray]:
    for k in itertools.count():
        n = np.arange(k * FRAME, (k + 1) * FRAME)
        yield (TONE_AMPLITUDE * np.sin(2 * np.pi * hz * n / RATE_HZ)).astype(np.float32)


def _open(path: str) -> av.container.InputContainer:
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as e:
        raise StudioError(f"--file: cannot open {path}: {e}") from None
    if not container.streams.audio:
        container.close()
        raise StudioError(f"--file: {path} has no audio stream")
    return container


def _decode(container: av.container.InputContainer) -> Iterator[np.ndarray]:
    """Decoded audio as 48 kHz mono float32 blocks of any length. Channels are averaged here:
    libswresample sums them at -3 dB each for float output, which lifts a stereo recording by
    3 dB and can clip it."""
    resampler = av.AudioResampler(format="fltp", rate=RATE_HZ)
    with container:
        for frame in container.decode(container.streams.audio[0]):
            for out in resampler.resample(frame):
                yield out.to_ndarray().mean(axis=0, dtype=np.float32)
        for out in resampler.resample(None):
            yield out.to_ndarray().mean(axis=0, dtype=np.float32)


def _capture(device: str) -> Iterator[np.ndarray]:
    """A sound card through the ffmpeg program's ALSA input. Not PyAV: its wheels carry their
    own alsa-lib, which does not find the system's ALSA configuration and so no device."""
    errors = tempfile.TemporaryFile()
    try:
        # -rematrix_maxval 1: a stereo card's channels are averaged, not summed, so a loud
        # voice on both cannot clip.
        proc = subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "alsa",
             "-i", device, "-ac", "1", "-rematrix_maxval", "1", "-ar", str(RATE_HZ),
             "-f", "f32le", "-"],
            stdout=subprocess.PIPE, stderr=errors)
    except FileNotFoundError:
        raise StudioError("--device: needs the ffmpeg program (apt-get install ffmpeg)") from None
    assert proc.stdout is not None
    first = proc.stdout.read(FRAME * 4)
    if len(first) == FRAME * 4:
        errors.close()  # ffmpeg keeps its own descriptor; only a failure to start is read
        return _captured(proc, proc.stdout, first)
    proc.wait()
    errors.seek(0)
    said = errors.read().decode(errors="replace").strip().splitlines()
    why = said[-1] if said else f"ffmpeg exited with status {proc.returncode}"
    raise StudioError(f"--device: cannot capture from {device}: {why}")


def _captured(proc: subprocess.Popen[bytes], out: IO[bytes],
              first: bytes) -> Iterator[np.ndarray]:
    try:
        data = first
        while len(data) == FRAME * 4:
            yield np.frombuffer(data, dtype=np.float32)
            data = out.read(FRAME * 4)
    finally:
        proc.terminate()
        proc.wait()


def _frames(blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Blocks of any length cut into 20 ms frames; the last one padded with silence."""
    pending = np.zeros(0, dtype=np.float32)
    for block in blocks:
        pending = np.concatenate((pending, block))
        while len(pending) >= FRAME:
            yield pending[:FRAME]
            pending = pending[FRAME:]
    if len(pending):
        yield np.concatenate((pending, np.zeros(FRAME - len(pending), dtype=np.float32)))


class Sender:
    """Opus → RTP → SRTP → UDP for one stream, with a random SSRC, sequence and timestamp
    origin (RFC 3550 section 5.1), so two runs never reuse an SRTP packet index under one key."""

    def __init__(self, dest: tuple[str, int], key: bytes, bitrate: int) -> None:
        self.dest = dest
        family = socket.AF_INET6 if ":" in dest[0] else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._srtp = pylibsrtp.Session(
            pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
        # One stream that the mixer decodes and encodes again: worth libopus's full effort.
        self._encoder = OpusEncoder(FRAME, OpusSettings(complexity=10, bitrate=bitrate))
        self.ssrc = secrets.randbits(32) or 1
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self.packets = 0
        self._octets = 0

    def send_all(self, frames: Iterable[np.ndarray], paced: bool) -> None:
        t0 = time.monotonic()
        for k, pcm in enumerate(frames):
            if paced:
                delay = t0 + k * FRAME / RATE_HZ - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self.send(pcm)

    def send(self, pcm: np.ndarray) -> None:
        payload = self._encoder.encode(np.ascontiguousarray(pcm, dtype=np.float32))
        packet = RtpPacket(
            ssrc=self.ssrc, seq=self._seq, ts=self._ts, payload=payload,
            marker=self.packets == 0, capture_ntp=unix_to_ntp64(time.time()),
        )
        self._sock.sendto(self._srtp.protect(packet.build()), self.dest)
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + FRAME) & 0xFFFF_FFFF
        self.packets += 1
        self._octets += len(payload)

    def close(self) -> None:
        """Say goodbye (RFC 3550: a compound packet starts with a report) and close."""
        if self.packets:
            report = SenderReport(self.ssrc, unix_to_ntp64(time.time()), self._ts,
                                  self.packets, self._octets)
            bye = self._srtp.protect_rtcp(report.build() + Bye(self.ssrc).build())
            with contextlib.suppress(OSError):  # best effort: the ingest also ends on silence
                self._sock.sendto(bye, self.dest)
        self._sock.close()
