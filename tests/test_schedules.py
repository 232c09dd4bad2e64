"""Schedules: RRULE occurrences in wall-clock time, quiet hours, the scheduler firing on the
exact frame through a real mixer, relay windows, restarts, and bad input.

Time is a fake clock (``FakeTime``): the scheduler's ``now``/``sleep`` and the mixer's frames
advance together, so hours of schedule run in milliseconds and nothing waits for real.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import opuslib
import pytest
from dateutil import tz
from dateutil.rrule import rrulestr
from pydantic import ValidationError

from streamer.control.scheduler import Scheduler, frame_for
from streamer.control.schedules import (
    DEFAULT_QUIET_HOURS,
    QuietHours,
    Schedule,
    check_quiet_hours,
    in_quiet_hours,
    next_occurrence,
    occurrences,
    quiet_conflicts,
)
from streamer.control.schemas import BadRequest
from streamer.mixer.clock import FrameClock
from streamer.mixer.mixer import Mixer
from streamer.mixer.program import Item
from streamer.mixer.sources.tone import Tone
from tests.harness.sink import Sent
from wire import packet
from wire.priority import Priority

HCM = tz.gettz("Asia/Ho_Chi_Minh")
BERLIN = tz.gettz("Europe/Berlin")
ZONE = "brvt.vung-tau.thang-tam"
OTHER = "brvt.vung-tau.thang-nhat"
#: "06:00 and 17:00 every day except Sunday"
MORNING_EVENING = "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA;BYHOUR=6,17;BYMINUTE=0;BYSECOND=0"
N = 960
LOOKAHEAD = 312  # Opus encoder lookahead at 48 kHz: decoded audio lags the input by this


def hcm(*args: int) -> datetime:
    return datetime(*args, tzinfo=HCM)


def schedule(**fields: object) -> Schedule:
    body: dict[str, object] = {
        "id": "bulletin", "zones": [ZONE], "source": {"kind": "tone", "hz": 1000, "seconds": 1},
        "rrule": MORNING_EVENING, "dtstart": "2025-05-26T00:00:00", "approved": True}
    body.update(fields)
    return Schedule.model_validate(body)


# ---------------------------------------------------------------------------- occurrences


def test_morning_and_evening_except_sunday_across_a_week_and_a_month_boundary():
    s = schedule()
    got = occurrences(s, hcm(2025, 5, 28), hcm(2025, 6, 4))
    expected = [hcm(2025, 5, d, h) for d in (28, 29, 30, 31) for h in (6, 17)]
    expected += [hcm(2025, 6, d, h) for d in (2, 3) for h in (6, 17)]  # Sunday 1 June: none
    assert got == expected
    assert all(t.utcoffset() == timedelta(hours=7) for t in got)
    # 06:00 in Vũng Tàu is 23:00 UTC the day before: the rule counts local days
    assert got[0].astimezone(UTC) == datetime(2025, 5, 27, 23, 0, tzinfo=UTC)
    # Saturday evening → Monday morning, across the month boundary
    assert next_occurrence(s, hcm(2025, 5, 31, 17)) == hcm(2025, 6, 2, 6)
    assert next_occurrence(s, hcm(2025, 5, 31, 16, 59, 59)) == hcm(2025, 5, 31, 17)
    # a window [after, before): an occurrence exactly at `after` is in, one at `before` is out
    assert occurrences(s, hcm(2025, 6, 2, 6), hcm(2025, 6, 2, 17)) == [hcm(2025, 6, 2, 6)]


def test_one_off_and_until_in_utc():
    s = schedule(rrule=None, dtstart=None, at="2025-06-02T09:30:00")
    assert occurrences(s, hcm(2025, 1, 1), hcm(2026, 1, 1)) == [hcm(2025, 6, 2, 9, 30)]
    assert next_occurrence(s, hcm(2025, 6, 2, 9, 30)) is None
    # UNTIL in UTC (as RFC 5545 wants with a time zone): 10:59Z is 17:59 local, so the
    # 17:00 bulletin of 2 June is the last one
    s = schedule(rrule=MORNING_EVENING + ";UNTIL=20250602T105900Z")
    assert occurrences(s, hcm(2025, 6, 2), hcm(2026, 1, 1)) == [hcm(2025, 6, 2, 6),
                                                                 hcm(2025, 6, 2, 17)]


def test_wall_clock_is_kept_across_dst_changes():
    s = schedule(tz="Europe/Berlin", rrule="FREQ=DAILY;BYHOUR=6;BYMINUTE=0;BYSECOND=0",
                 dtstart="2025-03-01T00:00:00")
    spring = occurrences(s, datetime(2025, 3, 29, tzinfo=BERLIN),
                         datetime(2025, 4, 1, tzinfo=BERLIN))
    assert [t.astimezone(BERLIN).hour for t in spring] == [6, 6, 6]
    assert [t.astimezone(UTC).hour for t in spring] == [5, 4, 4]  # CET, then CEST
    autumn = occurrences(s, datetime(2025, 10, 25, tzinfo=BERLIN),
                         datetime(2025, 10, 28, tzinfo=BERLIN))
    assert [t.astimezone(UTC).hour for t in autumn] == [4, 5, 5]


def test_times_skipped_by_dst_move_forward_once_and_stay_in_order():
    # every half hour through the night clocks jump from 02:00 to 03:00: 02:00 and 02:30 do
    # not exist and become 03:00 and 03:30 (RFC 5545), which the rule also has: air once
    s = schedule(tz="Europe/Berlin", rrule="FREQ=MINUTELY;INTERVAL=30",
                 dtstart="2025-03-30T01:00:00")
    got = occurrences(s, datetime(2025, 3, 30, 0, 0, tzinfo=UTC),
                      datetime(2025, 3, 30, 2, 1, tzinfo=UTC))
    assert [t.astimezone(UTC).strftime("%H:%M") for t in got] == [
        "00:00", "00:30", "01:00", "01:30", "02:00"]
    assert [t.strftime("%H:%M%z") for t in got] == [
        "01:00+0100", "01:30+0100", "03:00+0200", "03:30+0200", "04:00+0200"]


@pytest.mark.parametrize("rule", [
    "FREQ=MINUTELY;INTERVAL=7;BYHOUR=6,7",
    "FREQ=HOURLY;INTERVAL=5;BYDAY=MO,WE",
    "FREQ=HOURLY;INTERVAL=2",
    "FREQ=DAILY;INTERVAL=3;BYHOUR=6,17",
    "FREQ=DAILY;INTERVAL=2;BYSETPOS=-1;BYHOUR=6,17",
])
def test_a_long_running_rule_gives_the_same_occurrences_as_counting_from_dtstart(rule):
    dtstart = datetime(2024, 11, 3, 6, 13, 5)  # odd minute and second: dateutil's defaults
    s = schedule(rrule=rule, dtstart=dtstart.isoformat())
    a, b = hcm(2025, 5, 30, 5), hcm(2025, 6, 3, 19)
    brute = rrulestr(rule, dtstart=dtstart).between(
        a.replace(tzinfo=None), b.replace(tzinfo=None), inc=True)
    got = occurrences(s, a, b)
    assert got and got == [t.replace(tzinfo=HCM) for t in brute if t < b.replace(tzinfo=None)]


# ---------------------------------------------------------------------------- bad input


def error_of(**fields: object) -> tuple[str, str]:
    with pytest.raises(ValidationError) as e:
        schedule(**fields)
    err = e.value.errors()[0]
    return ".".join(str(p) for p in err["loc"]), err["msg"]


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"rrule": "FREQ=DAILY;BYHOUR=six"}, "rrule", "not a valid RFC 5545 rule"),
    ({"rrule": "every day at six"}, "rrule", "not a valid RFC 5545 rule"),
    ({"rrule": "FREQ=FORTNIGHTLY"}, "rrule", "FREQ must be one of"),
    ({"rrule": "FREQ=DAILY;BYEASTER=0"}, "rrule", "unknown part BYEASTER"),
    ({"rrule": "FREQ=DAILY;COUNT=3;UNTIL=20260101T000000Z"}, "rrule", "COUNT or UNTIL"),
    ({"rrule": "FREQ=SECONDLY"}, "rrule", "more often than once a minute"),
    ({"rrule": "FREQ=MINUTELY;BYSECOND=0,30"}, "rrule", "more often than once a minute"),
    ({"rrule": "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30"}, "rrule", "never fires: no date matches"),
    ({"rrule": "FREQ=DAILY;UNTIL=20250101T000000Z"}, "rrule", "never fires"),
    ({"tz": "Asia/Vung_Tau"}, "tz", "unknown time zone"),
    ({"tz": ""}, "tz", "unknown time zone"),
    ({"at": "2025-06-02T06:00:00"}, "at", "not both"),
    ({"rrule": None}, "rrule", "either rrule"),
    ({"dtstart": None}, "dtstart", "required with rrule"),
    ({"dtstart": "2025-05-26T00:00:00+07:00"}, "dtstart", "without a UTC offset"),
    ({"duration_s": -5}, "duration_s", "greater than 0"),
    ({"duration_s": 2 * 86400}, "duration_s", "less than or equal"),
    ({"source": {"kind": "relay", "url": "http://vov1.example/live"}}, "duration_s",
     "required for a relay source"),
    ({"source": {"kind": "relay", "url": "file:///etc/passwd"}, "duration_s": 60},
     "source.relay.url", "http:// or https://"),
    ({"zones": []}, "zones", "at least 1"),
    ({"priority": "urgent"}, "priority", "emergency"),
])
def test_bad_input_is_refused_naming_the_field(fields, field, words):
    got_field, message = error_of(**fields)
    assert got_field == field and words in message, (got_field, message)


def test_a_schedule_round_trips_through_json():
    s = schedule(source={"kind": "relay", "url": "https://vov.example/vov1.m3u8"},
                 duration_s=1800, label="Thời sự VOV1", created_by="op.thang-tam")
    again = Schedule.model_validate_json(s.model_dump_json())
    assert again == s and again.source.kind == "relay"


# ---------------------------------------------------------------------------- quiet hours


def test_quiet_hours_cross_midnight():
    q = DEFAULT_QUIET_HOURS
    assert str(q) == "22:00-05:00"
    assert [q.contains(hcm(2025, 6, 2, h, m)) for h, m in
            ((21, 59), (22, 0), (0, 0), (4, 59), (5, 0), (12, 0))] == [
        False, True, True, True, False, False]
    assert not in_quiet_hours(None, hcm(2025, 6, 2, 3))
    assert in_quiet_hours(q, datetime(2025, 6, 1, 20, 0, tzinfo=UTC))  # 03:00 local
    assert QuietHours.parse("") is None
    early = QuietHours.parse("01:00-04:30")
    assert early is not None and early.contains(hcm(2025, 6, 2, 1)) and \
        not early.contains(hcm(2025, 6, 2, 23))
    with pytest.raises(BadRequest):
        QuietHours.parse("22:00-22:00")


def relay_at_0315(**fields: object) -> Schedule:
    return schedule(rrule=None, dtstart=None, at="2025-06-03T03:15:00", duration_s=1800,
                    source={"kind": "relay", "url": "https://vov.example/vov1"}, **fields)


def test_relay_window_in_quiet_hours_is_refused_with_a_clear_error():
    default = lambda zone: DEFAULT_QUIET_HOURS  # noqa: E731
    with pytest.raises(BadRequest) as e:
        check_quiet_hours(relay_at_0315(), default)
    assert e.value.field == "at"
    assert "03:15" in e.value.message and ZONE in e.value.message
    assert "quiet hours" in e.value.message and "override" in e.value.message
    # emergency ignores quiet hours; an admin override is accepted (the API audits it)
    check_quiet_hours(relay_at_0315(priority="emergency"), default)
    check_quiet_hours(relay_at_0315(override_quiet_hours=True), default)
    # a zone without quiet hours, or with later ones, takes it
    check_quiet_hours(relay_at_0315(), lambda zone: None)
    check_quiet_hours(relay_at_0315(), lambda zone: QuietHours.parse("23:00-03:00"))


def test_a_window_that_runs_into_quiet_hours_is_refused_on_its_duration():
    default = lambda zone: DEFAULT_QUIET_HOURS  # noqa: E731
    s = schedule(rrule="FREQ=DAILY;BYHOUR=21;BYMINUTE=30;BYSECOND=0", duration_s=3600,
                 source={"kind": "relay", "url": "https://vov.example/vov1"})
    with pytest.raises(BadRequest) as e:
        check_quiet_hours(s, default, after=hcm(2025, 6, 1))
    assert e.value.field == "duration_s" and "21:30-22:30" in e.value.message
    assert "and at least 99 more occurrences" in e.value.message  # a year of evenings
    with pytest.raises(BadRequest) as e:
        check_quiet_hours(s, default, horizon_days=5, after=hcm(2025, 6, 1))
    assert "and 4 more occurrences" in e.value.message
    found = quiet_conflicts(s, default, horizon_days=3, after=hcm(2025, 6, 1))
    assert [(c.zone, c.occurrence) for c in found] == [
        (ZONE, hcm(2025, 6, d, 21, 30)) for d in (1, 2, 3)]
    check_quiet_hours(s.model_copy(update={"duration_s": 1800.0}), default)  # ends at 22:00
    # a recurring 03:15 is refused on the rule
    with pytest.raises(BadRequest) as e:
        check_quiet_hours(schedule(rrule="FREQ=DAILY;BYHOUR=3;BYMINUTE=15"), default)
    assert e.value.field == "rrule"


# ---------------------------------------------------------------------------- the mixer


def _mixer(channels=(ZONE, OTHER), sink=None, start_wall=1_800_000_000.0,
           on_finished=lambda i: None):
    clock = FrameClock(20, start_mono=0.0, start_wall=start_wall,
                       max_catch_up_frames=10**9)
    return Mixer(list(channels), clock, Sent() if sink is None else sink,
                 wall=time.time, on_finished=on_finished)


def tone(item_id, prio=Priority.NORMAL, seconds=1.0):
    return Item(item_id, prio, Tone(1000, seconds), item_id)


def test_mixer_starts_a_booked_item_on_its_frame_and_ends_it_on_its_end_frame():
    done = []
    m = _mixer(on_finished=done.append)
    assert m.start(tone(1, seconds=None), [ZONE], at_frame=5, end_frame=8) == 1
    for k in range(5):
        m.tick(k)
        assert m.on_air(1) == [] and m.booked(1) == 5
    m.tick(5)
    program = m.channels[ZONE].program
    # it played frame 5 from its own first sample: exactly one frame of it
    assert m.on_air(1) == [ZONE] and program.cursors[1] == N and m.booked(1) is None
    m.tick(6)
    m.tick(7)
    assert program.cursors[1] == 3 * N and done == []
    m.tick(8)
    assert m.on_air(1) == [] and done == [1] and m.items == {}
    assert m.metrics.late_starts._value.get() == 0


def test_mixer_late_and_cancelled_bookings():
    m = _mixer()
    for k in range(10):
        m.tick(k)
    m.start(tone(1), [ZONE], at_frame=3)  # already past: at once, counted late
    m.tick(10)
    assert m.on_air(1) == [ZONE] and m.metrics.late_starts._value.get() == 1
    m.start(tone(2, Priority.EMERGENCY), [OTHER], at_frame=20)
    assert m.stop(2) and m.booked(2) is None
    for k in range(11, 25):
        m.tick(k)
    assert m.on_air(2) == [] and 2 not in m.items
    # a stall that skips over the booked frame starts it on the next frame produced
    m.start(tone(3), [OTHER], at_frame=30)
    m.tick(33)
    assert m.on_air(3) == [OTHER] and m.metrics.late_starts._value.get() == 2
    with pytest.raises(ValueError):
        m.start(tone(4), [OTHER], at_frame=40, end_frame=40)


def test_a_booked_item_queues_behind_what_arrived_before_it_at_its_level():
    m = _mixer()
    m.start(tone(1), [ZONE], at_frame=5)  # booked first...
    m.tick(0)
    m.start(tone(2), [ZONE])  # ...but this one reached the channel first
    for k in range(1, 7):
        m.tick(k)
    assert m.on_air(2) == [ZONE] and m.on_air(1) == []


# ---------------------------------------------------------------------------- the scheduler


class FakeTime:
    """The scheduler's wall clock and the mixer's frame loop, advanced together by sleep."""

    def __init__(self, wall: float, mixer: Mixer | None = None, tick: bool = True) -> None:
        self.wall = wall
        self.mixer = mixer
        self.tick = tick
        self.stop_at = math.inf
        self.reached = asyncio.Event()

    def now(self) -> float:
        return self.wall

    async def sleep(self, s: float) -> None:
        for _ in range(5):  # let preparations that are ready finish first
            await asyncio.sleep(0)
        target = min(self.wall + s, self.stop_at)
        m = self.mixer
        if m is not None and self.tick:
            while m.clock.capture_wall(m.next_frame) <= target:  # frames due by then
                m.tick(m.next_frame)
        self.wall = target
        if target >= self.stop_at:
            self.reached.set()
            await asyncio.Event().wait()  # parked until the test cancels the run

    async def run(self, scheduler: Scheduler, until: float) -> None:
        self.stop_at, self.reached = until, asyncio.Event()
        task = asyncio.create_task(scheduler.run())
        try:
            await asyncio.wait_for(self.reached.wait(), timeout=10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class Log:
    def __init__(self) -> None:
        self.prepared: list[tuple[str, datetime, float]] = []
        self.fired: list[tuple[str, datetime, int]] = []
        self.skipped: list[tuple[str, datetime, str]] = []
        self.ids = itertools.count(1)


def scheduler(m: Mixer, clock: FakeTime, log: Log, quiet=lambda z: DEFAULT_QUIET_HOURS,
              endless: bool = False, **kw: object) -> Scheduler:
    async def prepare(s: Schedule, occ: datetime) -> Item:
        log.prepared.append((s.id, occ, clock.now()))
        await asyncio.sleep(0)
        src = s.source
        seconds = None if endless else getattr(src, "seconds", 1.0)
        return Item(next(log.ids), Priority[s.priority.upper()], Tone(1000, seconds), 0)

    return Scheduler(
        m, prepare, channels_for=lambda zones: list(zones), quiet_hours_for_zone=quiet,
        now=clock.now, sleep=clock.sleep,
        on_fired=lambda s, occ, item: log.fired.append((s.id, occ, item.id)),
        on_skipped=lambda s, occ, why: log.skipped.append((s.id, occ, why)), **kw)


def decode(packets: list[packet.RtpPacket]) -> np.ndarray:
    dec = opuslib.Decoder(48_000, 1)
    return np.concatenate([np.frombuffer(dec.decode(p.payload, N), np.int16)
                           for p in packets]).astype(np.float64)


async def test_an_occurrence_airs_on_the_frame_that_matches_its_wall_clock_time():
    occ = hcm(2025, 6, 2, 6)  # Monday 06:00
    t = occ.timestamp()
    sent = Sent()
    # the frame clock started at an arbitrary instant: frames do not fall on whole seconds
    m = _mixer(sink=sent, start_wall=t - 31.007)
    clock, log = FakeTime(t - 31.007, m), Log()
    s = scheduler(m, clock, log)
    s.load([schedule()])
    await clock.run(s, until=t + 1.5)

    k = math.ceil((t - m.clock.start_wall) / 0.02)  # first frame starting at or after 06:00
    assert 0 <= m.clock.capture_wall(k) - t < 0.02
    assert frame_for(m.clock, t) == k
    # prepared a lead time (30 s) ahead, aired once, remembered as the last fired
    assert [(sid, o) for sid, o, _ in log.prepared] == [("bulletin", occ)]
    assert log.prepared[0][2] == pytest.approx(t - 30)
    assert log.fired == [("bulletin", occ, 1)] and s.last_fired == {"bulletin": occ}
    rtp = [(c, packet.parse(d)) for c, d in sent if not packet.is_rtcp(d)]
    ours = [p for c, p in rtp if c == ZONE]
    assert [p.seq for p in ours] == list(range(len(ours)))  # one packet per frame from 0
    assert ours[k - 1].broadcast_id == 0 and ours[k].broadcast_id == 1
    assert ours[k].capture_time == pytest.approx(m.clock.capture_wall(k) - LOOKAHEAD / 48_000,
                                                 abs=1e-6)
    # what a speaker decodes: silence, then the tone from frame k's first sample on (the
    # decoder's output lags by the encoder lookahead)
    pcm = decode(ours)
    onset = int(np.argmax(np.abs(pcm) > 100))
    assert np.abs(pcm[: k * N + LOOKAHEAD]).max() < 50
    assert k * N + LOOKAHEAD <= onset < k * N + LOOKAHEAD + 120
    assert np.abs(pcm[(k + 5) * N:(k + 10) * N]).max() > 1000
    assert all(p.broadcast_id == 0 for c, p in rtp if c == OTHER)


async def test_a_relay_window_is_cut_at_its_end_frame():
    occ = hcm(2025, 6, 2, 18, 30)
    t = occ.timestamp()
    sent = Sent()
    finished: list[int] = []
    m = _mixer(sink=sent, start_wall=t - 2.5,
               on_finished=finished.append)
    clock, log = FakeTime(t - 2.5, m), Log()
    s = scheduler(m, clock, log, endless=True, lead_s=2.0)
    s.load([schedule(rrule=None, dtstart=None, at="2025-06-02T18:30:00", duration_s=1.0,
                     source={"kind": "relay", "url": "https://vov.example/vov1"})])
    await clock.run(s, until=t + 2.0)

    k = frame_for(m.clock, t)
    assert m.clock.capture_wall(k) == pytest.approx(t)  # here frames fall on the second
    end = k + 50  # 1 s of 20 ms frames
    ours = [packet.parse(d) for c, d in sent if c == ZONE and not packet.is_rtcp(d)]
    assert [p.broadcast_id for p in ours[k - 1:end + 1]] == [0] + [1] * 50 + [0]
    assert finished == [1] and m.items == {} and log.fired == [("bulletin", occ, 1)]
    pcm = decode(ours)
    # the endless source plays up to the end frame's first sample...
    assert np.abs(pcm[end * N + LOOKAHEAD - 100:end * N + LOOKAHEAD]).max() > 5000
    # ...then fades out over 10 ms (480 samples; the codec rings a few ms more): silence
    assert np.abs(pcm[end * N + LOOKAHEAD + 480 + 240:]).max() < 50


async def test_a_zone_that_got_quiet_hours_after_creation_skips_the_occurrence():
    occ = hcm(2025, 6, 2, 21)
    t = occ.timestamp()
    quiet = {ZONE: DEFAULT_QUIET_HOURS}
    evening = schedule(rrule="FREQ=DAILY;BYHOUR=21;BYMINUTE=0;BYSECOND=0")
    check_quiet_hours(evening, quiet.get)  # fine when it was created
    quiet[ZONE] = QuietHours.parse("20:00-05:00")  # then the commune moved its quiet hours
    m = _mixer(start_wall=t - 60)
    clock, log = FakeTime(t - 60, m, tick=False), Log()
    s = scheduler(m, clock, log, quiet=quiet.get)
    alarm = schedule(id="storm", priority="emergency",
                     rrule="FREQ=DAILY;BYHOUR=21;BYMINUTE=0;BYSECOND=0")
    s.load([evening, alarm])
    await clock.run(s, until=t + 5)
    assert [(sid, o) for sid, o, _ in log.skipped] == [("bulletin", occ)]
    assert "quiet hours" in log.skipped[0][2] and ZONE in log.skipped[0][2]
    assert s.last_fired["bulletin"] == occ  # reported and done with: not retried
    assert [(sid, o) for sid, o, _ in log.prepared] == [("storm", occ)]  # emergency airs
    assert [(sid, o) for sid, o, _ in log.fired] == [("storm", occ)]


async def test_a_restart_neither_repeats_nor_skips():
    bulletin = schedule()
    six = hcm(2025, 6, 2, 6)
    m = _mixer(start_wall=six.timestamp() - 90)
    clock, log = FakeTime(six.timestamp() - 90, m, tick=False), Log()
    first = scheduler(m, clock, log)
    first.load([bulletin])
    await clock.run(first, until=six.timestamp() + 10)
    assert [(sid, o) for sid, o, _ in log.fired] == [("bulletin", six)]
    persisted = dict(first.last_fired)  # what the lead keeps in Redis

    # the streamer restarts 20 s after 06:00: 06:00 is not aired again, 17:00 is
    m2 = _mixer(start_wall=six.timestamp() + 20)
    clock2, log2 = FakeTime(six.timestamp() + 20, m2, tick=False), Log()
    second = scheduler(m2, clock2, log2)
    second.load([bulletin], last_fired=persisted)
    await clock2.run(second, until=hcm(2025, 6, 2, 16, 59, 40).timestamp())
    assert log2.prepared and all(o == hcm(2025, 6, 2, 17) for _, o, _ in log2.prepared)
    assert m2.booked(1) == frame_for(m2.clock, hcm(2025, 6, 2, 17).timestamp())
    await clock2.run(second, until=hcm(2025, 6, 2, 17, 0, 1).timestamp())
    assert [(sid, o) for sid, o, _ in log2.fired] == [("bulletin", hcm(2025, 6, 2, 17))]
    assert log2.skipped == [] and second.last_fired["bulletin"] == hcm(2025, 6, 2, 17)


async def test_occurrences_missed_while_down_are_reported_not_aired_late():
    bulletin = schedule()
    persisted = {"bulletin": hcm(2025, 5, 31, 17)}  # Saturday evening aired, then down
    # back on Monday at 06:05: Monday 06:00 is more than the 60 s grace ago
    back = hcm(2025, 6, 2, 6, 5).timestamp()
    m = _mixer(start_wall=back)
    clock, log = FakeTime(back, m, tick=False), Log()
    s = scheduler(m, clock, log)
    s.load([bulletin], last_fired=persisted)
    await clock.run(s, until=hcm(2025, 6, 2, 6, 6).timestamp())
    assert [(sid, o) for sid, o, _ in log.skipped] == [("bulletin", hcm(2025, 6, 2, 6))]
    assert "missed" in log.skipped[0][2]
    assert log.prepared == [] and s.last_fired["bulletin"] == hcm(2025, 6, 2, 6)
    assert s.next_fire("bulletin") == hcm(2025, 6, 2, 17)

    # back 30 s after 06:00 instead: within the grace, it airs at once (late)
    back = hcm(2025, 6, 2, 6, 0, 30).timestamp()
    m2 = _mixer(start_wall=back)
    clock2, log2 = FakeTime(back, m2, tick=False), Log()
    s2 = scheduler(m2, clock2, log2)
    s2.load([bulletin], last_fired=persisted)
    await clock2.run(s2, until=hcm(2025, 6, 2, 6, 0, 31).timestamp())
    assert [(sid, o) for sid, o, _ in log2.fired] == [("bulletin", hcm(2025, 6, 2, 6))]
    assert log2.skipped == [] and m2.metrics.late_starts._value.get() == 1


async def test_only_approved_and_enabled_schedules_fire_and_edits_withdraw_what_was_booked():
    occ = hcm(2025, 6, 2, 6)
    m = _mixer(start_wall=occ.timestamp() - 40)
    clock, log = FakeTime(occ.timestamp() - 40, m, tick=False), Log()
    cancelled: list[datetime] = []
    s = scheduler(m, clock, log, on_cancelled=lambda sch, o, item: cancelled.append(o))
    s.load([schedule(approved=False), schedule(id="off", enabled=False)])
    await clock.run(s, until=occ.timestamp() - 20)
    assert log.prepared == []
    s.upsert(schedule())  # approved: prepared at once (inside the lead time) and booked
    await clock.run(s, until=occ.timestamp() - 15)
    assert len(log.prepared) == 1 and m.booked(1) is not None
    s.upsert(schedule(label="renamed"))  # a label does not change what airs
    assert m.booked(1) is not None and cancelled == []
    s.upsert(schedule(source={"kind": "tone", "hz": 440, "seconds": 2}))  # this does
    assert m.booked(1) is None and cancelled == [occ]
    await clock.run(s, until=occ.timestamp() - 1)
    assert m.booked(2) == frame_for(m.clock, occ.timestamp())
    # the frame loop starts it; an edit that comes before the scheduler noticed leaves it on
    m.tick(frame_for(m.clock, occ.timestamp()))
    clock.wall = occ.timestamp() + 0.01
    assert s.remove("bulletin") and not s.remove("bulletin")
    assert m.on_air(2) == [ZONE] and cancelled == [occ]
    assert [(sid, o, i) for sid, o, i in log.fired] == [("bulletin", occ, 2)]


async def test_a_failed_or_too_slow_preparation_is_reported_not_aired():
    occ = hcm(2025, 6, 2, 6)
    m = _mixer(start_wall=occ.timestamp() - 40)
    clock = FakeTime(occ.timestamp() - 40, m, tick=False)
    gate = asyncio.Event()
    skipped: list[tuple[str, datetime, str]] = []

    async def prepare(s: Schedule, o: datetime) -> Item:
        if s.id == "broken":
            raise RuntimeError("espeak-ng is not installed")
        await gate.wait()  # a TTS provider that hangs
        return Item(7, Priority.NORMAL, Tone(1000, 1.0), 0)

    sched = Scheduler(m, prepare, channels_for=list, quiet_hours_for_zone=lambda z: None,
                      now=clock.now, sleep=clock.sleep,
                      on_skipped=lambda s, o, why: skipped.append((s.id, o, why)))
    sched.load([schedule(), schedule(id="broken")])
    await clock.run(sched, until=occ.timestamp() + 120)
    assert skipped == [("broken", occ, "could not prepare: espeak-ng is not installed")]
    gate.set()  # ready two minutes after its time: too late to air
    for _ in range(5):
        await asyncio.sleep(0)
    assert [(sid, o) for sid, o, _ in skipped[1:]] == [("bulletin", occ)]
    assert "late" in skipped[1][2] and m.booked(7) is None and 7 not in m.items
    assert sched.last_fired == {"bulletin": occ, "broken": occ}
