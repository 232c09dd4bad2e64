"""Opus settings: validated with the key named, applied to libopus as asked, used by the mixer,
and the chosen defaults give intelligible, good speech clean and through loss (content checks
with PESQ, no timing)."""

import time

import numpy as np
import opuslib
import opuslib.api.ctl as ctl
import opuslib.api.encoder
import pytest

from common.config import ConfigError
from common.opus import APPLICATIONS, OpusEncoder, OpusSettings
from loadtest.bench_codec import decode, encode, loss_pattern, quality, speech
from streamer.mixer.clock import FrameClock
from streamer.mixer.mixer import Mixer
from streamer.mixer.program import Item
from streamer.mixer.sources.tone import Tone
from tests.harness.sink import Sent
from wire import packet
from wire.priority import Priority

N = 960  # 20 ms


@pytest.fixture(scope="module")
def bulletin() -> np.ndarray:
    return speech()


def applied(enc: opuslib.Encoder) -> OpusSettings:
    """What libopus says it was told, read back through its CTL getters."""
    def get(request):
        return opuslib.api.encoder.encoder_ctl(enc.encoder_state, request)

    app = {v: k for k, v in APPLICATIONS.items()}[get(ctl.get_application)]
    return OpusSettings(application=app, complexity=get(ctl.get_complexity),
                        fec=bool(get(ctl.get_inband_fec)), loss_perc=get(ctl.get_packet_loss_perc),
                        bitrate=get(ctl.get_bitrate))


@pytest.mark.parametrize("settings", [
    OpusSettings(),
    OpusSettings(application="voip", complexity=2, fec=True, loss_perc=20, bitrate=24_000),
    OpusSettings(application="audio", complexity=0, fec=False, loss_perc=0, bitrate=48_000),
    OpusSettings(application="lowdelay", complexity=7, fec=False, loss_perc=5, bitrate=16_000),
])
def test_settings_reach_libopus(settings: OpusSettings) -> None:
    enc = OpusEncoder(N, settings)
    assert applied(enc._enc) == settings
    assert opuslib.api.encoder.encoder_ctl(enc._enc.encoder_state, ctl.get_vbr) == 1


@pytest.mark.parametrize("kwargs, key", [
    ({"application": "music"}, "opus_application"),
    ({"complexity": 11}, "opus_complexity"),
    ({"complexity": -1}, "opus_complexity"),
    ({"complexity": 5.5}, "opus_complexity"),
    ({"fec": "yes"}, "opus_fec"),
    ({"loss_perc": 101}, "opus_loss_perc"),
    ({"fec": True, "loss_perc": 0}, "opus_loss_perc"),  # libopus would send no FEC
    ({"application": "lowdelay", "fec": True}, "opus_fec"),  # CELT only: no FEC exists
    ({"bitrate": 5_999}, "bitrate"),
    ({"bitrate": 600_000}, "bitrate"),
])
def test_bad_settings_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        OpusSettings(**kwargs)
    assert e.value.field == key


def _lost_frame_error(pcm: np.ndarray, settings: OpusSettings) -> float:
    """Energy of (rebuilt - clean) over the lost frames, relative to the clean ones."""
    packets, _ = encode(pcm, settings)
    lost = loss_pattern(len(packets))
    lost[-1] = False  # the last frame has no next packet to carry its FEC
    clean = decode(packets, None, settings.fec)
    rebuilt = decode(packets, lost, settings.fec)
    mask = np.repeat(lost, N)
    return float(np.sum((rebuilt - clean)[mask] ** 2) / np.sum(clean[mask] ** 2))


def test_fec_rebuilds_lost_speech_frames_only_when_on(bulletin: np.ndarray) -> None:
    on = _lost_frame_error(bulletin, OpusSettings(fec=True))
    off = _lost_frame_error(bulletin, OpusSettings(fec=False))
    # FEC frames are a low-bit-rate copy of the lost speech, close to it; PLC only guesses
    # from the past, which is far off once a syllable changes.
    assert on < 0.5 < off, (on, off)


def test_default_speech_quality_clean_and_through_loss(bulletin: np.ndarray) -> None:
    s = OpusSettings()
    packets, lookahead = encode(bulletin, s)
    clean = quality(bulletin, decode(packets, None, s.fec), lookahead, True)
    lossy = quality(bulletin, decode(packets, loss_pattern(len(packets)), s.fec), lookahead, True)
    # floors a little under what docs/BENCHMARKS.md measured for the defaults
    assert clean.pesq > 3.0 and clean.stoi is not None and clean.stoi > 0.95, clean
    assert lossy.pesq > 2.4 and lossy.stoi is not None and lossy.stoi > 0.93, lossy


def test_mixer_encodes_with_its_settings() -> None:
    # lowdelay is told apart from the packets alone: CELT only (TOC configs 16-31), and a
    # 120-sample lookahead, which the capture time stamped on each packet accounts for.
    settings = OpusSettings(application="lowdelay", complexity=3, fec=False, loss_perc=5,
                            bitrate=24_000)
    sent = Sent()
    clock = FrameClock(20, start_mono=0.0, start_wall=1_800_000_000.0)
    m = Mixer(["a", "b"], clock, sent, wall=time.time, opus=settings)
    m.start(Item(1, Priority.NORMAL, Tone(1000, 2.0), 1), ["a"])
    for k in range(50):
        m.tick(k)
    assert len(m._outputs) == 2
    for out in m._outputs.values():
        assert applied(out.encoder._enc) == settings
    rtp = [packet.parse(d) for c, d in sent if c == "a" and not packet.is_rtcp(d)]
    assert len(rtp) == 50 and all(p.payload[0] >> 3 >= 16 for p in rtp)
    assert abs(rtp[10].capture_time - (1_800_000_000.0 + 0.2 - 120 / 48_000)) < 1e-6
    dec = opuslib.Decoder(48_000, 1)
    pcm = np.concatenate([np.frombuffer(dec.decode(p.payload, N), np.int16) for p in rtp])
    spec = np.abs(np.fft.rfft(pcm[4800:].astype(np.float64)))
    assert abs(np.argmax(spec) * 48_000 / len(pcm[4800:]) - 1000) < 5


def test_mixer_defaults_to_the_chosen_settings() -> None:
    clock = FrameClock(20, start_mono=0.0, start_wall=1_800_000_000.0)
    m = Mixer(["a"], clock, Sent(), wall=time.time)
    m.tick(0)
    (out,) = m._outputs.values()
    assert applied(out.encoder._enc) == OpusSettings()
    assert m.codec_delay_s == 312 / 48_000
