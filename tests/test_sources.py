"""Tone, Clip and TTS sources, checked by what they sound like (spectrum, loudness, length)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from streamer.mixer.loudness import TARGET_LUFS, db_to_gain, integrated_lufs, normalize
from streamer.mixer.sources import (
    RATE_HZ,
    Clip,
    ClipError,
    EspeakProvider,
    Source,
    Tone,
    TtsError,
)
from streamer.mixer.sources.clip import ClipLevels, ClipTooLong, decode, ingest
from streamer.mixer.sources.tts import MAX_TEXT_CHARS, tts_source
from streamer.mixer.vi_text import normalize_vi
from tests.harness.audio import peak_hz

CEILING = db_to_gain(-1.0)


def read_all(source: Source) -> np.ndarray:
    assert source.length is not None
    return source.read(0, source.length)


# --- Tone -------------------------------------------------------------------------------------


@pytest.mark.parametrize("hz", [100.0, 440.0, 1000.0, 3150.5, 8000.0])
def test_tone_pitch_and_loudness(hz: float) -> None:
    tone = Tone(hz, 2.0)
    x = read_all(tone)
    assert x.dtype == np.float32 and len(x) == 96_000
    found, bin_hz = peak_hz(x, RATE_HZ), RATE_HZ / len(x)  # the peak, the bin width
    assert abs(found - hz) <= bin_hz
    assert integrated_lufs(x) == pytest.approx(TARGET_LUFS, abs=0.2)


def test_tone_level_is_configurable() -> None:
    x = read_all(Tone(1000, 1.0, level_lufs=-30.0))
    assert integrated_lufs(x) == pytest.approx(-30.0, abs=0.2)


def test_tone_is_phase_continuous_across_reads() -> None:
    tone = Tone(997.3, None)
    whole = tone.read(0, 2000)
    assert np.array_equal(whole, np.concatenate([tone.read(0, 700), tone.read(700, 1300)]))
    far = 48_000 * 3600 * 24 * 7  # a week into an endless tone
    np.testing.assert_array_equal(
        tone.read(far, 960), np.concatenate([tone.read(far, 333), tone.read(far + 333, 627)])
    )
    reference = tone.read(0, 100_000)
    for pos in np.random.default_rng(3).integers(0, 90_000, 20):
        np.testing.assert_array_equal(tone.read(int(pos), 50), reference[pos : pos + 50])


def test_tone_fades_in_and_out_over_5_ms_and_is_silent_outside() -> None:
    tone = Tone(1000, 0.5)
    assert tone.length == 24_000
    x = read_all(tone)
    fade = 240
    ramp = tone.amplitude * (np.arange(fade) + 1) / fade
    assert np.all(np.abs(x[:fade]) <= ramp)
    assert np.all(np.abs(x[-fade:]) <= ramp[::-1])
    assert np.max(np.abs(x[: fade // 2])) < 0.55 * tone.amplitude
    assert np.max(np.abs(x[fade : 2 * fade])) == pytest.approx(tone.amplitude, rel=1e-3)
    assert np.all(tone.read(24_000, 100) == 0) and np.all(tone.read(-100, 100) == 0)
    assert np.array_equal(tone.read(23_950, 100)[50:], np.zeros(50, dtype=np.float32))


def test_endless_tone_has_no_length_and_never_fades_out() -> None:
    tone = Tone(440, None)
    assert tone.length is None
    assert np.max(np.abs(tone.read(10**9, 4800))) == pytest.approx(tone.amplitude, rel=1e-3)


@pytest.mark.parametrize("hz", [0.0, -5.0, 24_000.0, 30_000.0])
def test_tone_refuses_impossible_frequencies(hz: float) -> None:
    with pytest.raises(ValueError):
        Tone(hz, 1.0)


def test_tone_refuses_a_level_above_full_scale() -> None:
    with pytest.raises(ValueError):
        Tone(1000, 1.0, level_lufs=0.0)


# --- Clip -------------------------------------------------------------------------------------


def test_clip_reads_slices_with_zero_padding_and_copies() -> None:
    samples = np.arange(1, 11, dtype=np.float32) / 10
    clip = Clip(samples)
    assert clip.length == 10
    assert np.array_equal(clip.read(0, 10), samples)
    assert np.array_equal(clip.read(8, 4), np.array([0.9, 1.0, 0, 0], dtype=np.float32))
    assert np.array_equal(clip.read(-2, 4), np.array([0, 0, 0.1, 0.2], dtype=np.float32))
    assert np.array_equal(clip.read(20, 3), np.zeros(3, dtype=np.float32))
    frame = clip.read(0, 5)
    frame *= 0  # the mixer works in place; the clip must not change underneath
    assert np.array_equal(clip.read(0, 5), samples[:5])


ENCODINGS = {
    "wav": ["-ar", "44100", "-c:a", "pcm_s16le"],
    "mp3": ["-ar", "44100", "-c:a", "libmp3lame", "-b:a", "128k"],
    # Opus only runs at 48 kHz (libopus refuses 44.1), so this one tests the downmix alone.
    "opus": ["-ar", "48000", "-c:a", "libopus", "-b:a", "64k", "-f", "ogg"],
    "flac": ["-ar", "44100", "-c:a", "flac"],
    "m4a": ["-ar", "44100", "-c:a", "aac", "-b:a", "128k"],
}


def ffmpeg(args: list[str]) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2 s, 440 Hz, -30 dBFS sine in each format, stereo, at 44.1 kHz where the codec allows."""
    folder = tmp_path_factory.mktemp("clips")
    paths = {}
    for ext, codec in ENCODINGS.items():
        path = folder / f"sine.{ext}"
        ffmpeg(["-f", "lavfi", "-i", "sine=f=440:d=2:sample_rate=44100", "-af",
                "volume=-30dB", "-ac", "2", *codec, str(path)])
        paths[ext] = path
    return paths


