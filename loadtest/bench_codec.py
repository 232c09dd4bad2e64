"""Opus quality against CPU: which encoder settings the mixer should use.

For every point of a grid of ``OpusSettings`` (application × complexity × in-band FEC × bit
rate) it encodes two 48 kHz signals the way the mixer does (one 20 ms frame at a time) and
reports:

* **CPU per frame**: ``time.process_time`` of encoding every frame of the signal, per frame,
  median of ``--rounds`` passes interleaved over all points, and the programmes one core
  could carry at that cost (20 ms ÷ CPU per frame; encoding only, the mixing and limiter come
  on top, see ``bench_mixer``);
* **quality**: PESQ wide band (ITU-T P.862.2, ``pesq``) of the decoded signal against the
  original, both resampled to 16 kHz (``scipy.signal.resample_poly``) and aligned for the
  encoder's lookahead; STOI (``pystoi``) for speech;
* clean, and through **10 % random packet loss** (one seeded pattern, the same for every
  point), decoded as a speaker does (``opuslib.Decoder``): a lost frame is rebuilt from the
  next packet's in-band FEC (``decode_fec=True``) when that packet arrived, else concealed
  (PLC); without FEC every lost frame is concealed;
* the mean bit rate actually sent and the mode libopus chose (SILK, hybrid, CELT) with its
  audio bandwidth, read from each packet's TOC byte: PESQ at 16 kHz cannot hear above 8 kHz,
  the bandwidth column can;
* for comparison, RED (RFC 2198) simulated on the same loss: FEC off, a lost frame taken whole
  from a later packet's copy, the wire rate counted with the copies and RED's headers.

The signals, both made here with no network: **Vietnamese speech**, a commune bulletin
synthesised by ``espeak-ng -v vi`` through the streamer's own TTS provider (so normalised as
it airs), and **music**, synthesised: chords of harmonic tones struck on every beat over a
sustained pad, a bass line, a pentatonic melody with vibrato and a drum pattern (kick sweeps,
snare and hi-hat noise bursts), at the same loudness. PESQ is a speech measure; on music it is
used as a proxy for coding noise below 8 kHz, read with the bandwidth column, and scored in
windows between pauses (see ``quality``).

    python -m loadtest.bench_codec [--rounds R] [--quick] [--write]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import opuslib
from pesq import pesq
from pystoi import stoi
from scipy.signal import resample_poly

from common.opus import RATE_HZ, OpusSettings, libopus_encoder
from streamer.mixer.loudness import normalize_limited
from streamer.mixer.sources.tts import EspeakProvider

from ._report import machine, median, table, today, write_section

PTIME_MS = 20
FRAME = RATE_HZ * PTIME_MS // 1000
PESQ_RATE_HZ = 16_000
LOSS = 0.10
LOSS_SEED = 15
MUSIC_SEED = 1273

SPEECH_TEXT = (
    "Thông báo của Ủy ban nhân dân xã. Sáng thứ bảy, từ bảy giờ đến mười một giờ, trạm y tế "
    "xã tổ chức tiêm phòng cho trẻ em dưới năm tuổi. Đề nghị các hộ gia đình đưa con em đến "
    "đúng giờ. Bà con ngư dân lưu ý: khi có lệnh cấm biển, tàu thuyền không được ra khơi."
)

APPLICATIONS = ("audio", "voip")
COMPLEXITIES = (0, 2, 5, 8, 10)
FECS = (True, False)
BITRATES = (16_000, 24_000, 32_000, 48_000)

#: what the mixer used before this benchmark, the reference for the CPU ratio
BEFORE = OpusSettings(application="audio", complexity=10, fec=True, loss_perc=10,
                      bitrate=32_000)


# ------------------------------------------------------------------------------ signals


def speech() -> np.ndarray:
    """The bulletin, as the streamer's TTS airs it (48 kHz float32, system loudness)."""
    clip = EspeakProvider().synthesize(SPEECH_TEXT)
    assert clip.length is not None
    return clip.read(0, clip.length)


