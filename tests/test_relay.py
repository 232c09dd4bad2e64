"""Relay end to end: a real ``relay.main`` process between an in-test upstream and receivers.

The upstream is a ``FanoutEndpoint`` fed every 20 ms with RTP/Opus of a 1 kHz tone, so every
receiver (handshaking subscriber, GStreamer, ffmpeg, listen-in) is checked by the content of
what it decodes, not by packet counts.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import signal
import socket
import sys
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import numpy as np
import opuslib
import opuslib.api.ctl
import opuslib.api.encoder
import pytest
from prometheus_client import CollectorRegistry

from fanout.endpoint import DestinationTable, FanoutEndpoint
from tests.harness.audio import peak_hz
from tests.harness.keys import STREAM_KEY_ARGS, TEST_KEY, listen_query, with_trust
from tests.harness.subscriber import Subscriber
from wire import rtcp, subscribe
from wire.auth import ChannelSigner
from wire.packet import RtpPacket, is_rtp, ssrc_for, unix_to_ntp64

pytestmark = pytest.mark.realtime  # audio against the wall clock: see conftest.py

ROOT = Path(__file__).resolve().parents[1]
CHANNEL = "brvt-phuoc-thang-01"
RATE = 48_000
FRAME = 960  # 20 ms
TONE_HZ = 1000.0


# --------------------------------------------------------------------------- audio checks


def assert_tone(pcm: np.ndarray, rate: int = RATE, min_s: float = 0.5) -> None:
    assert len(pcm) >= min_s * rate, f"only {len(pcm) / rate:.2f} s of audio"
    pcm = pcm[len(pcm) // 5 :]  # skip decoder start-up
    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
    assert rms > 1000, f"audio is (near) silent: rms {rms:.0f}"
    hz = peak_hz(pcm - pcm.mean(), rate)  # without its DC
    assert abs(hz - TONE_HZ) < 15, f"spectral peak at {hz:.1f} Hz, expected {TONE_HZ} Hz"


def decode_opus(payloads: list[bytes]) -> np.ndarray:
    dec = opuslib.Decoder(RATE, 1)
    return np.concatenate([np.frombuffer(dec.decode(p, FRAME * 6), dtype=np.int16)
                           for p in payloads]) if payloads else np.zeros(0, np.int16)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return pcm[:: w.getnchannels()], w.getframerate()


# --------------------------------------------------------------------------- the upstream


class ToneUpstream:
    """Stands in for the streamer: a FanoutEndpoint publishing a 1 kHz tone every 20 ms."""

    def __init__(self, channels: tuple[str, ...] = (CHANNEL,)) -> None:
        self.channels = channels
        self.fanout = FanoutEndpoint(
            channel_ssrc=lambda ch: ssrc_for(ch) if ch in channels else None,
            registry=CollectorRegistry(), process="test-upstream",
        )
        self.addr: tuple[str, int] = ("", 0)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.addr = await self.fanout.start("127.0.0.1", 0)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        enc = opuslib.Encoder(RATE, 1, opuslib.APPLICATION_AUDIO)
        enc.bitrate = 32_000
        enc.vbr = 1
        # opuslib's inband_fec setter drops its argument (opuslib 3.0.1 bug): call the ctl.
        opuslib.api.encoder.encoder_ctl(enc.encoder_state, opuslib.api.ctl.set_inband_fec, 1)
        enc.packet_loss_perc = 5
        t = np.arange(FRAME) / RATE
        frame = (0.5 * 32767 * np.sin(2 * math.pi * TONE_HZ * t)).astype(np.int16).tobytes()
        seq, ts = random.getrandbits(16), random.getrandbits(32)
        deadline = time.monotonic()
        signers = {ch: ChannelSigner(TEST_KEY, ch, ssrc_for(ch)) for ch in self.channels}
        while True:
            payload = enc.encode(frame, FRAME)  # 20 whole periods: phase continues
            for ch in self.channels:
                data = RtpPacket(ssrc_for(ch), seq, ts, payload,
                                 capture_ntp=unix_to_ntp64(time.time())).build()
                self.fanout.publish(ch, data)
                for loas in signers[ch].add(data, seq, 0):  # signed like the streamer's
                    self.fanout.publish(ch, loas)
                if seq % 50 == 0:
                    sr = rtcp.SenderReport(ssrc_for(ch), unix_to_ntp64(time.time()), ts, seq, 0)
                    self.fanout.publish(ch, sr.build())
            seq, ts = (seq + 1) & 0xFFFF, (ts + FRAME) & 0xFFFF_FFFF
            deadline += FRAME / RATE
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self._task:
            self._task.cancel()
        self.fanout.close()


# --------------------------------------------------------------------------- the relay process


class RelayProc:
    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, str], log: Path):
        self.proc, self.info, self.log = proc, info, log
        host, port = info["media"].rsplit(":", 1)
        self.media = (host, int(port))
        self.http = info["http"]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def upstream() -> AsyncIterator[ToneUpstream]:
    up = ToneUpstream()
    await up.start()
    yield up
    up.close()


@pytest.fixture
async def start_relay(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[RelayProc]]]:
    procs: list[RelayProc] = []

    async def start(*args: str) -> RelayProc:
        log, name = tmp_path / f"relay{len(procs)}.log", f"test-relay-{len(procs)}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.main", "--id", name,
            "--media", "127.0.0.1:0", "--http", "127.0.0.1:0", *with_trust(args, tmp_path, name),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=open(log, "wb"),
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
        except TimeoutError:
            proc.kill()
            raise AssertionError(f"relay did not start: {log.read_text()}") from None
        if not line:
            await proc.wait()
            raise AssertionError(f"relay exited {proc.returncode}: {log.read_text()}")
        r = RelayProc(proc, json.loads(line), log)
        procs.append(r)
        return r

    yield start
    for r in procs:
        if r.proc.returncode is None:
            r.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(r.proc.wait(), 5)
            except TimeoutError:
                r.proc.kill()
                await r.proc.wait()


async def subscribe_via(addr: tuple[str, int], channel: str = CHANNEL) -> Subscriber:
    sub = Subscriber(channel, [addr])
    await sub.start()
    return sub


async def fetch(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


def metric(text: str, name: str) -> float:
    total = 0.0
    for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M):
        total += float(m.group(1))
    return total


# --------------------------------------------------------------------------- tests


async def test_subscriber_through_relay_hears_tone(upstream: ToneUpstream, start_relay) -> None:
    relay = await start_relay("--upstream", f"127.0.0.1:{upstream.addr[1]}")
    sub = await subscribe_via(relay.media)
    try:
        await sub.wait_packets(75)
        assert sub.client.ssrc == ssrc_for(CHANNEL)
        assert_tone(decode_opus(sub.payloads))
        assert sub.rtcp >= 1, "sender reports are relayed too"
        status, text = await fetch(relay.http + "/metrics")
        assert status == 200
        assert metric(text, "loa_upstream_packets_in_total") >= 75
        assert metric(text, "loa_fanout_packets_out_total") >= 75
        assert metric(text, "loa_fanout_subscribers") == 1
    finally:
        sub.close()


async def test_unknown_channel_is_rejected_through_the_relay(upstream, start_relay) -> None:
    relay = await start_relay("--upstream", f"127.0.0.1:{upstream.addr[1]}")
    sub = await subscribe_via(relay.media, "no-such-channel")
    try:
        # The relay accepts first (it cannot know), then passes the upstream's REJECT on;
        # afterwards it rejects the HELLO itself, and the SDP is a 404.
        deadline = time.monotonic() + 4
        while True:
            status, body = await fetch(relay.http + "/channels/no-such-channel.sdp")
            if status == 404 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert status == 404 and json.loads(body)["field"] == "channel"
        assert sub.payloads == []
    finally:
        sub.close()


async def test_gstreamer_and_ffmpeg_play_static_destination(
    upstream: ToneUpstream, start_relay, tmp_path: Path
) -> None:
    gst_port, ff_port = free_udp_port(), free_udp_port()
    relay = await start_relay("--upstream", f"127.0.0.1:{upstream.addr[1]}",
                              "--static", f"{CHANNEL}=127.0.0.1:{gst_port}",
                              "--static", f"{CHANNEL}=127.0.0.1:{ff_port}")
    status, sdp = await fetch(f"{relay.http}/channels/{CHANNEL}.sdp")
    assert status == 200, sdp
    assert f"m=audio {gst_port} RTP/AVP 111\r\n" in sdp
    assert "c=IN IP4 127.0.0.1\r\n" in sdp and "a=rtpmap:111 opus/48000/2\r\n" in sdp
    url = f"{relay.http}/channels/{CHANNEL}.sdp?addr=127.0.0.1&port={ff_port}"
    status, ff_sdp = await fetch(url)
    assert status == 200 and f"m=audio {ff_port} " in ff_sdp
    (tmp_path / "ch.sdp").write_text(ff_sdp, newline="")

    gst_wav, ff_wav = tmp_path / "gst.wav", tmp_path / "ff.wav"
    gst = await asyncio.create_subprocess_exec(
        "gst-launch-1.0", "-q", "-e",
        "udpsrc", f"port={gst_port}", "num-buffers=100",
        "caps=application/x-rtp,media=audio,clock-rate=48000,encoding-name=OPUS,payload=111",
        "!", "rtpjitterbuffer", "!", "rtpopusdepay", "!", "opusdec", "!", "audioconvert", "!",
        "audioresample", "!", "audio/x-raw,rate=48000,channels=1,format=S16LE", "!", "wavenc",
        "!", "filesink", f"location={gst_wav}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    ff = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-loglevel", "error", "-protocol_whitelist", "file,udp,rtp",
        "-i", str(tmp_path / "ch.sdp"), "-t", "2", "-ac", "1", "-ar", "48000", "-y", str(ff_wav),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, gst_err = await asyncio.wait_for(gst.communicate(), 10)
        _, ff_err = await asyncio.wait_for(ff.communicate(), 10)
    finally:
        for p in (gst, ff):
            if p.returncode is None:
                p.kill()
                await p.wait()
    assert gst.returncode == 0, gst_err.decode()
    pcm, rate = read_wav(gst_wav)
    assert_tone(pcm, rate, min_s=1.0)
    assert ff.returncode == 0, ff_err.decode()
    pcm, rate = read_wav(ff_wav)
    assert_tone(pcm, rate, min_s=1.0)


async def test_listen_in_ogg_decodes_with_ffmpeg(upstream, start_relay, tmp_path: Path) -> None:
    relay = await start_relay("--upstream", f"127.0.0.1:{upstream.addr[1]}")
    out = tmp_path / "listen.wav"
    ff = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-loglevel", "error", "-i",
        f"{relay.http}/listen/{CHANNEL}.ogg{listen_query(CHANNEL)}",
        "-t", "2", "-y", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(ff.communicate(), 10)
    finally:
        if ff.returncode is None:
            ff.kill()
            await ff.wait()
    assert ff.returncode == 0, err.decode()
    assert b"crc" not in err.lower(), err.decode()
    pcm, rate = read_wav(out)
    assert_tone(pcm, rate, min_s=1.5)
    # the listener is gone once ffmpeg hung up: the relay lets go of the channel
    deadline = time.monotonic() + 4
    while True:
        _, health = await fetch(relay.http + "/healthz")
        if json.loads(health)["listeners"] == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert json.loads(health)["listeners"] == 0


async def test_listen_in_unknown_channel_is_json_404(start_relay) -> None:
    relay = await start_relay("--upstream", "127.0.0.1:9")
    status, body = await fetch(relay.http + "/channels/x.sdp?addr=nope&port=5")
    assert status == 400 and json.loads(body)["field"] == "addr"
    # an IPv6 scope is any text to ipaddress: not a line break into the SDP
    status, body = await fetch(relay.http + "/channels/x.sdp?addr=fe80::1%25x%0D%0Aa=x&port=5")
    assert status == 400 and json.loads(body)["field"] == "addr"
    status, body = await fetch(relay.http + "/channels/x.sdp")
    assert status == 404 and json.loads(body)["field"] == "channel"


async def test_spoofed_hello_gets_no_amplification_and_no_media(upstream, start_relay) -> None:
    relay = await start_relay("--upstream", f"127.0.0.1:{upstream.addr[1]}")
    legit = await subscribe_via(relay.media)  # media is flowing through the relay meanwhile
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    raw.setblocking(False)
    try:
        await legit.wait_packets(10)
        hello = subscribe.Message(subscribe.MsgType.HELLO, CHANNEL, identity="spoofer").build()
        raw.sendto(hello, relay.media)
        replies: list[bytes] = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                replies.append(raw.recv(65536))
            except BlockingIOError:
                await asyncio.sleep(0.01)
        assert len(replies) <= 1
        assert all(len(r) <= len(hello) for r in replies)
        assert not any(is_rtp(r) for r in replies), "media without the cookie echoed"
        assert len(legit.payloads) >= 40  # the relay was sending all along
    finally:
        raw.close()
        legit.close()


async def test_malformed_datagrams_are_counted_and_relaying_goes_on(
    upstream, start_relay
) -> None:
    relay = await start_relay("--upstream", f"127.0.0.1:{upstream.addr[1]}")
    sub = await subscribe_via(relay.media)
    rng = random.Random(7)
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        await sub.wait_packets(10)
        sent = 0
        for i in range(2000):
            raw.sendto(rng.randbytes(rng.randint(0, 2000)), relay.media)
            sent += 1
            if i % 50 == 49:
                await asyncio.sleep(0.005)  # let the relay read: loopback drops bursts
        before = len(sub.payloads)
        await asyncio.sleep(1.0)
        got = len(sub.payloads) - before
        assert got >= 40, f"only {got} packets in the second after the garbage"
        assert_tone(decode_opus(sub.payloads[-50:]), min_s=0.9)
    finally:
        raw.close()
        sub.close()
    _, text = await fetch(relay.http + "/metrics")
    bad = metric(text, "loa_bad_datagrams_total")
    assert 0.95 * sent <= bad <= sent, f"{bad} bad datagrams counted of {sent}"
    status, _ = await fetch(relay.http + "/healthz")
    assert status == 200


async def test_failover_past_a_dead_upstream(upstream, start_relay) -> None:
    dead = free_udp_port()
    relay = await start_relay("--upstream", f"127.0.0.1:{dead}",
                              "--upstream", f"127.0.0.1:{upstream.addr[1]}",
                              "--failover-s", "1")
    sub = await subscribe_via(relay.media)
    try:
        await sub.wait_packets(50, timeout=4.5)
        assert_tone(decode_opus(sub.payloads))
    finally:
        sub.close()
    _, text = await fetch(relay.http + "/metrics")
    assert metric(text, "loa_upstream_failovers_total") >= 1


async def test_relay_chain(upstream, start_relay) -> None:
    a = await start_relay("--upstream", f"127.0.0.1:{upstream.addr[1]}")
    b = await start_relay("--upstream", f"{a.media[0]}:{a.media[1]}")
    sub = await subscribe_via(b.media)
    try:
        await sub.wait_packets(75)
        assert_tone(decode_opus(sub.payloads))
    finally:
        sub.close()
    # A sees exactly one subscriber (relay B), however many B has
    _, text = await fetch(a.http + "/metrics")
    assert metric(text, "loa_fanout_subscribers") == 1


async def test_relay_byes_upstream_after_last_subscriber_leaves(upstream, start_relay) -> None:
    relay = await start_relay("--upstream", f"127.0.0.1:{upstream.addr[1]}", "--linger-s", "0.5")
    sub = await subscribe_via(relay.media)
    await sub.wait_packets(10)
    assert upstream.fanout.table.subscribers(CHANNEL) == 1
    sub.close()  # BYE to the relay
    deadline = time.monotonic() + 3
    while upstream.fanout.table.subscribers(CHANNEL) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert upstream.fanout.table.subscribers(CHANNEL) == 0


async def test_relay_sigterm_sends_bye(upstream, start_relay) -> None:
    relay = await start_relay("--upstream", f"127.0.0.1:{upstream.addr[1]}",
                              "--static", f"{CHANNEL}=127.0.0.1:{free_udp_port()}")
    deadline = time.monotonic() + 3
    while not upstream.fanout.table.subscribers(CHANNEL) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert upstream.fanout.table.subscribers(CHANNEL) == 1
    relay.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(relay.proc.wait(), 5) == 0
    await asyncio.sleep(0.1)
    assert upstream.fanout.table.subscribers(CHANNEL) == 0


def test_bad_config_names_the_field() -> None:
    import subprocess

    r = subprocess.run([sys.executable, "-m", "relay.main", "--upstream", "nohostport"],
                       cwd=ROOT, capture_output=True, text=True, timeout=20,
                       env={**os.environ, "LOA_RELAY_MEDIA": "127.0.0.1:0"})
    assert r.returncode == 2 and "upstream" in r.stderr


# --------------------------------------------------------------------------- in-process units


def test_destination_table_rebuilds_only_on_change() -> None:
    t = DestinationTable()
    assert not t.get("a")
    t.add_static("a", ("10.0.0.1", 5004))
    t.add_subscriber("a", ("10.0.0.2", 4000))
    first = t.get("a")
    assert first.addrs == (("10.0.0.1", 5004), ("10.0.0.2", 4000))
    assert t.get("a") is first  # the same prebuilt batch every packet
    t.add_subscriber("a", ("10.0.0.1", 5004))  # also static: sent once
    assert len(t.get("a")) == 2
    t.remove_subscriber("a", ("10.0.0.1", 5004))
    assert t.get("a").addrs == first.addrs  # the static destination stays
    t.remove_static("a", ("10.0.0.1", 5004))
    t.remove_subscriber("a", ("10.0.0.2", 4000))
    assert not t.get("a") and t.channels() == set()


async def test_fanout_survives_fuzzed_control_messages() -> None:
    fanout = FanoutEndpoint(channel_ssrc=lambda ch: 1, registry=CollectorRegistry(),
                            process="fuzz")
    await fanout.start("127.0.0.1", 0)
    rng = random.Random(1)
    try:
        valid = subscribe.Message(subscribe.MsgType.SUBSCRIBE, "ch", identity="x",
                                  cookie=bytes(24)).build()
        for i in range(5000):
            if i % 2:
                data = subscribe.MAGIC + rng.randbytes(rng.randint(0, 300))
            else:  # valid prefix, damaged tail
                cut = rng.randint(0, len(valid))
                data = valid[:cut] + rng.randbytes(rng.randint(0, 40))
            fanout.datagram_received(data, ("127.0.0.1", 40000 + i % 100))
        assert fanout.server.count == 0  # nothing subscribed without a real cookie
        text = metric_text(fanout.registry)
        assert metric(text, "loa_bad_datagrams_total") > 1000
    finally:
        fanout.close()


def metric_text(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


async def test_fanout_publish_reaches_subscribers_statics_and_listeners() -> None:
    fanout = FanoutEndpoint(channel_ssrc=lambda ch: ssrc_for(ch), registry=CollectorRegistry(),
                            process="unit")
    changes: list[tuple[str, int]] = []
    fanout.on_change = lambda ch, n: changes.append((ch, n))
    await fanout.start("127.0.0.1", 0)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    heard: list[bytes] = []
    try:
        fanout.add_static("c", ("localhost", rx.getsockname()[1]))
        fanout.add_listener("c", heard.append)
        fanout.add_listener("c", lambda p: 1 / 0)  # a broken listener harms nobody
        pkt = RtpPacket(ssrc_for("c"), 1, 960, b"\xf8\xff\xfe").build()
        fanout.publish("c", pkt)
        fanout.publish("other", pkt)
        assert rx.recv(2048) == pkt
        assert heard == [pkt]
        assert changes[0] == ("c", 1) and changes[-1] == ("c", 3)
        fanout.remove_static("c", ("localhost", rx.getsockname()[1]))
        fanout.remove_listener("c", heard.append)
        assert fanout.statics("c") == ()
    finally:
        rx.close()
        fanout.close()


async def test_multicast_static_destination_and_its_sdp() -> None:
    from aiohttp import web

    from fanout.http import add_media_routes

    group = "239.255.42.7"
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rx.bind((group, 0))
        mreq = socket.inet_aton(group) + socket.inet_aton("0.0.0.0")
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    except OSError as e:
        rx.close()
        pytest.skip(f"no multicast on this host: {e}")
    rx.settimeout(2)
    port = rx.getsockname()[1]
    fanout = FanoutEndpoint(channel_ssrc=ssrc_for, registry=CollectorRegistry(), process="mc")
    await fanout.start("0.0.0.0", 0)
    app = web.Application()
    add_media_routes(app, fanout, ptime_ms=20, public_host="192.0.2.1")
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        fanout.add_static("mc", (group, port))
        pkt = RtpPacket(ssrc_for("mc"), 7, 960, b"\xf8\xff\xfe").build()
        fanout.publish("mc", pkt)
        assert await asyncio.get_running_loop().run_in_executor(None, rx.recv, 2048) == pkt
        host, http_port = runner.addresses[0][:2]
        status, sdp = await fetch(f"http://{host}:{http_port}/channels/mc.sdp")
        assert status == 200
        assert f"c=IN IP4 {group}/16\r\n" in sdp and f"m=audio {port} RTP/AVP 111\r\n" in sdp
        assert "o=- " in sdp and " IN IP4 192.0.2.1\r\n" in sdp
    finally:
        rx.close()
        fanout.close()
        await runner.cleanup()


async def test_slow_listen_in_client_is_dropped_not_buffered() -> None:
    from aiohttp import web

    from fanout.http import LISTEN_QUEUE_PACKETS, add_media_routes

    fanout = FanoutEndpoint(channel_ssrc=ssrc_for, registry=CollectorRegistry(), process="li")
    await fanout.start("127.0.0.1", 0)
    app = web.Application()
    add_media_routes(app, fanout, ptime_ms=20, public_host="127.0.0.1")
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://{host}:{port}/listen/c.ogg") as r:
            assert r.status == 200 and r.headers["Content-Type"] == "audio/ogg"
            assert (await r.content.readexactly(4)) == b"OggS"
            deadline = time.monotonic() + 2
            while fanout.consumers("c") == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert fanout.consumers("c") == 1
            # More packets at once than the client's queue holds: the relay gives up on it
            # and ends the response instead of buffering.
            for seq in range(LISTEN_QUEUE_PACKETS + 50):
                pkt = RtpPacket(ssrc_for("c"), seq, seq * 960, b"\xf8\xff\xfe").build()
                fanout.publish("c", pkt)
            body = await asyncio.wait_for(r.content.read(), 3)
        assert body.count(b"OggS") <= LISTEN_QUEUE_PACKETS + 2
        assert fanout.consumers("c") == 0
    finally:
        fanout.close()
        await runner.cleanup()


def test_config_precedence_toml_env_flags(tmp_path: Path) -> None:
    from relay.main import ConfigError, load_config

    cfg_file = tmp_path / "relay.toml"
    cfg_file.write_text('[relay]\nid = "from-toml"\nupstream = ["10.0.0.1:5004", "10.0.0.2:5004"]\n'
                        'static = ["a=239.1.1.1:5004"]\nlinger_s = 2.5\n')
    keys = list(STREAM_KEY_ARGS)
    cfg = load_config(["--config", str(cfg_file), *keys], env={})
    assert cfg.id == "from-toml" and cfg.upstream == [("10.0.0.1", 5004), ("10.0.0.2", 5004)]
    assert cfg.static == [("a", ("239.1.1.1", 5004))] and cfg.linger_s == 2.5
    assert cfg.burst_ms == 200
    with pytest.raises(ConfigError, match="burst_ms"):
        load_config(["--config", str(cfg_file), "--burst-ms", "5000", *keys], env={})
    cfg = load_config(["--config", str(cfg_file), "--id", "from-flag", *keys],
                      env={"LOA_RELAY_ID": "from-env", "LOA_RELAY_UPSTREAM": "[::1]:7000"})
    assert cfg.id == "from-flag" and cfg.upstream == [("::1", 7000)]
    cfg_file.write_text('linger_s = "soon"\nupstream = ["h:1"]\n')
    with pytest.raises(ConfigError) as e:
        load_config(["--config", str(cfg_file)], env={})
    assert "linger_s" in str(e.value)
