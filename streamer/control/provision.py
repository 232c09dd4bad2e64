"""Provisioning at scale: speakers, relays and e-boards from one CSV or JSON file, all or nothing
(``docs/api.md``, "Bulk import").

A province registers thousands of devices at a time (a district's new speakers, the whole fleet
after the 2025 commune mergers). A file is read and every row checked before anything is
written: its fields as the single-device API checks them, its zone (a leaf for a speaker),
an id that no other row and no registered device has. A file with any bad row writes nothing
and answers with every bad row, by line and field, so that the whole file can be fixed at
once. Sans-IO: the API (``api/provision.py``) reads the request and writes the result.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from common.config import ConfigError, parse_hostport

from .models import Board, Relay, Speaker

#: the CSV header (any order; unknown columns are an error, missing ones are empty)
COLUMNS = ("kind", "id", "zone", "name", "lat", "lon", "relays", "media", "http")
KINDS = ("speaker", "relay", "board")
MAX_ROWS = 100_000
MAX_ERRORS = 1000  # listed in the answer; the count says how many in all


class BadFile(ValueError):
    """The file as a whole cannot be read (not CSV/JSON, no header, too many rows)."""


@dataclass(frozen=True)
class RowError:
    line: int  # the CSV line (the header is line 1), or the JSON item's index + 1
    id: str
    field: str
    message: str


@dataclass
class Checked:
    speakers: list[Speaker] = field(default_factory=list)
    relays: list[Relay] = field(default_factory=list)
    boards: list[Board] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    @property
    def zones(self) -> list[str]:
        """Every zone the file touches (for the caller's grants)."""
        return sorted({s.zone for s in self.speakers} | {r.zone for r in self.relays if r.zone}
                      | {b.zone for b in self.boards})


def read_csv(text: str) -> list[tuple[int, dict[str, str]]]:
    """(line, row) of each data row of a CSV file with a header; blank lines are skipped."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))  # a BOM from a spreadsheet
    if not reader.fieldnames:
        raise BadFile("the file is empty: the first line must be the header "
                      f"({','.join(COLUMNS)})")
    header = [h.strip() for h in reader.fieldnames]
    unknown = [h for h in header if h not in COLUMNS]
    if unknown or "id" not in header:
        raise BadFile(f"unknown columns {unknown}; the header names some of "
                      f"{','.join(COLUMNS)} (id is required)" if unknown else
                      "the header has no id column")
    reader.fieldnames = header
    rows = []
    for row in reader:
        if len(rows) >= MAX_ROWS:
            raise BadFile(f"more than {MAX_ROWS} rows: split the file")
        if None in row:  # more cells than the header names
            rows.append((reader.line_num, {"__extra__": "1", **{k: v for k, v in row.items()
                                                                 if k is not None}}))
            continue
        if any((v or "").strip() for v in row.values()):
            rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items()}))
    return rows


def read_json(data: Any) -> list[tuple[int, dict[str, Any]]]:
    """(item number, item) of ``{"devices": [...]}``."""
    devices = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(devices, list):
        raise BadFile('the body must be {"devices": [{"kind": "speaker", "id": …}, …]}')
    if len(devices) > MAX_ROWS:
        raise BadFile(f"more than {MAX_ROWS} devices: split the file")
    return [(i + 1, d if isinstance(d, dict) else {"__not_object__": d})
            for i, d in enumerate(devices)]


def read(body: bytes, content_type: str) -> list[tuple[int, dict[str, Any]]]:
    if content_type == "text/csv":
        try:
            return read_csv(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise BadFile("the CSV file is not UTF-8") from None
        except csv.Error as e:
            raise BadFile(f"not a CSV file: {e}") from None
    try:
        return read_json(json.loads(body))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadFile(f"not JSON: {e}") from None


def check(rows: Iterable[tuple[int, Mapping[str, Any]]], *, is_leaf: Callable[[str], bool],
          is_zone: Callable[[str], bool], registered: set[str], now: float) -> Checked:
    """Every row checked; the devices of a file without errors, else every error."""
    out = Checked()
    first_line: dict[str, int] = {}
    for line, row in rows:
        rid = str(row.get("id") or "")[:64]

        def bad(fld: str, message: str, line: int = line, rid: str = rid) -> None:
            out.errors.append(RowError(line, rid, fld, message))

        if "__extra__" in row:
            bad("-", "more cells than the header has columns")
            continue
        if "__not_object__" in row:
            bad("-", "each device is a JSON object")
            continue
        kind = str(row.get("kind") or "speaker")
        if kind not in KINDS:
            bad("kind", f"must be one of {', '.join(KINDS)}, not {kind!r}")
            continue
        try:
            device = _device(kind, row, now)
        except ValidationError as e:
            err = e.errors()[0]
            bad(".".join(str(p) for p in err["loc"]) or "-", err["msg"])
            continue
        except _BadField as e:
            bad(e.field, e.message)
            continue
        if device.id in first_line:
            bad("id", f"{device.id!r} is on line {first_line[device.id]} too")
            continue
        first_line[device.id] = line
        if device.id in registered:
            bad("id", f"device {device.id!r} is registered already")
            continue
        if isinstance(device, Speaker):
            if not is_leaf(device.zone):
                bad("zone", f"{device.zone!r} is not a leaf zone (channel)")
                continue
            out.speakers.append(device)
        elif isinstance(device, Board):
            if not is_zone(device.zone):
                bad("zone", f"unknown zone {device.zone!r}")
                continue
            out.boards.append(device)
        else:
            if device.zone and not is_zone(device.zone):
                bad("zone", f"unknown zone {device.zone!r}")
                continue
            out.relays.append(device)
    return out


class _BadField(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _device(kind: str, row: Mapping[str, Any], now: float) -> Speaker | Relay | Board:
    def text(name: str) -> str | None:
        value = row.get(name)
        return None if value in (None, "") else str(value) if not isinstance(value, str) \
            else value

    if kind == "relay":
        for name in ("lat", "lon", "relays"):
            if text(name) is not None:
                raise _BadField(name, "a relay has no " + name)
        return Relay.model_validate({"id": row.get("id"), "media": text("media") or "",
                                     "http": text("http") or "", "zone": text("zone"),
                                     "created": now})
    for name in ("media", "http"):
        if text(name) is not None:
            raise _BadField(name, f"a {kind} has no {name} (that is a relay's)")
    if kind == "board":
        if text("relays") is not None or row.get("relays"):
            raise _BadField("relays", "a board has no relays")
        return Board.model_validate({"id": row.get("id"), "zone": row.get("zone"),
                                     "name": text("name") or "", "lat": text("lat"),
                                     "lon": text("lon"), "created": now})
    relays = row.get("relays") or []
    if isinstance(relays, str):  # CSV: "host:port host:port" (spaces or semicolons)
        relays = relays.replace(";", " ").split()
    if not isinstance(relays, list):
        raise _BadField("relays", 'a list of "host:port"')
    for r in relays:
        try:
            parse_hostport(str(r), "relays")
        except ConfigError as e:
            raise _BadField("relays", str(e)) from None
    return Speaker.model_validate({"id": row.get("id"), "zone": row.get("zone"),
                                   "name": text("name") or "", "lat": text("lat"),
                                   "lon": text("lon"), "relays": relays, "created": now})