def music(seconds: float = 10.0) -> np.ndarray:
    """Synthetic pop: chords on every beat, bass, a pentatonic melody, drums; 120 bpm."""
    rng = np.random.default_rng(MUSIC_SEED)
    n = int(seconds * RATE_HZ)
    t = np.arange(n) / RATE_HZ
    out = np.zeros(n)
    beat = 0.5  # s

    def hz(midi: float) -> float:
        return float(440.0 * 2 ** ((midi - 69) / 12))

    def strike(start: float, length: float, midi: float, harmonics: int, decay_s: float,
               level: float) -> None:
        a, b = int(start * RATE_HZ), min(n, int((start + length) * RATE_HZ))
        if a >= b:
            return
        tt = t[a:b] - start
        env = np.exp(-tt / decay_s) * np.minimum(1.0, tt / 0.005)  # 5 ms attack: no click
        f0 = hz(midi)
        for h in range(1, harmonics + 1):
            if f0 * h < RATE_HZ / 2:
                out[a:b] += level / h * env * np.sin(2 * np.pi * f0 * h * tt + h)

    chords = [(60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62)]  # C Am F G
    beats = int(seconds / beat)
    for k in range(beats):
        chord = chords[(k // 4) % len(chords)]
        for note in chord:
            strike(k * beat, beat, note, 8, 0.35, 0.08)
        strike(k * beat, beat, chord[0] - 24, 5, 0.6, 0.25)  # bass
    for bar in range(int(seconds / (4 * beat)) + 1):  # a sustained string pad under it all
        a, b = int(bar * 4 * beat * RATE_HZ), min(n, int((bar + 1) * 4 * beat * RATE_HZ))
        tt = t[a:b] - bar * 4 * beat
        swell = np.minimum(1.0, tt / 0.3) * np.minimum(1.0, (4 * beat - tt) / 0.05)
        for note in chords[bar % len(chords)]:
            f = hz(note - 12) * (1 + 0.003 * np.sin(2 * np.pi * 4.5 * tt + note))
            phase = 2 * np.pi * np.cumsum(f) / RATE_HZ
            out[a:b] += 0.05 * swell * sum(np.sin(h * phase) / h for h in range(1, 7))
    melody = [72, 74, 76, 79, 81, 79, 76, 74]  # C D E G A: pentatonic
    for k in range(beats * 2):
        a = int(k * beat / 2 * RATE_HZ)
        b = min(n, a + int(beat / 2 * RATE_HZ))
        tt = t[a:b] - k * beat / 2
        f = hz(melody[k % len(melody)]) * (1 + 0.006 * np.sin(2 * np.pi * 5.5 * tt))
        phase = 2 * np.pi * np.cumsum(f) / RATE_HZ
        env = np.minimum(1.0, tt / 0.02) * np.exp(-tt / 0.4)
        out[a:b] += 0.12 * env * (np.sin(phase) + 0.3 * np.sin(2 * phase) + 0.1 * np.sin(3 * phase))
    for k in range(beats * 2):  # drums on eighth notes
        a = int(k * beat / 2 * RATE_HZ)
        if k % 4 == 0:  # kick: a falling sine
            m = min(n - a, int(0.2 * RATE_HZ))
            tt = t[:m]
            f = 50 + 90 * np.exp(-tt / 0.03)
            out[a:a + m] += 0.6 * np.exp(-tt / 0.08) * np.sin(2 * np.pi * np.cumsum(f) / RATE_HZ)
        if k % 4 == 2:  # snare: a noise burst and a body tone
            m = min(n - a, int(0.15 * RATE_HZ))
            tt = t[:m]
            out[a:a + m] += np.exp(-tt / 0.04) * (0.25 * rng.standard_normal(m)
                                                  + 0.2 * np.sin(2 * np.pi * 190 * tt))
        m = min(n - a, int(0.04 * RATE_HZ))  # hi-hat: high-passed noise (first difference)
        noise = np.diff(rng.standard_normal(m + 1))
        out[a:a + m] += 0.06 * np.exp(-t[:m] / 0.01) * noise
    return normalize_limited(out.astype(np.float32))


# ------------------------------------------------------------------------------ coding


def encode(pcm: np.ndarray, settings: OpusSettings) -> tuple[list[bytes], int]:
    """``pcm`` as the mixer would send it, one packet per 20 ms frame, and the lookahead."""
    enc = libopus_encoder(settings)
    padded = np.concatenate((pcm, np.zeros(-len(pcm) % FRAME + FRAME, np.float32)))
    return ([bytes(enc.encode_float(padded[i:i + FRAME].tobytes(), FRAME))
             for i in range(0, len(padded), FRAME)], int(enc.lookahead))


def cpu_us_per_frame(work: Sequence[tuple[np.ndarray, OpusSettings]],
                     rounds: int) -> list[float]:
    """CPU µs per frame of encoding each signal with its settings, frame by frame; median of
    ``rounds`` passes, interleaved (every case once per round) so that the neighbours' load
    on this shared machine weighs on every case alike."""
    cases = []
    for pcm, settings in work:
        enc = libopus_encoder(settings)
        frames = [pcm[i:i + FRAME].tobytes() for i in range(0, len(pcm) - FRAME + 1, FRAME)]
        for f in frames[:50]:  # warm up: an encoder's first frames cost more
            enc.encode_float(f, FRAME)
        cases.append((enc, frames))
    per_frame: list[list[float]] = [[] for _ in cases]
    for _ in range(rounds):
        for i, (enc, frames) in enumerate(cases):
            t0 = time.process_time()
            for f in frames:
                enc.encode_float(f, FRAME)
            per_frame[i].append((time.process_time() - t0) / len(frames))
    return [median(v) * 1e6 for v in per_frame]


def loss_pattern(frames: int, loss: float = LOSS, seed: int = LOSS_SEED) -> np.ndarray:
    """Which frames are lost: independent, ``loss`` each, the same for a given seed."""
    return np.random.default_rng(seed).random(frames) < loss


def decode(packets: Sequence[bytes], lost: np.ndarray | None, fec: bool) -> np.ndarray:
    """Decode as a speaker does; a lost frame comes from the next packet's FEC if ``fec`` and
    that packet arrived, else from PLC. Float in [-1, 1)."""
    dec = opuslib.Decoder(RATE_HZ, 1)
    out = []
    for k, pkt in enumerate(packets):
        if lost is None or not lost[k]:
            pcm = dec.decode(pkt, FRAME)
        elif fec and k + 1 < len(packets) and not lost[k + 1]:
            pcm = dec.decode(packets[k + 1], FRAME, decode_fec=True)
        else:
            pcm = dec.decode(b"", FRAME)
        out.append(np.frombuffer(pcm, np.int16))
    return np.concatenate(out).astype(np.float32) / 32768.0


def red_lost(lost: np.ndarray, depth: int) -> np.ndarray:
    """Frames still lost with RED (RFC 2198) of ``depth``: each packet also carries the
    ``depth`` frames before it, whole, so frame k is lost only if packets k..k+depth all are."""
    out = lost.copy()
    for d in range(1, depth + 1):
        out[:-d] &= lost[d:]
    return out


def to_16k(x: np.ndarray) -> np.ndarray:
    # PESQ finds utterances by an absolute level: it wants the 16-bit scale.
    return resample_poly(x.astype(np.float64) * 32768.0, 1, RATE_HZ // PESQ_RATE_HZ)


@dataclass(frozen=True)
class Quality:
    pesq: float  # PESQ wide band, MOS-LQO 1.04-4.64
    stoi: float | None  # 0-1; speech only


#: music is scored in windows of this length, each between 1 s of silence: PESQ's voice
#: activity detector takes the quieter half of a continuous signal for noise and then finds no
#: "utterance" long enough; with pauses around it every window is found whole
MUSIC_WINDOW_S = 2.5


def quality(ref: np.ndarray, decoded: np.ndarray, lookahead: int, is_speech: bool) -> Quality:
    """Decoded audio against the original, aligned for the codec's lookahead, at 16 kHz."""
    r, d = to_16k(ref), to_16k(decoded[lookahead:lookahead + len(ref)])
    if is_speech:
        return Quality(pesq=float(pesq(PESQ_RATE_HZ, r, d, "wb")),
                       stoi=float(stoi(r, d, PESQ_RATE_HZ, extended=False)))
    w, pause = int(MUSIC_WINDOW_S * PESQ_RATE_HZ), np.zeros(PESQ_RATE_HZ)
    scores = [pesq(PESQ_RATE_HZ, np.concatenate((pause, r[a:a + w], pause)),
                   np.concatenate((pause, d[a:a + w], pause)), "wb")
              for a in range(0, len(r) - w + 1, w)]
    return Quality(pesq=float(np.mean(scores)), stoi=None)


_BANDWIDTH_KHZ = {"NB": 4, "MB": 6, "WB": 8, "SWB": 12, "FB": 20}


def mode(packets: Sequence[bytes]) -> str:
    """The commonest coding mode and audio bandwidth, from the TOC byte (RFC 6716, 3.1)."""
    seen: dict[str, int] = {}
    for p in packets:
        config = p[0] >> 3
        if config < 12:
            name = f"SILK {('NB', 'MB', 'WB')[config // 4]}"
        elif config < 16:
            name = f"hybrid {('SWB', 'FB')[(config - 12) // 2]}"
        else:
            name = f"CELT {('NB', 'WB', 'SWB', 'FB')[(config - 16) // 4]}"
        seen[name] = seen.get(name, 0) + 1
    return max(seen, key=lambda k: seen[k])


def kbps(packets: Sequence[bytes]) -> float:
    return sum(len(p) for p in packets) * 8 / (len(packets) * PTIME_MS)


# ------------------------------------------------------------------------------ the grid


@dataclass(frozen=True)
class Point:
    settings: OpusSettings
    speech_kbps: float
    speech_mode: str
    music_mode: str
    speech_clean: Quality
    speech_lossy: Quality
    music_clean: Quality
    music_lossy: Quality
    speech_us: float = 0.0
    music_us: float = 0.0

    @property
    def programmes(self) -> float:
        return PTIME_MS * 1000 / self.speech_us


def grid(quick: bool) -> list[OpusSettings]:
    if quick:
        combos = [("audio", c, f, b) for c in (5, 10) for f in FECS for b in (32_000,)]
    else:
        combos = list(itertools.product(APPLICATIONS, COMPLEXITIES, FECS, BITRATES))
        # lowdelay has no FEC (CELT only) and few complexities worth a row
        combos += [("lowdelay", c, False, b) for c in (0, 5, 10) for b in BITRATES]
    return [OpusSettings(application=a, complexity=c, fec=f, loss_perc=10, bitrate=b)
            for a, c, f, b in combos]


def measure(settings: Sequence[OpusSettings], signals: dict[str, np.ndarray],
            rounds: int) -> list[Point]:
    points = []
    for s in settings:
        res: dict[str, object] = {}
        for name, pcm in signals.items():
            packets, lookahead = encode(pcm, s)
            lost = loss_pattern(len(packets))
            is_speech = name == "speech"  # music gets PESQ in windows (see ``quality``)
            res[f"{name}_clean"] = quality(pcm, decode(packets, None, s.fec), lookahead,
                                           is_speech)
            res[f"{name}_lossy"] = quality(pcm, decode(packets, lost, s.fec), lookahead,
                                           is_speech)
            res[f"{name}_mode"] = mode(packets)
            if is_speech:
                res["speech_kbps"] = kbps(packets)
        points.append(Point(settings=s, **res))  # type: ignore[arg-type]
    cpu = cpu_us_per_frame([(signals[name], p.settings) for p in points
                            for name in ("speech", "music")], rounds)
    return [dataclasses.replace(p, speech_us=cpu[2 * i], music_us=cpu[2 * i + 1])
            for i, p in enumerate(points)]


#: RED rows: (application, primary bit rate, depth) at the default complexity with FEC off,
#: as RED would replace it; voip too, because without FEC ``audio`` codes speech with CELT
#: below complexity 7 (libopus 1.3 runs its speech/music analysis only from 7 up)
RED_CASES = [(a, b, d) for a in APPLICATIONS for b in (16_000, 24_000) for d in (1, 2)]
#: RFC 2198 header bytes: 4 per redundant block, 1 for the primary
RED_HEADER_BYTES = (4, 1)


@dataclass(frozen=True)
class RedPoint:
    settings: OpusSettings
    depth: int
    wire_kbps: float  # primary + copies + RED headers, speech
    speech_lossy: Quality
    music_lossy: Quality


def measure_red(signals: dict[str, np.ndarray]) -> list[RedPoint]:
    out = []
    for application, bitrate, depth in RED_CASES:
        s = dataclasses.replace(OpusSettings(), application=application, fec=False,
                                bitrate=bitrate)
        res: dict[str, object] = {}
        for name, pcm in signals.items():
            packets, lookahead = encode(pcm, s)
            lost = red_lost(loss_pattern(len(packets)), depth)
            res[f"{name}_lossy"] = quality(pcm, decode(packets, lost, False), lookahead,
                                           name == "speech")
            if name == "speech":
                per, first = RED_HEADER_BYTES
                header_kbps = (per * depth + first) * 8 / PTIME_MS
                res["wire_kbps"] = kbps(packets) * (1 + depth) + header_kbps
        out.append(RedPoint(settings=s, depth=depth, **res))  # type: ignore[arg-type]
    return out


# ------------------------------------------------------------------------------ report


def _row(p: Point, before_us: float) -> list[object]:
    s = p.settings
    return [s.application, s.complexity, "on" if s.fec else "off", s.bitrate // 1000,
            f"{p.speech_us:.0f}", f"{p.programmes:.0f}", f"{p.speech_us / before_us:.2f}",
            f"{p.speech_kbps:.1f}", p.speech_mode,
            f"{p.speech_clean.pesq:.2f}", f"{p.speech_lossy.pesq:.2f}",
            f"{p.speech_clean.stoi:.3f}", f"{p.speech_lossy.stoi:.3f}",
            f"{p.music_us:.0f}", p.music_mode,
            f"{p.music_clean.pesq:.2f}", f"{p.music_lossy.pesq:.2f}"]


HEADER = ["app", "cx", "FEC", "kb/s", "speech µs/frame", "programmes per core",
          "CPU vs before", "speech kb/s sent", "speech mode", "speech PESQ clean",
          "speech PESQ 10 % loss", "STOI clean", "STOI 10 % loss", "music µs/frame",
          "music mode", "music PESQ clean", "music PESQ 10 % loss"]


def neighbours() -> list[tuple[str, OpusSettings]]:
    """The chosen default, the former settings, and the chosen one changed one knob at a time."""
    chosen = OpusSettings()
    out = [("**chosen default**", chosen), ("before", BEFORE)]
    out += [(f"complexity {c}", dataclasses.replace(chosen, complexity=c))
            for c in COMPLEXITIES if c != chosen.complexity]
    out.append(("FEC off", dataclasses.replace(chosen, fec=not chosen.fec)))
    out += [(f"{a}", dataclasses.replace(chosen, application=a))
            for a in APPLICATIONS if a != chosen.application]
    out += [(f"{b // 1000} kb/s", dataclasses.replace(chosen, bitrate=b))
            for b in BITRATES if b != chosen.bitrate]
    return [(label, s) for label, s in out if label == "before" or s != BEFORE]


def reasons(points: Sequence[Point]) -> str:
    """Why the defaults are what they are, in this run's figures (the full grid only)."""
    c = OpusSettings()

    def at(**changes: object) -> Point:
        p = find(points, dataclasses.replace(c, **changes))  # type: ignore[arg-type]
        if p is None:
            raise KeyError(changes)
        return p

    try:
        now, before, off = at(), find(points, BEFORE), at(fec=False)
        c2, voip, r24, r48 = at(complexity=2), at(application="voip"), at(bitrate=24_000), \
            at(bitrate=48_000)
    except KeyError:
        return "(The reasons need the full grid; this was a `--quick` run.)"
    assert before is not None

    def q(p: Point) -> str:
        return (f"speech PESQ {p.speech_clean.pesq:.2f} clean / {p.speech_lossy.pesq:.2f} at "
                f"10 % loss, STOI {p.speech_lossy.stoi:.3f} at loss")

    return f"""**Chosen defaults: `{c.label()}`** (`OpusSettings` in `common/opus.py`;
every key can be changed per deployment, `docs/protocol.md`). Speech is what a commune
station airs at the 06:00 peak and what an emergency must carry through a lossy 4G link, so
speech through loss decides; music is what the relays of national radio carry, so its cost is
stated.

- **Complexity 5, not 10.** The same speech ({q(now)}) as complexity 10 ({q(before)}) for
  {now.speech_us / before.speech_us:.2f}× its CPU: {now.speech_us:.0f} µs instead of
  {before.speech_us:.0f} µs a frame, {now.programmes:.0f} programmes per core instead of
  {before.programmes:.0f}. Complexity 8 costs as much as 10 and sounds the same (libopus 1.3
  runs its speech/music analysis from 7 up); below 5 speech falls off (complexity 2:
  {q(c2)}) to save a further {1 - c2.speech_us / now.speech_us:.0%} of CPU.
- **In-band FEC on, sized for 10 % loss.** Without it the same complexity codes speech with
  CELT (the analysis that would pick SILK does not run at 5): {q(off)}, so FEC is worth
  {now.speech_lossy.pesq - off.speech_lossy.pesq:+.2f} PESQ and
  {now.speech_lossy.stoi - off.speech_lossy.stoi:+.3f} STOI where the speakers are, through
  loss. It costs CPU (SILK/hybrid: {now.speech_us:.0f} µs against CELT's
  {off.speech_us:.0f}) and music quality: FEC exists only in SILK, so libopus codes music as
  hybrid too (music PESQ {now.music_clean.pesq:.2f} clean against
  {off.music_clean.pesq:.2f} with CELT), and FEC does not rescue music through loss
  ({now.music_lossy.pesq:.2f} against {off.music_lossy.pesq:.2f}: the CELT band above 8 kHz is
  concealed either way). A deployment that relays mostly music over clean links may set
  `opus_fec = false`; RED (below) is the better answer for both.
- **`audio`, not `voip`.** At these settings `voip` gives the same speech ({q(voip)}), no
  CPU back ({voip.speech_us:.0f} µs) and worse music ({voip.music_clean.pesq:.2f} clean).
- **32 kb/s.** 48 kb/s is better ({q(r48)}) at the same CPU, but every 4G speaker pays for
  {r48.speech_kbps / now.speech_kbps:.2f}× the data; 24 kb/s saves data and loses clean speech
  ({q(r24)}). 32 kb/s stays (DESIGN.md's speech-friendly rate); a deployment with cheap data
  can raise `bitrate`.

At the chosen settings the 82 programmes of the Bà Rịa – Vũng Tàu peak cost about
{82 * now.speech_us / 1000:.1f} ms of encoding per 20 ms frame (against
{82 * before.speech_us / 1000:.1f} ms before), plus the mixer's own work per programme (about
100 µs, the mixer section): still more than one core, hence the parallel mixer (issue 15
part 3).

**What RED would change** (measured below). In-band FEC is a low-bit-rate SILK copy of one
frame inside the next packet's own budget: it takes bits from the primary, exists only in
SILK and hybrid modes (forcing them on music), covers the band below 8 kHz, and rebuilds one
lost frame: of two lost in a row, the first is concealed. RED repeats whole frames: a
recovered frame is exactly the original, in any mode (music keeps CELT's full band), and
depth N survives bursts of up to N lost packets; the encoder does no more work (the copies are
bytes already made, so CPU is the FEC-off figure of the primary: CELT at `audio`, hybrid at
`voip`). It costs wire rate: each copy is another frame, plus 4 bytes of RFC 2198 header. And
plain RTP receivers (VLC, ffmpeg, hardware IP speakers) do not play RED, so it belongs on the
legs that reach Loa's own speakers, negotiated per subscriber, while plain Opus stays for
everyone else. With RED, FEC could go off and the primary pick its mode by content."""


def find(points: Sequence[Point], s: OpusSettings) -> Point | None:
    return next((p for p in points if p.settings == s), None)


def render(points: Sequence[Point], red: Sequence[RedPoint], rounds: int, cmd: str,
           seconds: dict[str, float]) -> str:
    before = find(points, BEFORE)
    before_us = before.speech_us if before else points[0].speech_us
    rows = [_row(p, before_us) for p in points]
    summary = []
    for label, s in neighbours():
        p = find(points, s)
        if p is not None:
            summary.append([label, s.label(), f"{p.speech_us:.0f}", f"{p.programmes:.0f}",
                            f"{p.speech_us / before_us:.2f}", f"{p.speech_clean.pesq:.2f}",
                            f"{p.speech_lossy.pesq:.2f}", f"{p.speech_lossy.stoi:.3f}",
                            f"{p.music_clean.pesq:.2f}", f"{p.music_lossy.pesq:.2f}"])
    red_rows = [[f"{r.settings.label().replace('no FEC', 'RED')}, depth {r.depth}",
                 f"{r.wire_kbps:.1f}", f"{r.speech_lossy.pesq:.2f}",
                 f"{r.speech_lossy.stoi:.3f}", f"{r.music_lossy.pesq:.2f}"] for r in red]
    for p in points:
        if p.settings.fec and p.settings.application == "audio" and p.settings.complexity == \
                OpusSettings().complexity and p.settings.bitrate in (32_000, 48_000):
            red_rows.append([f"{p.settings.label()} (in-band FEC, measured above)",
                             f"{p.speech_kbps:.1f}", f"{p.speech_lossy.pesq:.2f}",
                             f"{p.speech_lossy.stoi:.3f}", f"{p.music_lossy.pesq:.2f}"])
    return f"""## Opus settings: quality against CPU (`loadtest/bench_codec.py`)

{today()}, {machine()}, libopus {opuslib_version()}; CPU is the median of {rounds} passes
over each signal.

```
{cmd}
```

Signals: Vietnamese speech, a {seconds["speech"]:.1f} s commune bulletin from `espeak-ng -v vi`
through the streamer's TTS provider; music, {seconds["music"]:.1f} s synthesised here (chords
of harmonic tones struck on every beat, bass, a pentatonic melody with vibrato, kick, snare and
hi-hat), both at the system loudness target (no audio file ships with the Debian packages
installed). Every packet is decoded with `opuslib.Decoder`, clean and through 10 % independent
random loss (seed {LOSS_SEED}, the same frames lost for every row): with FEC a lost frame is
rebuilt from the next packet's in-band FEC when that packet arrived, otherwise (and always
without FEC) it is concealed by PLC. Quality is PESQ wide band (P.862.2, `pesq`, MOS-LQO
1.04–4.64) and STOI (`pystoi`, 0–1) at 16 kHz, against the original, aligned for the encoder's
lookahead. PESQ is a speech measure: on music it stands for coding noise below 8 kHz only;
read it with the mode column (the audio bandwidth libopus chose: NB 4, WB 8, SWB 12, FB
20 kHz). "µs/frame" is encoding alone (mixing and the limiter add about 100 µs, see the mixer
section); "programmes per core" is 20 ms ÷ the speech figure. "CPU vs before" is the speech
CPU against the settings the mixer used before this benchmark (audio, complexity 10, FEC, 10 %,
32 kb/s), measured in the same run. Expected loss is 10 % in every row (with FEC off it still
makes CELT code its energy more robustly).

{table(HEADER, rows)}

{reasons(points)}

The chosen default against the former settings, and against itself with one knob changed:

{table(["", "settings", "speech µs/frame", "programmes per core", "CPU vs before",
        "speech PESQ clean", "speech PESQ 10 % loss", "STOI 10 % loss", "music PESQ clean",
        "music PESQ 10 % loss"], summary)}

### RED instead of in-band FEC

The field-delivery issue will add RED (redundant audio, RFC 2198): each packet also carries
the previous frame(s) whole. Simulated here on the same loss pattern: the primary encoding
with FEC off, a lost frame played from the copy in the next packet that arrived (so it
decodes exactly as if it had never been lost), and the wire rate counted as the primary plus
its copies plus RFC 2198's headers (4 bytes per copy, 1 for the primary):

{table(["", "wire kb/s (speech)", "speech PESQ 10 % loss", "STOI 10 % loss",
        "music PESQ 10 % loss"], red_rows)}
"""


def opuslib_version() -> str:
    import ctypes

    import opuslib.api

    fn = opuslib.api.libopus.opus_get_version_string
    fn.restype = ctypes.c_char_p
    return str(fn().decode()).removeprefix("libopus ")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="CPU passes; the median is reported")
    ap.add_argument("--quick", action="store_true",
                    help="four points only (audio, complexity 5/10, FEC on/off, 32 kb/s)")
    ap.add_argument("--write", action="store_true", help="rewrite its docs/BENCHMARKS.md section")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be positive")
    cmd = ".venv/bin/python -m loadtest.bench_codec " + " ".join(
        sys.argv[1:] if argv is None else argv)
    signals = {"speech": speech(), "music": music()}
    points = measure(grid(args.quick), signals, args.rounds)
    text = render(points, measure_red(signals), args.rounds, cmd.strip(),
                  {k: len(v) / RATE_HZ for k, v in signals.items()})
    print(text)
    if args.write:
        write_section("bench_codec", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
