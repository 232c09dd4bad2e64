"""Only the streamer can make a speaker play (issue 18), against real processes.

A malicious relay between a real relay and a real speaker replaces the audio, adds or strips
the emergency level, or passes old audio off as new; a raw-socket sender fakes the relay's
source address; the streamer changes its key in the middle of a tone. What counts is what the
speaker played (its WAV): nothing forged, and the genuine programme without a gap.

Each attack also runs against a speaker with verification turned off (``--verify-media off``)
and must then be heard: that shows the check would catch a speaker that plays forged media.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import opuslib
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.api import call
from tests.harness.audio import peak_hz, rms_dbfs
from tests.harness.keys import STREAM_KEY_ARGS, token_for
from tests.harness.relay import RelayProcess, relay_process
from tests.harness.speaker import SpeakerProcess, speaker_process
from tests.harness.upstream import FRAME, RATE, ToneUpstream, serving
from tests.harness.wait import until
from tests.harness.zones import KP1
from wire.auth import SigningKey
from wire.packet import HEADER_LEN, is_rtcp, is_rtp
from wire.subscribe import is_control

pytestmark = pytest.mark.realtime  # audio against the wall clock: see conftest.py

CH = KP1
FORGED_HZ = 3000
VERIFY = pytest.mark.parametrize("verify", [True, False], ids=["verified", "verification-off"])


def opus_tone(hz: int) -> bytes:
    """One 20 ms Opus packet of a tone (whole periods: repeating it is a steady tone)."""
    enc = opuslib.Encoder(RATE, 1, opuslib.APPLICATION_AUDIO)
    pcm = (0.5 * 32767 * np.sin(2 * np.pi * hz * np.arange(FRAME) / RATE)).astype("<i2")
    enc.encode(pcm.tobytes(), FRAME)  # past the encoder's start-up
    return bytes(enc.encode(pcm.tobytes(), FRAME))


class EmergencyTone(ToneUpstream):
    def frame(self, n: int) -> tuple[bytes, int, int]:
        return self._tone, self.broadcast_id, 3


class _Side(asyncio.DatagramProtocol):
    def __init__(self, received: Callable[[bytes, Any], None]) -> None:
        self.received = received

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received(data, addr)


class Mitm:
    """A malicious relay: the speaker's upstream, itself subscribed to a real relay on the
    speaker's behalf. It passes the handshake both ways and the media unchanged until
    ``forging`` is set; then every media datagram goes through ``tamper`` instead."""

    def __init__(self, relay: tuple[str, int], tamper: Callable[[bytes], list[bytes]],
                 observe: Callable[[bytes], None] = lambda data: None) -> None:
        self.relay, self.tamper, self.observe = relay, tamper, observe
        self.forging = False
        self.speaker: Any = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.down, _ = await loop.create_datagram_endpoint(
            lambda: _Side(self._from_speaker), local_addr=("127.0.0.1", 0))
        self.up, _ = await loop.create_datagram_endpoint(
            lambda: _Side(self._from_relay), local_addr=("127.0.0.1", 0))

    @property
    def addr(self) -> str:
        return "{}:{}".format(*self.down.get_extra_info("sockname")[:2])

    def _from_speaker(self, data: bytes, addr: Any) -> None:
        self.speaker = addr
        self.up.sendto(data, self.relay)

    def _from_relay(self, data: bytes, addr: Any) -> None:
        if self.speaker is None:
            return
        if is_control(data) or not self.forging:
            if not is_control(data):
                self.observe(data)
            out = [data]
        else:
            out = self.tamper(data)
        for d in out:
            self.down.sendto(d, self.speaker)

    def close(self) -> None:
        self.down.close()
        self.up.close()


def replace_audio(forged: bytes) -> Callable[[bytes], list[bytes]]:
    def tamper(data: bytes) -> list[bytes]:
        return [data] if is_rtcp(data) else [data[:HEADER_LEN] + forged]
    return tamper


def set_level(level: int) -> Callable[[bytes], list[bytes]]:
    def tamper(data: bytes) -> list[bytes]:
        if is_rtcp(data):
            return [data]
        altered = bytearray(data)
        altered[HEADER_LEN - 1] = level  # the priority extension's value
        return [bytes(altered)]
    return tamper


class Replay:
    """Keeps the audio of the honest prelude, then passes it off as new: old payloads under
    the live headers (sequence, timestamp, capture time), the LOAS unchanged."""

    def __init__(self) -> None:
        self.old: list[bytes] = []
        self.i = 0

    def observe(self, data: bytes) -> None:
        if is_rtp(data) and not is_rtcp(data):
            self.old.append(data[HEADER_LEN:])

    def tamper(self, data: bytes) -> list[bytes]:
        if is_rtcp(data):
            return [data]
        self.i += 1
        return [data[:HEADER_LEN] + self.old[self.i % len(self.old)]]


async def metric(spk: SpeakerProcess, prefix: str) -> float:
    return sum(v for k, v in (await spk.metrics()).items() if k.startswith(prefix))


async def honest_prelude(spk: SpeakerProcess) -> None:
    """The genuine programme plays through both relays: a 1 kHz tone on the speaker."""
    await until(spk.subscribed, 10, "speaker subscribed")
    t = time.time()
    await asyncio.sleep(1.2)
    heard = await spk.wait_window(t + 0.5, t + 1.0)
    assert abs(peak_hz(heard) - 1000) < 50 and rms_dbfs(heard) > -60, rms_dbfs(heard)


# --------------------------------------------------------------------------- the malicious relay


@VERIFY
@pytest.mark.parametrize("attack", ["replace", "add_emergency", "strip_emergency", "replay"])
async def test_a_malicious_relay_makes_the_speaker_play_nothing_forged(
        tmp_path: Path, attack: str, verify: bool) -> None:
    replay = Replay()
    tamper = {"replace": replace_audio(opus_tone(FORGED_HZ)), "add_emergency": set_level(3),
              "strip_emergency": set_level(0), "replay": replay.tamper}[attack]
    source = EmergencyTone if attack == "strip_emergency" else ToneUpstream
    async with serving(source) as up, \
            relay_process(tmp_path, "relay", "--upstream", up.addr) as relay:
        mitm = Mitm(relay.media, tamper, replay.observe)
        await mitm.start()
        # at volume 50 an emergency is forced 25 dB louder: adding or stripping it is heard
        args = ["--channel", CH, "--upstream", mitm.addr, "--volume", "50"]
        if not verify:
            args += ["--verify-media", "off"]
        try:
            async with speaker_process(tmp_path, "spk", *args) as spk:
                await honest_prelude(spk)
                mitm.forging = True
                t = time.time()
                await asyncio.sleep(3.0)
                # from one playout delay (and a margin) after the forging began
                played = await spk.wait_window(t + 0.6, t + 2.9)
                if verify:
                    assert np.count_nonzero(played) == 0, (
                        f"{np.count_nonzero(played)} forged samples, {rms_dbfs(played):.1f} dBFS")
                    assert await metric(spk, "loa_media_auth_loas_total[outcome=bad_signature]") > 0
                    assert await metric(spk, "loa_media_auth_dropped_total[reason=unverified]") > 0
                else:  # the same attack on a speaker that does not verify is heard
                    assert rms_dbfs(played) > -60, rms_dbfs(played)
                    if attack == "replace":
                        assert abs(peak_hz(played) - FORGED_HZ) < 50
        finally:
            mitm.close()


@pytest.mark.parametrize(("loas_first", "at_relay"), [(False, False), (True, False), (True, True)],
                         ids=["packets-reversed", "loas-first", "loas-first-into-the-relay"])
async def test_reordered_packets_within_the_window_still_play_in_order(
        tmp_path: Path, loas_first: bool, at_relay: bool) -> None:
    """Reordering is not forging: each batch's packets delivered in reverse order, before
    its LOAS or after it (a receiver keeps the LOAS until the packets come; a relay forwards
    it once they have), between the relay and the speaker or into the relay, still verify
    and play in sequence, the tone without a gap."""
    held: list[bytes] = []

    def reorder(data: bytes) -> list[bytes]:
        if not is_rtcp(data):
            held.append(data)
            return []
        out = [data, *held[::-1]] if loas_first else [*held[::-1], data]
        held.clear()
        return out

    async with tone_through_mitm(tmp_path, reorder, at_relay) as (_, spk):
        await tone_without_gap(spk)


@contextlib.asynccontextmanager
async def tone_through_mitm(tmp_path: Path, tamper: Callable[[bytes], list[bytes]],
                            at_relay: bool) -> AsyncIterator[tuple[RelayProcess, SpeakerProcess]]:
    """A tone upstream → relay → speaker, with a ``Mitm`` applying ``tamper`` into the relay
    (``at_relay``) or between the relay and the speaker, from the end of an honest prelude."""
    async with contextlib.AsyncExitStack() as stack:
        up = await stack.enter_async_context(serving(ToneUpstream))
        if at_relay:
            host, port = up.addr.rsplit(":", 1)
            mitm = Mitm((host, int(port)), tamper)
            await mitm.start()
            stack.callback(mitm.close)
            relay = await stack.enter_async_context(
                relay_process(tmp_path, "relay", "--upstream", mitm.addr))
            first_hop = relay.media_addr
        else:
            relay = await stack.enter_async_context(
                relay_process(tmp_path, "relay", "--upstream", up.addr))
            mitm = Mitm(relay.media, tamper)
            await mitm.start()
            stack.callback(mitm.close)
            first_hop = mitm.addr
        spk = await stack.enter_async_context(
            speaker_process(tmp_path, "spk", "--channel", CH, "--upstream", first_hop))
        await honest_prelude(spk)
        mitm.forging = True
        yield relay, spk


async def tone_without_gap(spk: SpeakerProcess) -> None:
    """The next 3 s at the speaker are the 1 kHz tone, every 20 ms of it."""
    t = time.time()
    await asyncio.sleep(3.0)
    played = await spk.wait_window(t + 0.6, t + 2.9)
    blocks = played[: len(played) // FRAME * FRAME].reshape(-1, FRAME)
    levels = [rms_dbfs(b) for b in blocks]
    assert min(levels) > -25, levels  # the tone is at -13.5 dBFS, with no gap
    assert abs(peak_hz(played) - 1000) < 50


@pytest.mark.parametrize("at_relay", [False, True], ids=["relay-to-speaker", "into-the-relay"])
async def test_a_lost_loas_is_asked_for_again_and_its_batch_plays(
        tmp_path: Path, at_relay: bool) -> None:
    """Every LOAS is lost the first time it is sent: the receiver, holding packets nothing has
    proven, asks its upstream for it again (RESEND) and the tone plays without a gap. Without
    the second asking every batch would be lost."""
    seen: set[bytes] = set()

    def lose_first_loas(data: bytes) -> list[bytes]:
        if is_rtcp(data) and data not in seen:
            seen.add(data)
            return []
        return [data]

    async with tone_through_mitm(tmp_path, lose_first_loas, at_relay) as (relay, spk):
        await tone_without_gap(spk)
        asked = (await relay_metric(relay, "loa_media_auth_loas_requested_total")
                 if at_relay else await metric(spk, "loa_media_auth_loas_requested_total"))
        assert asked >= 8 and len(seen) >= 8


async def relay_metric(relay: RelayProcess, prefix: str) -> float:
    async with aiohttp.ClientSession() as http, \
            http.get(f"{relay.http}/metrics") as r:
        text = await r.text()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name.startswith(prefix))


async def test_a_speaker_leaves_a_tampering_relay_and_the_emergency_plays_forced(
        tmp_path: Path) -> None:
    """A muted speaker whose first upstream strips the emergency level: no forged packet ever
    counts as media, so it fails over to the honest relay and the emergency plays at the
    forced volume."""
    async with serving(EmergencyTone) as up, \
            relay_process(tmp_path, "relay", "--upstream", up.addr) as relay:
        mitm = Mitm(relay.media, set_level(0))
        mitm.forging = True
        await mitm.start()
        try:
            async with speaker_process(tmp_path, "spk", "--channel", CH, "--mute",
                                       "--upstream", mitm.addr, "--upstream", relay.media_addr,
                                       "--failover-s", "1") as spk:
                await until(lambda: spk.health(), 5, "speaker up")
                await until(lambda: _upstream_is(spk, relay.media_addr), 10,
                            "failover to the honest relay")
                t = time.time()
                await asyncio.sleep(1.2)
                played = await spk.wait_window(t + 0.4, t + 1.1)
                assert abs(rms_dbfs(played) - rms_dbfs(_tone_ref())) < 2, rms_dbfs(played)
                assert await metric(spk, "loa_speaker_failovers_total") >= 1
        finally:
            mitm.close()


async def _upstream_is(spk: SpeakerProcess, addr: str) -> bool:
    return bool((await spk.health())["upstream"] == addr and await spk.subscribed())


def _tone_ref() -> np.ndarray:
    from tests.harness.upstream import TONE_PEAK
    return TONE_PEAK * np.sin(2 * np.pi * 1000 * np.arange(FRAME * 10) / RATE)


# --------------------------------------------------------------------------- raw-socket spoofing


def raw_sender() -> socket.socket:
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except PermissionError:
        pytest.skip("a raw socket needs root (CAP_NET_RAW) to fake a source address")


def udp_datagram(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """IPv4 + UDP headers around ``payload`` (the kernel fills the IP checksum and id; a UDP
    checksum of 0 means none, RFC 768)."""
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    return ip + udp


class Spoofer(asyncio.DatagramProtocol):
    """Subscribes to the relay like anyone may, and for every packet it gets sends the
    speaker a forged one from the relay's address: the same header with a 3 kHz payload, and
    the next frame's too, ahead of the genuine one."""

    def __init__(self, raw: socket.socket, relay: tuple[str, int], speaker: tuple[str, int],
                 forged: bytes) -> None:
        self.raw, self.relay, self.speaker, self.forged = raw, relay, speaker, forged
        self.on = False
        self.sent = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.on or is_control(data) or is_rtcp(data):
            return
        seq, ts = struct.unpack_from("!HI", data, 2)
        capture = struct.unpack_from("!Q", data, 17)[0]
        head = bytearray(data[:HEADER_LEN])
        for ahead in (0, 1):
            struct.pack_into("!HI", head, 2, (seq + ahead) & 0xFFFF,
                             (ts + ahead * FRAME) & 0xFFFF_FFFF)
            struct.pack_into("!Q", head, 17, capture + ahead * (1 << 32) // 50)
            self.raw.sendto(udp_datagram(self.relay, self.speaker, bytes(head) + self.forged),
                            (self.speaker[0], 0))
            self.sent += 1


@VERIFY
async def test_a_raw_socket_faking_the_relay_makes_the_speaker_play_none_of_it(
        tmp_path: Path, verify: bool) -> None:
    raw = raw_sender()
    async with serving(ToneUpstream) as up, \
            relay_process(tmp_path, "relay", "--upstream", up.addr) as relay:
        args = ["--channel", CH, "--upstream", relay.media_addr, "--bind", "127.0.0.1:0"]
        if not verify:
            args += ["--verify-media", "off"]
        async with speaker_process(tmp_path, "spk", *args) as spk:
            await honest_prelude(spk)
            loop = asyncio.get_running_loop()
            transport, spoofer = await loop.create_datagram_endpoint(
                lambda: Spoofer(raw, relay.media, ("127.0.0.1", spk.udp_port),
                                opus_tone(FORGED_HZ)), local_addr=("127.0.0.1", 0))
            try:
                await _subscribe(transport, relay.media)
                spoofer.on = True
                t = time.time()
                await asyncio.sleep(3.0)
                played = await spk.wait_window(t + 0.6, t + 2.9)
            finally:
                transport.close()
                raw.close()
            assert spoofer.sent > 100
            spectrum = np.abs(np.fft.rfft(played * np.hanning(len(played))))
            hz = np.fft.rfftfreq(len(played), 1 / RATE)
            forged = spectrum[(hz > FORGED_HZ - 100) & (hz < FORGED_HZ + 100)].max()
            genuine = spectrum[(hz > 900) & (hz < 1100)].max()
            if verify:
                assert forged < genuine * 1e-3, (forged, genuine)  # more than 60 dB down
                blocks = played[: len(played) // FRAME * FRAME].reshape(-1, FRAME)
                levels = [rms_dbfs(b) for b in blocks]
                assert min(levels) > -25, levels  # the genuine tone, without a gap
                assert await metric(spk, "loa_media_auth_dropped_total[reason=forged]") > 50
            else:
                assert forged > genuine, (forged, genuine)


async def _subscribe(transport: asyncio.DatagramTransport, relay: tuple[str, int]) -> None:
    """Handshake from the spoofer's own socket: HELLO, then SUBSCRIBE with the cookie."""
    from wire.subscribe import SubscribeClient

    proto: Any = transport.get_protocol()
    # a subscriber like any other (its token is good): what it sends is the attack
    client = SubscribeClient(identity="spoofer", channel=CH, upstreams=[relay],
                             token=token_for("spoofer"))
    done = asyncio.get_running_loop().create_future()
    original = proto.datagram_received

    def received(data: bytes, addr: Any) -> None:
        if is_control(data):
            for out, to in client.handle(data, (addr[0], addr[1]), time.monotonic()):
                transport.sendto(out, to)
            if client.state.name == "SUBSCRIBED" and not done.done():
                done.set_result(None)
        original(data, addr)

    proto.datagram_received = received
    for out, to in client.start(time.monotonic()):
        transport.sendto(out, to)
    await asyncio.wait_for(done, 5)


# --------------------------------------------------------------------------- key rotation


@pytest.mark.parametrize("pinned", ["both", "old"])
async def test_a_key_rotation_during_a_tone_has_no_gap(streamer, tmp_path: Path,
                                                       pinned: str) -> None:
    """The speaker pins the old and the next key; the streamer switches keys (its key file
    rewritten, then reloaded as on SIGHUP) in the middle of a tone. A speaker that pins only
    the old key goes silent, which shows the new key is really in use."""
    new = SigningKey.generate()
    keys = [*STREAM_KEY_ARGS] + (["--stream-key", new.public_text] if pinned == "both" else [])
    async with speaker_process(tmp_path, "spk", "--channel", CH, "--upstream",
                               streamer.media_addr, *keys) as spk:
        status, b = await call(streamer, "POST", "/api/v1/broadcasts", json={
            "zones": [CH], "source": {"kind": "tone", "hz": 1000, "seconds": 6}})
        assert status == 201, b
        await until(lambda: _playing(spk), 10, "the tone on the speaker")
        await asyncio.sleep(1.0)
        streamer.key_path.write_bytes(new.to_pem())
        t = time.time()
        streamer.reload_key()
        await asyncio.sleep(2.0)
        played = await spk.wait_window(t - 0.5, t + 1.5)
        blocks = played[: len(played) // FRAME * FRAME].reshape(-1, FRAME)
        levels = np.array([rms_dbfs(b) for b in blocks])
        if pinned == "both":
            assert levels.min() > -30, levels.round(1).tolist()  # the tone without a gap
        else:
            assert levels[-25:].max() < -100, levels.round(1).tolist()  # silent under the new key
            assert levels[:20].min() > -30  # it played until the switch


def _playing(spk: SpeakerProcess) -> bool:
    pcm = spk.samples()
    return len(pcm) > RATE and rms_dbfs(pcm[-RATE // 10:]) > -40
