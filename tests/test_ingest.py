"""The SRTP ingest with real senders: ffmpeg, ``loa studio`` and a hand-driven test sender
(for loss, reordering, replay and floods), on a real UDP port. Audio is judged by content."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pylibsrtp
import pytest
from prometheus_client import CollectorRegistry
from scipy.io import wavfile
from scipy.signal import correlate, resample_poly

from common.opus import OpusEncoder
from streamer.live.ingest import TRIALS_PER_PEER_S, IngestServer
from tests.harness.audio import peak_hz, rms_dbfs
from tests.harness.net import free_port
from tests.harness.wait import until
from wire.ingest import KEY_BYTES, new_key, parse_key, sdp_for
from wire.packet import RtpPacket

pytestmark = pytest.mark.realtime  # audio against the wall clock: see conftest.py

REPO = Path(__file__).resolve().parents[1]
FRAME = 960
Addr = tuple[str, int]


@dataclass
class Ingest:
    """What a real IngestServer on a free port reported through its callbacks."""

    keys: dict[str, str] = field(default_factory=dict)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    port: int = 0
    audio: dict[str, list[np.ndarray]] = field(default_factory=dict)
    starts: list[tuple[str, Addr]] = field(default_factory=list)
    ends: list[tuple[str, str]] = field(default_factory=list)
    refused: list[tuple[Addr, str]] = field(default_factory=list)

    def on_audio(self, input_id: str, pcm: np.ndarray) -> None:
        self.audio.setdefault(input_id, []).append(pcm)

    def pcm(self, input_id: str) -> np.ndarray:
        return np.concatenate(self.audio.get(input_id) or [np.zeros(0, np.float32)])

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def refusals(self, reason: str) -> float:
        return self.metric("loa_ingest_refused_total", reason=reason)


@pytest.fixture
async def ingest():
    rec = Ingest()
    server = IngestServer(
        lambda: rec.keys, rec.on_audio,
        on_start=lambda input_id, addr: rec.starts.append((input_id, addr)),
        on_end=lambda input_id, reason: rec.ends.append((input_id, reason)),
        on_refused=lambda addr, reason: rec.refused.append((addr, reason)),
        registry=rec.registry,
    )
    _, rec.port = await server.start("127.0.0.1", 0)
    yield rec
    server.close()


async def run(*cmd: str, timeout_s: float = 60.0,
              env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def ffmpeg_sine(port: int, hz: float, seconds: float, key: str | None) -> list[str]:
    """ffmpeg sending a sine (amplitude 1/8) as Opus over SRTP, or plain RTP without a key."""
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
           "-i", f"sine=frequency={hz}:duration={seconds}", "-c:a", "libopus", "-b:a", "64k",
           "-ac", "1", "-rtpflags", "send_bye", "-sdp_file", "/dev/null", "-f", "rtp"]
    if key is None:
        return [*cmd, f"rtp://127.0.0.1:{port}?rtcpport={port}"]
    return [*cmd, "-srtp_out_suite", "AES_CM_128_HMAC_SHA1_80", "-srtp_out_params", key,
            f"srtp://127.0.0.1:{port}?rtcpport={port}"]


def studio(*args: str) -> list[str]:
    return [sys.executable, "-m", "loa", "studio", *args]


class ToneSender:
    """Opus/RTP/SRTP packets of a tone, made ahead so a test can drop, reorder or repeat them
    (SRTP must protect them in sequence order, as a real sender would)."""

    def __init__(self, key: str, hz: float, n: int) -> None:
        srtp = pylibsrtp.Session(pylibsrtp.Policy(
            key=parse_key(key), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
        enc = OpusEncoder(FRAME)
        self.ssrc = secrets.randbits(32)
        seq0, ts0 = 65_500, secrets.randbits(32)  # the sequence number wraps mid-stream
        t = np.arange(n * FRAME) / 48_000
        self.tone = (0.25 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        self.packets = [
            srtp.protect(RtpPacket(
                ssrc=self.ssrc, seq=(seq0 + k) & 0xFFFF, ts=(ts0 + k * FRAME) & 0xFFFF_FFFF,
                payload=enc.encode(self.tone[k * FRAME:(k + 1) * FRAME])).build())
            for k in range(n)
        ]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))

    async def send(self, port: int, datagrams: list[bytes]) -> None:
        for d in datagrams:
            self.sock.sendto(d, ("127.0.0.1", port))
            await asyncio.sleep(0.002)  # the server shares this event loop


def phase_at(x: np.ndarray, hz: float, start: int, stop: int) -> float:
    """Phase of the ``hz`` component of ``x[start:stop]``, measured against sample index 0."""
    n = np.arange(start, stop)
    return float(np.angle(np.sum(x[start:stop] * np.exp(-2j * np.pi * hz * n / 48_000))))


# ---------------------------------------------------------------------- keys and SDP


def test_new_key_is_30_random_bytes_in_base64():
    a, b = new_key(), new_key()
    assert len(parse_key(a)) == KEY_BYTES and a != b


@pytest.mark.parametrize("bad", ["", "not base64!", "AAAA", "é" * 40,
                                 "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="])  # 26 bytes
def test_parse_key_refuses_what_is_not_a_key(bad):
    with pytest.raises(ValueError, match="^key:"):
        parse_key(bad)


def test_sdp_describes_srtp_opus_and_names_bad_fields():
    key = new_key()
    sdp = sdp_for("192.0.2.7", 5006, key)
    assert sdp.endswith("\r\n")
    lines = sdp.split("\r\n")
    for want in ("c=IN IP4 192.0.2.7", "m=audio 5006 RTP/SAVP 111", "a=rtpmap:111 opus/48000/2",
                 "a=ptime:20", "a=rtcp-mux", f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}"):
        assert want in lines
    for kwargs, field_name in (({"key": "nope"}, "key"), ({"port": 0}, "port"),
                               ({"host": "a\r\nb"}, "host"), ({"pt": 8}, "pt")):
        args = {"host": "192.0.2.7", "port": 5006, "key": key, **kwargs}
        with pytest.raises(ValueError, match=f"^{field_name}:"):
            sdp_for(**args)


async def test_ffmpeg_plays_loa_studio_from_the_sdp(tmp_path):
    """The SDP is what a real SRTP receiver needs: ffmpeg decodes ``loa studio`` with it."""
    key = new_key()
    port = free_port(socket.SOCK_DGRAM)
    (tmp_path / "in.sdp").write_text(sdp_for("127.0.0.1", port, key))
    out = tmp_path / "out.raw"
    rx = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-protocol_whitelist",
        "file,udp,rtp,srtp", "-i", str(tmp_path / "in.sdp"), "-t", "1.5", "-ac", "1",
        "-ar", "48000", "-f", "f32le", str(out), stdin=subprocess.DEVNULL)
    await asyncio.sleep(1.0)  # let ffmpeg bind the port
    rc, err = await run(*studio("--to", f"127.0.0.1:{port}", "--key", key, "--tone", "1000",
                                "--seconds", "4"))
    assert rc == 0, err
    assert await asyncio.wait_for(rx.wait(), 30) == 0
    x = np.fromfile(out, dtype=np.float32)
    assert len(x) >= 48_000
    assert abs(peak_hz(x) - 1000) < 5


# ---------------------------------------------------------------------- ffmpeg


async def test_ffmpeg_srtp_tone_arrives_with_its_pitch_and_level(ingest):
    ingest.keys["a"] = key = new_key()
    rc, err = await run(*ffmpeg_sine(ingest.port, 440, 3, key))
    assert rc == 0, err
    await until(lambda: ingest.ends, 5, "the BYE")  # far sooner than the idle timeout
    assert ingest.ends == [("a", "bye")]
    assert [(i, a[0]) for i, a in ingest.starts] == [("a", "127.0.0.1")]
    x = ingest.pcm("a")
    assert abs(len(x) / 48_000 - 3.0) < 0.1
    mid = x[24_000:-24_000]
    assert abs(peak_hz(mid) - 440) < 2
    assert abs(rms_dbfs(mid) - 20 * np.log10(0.125 / np.sqrt(2))) < 1.0  # lavfi sine: 1/8
    assert ingest.metric("loa_ingest_packets_total", input="a") >= 140
    assert ingest.metric("loa_ingest_active", input="a") == 0
    assert not ingest.refused


async def test_ffmpeg_with_a_wrong_key_is_refused_and_reported_once(ingest):
    ingest.keys["a"] = new_key()
    rc, err = await run(*ffmpeg_sine(ingest.port, 440, 2, new_key()))
    assert rc == 0, err
    await asyncio.sleep(0.2)
    assert not ingest.audio and not ingest.starts
    # ffmpeg sends RTCP from a second port: at most one report per source address
    per_addr = Counter(addr for addr, _ in ingest.refused)
    assert per_addr and set(per_addr.values()) == {1}
    assert all(reason.startswith("auth: authentication failed") for _, reason in ingest.refused)
    assert ingest.refusals("auth") >= TRIALS_PER_PEER_S
    assert ingest.refusals("auth") + ingest.refusals("flood") >= 90  # ~100 packets sent


async def test_plain_rtp_from_ffmpeg_is_refused(ingest):
    ingest.keys["a"] = new_key()
    rc, err = await run(*ffmpeg_sine(ingest.port, 440, 1, None))
    assert rc == 0, err
    await asyncio.sleep(0.2)
    assert not ingest.audio and not ingest.starts
    assert ingest.refusals("auth") >= TRIALS_PER_PEER_S
    assert any("plain RTP" in reason for _, reason in ingest.refused)


async def test_two_inputs_at_once_each_get_their_own_audio(ingest):
    ingest.keys.update(a=(key_a := new_key()), b=(key_b := new_key()))
    results = await asyncio.gather(run(*ffmpeg_sine(ingest.port, 440, 2, key_a)),
                                   run(*ffmpeg_sine(ingest.port, 1000, 2, key_b)))
    assert [rc for rc, _ in results] == [0, 0], results
    await until(lambda: len(ingest.ends) == 2, 5, "both BYEs")
    assert sorted(ingest.ends) == [("a", "bye"), ("b", "bye")]
    a, b = ingest.pcm("a"), ingest.pcm("b")
    assert abs(peak_hz(a[9600:]) - 440) < 2
    assert abs(peak_hz(b[9600:]) - 1000) < 2


# ---------------------------------------------------------------------- loa studio


async def test_loa_studio_tone_arrives(ingest, tmp_path):
    ingest.keys["a"] = key = new_key()
    (tmp_path / "key").write_text(key + "\n")
    rc, err = await run(*studio("--to", f"127.0.0.1:{ingest.port}",
                                "--key-file", str(tmp_path / "key"),
                                "--tone", "1000", "--seconds", "2"))
    assert rc == 0, err
    await until(lambda: ingest.ends, 5, "the BYE")
    assert ingest.ends == [("a", "bye")]
    x = ingest.pcm("a")
    assert len(x) == 100 * FRAME
    assert abs(peak_hz(x[4800:]) - 1000) < 2
    assert abs(rms_dbfs(x[4800:]) - 20 * np.log10(0.25 / np.sqrt(2))) < 1.0


async def test_loa_studio_sends_a_speech_file_faithfully(ingest, tmp_path):
    ingest.keys["a"] = key = new_key()
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "vi", "-w", str(wav),
                    "Thông báo của ủy ban nhân dân xã về lịch tiêm chủng tuần này"], check=True)
    rc, err = await run(*studio("--to", f"127.0.0.1:{ingest.port}", "--key", key,
                                "--file", str(wav)))
    assert rc == 0, err
    await until(lambda: ingest.ends, 5, "the BYE")
    rate, src = wavfile.read(wav)
    src = resample_poly(src.astype(np.float64) / 32768, 48_000, rate)
    got = ingest.pcm("a").astype(np.float64)
    assert abs(len(got) - len(src)) < 2 * FRAME
    lag = int(np.argmax(correlate(got, src, mode="full", method="fft"))) - (len(src) - 1)
    assert 0 <= lag < 2_000  # codec and resampler delay, a few ms
    m = min(len(got) - lag, len(src))
    a, b = got[lag : lag + m], src[:m]
    assert np.corrcoef(a, b)[0, 1] >= 0.8


async def test_loa_studio_captures_an_alsa_device(ingest, tmp_path):
    """No sound card here: ALSA's own ``file`` plugin stands in for one, feeding a raw tone to
    the capture side of a ``null`` device (paced by the null device's timer)."""
    ingest.keys["a"] = key = new_key()
    t = np.arange(5 * 48_000) / 48_000
    tone = np.round(0.25 * 32767 * np.sin(2 * np.pi * 700 * t)).astype("<i2")
    np.repeat(tone, 2).tofile(tmp_path / "tone.raw")  # ffmpeg opens ALSA as 48 kHz stereo s16
    (tmp_path / ".asoundrc").write_text(
        'pcm.loatest {\n type file\n slave.pcm "null"\n file "/dev/null"\n'
        f' infile "{tmp_path / "tone.raw"}"\n format "raw"\n}}\n')
    rc, err = await run(*studio("--to", f"127.0.0.1:{ingest.port}", "--key", key,
                                "--device", "loatest", "--seconds", "2"),
                        env={**os.environ, "HOME": str(tmp_path)})
    assert rc == 0, err
    await until(lambda: ingest.ends, 5, "the BYE")
    x = ingest.pcm("a")
    assert len(x) == 100 * FRAME
    assert abs(peak_hz(x[4800:]) - 700) < 2
    assert abs(rms_dbfs(x[4800:]) - 20 * np.log10(0.25 / np.sqrt(2))) < 1.0


async def test_loa_studio_averages_a_stereo_file(ingest, tmp_path):
    """Both channels of a 44.1 kHz stereo file carry a 500 Hz tone at 0.5: the input gets it
    at the same level (averaged), not 3 dB louder (summed at -3 dB each)."""
    ingest.keys["a"] = key = new_key()
    t = np.arange(44_100) / 44_100
    tone = (0.5 * np.sin(2 * np.pi * 500 * t)).astype(np.float32)
    wavfile.write(tmp_path / "stereo.wav", 44_100, np.stack((tone, tone), axis=1))
    rc, err = await run(*studio("--to", f"127.0.0.1:{ingest.port}", "--key", key,
                                "--file", str(tmp_path / "stereo.wav")))
    assert rc == 0, err
    await until(lambda: ingest.ends, 5, "the BYE")
    x = ingest.pcm("a")[4800:-4800]
    assert abs(peak_hz(x) - 500) < 2
    assert abs(rms_dbfs(x) - 20 * np.log10(0.5 / np.sqrt(2))) < 1.0


@pytest.mark.parametrize("args, message", [
    (["--key", "not-a-key", "--tone", "440"], "key:"),
    (["--key-file", "/nonexistent/key", "--tone", "440"], "cannot read the key file"),
    (["--key", "KEY", "--file", "/nonexistent.wav"], "--file: cannot open /nonexistent.wav"),
    (["--key", "KEY", "--file", __file__], "--file: cannot open"),
    (["--key", "KEY", "--tone", "440", "--to", "no-such-host.invalid:5004"], "cannot resolve"),
    (["--key", "KEY", "--device", "no-such-card"], "--device: cannot capture from no-such-card"),
])
async def test_loa_studio_says_what_is_wrong(args, message):
    args = [new_key() if a == "KEY" else a for a in args]
    if "--to" not in args:
        args += ["--to", "127.0.0.1:9"]
    rc, err = await run(*studio(*args, "--seconds", "0.2"))
    assert rc == 2
    assert message in err and "Traceback" not in err


# ---------------------------------------------------------------------- the test sender


async def test_lost_packets_are_concealed_without_shifting_the_timeline(ingest):
    """1010 Hz turns 72 degrees per 20 ms frame: one frame missing from the timeline (or one
    too many) would show as a phase jump between the start and the end."""
    ingest.keys["a"] = key = new_key()
    tx = ToneSender(key, 1010.0, 150)
    order = [k for k in range(150) if k not in {20, 40, 41, 60, 61, 62, 80}]
    order.insert(order.index(82) + 1, 80)  # 80 arrives after 81 and 82: too late to play
    await tx.send(ingest.port, [tx.packets[k] for k in order])
    x = ingest.pcm("a")
    assert len(x) == 150 * FRAME
    assert ingest.metric("loa_ingest_lost_total", input="a") == 7
    assert ingest.metric("loa_ingest_late_total", input="a") == 1
    early = phase_at(x, 1010.0, 5 * FRAME, 18 * FRAME)
    late = phase_at(x, 1010.0, 100 * FRAME, 148 * FRAME)
    assert abs(np.angle(np.exp(1j * (early - late)))) < 0.3
    # Frame 20 is rebuilt from packet 21's in-band FEC as faithfully as a frame that arrived
    # (concealment alone is some 8 dB further off the tone).
    ideal = np.concatenate((np.zeros(OpusEncoder(FRAME).lookahead_samples), tx.tone))

    def error_dbfs(k: int) -> float:
        part = slice(k * FRAME, (k + 1) * FRAME)
        return rms_dbfs(x[part] - ideal[part])

    assert error_dbfs(20) < error_dbfs(10) + 3
    await until(lambda: ingest.ends, 5, "the idle timeout")
    assert ingest.ends == [("a", "idle")]


async def test_replays_second_senders_and_late_keys(ingest):
    key = new_key()
    tx = ToneSender(key, 440.0, 60)
    await tx.send(ingest.port, tx.packets[:5])
    assert not ingest.audio and ingest.refusals("auth") == 5  # not registered yet
    ingest.keys["a"] = key  # registered while the sender runs: no restart needed
    await tx.send(ingest.port, tx.packets[5:30])
    assert len(ingest.pcm("a")) == 25 * FRAME
    await tx.send(ingest.port, [tx.packets[10], tx.packets[29]])  # captured and sent again
    other = ToneSender(key, 440.0, 60)  # another SSRC under the same key
    await other.send(ingest.port, other.packets[:3])
    spoof = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    spoof.sendto(tx.packets[25], ("127.0.0.1", ingest.port))  # a replay from elsewhere
    await tx.send(ingest.port, tx.packets[30:40])
    spoof.close()
    assert ingest.refusals("replay") == 3
    assert ingest.refusals("busy") == 3
    assert len(ingest.pcm("a")) == 35 * FRAME
    assert len(ingest.starts) == 1
    del ingest.keys["a"]  # revoked: the input ends at once and its packets are refused
    await until(lambda: ingest.ends, 5, "the revocation")
    assert ingest.ends == [("a", "revoked")]
    await tx.send(ingest.port, tx.packets[40:45])
    assert len(ingest.pcm("a")) == 35 * FRAME
    assert ingest.registry.get_sample_value("loa_ingest_packets_total", {"input": "a"}) is None


async def test_a_rotated_key_ends_the_old_sender_and_admits_the_new(ingest):
    ingest.keys["a"] = old_key = new_key()
    old = ToneSender(old_key, 440.0, 40)
    await old.send(ingest.port, old.packets[:20])
    ingest.keys["a"] = new = new_key()
    await until(lambda: ingest.ends, 5, "the rotation")
    assert ingest.ends == [("a", "revoked")]
    await old.send(ingest.port, old.packets[20:])
    assert len(ingest.pcm("a")) == 20 * FRAME
    fresh = ToneSender(new, 440.0, 10)
    await fresh.send(ingest.port, fresh.packets)
    assert len(ingest.pcm("a")) == 30 * FRAME
    assert ingest.metric("loa_ingest_packets_total", input="a") == 30  # the series survives


async def test_garbage_and_a_flood_are_counted_and_the_port_keeps_working(ingest, caplog):
    caplog.set_level(logging.WARNING, logger="streamer.live.ingest")
    ingest.keys["a"] = key = new_key()
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for d in (b"", b"\x80", bytes(21), b"\x00" + os.urandom(99), b"\xc0" + os.urandom(99),
              b"\x80\x6f" + os.urandom(98), b"\x81\xcb" + os.urandom(40)):
        junk.sendto(d, ("127.0.0.1", ingest.port))
    await asyncio.sleep(0.2)
    assert ingest.refusals("short") == 3
    assert ingest.refusals("malformed") == 2
    assert ingest.refusals("auth") == 2

    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.bind(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for _ in range(30):
        for _ in range(100):
            flood.sendto(b"\x80\x6f" + os.urandom(150), ("127.0.0.1", ingest.port))
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.2)
    elapsed = loop.time() - t0
    tried = ingest.refusals("auth") - 2
    assert tried <= TRIALS_PER_PEER_S * (elapsed + 2)  # the work on one address is bounded
    assert ingest.refusals("flood") >= 1_000
    assert sum(1 for addr, _ in ingest.refused if addr[1] == flood.getsockname()[1]) == 1
    assert sum(1 for addr, _ in ingest.refused if addr[1] == junk.getsockname()[1]) == 1
    junk.close()
    flood.close()

    tx = ToneSender(key, 1000.0, 50)
    await tx.send(ingest.port, tx.packets)
    assert abs(peak_hz(ingest.pcm("a")[4800:]) - 1000) < 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