def check_sine_clip(clip: Clip) -> None:
    x = read_all(clip)
    assert x.dtype == np.float32 and x.ndim == 1
    # 2 s at 48 kHz, give or take encoder priming and padding.
    assert abs(len(x) - 96_000) < 3000
    found, bin_hz = peak_hz(x, RATE_HZ), RATE_HZ / len(x)  # the peak, the bin width
    assert abs(found - 440) <= bin_hz
    assert integrated_lufs(x) == pytest.approx(TARGET_LUFS, abs=0.2)
    assert np.max(np.abs(x)) <= CEILING


@pytest.mark.parametrize("ext", ENCODINGS)
def test_clip_from_file_decodes_resamples_downmixes_normalises(
    encoded: dict[str, Path], ext: str
) -> None:
    check_sine_clip(Clip.from_file(encoded[ext]))


@pytest.mark.parametrize("ext", ENCODINGS)
def test_clip_from_bytes(encoded: dict[str, Path], ext: str) -> None:
    check_sine_clip(Clip.from_bytes(encoded[ext].read_bytes()))


def test_clip_downmix_keeps_both_channels(tmp_path: Path) -> None:
    # 440 Hz left, 1000 Hz right: the mono clip must carry both.
    path = tmp_path / "lr.wav"
    ffmpeg(["-f", "lavfi", "-i", "sine=f=440:d=1", "-f", "lavfi", "-i", "sine=f=1000:d=1",
            "-filter_complex", "[0][1]amerge=inputs=2", "-ar", "44100", str(path)])
    x = read_all(Clip.from_file(path))
    spectrum = np.abs(np.fft.rfft(x))
    bins_hz = np.fft.rfftfreq(len(x), 1 / RATE_HZ)
    level = {hz: spectrum[np.argmin(np.abs(bins_hz - hz))] for hz in (440, 1000, 700)}
    assert level[440] > 100 * level[700] and level[1000] > 100 * level[700]


def test_clip_target_is_configurable(encoded: dict[str, Path]) -> None:
    clip = Clip.from_file(encoded["flac"], target_lufs=-23.0)
    assert integrated_lufs(read_all(clip)) == pytest.approx(-23.0, abs=0.2)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 10, os.urandom(50_000), "Thông báo, không phải âm thanh\n".encode() * 50,
     b"RIFF\x24\x00\x00\x00WAVEfmt "],
    ids=["empty", "zeros", "random", "text", "truncated-wav"],
)
def test_clip_from_bad_bytes_raises_clip_error(data: bytes) -> None:
    with pytest.raises(ClipError):
        Clip.from_bytes(data)


