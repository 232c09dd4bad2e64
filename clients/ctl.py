"""``loa ctl``: operator commands over the streamer's HTTP API, with readable tables.

The API URL comes from ``--url``, else ``LOA_URL``, else ``var/loa-up.json`` (a stack started
by ``loa up``), else http://127.0.0.1:8000. Login and tokens arrive with the control plane.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class ApiError(RuntimeError):
    pass


def default_url(var_dir: str = "var") -> str:
    if os.environ.get("LOA_URL"):
        return os.environ["LOA_URL"]
    state = Path(var_dir) / "loa-up.json"
    if state.exists():
        try:
            return str(json.loads(state.read_text())["streamer_url"])
        except (ValueError, KeyError):
            pass
    return "http://127.0.0.1:8000"


def call(url: str, method: str, path: str, body: Any = None, raw: bytes | None = None, *,
         token: str | None = None) -> Any:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read())
            where = f" ({err['field']})" if err.get("field") else ""
            raise ApiError(f"{e.code}: {err.get('error')}{where}") from None
        except (ValueError, KeyError):
            raise ApiError(f"HTTP {e.code}") from None
    except urllib.error.URLError as e:
        raise ApiError(f"cannot reach {url}: {e.reason}") from None


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _what(b: dict[str, Any]) -> str:
    s = b["source"]
    if s["kind"] == "tone":
        return f"tone {s['hz']:g} Hz {s['seconds']:g} s"
    if s["kind"] == "tts":
        text = s["text"]
        return "tts “" + (text[:30] + "…" if len(text) > 30 else text) + "”"
    return f"clip {s['clip'][:12]}"


def _print_broadcasts(items: list[dict[str, Any]]) -> None:
    rows = [{"id": b["id"], "priority": b["priority"], "state": b["state"],
             "channels": f"{b['on_air_channels']}/{b['channels']}", "what": _what(b),
             "zones": ",".join(b["zones"])} for b in items]
    print(table(rows, ["id", "priority", "state", "channels", "what", "zones"]))


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loa ctl", description="Operator commands.")
    p.add_argument("--url", help="streamer URL (default: LOA_URL, var/loa-up.json, :8000)")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("broadcast", help="air something in zones")
    b.add_argument("--zone", action="append", required=True, help="zone id (repeatable)")
    b.add_argument("--priority", default="normal",
                   choices=["emergency", "priority", "normal", "background"])
    what = b.add_mutually_exclusive_group(required=True)
    what.add_argument("--tone", type=float, metavar="HZ", help="test tone")
    what.add_argument("--tts", metavar="TEXT", help="Vietnamese text to speak")
    what.add_argument("--clip", metavar="FILE", help="audio file to upload and play")
    b.add_argument("--seconds", type=float, default=5.0, help="tone length")
    b.add_argument("--label", default="")
    s = sub.add_parser("stop", help="stop a broadcast")
    s.add_argument("id", type=int)
    sub.add_parser("list", help="broadcasts")
    sub.add_parser("zones", help="the zone tree")
    a = p.parse_args(argv)
    url = a.url or default_url()
    try:
        if a.cmd == "broadcast":
            if a.tone is not None:
                source: dict[str, Any] = {"kind": "tone", "hz": a.tone, "seconds": a.seconds}
            elif a.tts is not None:
                source = {"kind": "tts", "text": a.tts}
            else:
                clip = call(url, "POST", "/api/v1/clips", raw=Path(a.clip).read_bytes())
                source = {"kind": "clip", "clip": clip["id"]}
            rec = call(url, "POST", "/api/v1/broadcasts", {
                "zones": a.zone, "priority": a.priority, "source": source, "label": a.label})
            _print_broadcasts([rec])
        elif a.cmd == "stop":
            _print_broadcasts([call(url, "DELETE", f"/api/v1/broadcasts/{a.id}")])
        elif a.cmd == "list":
            _print_broadcasts(call(url, "GET", "/api/v1/broadcasts")["broadcasts"])
        elif a.cmd == "zones":
            def show(z: dict[str, Any], depth: int) -> None:
                print(f"{'  ' * depth}{z['id']:<48} {z['name']}")
                for c in z["children"]:
                    show(c, depth + 1)
            for root in call(url, "GET", "/api/v1/zones")["zones"]:
                show(root, 0)
    except (ApiError, OSError) as e:
        print(f"loa ctl: {e}", file=sys.stderr)
        return 1
    return 0
