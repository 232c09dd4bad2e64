"""SDP text for plain RTP receivers, and Ogg/Opus pages for listen-in, checked by real parsers."""

from __future__ import annotations

import math
import subprocess
import wave
import zlib
from pathlib import Path

import av
import numpy as np
import opuslib
import pytest

from wire.ogg import OggOpusWriter, ogg_crc
from wire.packet import opus_samples, ssrc_for
from wire.sdp import channel_sdp

RATE = 48_000
FRAME = 960


def test_sdp_unicast_ipv4() -> None:
    sdp = channel_sdp("xa-an-ngai", "192.0.2.10", 5004, ptime_ms=40, origin="198.51.100.1")
    assert sdp.endswith("\r\n") and "\n" not in sdp.replace("\r\n", "")
    lines = sdp.split("\r\n")[:-1]
    assert lines[0] == "v=0"
    # RFC 4566 section 5: the session-level lines come in this order
    order = [ln[0] for ln in lines[: lines.index(next(x for x in lines if x.startswith("m=")))]]
    assert order == ["v", "o", "s", "i", "c", "t"]
    assert lines[1] == f"o=- {ssrc_for('xa-an-ngai')} 1 IN IP4 198.51.100.1"
    assert "c=IN IP4 192.0.2.10" in lines
    assert "m=audio 5004 RTP/AVP 111" in lines
    assert "a=rtpmap:111 opus/48000/2" in lines
    assert "a=fmtp:111 useinbandfec=1; stereo=0; sprop-stereo=0" in lines
    assert "a=ptime:40" in lines
    assert "a=recvonly" in lines and "a=rtcp-mux" in lines
    assert f"a=ssrc:{ssrc_for('xa-an-ngai')} cname:loa-xa-an-ngai" in lines
    assert "a=extmap:1 http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time" in lines
    assert "a=extmap:2 urn:loa:rtp-hdrext:broadcast-id" in lines
    assert sdp == channel_sdp("xa-an-ngai", "192.0.2.10", 5004, ptime_ms=40,
                              origin="198.51.100.1")  # stable


def test_sdp_multicast_and_ipv6() -> None:
    assert "c=IN IP4 239.10.0.1/16\r\n" in channel_sdp("a", "239.10.0.1", 5004)
    assert "c=IN IP4 239.10.0.1/3\r\n" in channel_sdp("a", "239.10.0.1", 5004, ttl=3)
    assert "c=IN IP6 ff15::10\r\n" in channel_sdp("a", "ff15::10", 5004)  # no TTL in IPv6
    assert "c=IN IP6 2001:db8::1\r\n" in channel_sdp("a", "2001:db8::1", 5004)
    assert "m=audio 6000 RTP/AVP 96\r\n" in channel_sdp("a", "10.0.0.1", 6000, pt=96)


def test_sdp_refuses_bad_values_and_line_injection() -> None:
    with pytest.raises(ValueError):
        channel_sdp("a", "10.0.0.1", 0)
    with pytest.raises(ValueError):
        channel_sdp("a", "10.0.0.1", 5004, pt=128)
    sdp = channel_sdp("evil\r\na=sendonly", "10.0.0.1", 5004)
    assert "\r\na=sendonly" not in sdp
    assert "cname:loa-evil__a_sendonly" in sdp
    # found by loadtest/fuzz.py: the addresses went into their lines verbatim, and an IPv6
    # scope may hold any text for ipaddress, so ?addr= of the SDP route could add lines
    for bad in ("fe80::1%x\r\na=sendonly", "10.0.0.1 a", "host\nname", "", "h\x00"):
        with pytest.raises(ValueError, match="not an IP address or host name"):
            channel_sdp("a", bad, 5004)
        with pytest.raises(ValueError, match="not an IP address or host name"):
            channel_sdp("a", "10.0.0.1", 5004, origin=bad)
    assert "c=IN IP4 relay.example.\r\n" in channel_sdp("a", "relay.example.", 5004)
    assert "c=IN IP6 fe80::1%eth0\r\n" in channel_sdp("a", "fe80::1%eth0", 5004)
    assert "s=a b\r\n" in channel_sdp("a", "10.0.0.1", 5004, session_name="a\x00b")


def test_ogg_crc_is_the_non_reflected_polynomial() -> None:
    # CRC-32 with poly 0x04C11DB7, init 0, no reflection, no final xor: check value of
    # "123456789" is 0x89A1897F. zlib.crc32 (reflected) differs, which is why it is not used.
    assert ogg_crc(b"123456789") == 0x89A1897F
    assert zlib.crc32(b"123456789") != 0x89A1897F
    assert ogg_crc(b"") == 0