def test_clip_from_bad_files_raises_clip_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("họp thôn lúc 19h\n" * 100)
    video = tmp_path / "video.mp4"
    ffmpeg(["-f", "lavfi", "-i", "testsrc=d=1:size=64x64", "-an", str(video)])
    for path, message in [
        (empty, None), (text, None), (video, "no audio stream"),
        (tmp_path / "missing.wav", "no such file"), (tmp_path, None),
    ]:
        with pytest.raises(ClipError) as caught:
            Clip.from_file(path)
        if message:
            assert message in str(caught.value)


def test_clip_refuses_too_long(encoded: dict[str, Path]) -> None:
    with pytest.raises(ClipError, match="longer than"):
        Clip.from_file(encoded["mp3"], max_seconds=1)


def test_clip_refuses_too_long_while_decoding(tmp_path: Path) -> None:
    """A stream with no declared duration is stopped once the limit is passed, not read whole."""
    path = tmp_path / "long.wav"
    ffmpeg(["-f", "lavfi", "-i", "sine=f=440:d=60", "-ar", "48000", str(path)])
    data = path.read_bytes()

    class Unseekable(io.RawIOBase):
        def __init__(self) -> None:
            self.pos = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
            n = min(len(buffer), len(data) - self.pos)
            buffer[:n] = data[self.pos : self.pos + n]
            self.pos += n
            return n

    stream = Unseekable()
    with pytest.raises(ClipError, match="longer than"):
        decode(stream, max_seconds=2)
    assert stream.pos < len(data) // 4


def test_ingest_writes_16_bit_pcm_and_measures_it_whole(encoded: dict[str, Path]) -> None:
    pcm = io.BytesIO()
    levels = ingest(encoded["m4a"], pcm, target_lufs=-20.0)
    stored = np.frombuffer(pcm.getvalue(), dtype="<i2").astype(np.float64) / 32768
    assert levels.samples == len(stored) and abs(len(stored) - 96_000) < 3000
    assert levels.lufs == pytest.approx(integrated_lufs(stored), abs=1e-6)
    assert levels.peak == pytest.approx(np.max(np.abs(stored)))
    assert levels.lufs == pytest.approx(integrated_lufs(decode(encoded["m4a"])), abs=0.05)
    # The gain is not applied to the file but stored, and playback applies it.
    assert integrated_lufs(stored * levels.gain) == pytest.approx(-20.0, abs=0.01)
    assert ClipLevels.from_json(levels.to_json()) == levels


def test_clip_from_file_plays_mapped_pcm_times_its_gain(encoded: dict[str, Path]) -> None:
    clip = Clip.from_file(encoded["wav"])
    decoded_whole = decode(encoded["wav"])
    x = read_all(clip)
    assert len(x) == len(decoded_whole)
    # 16-bit storage: what plays is the decoded audio, normalised, to within half a step of
    # 16 bits times the gain (this sine is at -48 dBFS: +36 dB).
    reference = normalize(decoded_whole)
    gain = np.max(np.abs(reference)) / np.max(np.abs(decoded_whole))
    assert np.max(np.abs(x - reference)) < 0.6 * gain / 32768
    assert np.array_equal(clip.read(1000, 960), x[1000:1960])


def test_ingest_stops_at_the_limit_before_writing_past_it(tmp_path: Path) -> None:
    path = tmp_path / "long.flac"
    with path.open("wb") as out:  # piped: the header declares no duration
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=f=440:d=30",
                        "-ar", "48000", "-f", "flac", "pipe:1"], check=True, stdout=out)
    pcm = io.BytesIO()
    with pytest.raises(ClipTooLong, match="2 s limit"):
        ingest(path, pcm, max_seconds=2)
    assert len(pcm.getvalue()) <= 2 * RATE_HZ * 2


def test_a_frame_that_decodes_to_minutes_is_refused(tmp_path: Path) -> None:
    """One FLAC frame may hold 65535 samples at any rate: at 100 Hz that is 11 minutes, which
    would be resampled whole before the running total could stop it."""
    path = tmp_path / "slow.flac"
    ffmpeg(["-f", "lavfi", "-i", "anullsrc=r=100:cl=mono", "-t", "1000", "-c:a", "flac",
            "-frame_size", "65535", str(path)])
    with pytest.raises(ClipError, match="frame lasts"):
        decode(path, max_seconds=2000)


# --- TTS --------------------------------------------------------------------------------------

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng missing")


