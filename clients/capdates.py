"""Move a CAP alert's dates to today, so that an example or a recorded alert airs on any day:
``loa ctl cap --today ALERT.xml`` (``docs/cap.md``, "Sending an example on any day").

Every dateTime in the document moves by the same whole number of days, chosen so that the
earliest falls on today: ``sent``, ``effective``, ``onset``, ``expires`` and the ``sent`` of
each reference. Whole days keep the clock times, so a text that says "at 4 this morning" still
fits; one shift for all dates keeps an alert's validity as long as it was; and because an
Update or Cancel refers to alerts of the same days, a series moved on the same day still names
what it updates ("sender,identifier,sent"). Only the digits of the dates change: the document
is otherwise sent byte for byte (its signature, if any, is broken, as any edit breaks it).

Sans-IO and standard library only (the CLI's rule): bytes and a clock reading in, bytes out.
A date that is not a CAP dateTime is left for the streamer to refuse, naming the field.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

# CAP's dateTime (group 1; its date: group 2), in the elements that hold one, with or without
# a namespace prefix, and after the last comma of each "sender,identifier,sent" reference
_DATETIME = rb"((\d{4}-\d{2}-\d{2})T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2})"
_ELEMENT = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?(?:sent|effective|onset|expires)>\s*"
                      + _DATETIME + rb"\s*<")
_REFERENCES = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?references>([^<]*)<")
_REFERENCE_SENT = re.compile(rb"," + _DATETIME + rb"(?=\s|$)")


def move_to_today(document: bytes, now: datetime) -> tuple[bytes, int]:
    """``document`` with every date moved by whole days so that the earliest is today (the
    date ``now`` has in that date's own UTC offset), and the number of days moved. Raises
    ``ValueError`` when a date would move past the year 9999."""
    spans = _date_spans(document)
    if not spans:
        return document, 0
    first = min(spans, key=lambda s: s[2])[2]
    days = (now.astimezone(first.tzinfo).date() - first.date()).days
    out, end = [], 0
    for start, stop, _ in sorted(spans, key=lambda s: s[0]):
        written = date.fromisoformat(document[start:stop].decode())
        try:
            moved = written + timedelta(days=days)
        except OverflowError:
            raise ValueError(f"{written} moved by {days:+d} days is past the year 9999") from None
        out += [document[end:start], moved.isoformat().encode()]
        end = stop
    return b"".join([*out, document[end:]]), days


def _date_spans(document: bytes) -> list[tuple[int, int, datetime]]:
    """(start, end) of the date part of every dateTime, with the instant it names."""
    found = [(0, m) for m in _ELEMENT.finditer(document)]
    for refs in _REFERENCES.finditer(document):
        found += [(refs.start(1), m) for m in _REFERENCE_SENT.finditer(refs.group(1))]
    spans = []
    for base, m in found:
        try:
            when = datetime.fromisoformat(m.group(1).decode())
        except ValueError:
            continue  # not a valid date: the streamer refuses it, naming the field
        spans.append((base + m.start(2), base + m.end(2), when))
    return spans