def test_ogg_page_layout() -> None:
    w = OggOpusWriter(serial=0x01020304, pre_skip=312)
    head = w.headers()
    assert head[:4] == b"OggS" and head[5] == 0x02  # BOS
    assert head[28:36] == b"OpusHead" and head[36] == 1 and head[37] == 1  # version, mono
    assert int.from_bytes(head[38:40], "little") == 312
    assert int.from_bytes(head[40:44], "little") == 48_000
    second = head[27 + 1 + head[27 - 1 + 1] :]
    assert second[:4] == b"OggS" and second[5] == 0 and b"OpusTags" in second
    page = w.packet(b"\xfc" + bytes(299), 960)  # 300 bytes: lacing 255, 45
    assert int.from_bytes(page[6:14], "little") == 960  # granule
    assert int.from_bytes(page[18:22], "little") == 2  # page sequence after 2 header pages
    assert page[26] == 2 and page[27:29] == b"\xff\x2d"
    page = w.packet(bytes(510), 960)  # a multiple of 255 needs a terminating 0 lace
    assert page[26] == 3 and page[27:30] == b"\xff\xff\x00"
    assert int.from_bytes(page[6:14], "little") == 1920
    # the CRC covers the page with its CRC field zeroed
    crc = int.from_bytes(page[22:26], "little")
    assert ogg_crc(page[:22] + bytes(4) + page[26:]) == crc
    with pytest.raises(ValueError):
        w.packet(bytes(255 * 255), 960)


def _tone_packets(seconds: float, hz: float = 1000.0) -> list[bytes]:
    enc = opuslib.Encoder(RATE, 1, opuslib.APPLICATION_AUDIO)
    enc.bitrate = 32_000
    t = np.arange(FRAME) / RATE
    frame = (0.5 * 32767 * np.sin(2 * math.pi * hz * t)).astype(np.int16).tobytes()
    return [enc.encode(frame, FRAME) for _ in range(int(seconds * RATE / FRAME))]


def _write_ogg(path: Path, packets: list[bytes]) -> None:
    w = OggOpusWriter(serial=12345)
    with open(path, "wb") as f:
        f.write(w.headers())
        for p in packets:
            f.write(w.packet(p, opus_samples(p)))
        f.write(w.end())


def _assert_tone(pcm: np.ndarray, rate: int) -> None:
    pcm = pcm[len(pcm) // 5 :].astype(np.float64)
    assert np.sqrt(np.mean(pcm**2)) > 1000
    spec = np.abs(np.fft.rfft((pcm - pcm.mean()) * np.hanning(len(pcm))))
    hz = np.fft.rfftfreq(len(pcm), 1 / rate)[int(np.argmax(spec))]
    assert abs(hz - 1000) < 15, hz


def test_ogg_decodes_with_pyav(tmp_path: Path) -> None:
    path = tmp_path / "tone.ogg"
    _write_ogg(path, _tone_packets(1.0))
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        assert s.codec_context.name == "opus" and s.codec_context.channels == 1
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(s)])
    pcm = (pcm * 32767).astype(np.int16) if pcm.dtype.kind == "f" else pcm
    # pre-skip removed: 1 s of packets is 1 s minus 312 samples of audio
    assert abs(len(pcm) - (RATE - 312)) <= FRAME
    _assert_tone(pcm, RATE)


def test_ogg_decodes_with_gstreamer_which_checks_crc(tmp_path: Path) -> None:
    # libogg (under oggdemux) drops pages whose CRC is wrong: a bad CRC means no audio here.
    src, out = tmp_path / "tone.ogg", tmp_path / "tone.wav"
    _write_ogg(src, _tone_packets(1.0))
    r = subprocess.run(
        ["gst-launch-1.0", "-q", "filesrc", f"location={src}", "!", "oggdemux", "!", "opusdec",
         "!", "audioconvert", "!", "audio/x-raw,format=S16LE,channels=1", "!", "wavenc", "!",
         "filesink", f"location={out}"],
        capture_output=True, text=True, timeout=20,
    )
    assert r.returncode == 0, r.stderr
    with wave.open(str(out), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        rate = w.getframerate()
    assert len(pcm) >= 0.8 * rate
    _assert_tone(pcm, rate)