@needs_espeak
@pytest.mark.parametrize(
    "text",
    ["Xin chào bà con", "Thông báo: họp thôn lúc 19h30 ngày 22/11/2026 tại nhà văn hoá."],
)
def test_espeak_speech_is_audible_at_target_and_plausibly_long(text: str) -> None:
    clip = EspeakProvider().synthesize(text)
    x = read_all(clip)
    assert np.max(np.abs(x)) <= CEILING
    assert integrated_lufs(x) == pytest.approx(TARGET_LUFS, abs=1.0)
    words = len(normalize_vi(text).split())
    # Vietnamese is one syllable per word; at 150 wpm about 0.4 s each, with pauses.
    assert 0.15 * words < clip.seconds < 1.0 * words


@needs_espeak
def test_espeak_speaks_normalised_text_on_stdin(tmp_path: Path) -> None:
    """The text reaches the voice spelled out and on stdin, never on the command line."""
    log = tmp_path / "log"
    fake = tmp_path / "fake-espeak"
    fake.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > {log}.argv\n'
        f"tee {log}.stdin | espeak-ng \"$@\"\n"
    )
    fake.chmod(0o755)
    clip = EspeakProvider(binary=str(fake)).synthesize("--version 2026; rm -rf /")
    assert clip.length and np.any(read_all(clip))
    stdin = (tmp_path / "log.stdin").read_text()
    assert "hai nghìn không trăm hai mươi sáu" in stdin
    assert "2026" not in (tmp_path / "log.argv").read_text()


@needs_espeak
def test_espeak_rate_changes_duration() -> None:
    text = "Ủy ban nhân dân xã thông báo lịch tiêm phòng"
    slow = EspeakProvider(rate_wpm=100).synthesize(text)
    fast = EspeakProvider(rate_wpm=250).synthesize(text)
    assert slow.seconds > 1.5 * fast.seconds


@pytest.mark.parametrize("text", ["", "   \n", "x" * (MAX_TEXT_CHARS + 1)])
def test_tts_refuses_empty_or_oversized_text(text: str) -> None:
    with pytest.raises(TtsError):
        EspeakProvider().synthesize(text)


def fake_binary(tmp_path: Path, body: str) -> str:
    path = tmp_path / "voice"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_tts_refuses_a_voice_that_says_nothing(tmp_path: Path) -> None:
    silent = "cat > /dev/null; ffmpeg -v error -f lavfi -i anullsrc=r=22050:d=1 -f wav -"
    with pytest.raises(TtsError, match="nothing to pronounce"):
        EspeakProvider(binary=fake_binary(tmp_path, silent)).synthesize("...")


@pytest.mark.parametrize(
    "body, message",
    [
        ("cat > /dev/null; echo 'no voice' >&2; exit 3", "exit code 3"),
        ("cat > /dev/null; echo 'this is not a wav'", "no usable audio"),
        ("cat > /dev/null", "no usable audio"),
        ("sleep 5", "longer than"),
    ],
    ids=["fails", "garbage", "nothing", "hangs"],
)
def test_tts_failures_become_tts_error(tmp_path: Path, body: str, message: str) -> None:
    provider = EspeakProvider(binary=fake_binary(tmp_path, body), timeout_s=0.5)
    with pytest.raises(TtsError, match=message):
        provider.synthesize("xin chào")


def test_tts_missing_binary_is_tts_error(tmp_path: Path) -> None:
    with pytest.raises(TtsError, match="not installed"):
        EspeakProvider(binary=str(tmp_path / "nope")).synthesize("xin chào")


def test_tts_source_uses_the_given_provider() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.texts: list[str] = []

        def synthesize(self, text: str) -> Clip:
            self.texts.append(text)
            return Clip(np.ones(10, dtype=np.float32))

    provider = Recorder()
    clip = tts_source("chào", provider)
    assert provider.texts == ["chào"] and clip.length == 10


def test_tts_refuses_text_that_would_speak_for_longer_than_the_limit():
    """5,000 digits are 5,000 spoken words (23 minutes): refused fast, with a clear reason."""
    from streamer.mixer.sources.tts import MAX_SPEECH_S, EspeakProvider, TtsError

    with pytest.raises(TtsError, match=f"more than {MAX_SPEECH_S / 60:g} minutes"):
        EspeakProvider().synthesize("0" * 5000)
