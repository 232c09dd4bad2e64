"""Emergency time-to-air through the real path: the API, the mixer, the streamer's fan-out, a
``relay.main`` process and 200 simulated speakers (``loadtest/simspeakers.py``, a child process,
one socket and one subscribe handshake each), spread over every leaf channel of the sample
province, so that most of them are outside the zone under test.

Time-to-air runs from the moment the request is sent (an upper bound on "accepted": it adds
the HTTP round trip) to the kernel's receive time of the first priority-3 packet at each
speaker, on this machine's one wall clock. For text (TTS) the streamer synthesizes before it
answers 201, so synthesis is timed on its own and the bound applies from the 201.

The goal is 100 ms before the speaker's playout delay; the bound asserted is 500 ms
(``MARGIN_MS`` over the goal), because this test shares 2 cores with other jobs and its path
crosses two processes (the frame loop in this one, then the relay), each of which can wait a
scheduler slice or more behind the neighbours. Measured here: 25-130 ms when the
machine was merely busy; 440 and 600 ms in two runs where the neighbours made espeak-ng 3-4
times slower than usual (the second would fail). A path that polls, batches or waits for a
timer tick adds far more and fails; the failure message says where the time went.
What aired is checked too: the captured emergency packets decode to the tone or the text.
Two quick tests pin the simulator's own pieces: the fixed-offset header reader and the kernel
socket filters that keep the non-emergency stream out of the simulator.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import opuslib
import pytest
from scipy.signal import correlate

from loadtest.children import stop_process
from loadtest.simspeakers import (
    EMERGENCIES,
    ONLY_HANDSHAKES,
    Report,
    SimSpeakersProcess,
    TimeToAir,
    peek,
)
from streamer.mixer.sources import EspeakProvider
from tests.harness.audio import peak_hz, rms_dbfs
from tests.harness.keys import with_trust
from wire.packet import RtpPacket, parse
from wire.rtcp import SenderReport
from wire.subscribe import Message, MsgType

pytestmark = pytest.mark.realtime  # audio against the wall clock: see conftest.py

ROOT = Path(__file__).resolve().parents[1]
RATE = 48_000
FRAME = 960
SPEAKERS = 200
GOAL_MS = 100.0
MARGIN_MS = 400.0
BOUND_MS = GOAL_MS + MARGIN_MS
DEADLINE_S = 5.0  # a speaker without the packet after this never got it
CAPTURE = 150  # emergency packets kept per speaker: 3 s, past an attention chime if any
WARNING_VI = ("Cảnh báo khẩn cấp: bão số 5 đổ bộ vào lúc 17 giờ 30. Bà con ở trong nhà, "
              "tránh xa bờ biển.")


def foreign_packet(broadcast_id: int, priority: int) -> bytes:
    """Valid RTP another sender might emit: a CSRC, and the elements in another order."""
    ext = bytes([0x30, priority, 0x23]) + broadcast_id.to_bytes(4, "big") + bytes(1)
    return (struct.pack("!BBHII", 0x91, 111, 7, 960, 1234) + (99).to_bytes(4, "big")
            + struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext + b"\xfc\x01\x02")


def test_peek_reads_loa_layout_in_place_and_parses_other_layouts():
    loa = RtpPacket(1, 2, 3, b"\xfc\x01", broadcast_id=42, priority=3).build()
    assert peek(loa, len(loa)) == (42, 3)
    assert peek(loa + bytes(8), len(loa)) == (42, 3)  # only the first n bytes count
    foreign = foreign_packet(77, 3)
    assert (parse(foreign).broadcast_id, parse(foreign).priority) == (77, 3)
    assert peek(foreign, len(foreign)) == (77, 3)
    sr = SenderReport(1, 0, 0, 0, 0).build()
    assert peek(sr, len(sr))[1] == -1
    assert peek(b"\x90" * 20, 20)[1] == -1  # unreadable


def test_socket_filters_let_through_only_what_a_speaker_measures():
    """The kernel-side filters: handshakes always; emergencies and other layouts when armed;
    never silence, programmes or RTCP."""
    sent = {
        "handshake": Message(MsgType.KEEPALIVE, "ch", cookie=bytes(24)).build(),
        "silence": RtpPacket(1, 1, 0, b"\xf8", priority=0).build(),
        "bulletin": RtpPacket(1, 2, 0, b"\xf8", broadcast_id=5, priority=1).build(),
        "emergency": RtpPacket(1, 3, 0, b"\xf8", broadcast_id=6, priority=3).build(),
        "rtcp": SenderReport(1, 0, 0, 0, 0).build(),
        "foreign": foreign_packet(6, 3),
    }
    got = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for name, program in (("idle", ONLY_HANDSHAKES), ("armed", EMERGENCIES)):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
                program.attach(rx)
                rx.bind(("127.0.0.1", 0))
                rx.settimeout(0.3)
                for data in sent.values():
                    tx.sendto(data, rx.getsockname())
                got[name] = []
                try:
                    while True:
                        data = rx.recv(2048)
                        got[name] += [k for k, v in sent.items() if v == data]
                except TimeoutError:
                    pass
    assert got == {"idle": ["handshake"], "armed": ["handshake", "emergency", "foreign"]}


@pytest.fixture
async def relay(streamer, tmp_path) -> AsyncIterator[tuple[str, int]]:
    """A real relay process subscribed to the in-process streamer."""
    log = tmp_path / "relay.log"
    with open(log, "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.main", "--id", "tta-relay", "--media", "127.0.0.1:0",
            "--http", "127.0.0.1:0", "--upstream", streamer.media_addr,
            *with_trust([], tmp_path, "tta-relay"), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line, f"relay exited: {log.read_text()}"
        host, port = json.loads(line)["media"].rsplit(":", 1)
        yield host, int(port)
    finally:
        await stop_process(proc)


@pytest.fixture
async def fleet(streamer, relay, tmp_path) -> AsyncIterator[SimSpeakersProcess]:
    with open(tmp_path / "simspeakers.log", "wb") as err:
        f = await SimSpeakersProcess.spawn(SPEAKERS, streamer.zones.channels(), [relay],
                                           capture_packets=CAPTURE, stderr=err,
                                           signing_key=str(streamer.key_path))
    try:
        assert f.subscribed == SPEAKERS, f"{f.subscribed} of {SPEAKERS} handshaken"
        yield f
    finally:
        await f.close()


def split(fleet: SimSpeakersProcess, zone: str) -> tuple[list[int], list[int]]:
    inside = [i for i, ch in enumerate(fleet.channels) if ch.startswith(zone + ".")]
    outside = [i for i in range(len(fleet.channels)) if i not in set(inside)]
    return inside, outside


async def post_emergency(streamer, zone: str, source: dict) -> tuple[dict, float]:
    """POST the emergency; its record and the wall time the 201 arrived."""
    async with aiohttp.ClientSession() as http, http.post(
            f"{streamer.http_url}/api/v1/emergency", headers=streamer.admin,
            json={"zones": [zone], "source": source}) as r:
        assert r.status == 201, await r.text()
        body = await r.json()
    return body, time.time()


def decode(payloads: list[bytes]) -> np.ndarray:
    dec = opuslib.Decoder(RATE, 1)
    pcm = b"".join(dec.decode(p, FRAME * 6) for p in payloads)
    return np.frombuffer(pcm, np.int16).astype(np.float32) / 32768


def heard_outside(rep: Report, fleet: SimSpeakersProcess, outside: list[int]) -> list[str]:
    return [fleet.channels[i] for i in outside if rep.arrivals[i] is not None]


def breakdown(streamer, body: dict, rep: Report, inside: list[int], t_sent: float) -> str:
    """Where the time went: request sent → handed to the mixer (the record's ``started``) →
    its first frame due (the packet's capture time plus the codec delay) → the last speaker."""
    got = [a for i in inside if (a := rep.arrivals[i]) is not None and a.broadcast_id == body["id"]]
    due = min((a.capture for a in got), default=math.nan) + streamer.mixer.codec_delay_s
    last = max((a.wall for a in got), default=math.nan)
    return (f"request → handed to the mixer {(body['started'] - t_sent) * 1000:.1f} ms, → first "
            f"frame due {(due - body['started']) * 1000:+.1f} ms, → last speaker "
            f"{(last - due) * 1000:+.1f} ms")


async def test_tone_emergency_reaches_every_speaker_of_a_district_and_no_other(streamer, fleet):
    zone = "brvt.chau-duc"
    inside, outside = split(fleet, zone)
    assert len(inside) >= 30 and len(outside) >= 150
    await fleet.arm()
    t_sent = time.time()
    body, t_201 = await post_emergency(streamer, zone, {"kind": "tone", "hz": 1000, "seconds": 5})
    # Waiting for 3 s of packets at every speaker inside also gives every speaker outside 3 s
    # to receive one by mistake.
    rep = await fleet.wait_for(body["id"], inside, DEADLINE_S + 5, packets=CAPTURE)
    tta = TimeToAir.of(rep.arrivals, t_sent, body["id"], inside, DEADLINE_S)
    where = breakdown(streamer, body, rep, inside, t_sent)
    print(f"\ntone emergency to {zone}, {len(inside)} of {SPEAKERS} speakers: request sent → "
          f"first packet {tta.summary()}; {where}; request → 201 "
          f"{(t_201 - t_sent) * 1000:.1f} ms; fan-out span {tta.span_ms:.1f} ms")
    assert tta.missing == 0, f"{tta.missing} speakers inside {zone} never got it"
    assert heard_outside(rep, fleet, outside) == []
    assert tta.ms(100) < BOUND_MS, f"{tta.summary()}; {where}"
    for i in inside:
        x = decode(rep.captured[i])[2 * RATE : 3 * RATE]  # the tone, whether a chime came first
        assert abs(peak_hz(x) - 1000) < 5, fleet.channels[i]
        assert rms_dbfs(x) > -30, fleet.channels[i]


async def test_tts_emergency_counts_synthesis_apart(streamer, fleet):
    zone = "brvt.xuyen-moc"
    inside, outside = split(fleet, zone)
    assert len(inside) >= 20 and len(outside) >= 150
    t = time.perf_counter()
    clip = await asyncio.to_thread(EspeakProvider().synthesize, WARNING_VI)
    synthesis_ms = (time.perf_counter() - t) * 1000
    await fleet.arm()
    t_sent = time.time()
    body, t_201 = await post_emergency(streamer, zone, {"kind": "tts", "text": WARNING_VI})
    rep = await fleet.wait_for(body["id"], inside, DEADLINE_S + 5, packets=CAPTURE)
    from_request = TimeToAir.of(rep.arrivals, t_sent, body["id"], inside, DEADLINE_S + 5)
    from_201 = TimeToAir.of(rep.arrivals, t_201, body["id"], inside, DEADLINE_S)
    where = breakdown(streamer, body, rep, inside, t_sent)
    print(f"\nTTS emergency to {zone}, {len(inside)} of {SPEAKERS} speakers: synthesis alone "
          f"{synthesis_ms:.0f} ms; request → 201 {(t_201 - t_sent) * 1000:.0f} ms; request → "
          f"first packet {from_request.summary()}; 201 → first packet {from_201.summary()} "
          f"(negative: the packet left before the answer); {where}")
    assert from_201.missing == 0, f"{from_201.missing} speakers inside {zone} never got it"
    assert heard_outside(rep, fleet, outside) == []
    assert from_201.ms(100) < BOUND_MS, f"{from_201.summary()}; {where}"
    # The text itself went out: its first second, found in the 3 s each speaker kept.
    speech = clip.read(int(0.1 * RATE), RATE)
    for i in inside:
        x = decode(rep.captured[i])
        c = correlate(x, speech, mode="valid", method="fft")
        lag = int(np.argmax(c))
        corr = c[lag] / (np.linalg.norm(x[lag : lag + len(speech)]) * np.linalg.norm(speech))
        assert corr > 0.8, (fleet.channels[i], lag, corr)
