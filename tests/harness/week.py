"""Pinned clocks for schedule tests, computed from today, never written as a literal date: a
test pinned to a literal day in the future starts failing once that day has passed."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

VN = ZoneInfo("Asia/Ho_Chi_Minh")


def monday(weeks_ahead: int = 4) -> date:
    """The Monday (Asia/Ho_Chi_Minh) ``weeks_ahead`` weeks after this week's: far enough
    ahead that the in-process streamer's real scheduler fires nothing a test creates."""
    today = datetime.now(VN).date()
    return today - timedelta(days=today.weekday()) + timedelta(weeks=weeks_ahead)


def local(day: date, hour: int, minute: int = 0) -> float:
    """Unix time of ``day`` at ``hour:minute`` in Asia/Ho_Chi_Minh."""
    return datetime.combine(day, time(hour, minute), VN).timestamp()
