"""``loa loadtest``: the smoke scenario end to end, and the pieces its figures rest on.

The smoke test runs the real command (``python -m loa loadtest --scenario smoke``) as
a user would: it starts redis-server, the streamer and a relay, 500 simulated speakers in two
worker processes doing the real handshake, airs a broadcast and an emergency through the API,
and writes the report and figures. It asserts correctness, never speed: every speaker
received, nothing was lost on loopback, every targeted speaker got both events (within a
generous bound: this machine is shared), the decoded sample heard the tones, the sync skew
agrees with the scenario's clock model, and the figures are real images. The fast tests pin
the statistics on synthetic packets (sequence wrap, RFC 3550 jitter, the clock model) and
the scenario validation messages.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loadtest.cli import main as loadtest_main
from loadtest.fleet import ClockModel, ClockSpec, Reception
from loadtest.scenario import ScenarioError, load
from tests.conftest import NIGHT
from tests.harness.keys import with_trust
from wire.packet import HEADER_LEN, RtpPacket, unix_to_ntp64

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240
TIME_TO_AIR_BOUND_MS = 2000.0  # correctness (it arrived, in time to be useful), not speed
FREQ_TOLERANCE_HZ = 5.0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    report = tmp_path_factory.mktemp("loadtest") / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "loa", "loadtest", "--scenario", "smoke",
         "--report", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    return json.loads(report.read_text()), report, proc.stdout


def test_every_speaker_receives_without_loss(smoke) -> None:
    r, _, out = smoke
    assert r["speakers"] == 500 and r["subscribed"] == 500
    assert r["received_min"] > 0 and r["silent_speakers"] == 0
    assert r["loss_ratio"] == 0
    # 500 speakers at 20 ms: at most 25,000 packets/s, while everything is on air; a quiet
    # channel sends a heartbeat, not packets (docs/protocol.md, "Quiet channels"), and a
    # starved streamer skips frames (a shared CI machine can pause it for seconds; loss stays
    # 0, the stream jumps). Sequence numbers run on through a pause, so what the relays sent,
    # every speaker got, once: loss 0 says nothing dropped; the emergency to all 500 for
    # its seconds says the stream was really carried.
    frames = r["window_s"] * 50
    assert 0 <= r["streamer_frames_skipped"] < frames / 2, r["streamer_frames_skipped"]
    emergency = next(e for e in r["scenario"]["events"] if e["kind"] == "emergency")
    on_air_pps = 500 * (50 * emergency["content"]["seconds"] - r["streamer_frames_skipped"]) \
        / r["window_s"]
    assert 0.9 * on_air_pps < r["delivered_pps"] < 1.02 * 25_000, (r["delivered_pps"],
                                                                   on_air_pps)
    assert r["unreadable_packets"] == 0 and r["receive_errors"] == 0
    assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
    assert "500 speakers" in out and "time-to-air" in out


def test_both_events_reach_every_targeted_speaker(smoke) -> None:
    r, _, _ = smoke
    kinds = [e["kind"] for e in r["events"]]
    assert kinds == ["broadcast", "emergency"]
    broadcast, emergency = r["events"]
    # the broadcast goes to one district (5 of the 30 leaves), the emergency to all
    assert broadcast["targeted"] == sum(v["speakers"] for k, v in r["per_channel"].items()
                                        if k.startswith("brvt.vung-tau."))
    assert 0 < broadcast["targeted"] < emergency["targeted"] == 500
    # a streamer starved for a while (it skipped frames) delays everything by that long
    bound_ms = TIME_TO_AIR_BOUND_MS + r["streamer_frames_skipped"] * r["scenario"]["ptime_ms"]
    for e in r["events"]:
        assert e["error"] == "" and e["missing"] == 0, e
        assert 0 < e["time_to_air_ms"]["p50"] <= e["time_to_air_ms"]["max"]
        assert e["time_to_air_ms"]["max"] < bound_ms, e
    assert r["time_to_air_ms"]["max"] == max(e["time_to_air_ms"]["max"] for e in r["events"])


def test_decoded_sample_hears_the_tones(smoke) -> None:
    r, _, _ = smoke
    heard = {(d["speaker"], d["event"]): d for d in r["decoded"]}
    # decode_sample = 5: speakers 0-4, all on Vũng Tàu leaves, so each hears both events
    assert {s for s, _ in heard} == set(range(5))
    for (_, event), d in heard.items():
        assert event in ("broadcast", "emergency")
        assert d["errors"] == 0 and d["packets"] > 100
        assert abs(d["peak_hz"] - d["expected_hz"]) < FREQ_TOLERANCE_HZ, d
        assert d["level_dbfs"] > -30, d


def test_sync_skew_follows_the_clock_sync_not_the_clocks(smoke) -> None:
    r, _, _ = smoke
    clock = r["scenario"]["clock"]
    assert clock["protocol"] is True
    skew = r["sync_skew_ms"]
    # The speakers' own clocks boot 20 ms apart (sigma) and drift 50 ppm: ~17 speakers per
    # channel on them would spread over about 3.5 sigma, 70 ms, and a clock sync that is off
    # (no estimate, a wrong sign, a stale one) leaves that much or more. Through the clock sync
    # they are within the relay's answer delays: a relay fanning out to 500 speakers on 2 busy
    # cores stamps a TIME after the datagrams queued before it, a few ms one way and not the
    # other, and the run measures the seconds right after the handshakes, the busiest
    # (docs/loadtest.md, "Sync skew"). That noise does not grow with the clocks' offsets, so
    # offsets 10 times it keep the bounds clear of it and of a broken sync alike (2 ms clocks
    # gave p50 up to 2.6 ms of noise against a 2 ms bound, and 7 ms when broken).
    assert 0 <= skew["p50"] < clock["initial_offset_ms"], skew
    assert skew["p99"] < 3 * clock["initial_offset_ms"], skew
    # late_ratio is not bounded here: 300 ms of playout delay is plenty on loopback, but a
    # shared VM can be paused for longer (CI saw 16 % late in a starved run). Its computation
    # is pinned by test_late_packets_and_skew_samples.


def test_without_the_clock_sync_the_skew_is_the_clocks_own() -> None:
    """The model alone (``protocol = false``, or before a speaker's first answer): a speaker
    plays when its own clock reads capture + delay; with the clock sync's estimate of the
    streamer's clock minus its own (``shift``), its error cancels out."""
    spec = ClockSpec(initial_offset_ms=5, drift_ppm=50, sync_interval_s=10, residual_ms=1,
                     playout_delay_ms=300, protocol=False)
    model = ClockModel(spec, [0, 1, 2], seed=4, origin=0.0, horizon_s=100)
    rows = np.array([0, 1, 2])
    capture = np.full(3, 40.0)
    due = capture + 0.3
    on_own = model.play_time(rows, capture)
    assert np.allclose(on_own, due - model.error(rows, due)) and np.ptp(on_own) > 1e-4
    model.shift[:] = -model.error(rows, due)  # a perfect estimate
    assert np.allclose(model.play_time(rows, capture), due, atol=1e-12)
    for row in range(3):  # the scalar error the clock sync reads is the vector one
        for t in (0.5, 12.3, 57.0):
            assert model.error_one(row, t) == pytest.approx(
                float(model.error(np.array([row]), np.array([t]))[0]), abs=1e-15)
    # with the clock sync a speaker's own clock runs free: its boot offset and drift, no resync
    free = ClockModel(ClockSpec(5, 50, 10, 1, 300), [0, 1, 2], seed=4, origin=0.0,
                      horizon_s=100)
    t = np.array([1.0, 25.0, 90.0])
    assert np.allclose(free.error(rows, t), free.offset + free.drift * t, atol=1e-15)
    assert free.error_one(2, 90.0) == pytest.approx(free.offset[2] + free.drift[2] * 90.0)


def test_processes_and_figures(smoke) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    r, report, _ = smoke
    for name in ("streamer", "relay-0", "redis", "worker-0", "worker-1", "loadtest"):
        p = r["processes"][name]
        assert p["cpu"] >= 0 and p["rss"] > 1 << 20, (name, p)
    assert r["processes"]["streamer"]["cpu"] > 0 and r["processes"]["relay-0"]["cpu"] > 0
    for suffix in ("-network.png", "-processes.png"):
        png = report.with_name(report.stem + suffix)
        img = mpimg.imread(png)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400
        assert float(img[..., :3].std()) > 0.05, f"{png} is blank"


async def test_against_a_running_stack_it_leaves_no_emergency_on_air(streamer, tmp_path) -> None:
    """``--streamer URL --relay HOST:PORT --token T --signing-key PEM``: the load tester's run
    against the province's stack before storm season. It measures through the given relay
    (which requires subscription tokens, by default: the speakers' are signed with the
    streamer's key), signs in with the given token, and takes its emergency off the air when
    it is done: the stack goes on serving the province after the test. The stack's clock reads
    midnight: a load tester at night gets its broadcast aired too, through the scenario's
    quiet-hours override."""
    streamer.plane.now = lambda: NIGHT
    relay = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.main", "--id", "relay-lt", "--media", "127.0.0.1:0",
        "--http", "127.0.0.1:0", "--upstream", streamer.media_addr,
        *with_trust([], tmp_path, "relay-lt"), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert relay.stdout is not None
        media = json.loads(await asyncio.wait_for(relay.stdout.readline(), 15))["media"]
        report = tmp_path / "attached.json"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loa", "loadtest", "--scenario", "smoke",
            "--speakers", "40", "--duration", "9", "--streamer", streamer.http_url,
            "--relay", media, "--token", streamer.admin["Authorization"].split()[1],
            "--signing-key", str(streamer.key_path),
            "--report", str(report), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
        assert proc.returncode == 0, out.decode()[-4000:]
    finally:
        relay.terminate()
        await relay.wait()
    r = json.loads(report.read_text())
    assert r["subscribed"] == 40 and r["silent_speakers"] == 0 and r["loss_ratio"] == 0
    assert r["relays"] == [media] and "streamer" not in r["processes"]
    for e in r["events"]:
        assert e["broadcast_id"] and e["error"] == "" and e["missing"] == 0, e
    broadcast = next(e["broadcast_id"] for e in r["events"] if e["kind"] == "broadcast")
    rec = await streamer.broadcasts.get(broadcast)
    assert rec is not None and rec.override_quiet_hours, "aired at night without the override?"
    emergency = next(e["broadcast_id"] for e in r["events"] if e["kind"] == "emergency")
    assert emergency not in streamer.broadcasts.live, "the run's emergency is still on air"
    assert {d["event"] for d in r["decoded"]} == {"broadcast", "emergency"}


# --------------------------------------------------------------------------- fast tests


def _rows(packets: list[RtpPacket]) -> tuple[np.ndarray, np.ndarray]:
    rows = np.zeros((1, len(packets), HEADER_LEN), dtype=np.uint8)
    for j, p in enumerate(packets):
        rows[0, j] = np.frombuffer(p.build()[:HEADER_LEN], dtype=np.uint8)
    return rows, np.full((1, len(packets)), HEADER_LEN + 10)


def _reception(n: int = 1, spec: ClockSpec | None = None) -> Reception:
    spec = spec or ClockSpec(0, 0, 60, 0, 300)
    return Reception(n, np.zeros(n, dtype=np.int64), ClockModel(spec, range(n), 1, 0.0, 600),
                     20)


def test_loss_counts_gaps_across_the_sequence_wrap() -> None:
    rec = _reception()
    seqs = [65532, 65533, 65535, 0, 1, 3]  # 65534 and 2 missing
    packets = [RtpPacket(1, s, 960 * k, b"", capture_ntp=unix_to_ntp64(100 + 0.02 * k))
               for k, s in enumerate(seqs)]
    rows, lengths = _rows(packets[:3])  # two rounds: state carries across
    rec.add(rows, lengths, 100.03 + 0.02 * np.arange(3)[None, :])
    rows, lengths = _rows(packets[3:])
    rec.add(rows, lengths, 100.09 + 0.02 * np.arange(3)[None, :])
    assert rec.received.tolist() == [6] and rec.lost().tolist() == [2]
    rec.reset()  # a new window expects the packet after the last one seen (4)
    rows, lengths = _rows([RtpPacket(1, s, 0, b"") for s in (5, 7, 8)])
    rec.add(rows, lengths, np.full((1, 3), 200.0))
    assert rec.received.tolist() == [3] and rec.lost().tolist() == [2]  # 4 and 6


def test_jitter_follows_rfc3550() -> None:
    rng = np.random.default_rng(7)
    n_pk = 40
    arrival = 100 + 0.02 * np.arange(n_pk) + rng.uniform(0, 0.004, n_pk)
    packets = [RtpPacket(1, k, (2**32 - 4800 + 960 * k) % 2**32, b"",  # timestamp wraps too
                         capture_ntp=unix_to_ntp64(100 + 0.02 * k)) for k in range(n_pk)]
    rec = _reception()
    for lo in range(0, n_pk, 8):
        rows, lengths = _rows(packets[lo:lo + 8])
        rec.add(rows, lengths, arrival[None, lo:lo + 8])
    j = 0.0
    for k in range(1, n_pk):
        d = (arrival[k] - arrival[k - 1]) * 48_000 - 960
        j += (abs(d) - j) / 16
    assert rec.jitter_ts[0] == pytest.approx(j, rel=1e-9) and j > 10
    assert rec.latency_max == pytest.approx(float(np.max(arrival - (100 + 0.02 * np.arange(n_pk)))),
                                            abs=1e-6)


def test_clock_model_drifts_and_resyncs() -> None:
    spec = ClockSpec(initial_offset_ms=0, drift_ppm=100, sync_interval_s=10, residual_ms=0,
                     playout_delay_ms=300, protocol=False)  # the speakers' own clocks: NTP
    model = ClockModel(spec, [0, 1], seed=3, origin=0.0, horizon_s=100)
    rows = np.array([0, 0, 0])
    t = model.phase[0] + np.array([1e-6, 5.0, 9.999])  # just synced, then drifting
    e = model.error(rows, t)
    assert e[0] == pytest.approx(0, abs=1e-9)
    assert e[2] == pytest.approx(model.drift[0] * 9.999) and abs(e[2]) > 1e-6
    # synced again at the next interval: the drift starts from zero
    assert model.error(rows[:1], t[1:2] + 10)[0] == pytest.approx(model.drift[0] * 5)
    play = model.play_time(np.array([0]), np.array([t[2] - 0.3]))
    assert play[0] == pytest.approx(t[2] - e[2], abs=1e-9)
    perfect = ClockModel(ClockSpec(0, 0, 10, 0, 300), [0, 1], 3, 0.0, 100)
    assert not perfect.error(np.array([0, 1]), np.array([50.0, 50.0])).any()


def test_late_packets_and_skew_samples() -> None:
    spec = ClockSpec(0, 0, 60, 0, 50)
    rec = _reception(2, spec)
    capture = 1000.0  # the first packet of a second: sampled for skew
    rows = np.zeros((2, 1, HEADER_LEN), dtype=np.uint8)
    rows[:, 0] = np.frombuffer(RtpPacket(1, 1, 0, b"", capture_ntp=unix_to_ntp64(capture))
                               .build()[:HEADER_LEN], dtype=np.uint8)
    rec.add(rows, np.full((2, 1), 40), np.array([[capture + 0.01], [capture + 0.08]]))
    assert rec.late.tolist() == [0, 1]  # the second arrived after capture + 50 ms
    (sample,) = rec.skew.values()
    assert (sample.on_time, sample.late) == (1, 1)
    assert sample.first_play == pytest.approx(capture + 0.05, abs=1e-6)


@pytest.mark.parametrize(("text", "field"), [
    ("speakers = 0\nduration_s = 5\n", "speakers"),
    ("speakers = 10\nduration_s = 5\nptime_ms = 25\n", "ptime_ms"),
    ("speakers = 10\nduration_s = 5\n[clock]\ndrift_ppm = -1\n", "clock.drift_ppm"),
    ("speakers = 10\nduration_s = 5\nspeakres = 3\n", "speakres"),
    ("speakers = 10\nduration_s = 5\n[[events]]\nat_s = 1\nkind = 'party'\nzones = ['brvt']\n",
     "events.0.kind"),
    ("speakers = 10\nduration_s = 5\n[[events]]\nat_s = 9\nkind = 'emergency'\n"
     "zones = ['brvt']\n", "events.0.at_s"),
    ("speakers = 10\nduration_s = 5\ndecode_sample = 11\n", "decode_sample"),
    ("speakers = 10\nduration_s = 5\n[[events]]\nat_s = 1\nkind = 'emergency'\nzones = ['brvt']"
     "\ncontent = {kind = 'tone', freq_hz = 5}\n", "events.0.content.freq_hz"),
    ("speakers = [10\n", "bad.toml"),
])
def test_bad_scenario_names_the_field(tmp_path: Path, text: str, field: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=f"{field}"):
        load(str(path))
    assert loadtest_main(["--scenario", str(path), "--report", str(tmp_path / "r.json")]) == 2
    assert field in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_overrides_are_validated_and_scenarios_load() -> None:
    smoke = load("smoke")
    assert smoke.speakers == 500 and len(smoke.events) == 2
    assert load("storm").speakers == 5000
    with pytest.raises(ScenarioError, match="command line: speakers"):
        smoke.with_overrides(speakers=-3)
    assert smoke.with_overrides(speakers=7, duration_s=None).speakers == 7
    with pytest.raises(ScenarioError, match="no file"):
        load("no-such-scenario")
    assert math.isclose(smoke.clock.playout_delay_ms, 300)
