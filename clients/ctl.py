"""``loa ctl``: operator commands over the streamer's HTTP API, with readable tables.

Each command is one or a few API calls and an aligned table; ``--json`` on the listing
commands prints the API's answer instead. ``login`` stores the bearer token and the URL in
``$LOA_CTL_TOKEN_FILE`` or ``~/.config/loa/token.json`` (mode 0600); ``LOA_TOKEN`` overrides
the stored token. The API URL comes from ``--url``, else ``LOA_URL``, else the token file,
else ``var/loa-up.json`` (a stack started by ``loa up``), else http://127.0.0.1:8000.

Standard library only (urllib, a hand-built multipart body), so it runs anywhere Python does.
It never prints a traceback for a refusal or a dead server: every error is one line
``loa ctl: <status>: <message> (<field>)`` on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import getpass
import http.client
import io
import json
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clients.capdates import move_to_today
from common.secretfile import write_private
from wire.priority import PRIORITIES

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TZ = "Asia/Ho_Chi_Minh"
CLIP_ID = re.compile(r"^[0-9a-f]{32}$")
#: reach is polled this often while waiting for proof of play
POLL_S = 0.5
#: ``--wait-reach`` waits this long beyond the broadcast's own length for the last reports
REACH_SLACK_S = 10.0


class CtlError(Exception):
    """Anything the CLI reports as one line and exit code 1."""


class ApiError(CtlError):
    """A refusal by the API (``status`` set) or a server that cannot be reached (None)."""

    def __init__(self, status: int | None, message: str, field: str | None = None) -> None:
        self.status, self.message, self.field = status, message, field
        where = f" ({field})" if field else ""
        super().__init__(f"{status}: {message}{where}" if status else message)

    @property
    def signed_out(self) -> bool:
        """The token is missing, expired or revoked (not: a wrong password at login)."""
        return self.status == 401 and self.field == "Authorization"


class NotSignedIn(CtlError):
    def __init__(self, hint: str = "") -> None:
        super().__init__("not signed in: run loa ctl login" + (f" ({hint})" if hint else ""))


# -------------------------------------------------------------------------------- HTTP


def call(url: str, method: str, path: str, body: Any = None, raw: bytes | None = None, *,
         token: str | None = None, content_type: str | None = None) -> Any:
    """One API request. JSON ``body`` or ``raw`` bytes (of ``content_type``) in; the decoded
    JSON answer out, or the bytes of a non-JSON answer (audio). Refusals raise ApiError."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    if body is not None or content_type:
        req.add_header("Content-Type", content_type or "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            payload = resp.read()
            if resp.headers.get_content_type() != "application/json":
                return payload
            return json.loads(payload or b"null")
    except urllib.error.HTTPError as e:
        raise _refusal(e) from None
    except urllib.error.URLError as e:
        raise ApiError(None, f"cannot reach {url}: {e.reason}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise ApiError(None, f"{url}: {e or type(e).__name__}") from None


def _refusal(e: urllib.error.HTTPError) -> ApiError:
    try:
        err = json.loads(e.read())
        return ApiError(e.code, str(err["error"]), err.get("field"))
    except (ValueError, KeyError, TypeError, OSError):
        return ApiError(e.code, str(e.reason or "HTTP error"))


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body (RFC 7578) and its Content-Type: text ``fields`` first, then
    ``files`` as ``name -> (filename, data)``."""
    blobs = [v.encode() for v in fields.values()] + [d for _, d in files.values()]
    boundary = "loa-" + secrets.token_hex(16)
    while any(boundary.encode() in b for b in blobs):  # astronomically rare, but cheap to rule out
        boundary = "loa-" + secrets.token_hex(16)
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{_q(name)}"\r\n'
                  f"Content-Type: text/plain; charset=utf-8\r\n\r\n".encode())
        out.write(value.encode() + b"\r\n")
    for name, (filename, data) in files.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{_q(name)}"; '
                  f'filename="{_q(filename)}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _q(s: str) -> str:
    """Escape a form name or file name the way browsers do (HTML's multipart encoding)."""
    return s.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


@dataclass
class Client:
    """The API at ``url`` as the signed-in user (``token`` None: not signed in)."""

    url: str
    token: str | None
    hint: str = ""  # why there is no token, for the "not signed in" message

    def __call__(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        if self.token is None:
            raise NotSignedIn(self.hint)
        return call(self.url, method, path, body, token=self.token, **kw)

    def get(self, path: str, **query: Any) -> Any:
        q = {k: v for k, v in query.items() if v is not None}
        return self("GET", path + ("?" + urllib.parse.urlencode(q) if q else ""))


# ------------------------------------------------------------------ URL, token, demo login


def token_file() -> Path:
    return Path(os.environ.get("LOA_CTL_TOKEN_FILE")
                or Path.home() / ".config" / "loa" / "token.json")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _loa_up(var_dir: str) -> dict[str, Any]:
    return _read_json(Path(var_dir) / "loa-up.json")


def default_url(var_dir: str = "var", saved_url: str | None = None) -> str:
    """``LOA_URL``, else the URL the token was issued by, else a running ``loa up``'s, else
    the default port."""
    if os.environ.get("LOA_URL"):
        return os.environ["LOA_URL"]
    if saved_url:
        return saved_url
    return str(_loa_up(var_dir).get("streamer_url") or DEFAULT_URL)


def save_token(url: str, token: str, user: str, expires: float) -> Path:
    path = token_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, json.dumps({"url": url, "token": token, "user": user,
                                    "expires": expires}))
    return path


def _client(url: str, saved: dict[str, Any]) -> Client:
    if os.environ.get("LOA_TOKEN"):
        return Client(url, os.environ["LOA_TOKEN"])
    if not saved.get("token"):
        return Client(url, None)
    if str(saved.get("url", "")).rstrip("/") != url.rstrip("/"):
        # a token is only ever sent to the server that issued it
        return Client(url, None, f"the saved token is for {saved.get('url')}")
    if not isinstance(saved.get("expires"), int | float) or saved["expires"] <= time.time():
        return Client(url, None, "the saved token expired")
    return Client(url, str(saved["token"]))


def _demo_credentials(var_dir: str) -> tuple[dict[str, Any], str] | None:
    """The first admin's credentials of a stack started by ``loa up`` (demo convenience)."""
    path = _loa_up(var_dir).get("admin_credentials")
    if not path or not Path(path).is_file():
        return None
    creds = _read_json(Path(path))
    return (creds, str(path)) if creds.get("user") and creds.get("password") else None


def _password(file: str | None, prompt: str, confirm: bool = False) -> str:
    if file:
        return Path(file).read_text().rstrip("\r\n")
    pw = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != pw:
        raise CtlError("the passwords differ")
    return pw


# ----------------------------------------------------------------------------- output


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2))


def _clock(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _short(text: str, n: int = 30) -> str:
    return text[:n] + "…" if len(text) > n else text


def _what(b: dict[str, Any]) -> str:
    s = b["source"]
    length = f" {s['seconds']:.1f} s" if s.get("seconds") is not None else ""
    if s["kind"] == "tone":
        return f"tone {s['hz']:g} Hz{length}"
    if s["kind"] == "tts":
        return f"tts “{_short(s['text'])}”{length}"
    if s["kind"] == "relay":
        return f"relay {_short(s['url'], 40)}"
    return f"clip {s['clip'][:12]}{length}"


def _print_broadcasts(items: list[dict[str, Any]]) -> None:
    rows = [{"id": b["id"], "priority": b["priority"], "state": b["state"],
             "channels": f"{b['on_air_channels']}/{b['channels']}", "what": _what(b),
             "zones": ",".join(b["zones"]), "by": b.get("created_by", ""),
             "label": b.get("label", "")} for b in items]
    print(table(rows, ["id", "priority", "state", "channels", "what", "zones", "by", "label"]))


def _zone_rows(nodes: list[dict[str, Any]], depth: int = 0,
               approval_above: bool = False) -> Iterator[dict[str, Any]]:
    for z in nodes:
        quiet = z["quiet_hours_in_force"] or "none"
        if z.get("quiet_hours") is None:
            quiet += " (inherited)" if z.get("parent") else " (default)"
        own = bool(z.get("requires_approval"))
        approval = "yes" if own else "yes (inherited)" if approval_above else "-"
        yield {"zone": "  " * depth + z["id"], "name": z["name"], "quiet hours": quiet,
               "approval": approval, "test": "yes" if z.get("test") else ""}
        yield from _zone_rows(z.get("children", []), depth + 1, own or approval_above)


_ZONE_COLS = ["zone", "name", "quiet hours", "approval", "test"]


# ------------------------------------------------------------------------------ reach


def _reach_line(r: dict[str, Any], elapsed_s: float, timed_out: bool = False) -> str:
    line = (f"reach {len(r['confirmed'])}/{r['expected']} confirmed ({r['ratio']:.0%}) · "
            f"{len(r['offline'])} offline · {elapsed_s:.1f} s")
    return line + (" · time up" if timed_out else "")


def _print_reach(r: dict[str, Any]) -> None:
    rows = [{"speaker": s["id"], "zone": s["zone"], "reach": state,
             "played": _clock(s.get("start"))[11:],
             "length": "" if s.get("end") is None or s.get("start") is None
             else f"{s['end'] - s['start']:.1f} s",
             "level": "" if s.get("level_dbfs") is None else f"{s['level_dbfs']:.1f} dBFS"}
            for state, key in (("confirmed", "confirmed"), ("not confirmed", "not_confirmed"),
                               ("offline", "offline")) for s in r[key]]
    if rows:
        print(table(rows, ["speaker", "zone", "reach", "played", "length", "level"]))
    print(f"broadcast {r['broadcast']}: expected {r['expected']}, "
          f"confirmed {len(r['confirmed'])}, not confirmed {len(r['not_confirmed'])}, "
          f"offline {len(r['offline'])} ({r['ratio']:.0%})")


def wait_reach(api: Client, bid: int, wait_s: float) -> dict[str, Any]:
    """Poll reach until every online speaker confirmed or ``wait_s`` passed, keeping one
    progress line (rewritten in place on a terminal, printed once at the end otherwise)."""
    tty = sys.stdout.isatty()
    t0 = time.monotonic()
    deadline = t0 + wait_s
    while True:
        r: dict[str, Any] = api("GET", f"/api/v1/broadcasts/{bid}/reach")
        now = time.monotonic()
        done = not r["not_confirmed"]
        line = _reach_line(r, now - t0, timed_out=not done and now >= deadline)
        if tty:
            print("\r" + line + "\x1b[K", end="", flush=True)
        if done or now >= deadline:
            print("" if tty else line)
            return r
        time.sleep(min(POLL_S, deadline - now))


# --------------------------------------------------------------------------- commands


def _source(api: Client, a: argparse.Namespace) -> dict[str, Any]:
    if a.tone is not None:
        return {"kind": "tone", "hz": a.tone, "seconds": a.seconds}
    if a.text is not None:
        return {"kind": "tts", "text": a.text}
    if a.clip is not None:
        return {"kind": "clip", "clip": _clip_id(api, a.clip)}
    if getattr(a, "relay_url", None) is not None:
        return {"kind": "relay", "url": a.relay_url}
    kinds = "--tone, --text, --clip" + (" or --relay-url" if hasattr(a, "relay_url") else "")
    raise CtlError(f"say what to air: {kinds}")


def _clip_id(api: Client, file_or_id: str) -> str:
    if CLIP_ID.match(file_or_id) and not Path(file_or_id).exists():
        return file_or_id
    return str(upload(api, Path(file_or_id))["id"])


def upload(api: Client, path: Path, name: str | None = None) -> dict[str, Any]:
    body, ctype = multipart({"name": name if name is not None else path.name},
                            {"file": (path.name, path.read_bytes())})
    clip: dict[str, Any] = api("POST", "/api/v1/clips", raw=body, content_type=ctype)
    return clip


def _zones_required(a: argparse.Namespace) -> list[str]:
    if not a.zone:
        raise CtlError("give at least one --zone")
    return list(a.zone)


def _after_airing(api: Client, a: argparse.Namespace, rec: dict[str, Any]) -> None:
    _print_broadcasts([rec])
    if not a.wait_reach:
        return
    if rec["state"] == "pending_approval":
        print("waiting for approval: run loa ctl reach once it has aired")
        return
    r = wait_reach(api, rec["id"], float(rec["source"].get("seconds") or 60) + REACH_SLACK_S)
    _print_reach(r)


def cmd_login(api: Client, a: argparse.Namespace) -> None:
    user, note = a.user, ""
    demo = None if user or a.password_file else _demo_credentials(a.var_dir)
    if demo is not None:
        creds, source = demo
        user, password, note = str(creds["user"]), str(creds["password"]), f" (from {source})"
    else:
        user = user or input("user: ").strip()
        password = _password(a.password_file, f"password for {user}: ")
    t = call(api.url, "POST", "/api/v1/login", {"user": user, "password": password})
    saved = save_token(api.url, t["token"], t["user"]["name"], t["expires"])
    print(f"signed in to {api.url} as {t['user']['name']}{note} until {_clock(t['expires'])};"
          f" token in {saved}")


def cmd_logout(api: Client, a: argparse.Namespace) -> None:
    if api.token is not None:
        try:
            api("POST", "/api/v1/logout")
        except ApiError as e:
            if not e.signed_out:  # already revoked or expired: nothing left to revoke
                raise
    token_file().unlink(missing_ok=True)
    print("signed out")


def cmd_whoami(api: Client, a: argparse.Namespace) -> None:
    me = api("GET", "/api/v1/me")
    if a.json:
        return _json(me)
    print(me["name"] + (f" ({me['full_name']})" if me.get("full_name") else "")
          + (" — disabled" if me.get("disabled") else "") + f" at {api.url}")
    print(table(me["grants"], ["role", "zone"]))


def cmd_zones(api: Client, a: argparse.Namespace) -> None:
    zones = api("GET", "/api/v1/zones")
    if a.json:
        return _json(zones)
    print(table(list(_zone_rows(zones["zones"])), _ZONE_COLS))


def cmd_zone_set(api: Client, a: argparse.Namespace) -> None:
    body: dict[str, Any] = {}
    if a.quiet_hours == "inherit":
        body["inherit_quiet_hours"] = True
    elif a.quiet_hours is not None:
        body["quiet_hours"] = "" if a.quiet_hours == "none" else a.quiet_hours
    if a.approval is not None:
        body["requires_approval"] = a.approval == "on"
    if a.test is not None:
        body["test"] = a.test == "on"
    if not body:
        raise CtlError("nothing to change: give --quiet-hours, --approval or --test")
    z = api("PATCH", f"/api/v1/zones/{urllib.parse.quote(a.zone_id)}", body)
    print(table([next(_zone_rows([z]))], _ZONE_COLS))


def cmd_broadcast(api: Client, a: argparse.Namespace) -> None:
    body = {"zones": _zones_required(a), "priority": a.priority, "source": _source(api, a),
            "label": a.label}
    if a.override_quiet_hours:
        body["override_quiet_hours"] = True
    _after_airing(api, a, api("POST", "/api/v1/broadcasts", body))


def cmd_emergency(api: Client, a: argparse.Namespace) -> None:
    source = {"kind": "live", "input": a.live} if a.live else _source(api, a)
    body = {"zones": _zones_required(a), "source": source, "label": a.label,
            "chime": not a.no_chime, "volume": a.volume}
    if a.repeat_minutes is not None:
        body["repeat_s"] = round(a.repeat_minutes * 60)
    if a.expires_hours is not None:
        body["expires_s"] = round(a.expires_hours * 3600)
    _after_airing(api, a, api("POST", "/api/v1/emergency", body))


def cmd_cap(api: Client, a: argparse.Namespace) -> None:
    try:
        document = Path(a.file).read_bytes()
    except OSError as e:
        raise CtlError(f"cannot read {a.file}: {e.strerror}") from None
    if a.today:
        try:
            document, days = move_to_today(document, datetime.now(UTC))
        except ValueError as e:
            raise CtlError(f"--today: {e}") from None
        print(f"{a.file}: dates moved {days:+d} days (--today)")
    out = api("POST", "/api/v1/cap", raw=document, content_type="application/cap+xml")
    print(f"{out['reference']}: {out['action']}"
          + (f" as {out['level']} in {', '.join(out['zones'])}" if out.get("zones") else "")
          + (f"; stopped {', '.join(map(str, out['stopped']))}" if out["stopped"] else ""))
    for what in out["unmatched_areas"] + out["unknown_geocodes"]:
        print(f"  matched no zone: {what}")
    if out.get("broadcast"):
        _print_broadcasts([out["broadcast"]])


_INPUT_COLS = ["id", "priority", "sending", "airing", "zones", "name"]


def cmd_inputs(api: Client, a: argparse.Namespace) -> None:
    items = api("GET", "/api/v1/inputs")["inputs"]
    if a.json:
        print(json.dumps(items, indent=2, ensure_ascii=False))
        return
    print(table([{**i, "zones": ",".join(i["zones"]), "sending": "yes" if i["sending"] else "",
                  "airing": ",".join(map(str, i["airing"]))} for i in items], _INPUT_COLS))


def _print_created_input(out: dict[str, Any]) -> None:
    print(f"input {out['input']['id']}: its key is shown only now; keep it in a file "
          f"(mode 0600) and pass it with --key-file\n  key     {out['key']}\n"
          f"  send    loa studio --to {out['ingest']} --key-file KEYFILE --file FILE\n"
          f"  ffmpeg  {out['ffmpeg']}")


def cmd_input_add(api: Client, a: argparse.Namespace) -> None:
    _print_created_input(api("POST", "/api/v1/inputs", {
        "id": a.id, "name": a.name, "zones": _zones_required(a), "priority": a.priority}))


def cmd_input_key(api: Client, a: argparse.Namespace) -> None:
    _print_created_input(api("POST", f"/api/v1/inputs/{urllib.parse.quote(a.id)}/key"))


def cmd_input_rm(api: Client, a: argparse.Namespace) -> None:
    gone = api("DELETE", f"/api/v1/inputs/{urllib.parse.quote(a.id)}")
    print(f"removed input {gone['id']}")


def cmd_emergency_cancel(api: Client, a: argparse.Namespace) -> None:
    _print_broadcasts([api("DELETE", f"/api/v1/emergency/{a.id}")])


def cmd_stop(api: Client, a: argparse.Namespace) -> None:
    _print_broadcasts([api("DELETE", f"/api/v1/broadcasts/{a.id}")])


def cmd_stop_all(api: Client, a: argparse.Namespace) -> None:
    body: dict[str, Any] = {"zones": a.zone}
    if a.priority:
        body["priority"] = a.priority
    stopped = api("POST", "/api/v1/stop", body)["stopped"]
    print(f"stopped {', '.join(map(str, stopped))}" if stopped else "nothing was airing there")


def cmd_list(api: Client, a: argparse.Namespace) -> None:
    out = api.get("/api/v1/broadcasts", limit=a.limit)
    if a.json:
        return _json(out)
    _print_broadcasts(out["broadcasts"])


def cmd_approvals(api: Client, a: argparse.Namespace) -> None:
    out = api("GET", "/api/v1/approvals")
    if a.json:
        return _json(out)
    _print_broadcasts(out["broadcasts"])
    if out.get("schedules"):
        print()
        _print_schedules(out["schedules"])


def cmd_decide(api: Client, a: argparse.Namespace) -> None:
    kind = "schedules" if a.schedule else "broadcasts"
    rec = api("POST", f"/api/v1/approvals/{kind}/{urllib.parse.quote(a.id)}",
              {"decision": a.decision, "note": a.note})
    (_print_schedules if a.schedule else _print_broadcasts)([rec])


def _print_clips(clips: list[dict[str, Any]]) -> None:
    rows = [{"id": c["id"], "name": c["name"], "seconds": f"{c['seconds']:.1f}",
             "bytes": c["bytes"], "uploaded": _clock(c["created"]), "by": c["created_by"]}
            for c in clips]
    print(table(rows, ["id", "name", "seconds", "bytes", "uploaded", "by"]))


def cmd_clips(api: Client, a: argparse.Namespace) -> None:
    out = api("GET", "/api/v1/clips")
    if a.json:
        return _json(out)
    _print_clips(out["clips"])


def cmd_upload(api: Client, a: argparse.Namespace) -> None:
    _print_clips([upload(api, Path(a.file), a.name)])


def cmd_tts(api: Client, a: argparse.Namespace) -> None:
    audio = api("POST", "/api/v1/tts/preview", {"text": a.text})
    Path(a.file).write_bytes(audio)
    with wave.open(io.BytesIO(audio)) as w:
        seconds = w.getnframes() / w.getframerate()
    print(f"wrote {a.file}: {seconds:.1f} s of speech")


def cmd_audit(api: Client, a: argparse.Namespace) -> None:
    out = api.get("/api/v1/audit", user=a.user, action=a.action, limit=a.limit)
    if a.json:
        return _json(out)
    rows = [{"time": _clock(e["ts"]), "user": e["user"], "action": e["action"],
             "target": e["target"], "zones": _short(",".join(e["zones"]), 40),
             "outcome": e["outcome"],
             "detail": _short(json.dumps(e["detail"], ensure_ascii=False), 60)
             if e["detail"] else ""} for e in out["entries"]]
    print(table(rows, ["time", "user", "action", "target", "zones", "outcome", "detail"]))


def _print_users(users: list[dict[str, Any]]) -> None:
    rows = [{"name": u["name"], "full name": u["full_name"],
             "grants": ", ".join(f"{g['role']}@{g['zone']}" for g in u["grants"]),
             "disabled": "yes" if u["disabled"] else ""} for u in users]
    print(table(rows, ["name", "full name", "grants", "disabled"]))


def cmd_users(api: Client, a: argparse.Namespace) -> None:
    out = api("GET", "/api/v1/users")
    if a.json:
        return _json(out)
    _print_users(out["users"])


def cmd_user_add(api: Client, a: argparse.Namespace) -> None:
    roles, zones = a.role or [], a.zone or []
    if len(roles) != len(zones):
        raise CtlError("give one --zone per --role (a grant is a role on a zone)")
    password = _password(a.password_file, f"password for {a.name}: ", confirm=True)
    user = api("POST", "/api/v1/users", {
        "name": a.name, "password": password, "full_name": a.full_name,
        "grants": [{"role": r, "zone": z} for r, z in zip(roles, zones, strict=True)]})
    _print_users([user])


def cmd_reach(api: Client, a: argparse.Namespace) -> None:
    if a.wait is not None:
        r = wait_reach(api, a.id, a.wait)
    else:
        r = api("GET", f"/api/v1/broadcasts/{a.id}/reach")
    if a.json:
        return _json(r)
    _print_reach(r)


def cmd_speakers(api: Client, a: argparse.Namespace) -> None:
    out = api.get("/api/v1/speakers", zone=a.zone)
    if a.json:
        return _json(out)
    rows = []
    for s in out["speakers"]:
        t = s.get("telemetry") or {}
        presence = s.get("presence") or {}
        volume = "" if t.get("volume") is None else f"{t['volume']:g}"
        rows.append({
            "id": s["id"], "zone": s["zone"], "state": presence.get("state", "unknown"),
            "volume": volume + (" muted" if t.get("muted") else ""),
            "level": "" if t.get("level_dbfs") is None else f"{t['level_dbfs']:.1f} dBFS",
            "loss": "" if t.get("loss_ratio") is None else f"{t['loss_ratio']:.1%}"})
    print(table(rows, ["id", "zone", "state", "volume", "level", "loss"]))


def _device_state(state: dict[str, Any] | None) -> str:
    def show(v: Any) -> str:
        if isinstance(v, list):
            return ",".join(map(str, v))
        return f"{v:g}" if isinstance(v, float) else str(v).lower() if isinstance(v, bool) \
            else str(v)
    return ", ".join(f"{k} {show(v)}" for k, v in (state or {}).items())


def _ack_rows(acks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"speaker": k["speaker"], "ok": "yes" if k["ok"] else "no",
             "error": k.get("error") or "", "state": _short(_device_state(k.get("state")), 80)}
            for k in acks]


def cmd_speaker(api: Client, a: argparse.Namespace) -> None:
    args: dict[str, Any] = {}
    if a.device_cmd == "set_volume":
        args = {"volume": a.volume}
    elif a.device_cmd == "test_tone":
        args = {"hz": a.hz, "seconds": a.seconds}
    ack = api("POST", f"/api/v1/speakers/{urllib.parse.quote(a.id)}/commands",
              {"cmd": a.device_cmd, "args": args})
    if not ack["ok"]:
        raise CtlError(f"speaker {a.id}: {a.device_cmd} failed: {ack.get('error')}")
    state = _device_state(ack.get("state"))
    print(f"speaker {a.id}: {a.device_cmd} ok" + (f" ({state})" if state else ""))


def _kv(items: list[str]) -> dict[str, Any]:
    """``volume=40 upstream='["a:5004"]'`` → ``{"volume": 40, "upstream": ["a:5004"]}``:
    each value is JSON when it parses as JSON, else a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CtlError(f"{item!r}: give command arguments as key=value")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def cmd_zone_command(api: Client, a: argparse.Namespace) -> None:
    out = api("POST", f"/api/v1/zones/{urllib.parse.quote(a.zone_id)}/commands",
              {"cmd": a.cmd_name, "args": _kv(a.args)})
    if a.json:
        return _json(out)
    acks = out["acks"]
    print(f"{a.cmd_name} to {a.zone_id}: {len(acks)} acks, "
          f"{sum(1 for k in acks if k['ok'])} ok (correlation {out['correlation']})")
    if acks:
        print(table(_ack_rows(acks), ["speaker", "ok", "error", "state"]))


def _today_midnight(tz_name: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        zone = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CtlError(f"unknown time zone {tz_name!r}") from None
    return datetime.now(zone).strftime("%Y-%m-%dT00:00:00")


def _print_schedules(items: list[dict[str, Any]]) -> None:
    def local(iso: str | None) -> str:  # the schedule's own wall-clock time, to the second
        return "" if iso is None else iso.replace("T", " ")[:19]

    rows = [{"id": s["id"], "when": s["rrule"] or f"once {local(s['at'])}",
             "next": local(s.get("next")),  # pending ones (in approvals) have none
             "what": _what(s),
             "length": "" if s["duration_s"] is None else f"{s['duration_s']:g} s",
             "priority": s["priority"], "zones": ",".join(s["zones"]),
             "state": ("enabled" if s["enabled"] else "disabled")
             + ("" if s["approved"] else ", waiting for approval"), "label": s["label"]}
            for s in items]
    print(table(rows, ["id", "when", "next", "what", "length", "priority", "zones", "state",
                       "label"]))


def cmd_schedules(api: Client, a: argparse.Namespace) -> None:
    out = api("GET", "/api/v1/schedules")
    if a.json:
        return _json(out)
    _print_schedules(out["schedules"])


def cmd_schedule_add(api: Client, a: argparse.Namespace) -> None:
    body: dict[str, Any] = {"zones": _zones_required(a), "priority": a.priority,
                            "source": _source(api, a), "label": a.label}
    if a.rrule:
        # a rule counts from local midnight today, so BYHOUR=6 means 06:00:00, not 06:mm:ss
        body |= {"rrule": a.rrule, "dtstart": a.start or _today_midnight(a.tz or DEFAULT_TZ)}
    else:
        body["at"] = a.at
    optional = {"tz": a.tz, "duration_s": a.duration,
                "override_quiet_hours": a.override_quiet_hours or None}
    body |= {k: v for k, v in optional.items() if v is not None}
    _print_schedules([api("POST", "/api/v1/schedules", body)])


def cmd_schedule_rm(api: Client, a: argparse.Namespace) -> None:
    api("DELETE", f"/api/v1/schedules/{urllib.parse.quote(a.id)}")
    print(f"schedule {a.id} removed")


# ----------------------------------------------------------------------------- parser


def _source_options(p: argparse.ArgumentParser, relay: bool = False) -> None:
    what = p.add_mutually_exclusive_group()
    what.add_argument("--tone", type=float, metavar="HZ", help="test tone")
    what.add_argument("--text", metavar="TEXT", help="Vietnamese text to speak")
    what.add_argument("--clip", metavar="FILE_OR_ID", help="audio file to upload, or a clip id")
    if relay:
        what.add_argument("--relay-url", metavar="URL", help="stream to relay (needs --duration)")
    p.add_argument("--seconds", type=float, default=5.0, help="tone length (default 5)")
    p.add_argument("--label", default="")


Subparsers = Any  # argparse's _SubParsersAction, which it does not export


def _cmd(parent: Subparsers, name: str, func: Callable[[Client, argparse.Namespace], None],
         help_: str, listing: bool = False) -> argparse.ArgumentParser:
    """A subcommand that runs ``func``; ``listing``: it prints a table, or JSON with --json."""
    c: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
    c.set_defaults(func=func)
    if listing:
        c.add_argument("--json", action="store_true", help="print the API's JSON")
    return c


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loa ctl", description="Operator commands over the API.")
    p.add_argument("--url", help="streamer URL (default: LOA_URL, the token file, "
                                 "var/loa-up.json, http://127.0.0.1:8000)")
    p.add_argument("--var-dir", default="var", help="folder of loa up's state (default: var)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # in the order of ``loa ctl --help``
    for add in (_session_commands, _zone_commands, _airing_commands, _input_commands,
                _broadcast_commands, _approval_commands, _clip_commands, _user_commands,
                _speaker_commands, _schedule_commands):
        add(sub)
    return p


def _session_commands(sub: Subparsers) -> None:
    c = _cmd(sub, "login", cmd_login, "sign in; stores the token (mode 0600)")
    c.add_argument("--user")
    c.add_argument("--password-file", metavar="FILE")
    _cmd(sub, "logout", cmd_logout, "revoke the token and forget it")
    _cmd(sub, "whoami", cmd_whoami, "the signed-in user and their grants", listing=True)


def _zone_commands(sub: Subparsers) -> None:
    _cmd(sub, "zones", cmd_zones, "the zone tree: quiet hours in force, approval", listing=True)
    zone = sub.add_parser("zone", help="change a zone's settings (admin)")
    c = _cmd(zone.add_subparsers(dest="zone_action", required=True), "set", cmd_zone_set,
             "change a zone's settings (admin)")
    c.add_argument("zone_id", metavar="ZONE")
    c.add_argument("--quiet-hours", metavar="HH:MM-HH:MM|none|inherit")
    c.add_argument("--approval", choices=["on", "off"])
    c.add_argument("--test", choices=["on", "off"],
                   help="the zone (and below) may receive CAP Test and Exercise alerts")


def _airing_commands(sub: Subparsers) -> None:
    """broadcast, emergency (and emergency cancel), cap."""
    c = _cmd(sub, "broadcast", cmd_broadcast, "air a tone, a text or a clip in zones")
    c.add_argument("--zone", action="append", help="zone id (repeatable)")
    _source_options(c)
    c.add_argument("--priority", default="normal", choices=PRIORITIES[1:])
    c.add_argument("--override-quiet-hours", action="store_true", help="admin; audited")
    c.add_argument("--wait-reach", action="store_true",
                   help="after airing, wait for the speakers' proof of play")
    c = _cmd(sub, "emergency", cmd_emergency, "air an emergency (preempts everything, ignores "
                                              "quiet hours and approval); emergency cancel ID")
    c.add_argument("--zone", action="append", help="zone id (repeatable)")
    _source_options(c)
    c.add_argument("--live", metavar="INPUT", help="air a live input that is sending "
                                                   "(an ingest input id, or studio-SESSION)")
    c.add_argument("--no-chime", action="store_true", help="no attention chime first")
    c.add_argument("--volume", type=float, default=100.0, help="forced speaker volume")
    c.add_argument("--repeat-minutes", type=float, metavar="M",
                   help="air it again every M minutes until cancelled")
    c.add_argument("--expires-hours", type=float, metavar="H", help="stop by itself after H h")
    c.add_argument("--wait-reach", action="store_true")
    cancel = _cmd(c.add_subparsers(dest="emergency_action", metavar="[cancel ID]"), "cancel",
                  cmd_emergency_cancel, "cancel an emergency")
    cancel.add_argument("id", type=int)
    c = _cmd(sub, "cap", cmd_cap, "send a CAP 1.2 alert file (Alert, Update or Cancel)")
    c.add_argument("file", metavar="ALERT.xml")
    c.add_argument("--today", action="store_true",
                   help="move every date in it by whole days so that the earliest is today "
                        "(clock times kept): the examples in docs/examples air on any day")


def _input_commands(sub: Subparsers) -> None:
    _cmd(sub, "inputs", cmd_inputs, "RTP ingest inputs", listing=True)
    inp = sub.add_parser("input", help="register or remove RTP ingest inputs")
    isub = inp.add_subparsers(dest="input_action", required=True)
    c = _cmd(isub, "add", cmd_input_add, "register an input; prints its key once")
    c.add_argument("id")
    c.add_argument("--zone", action="append", help="zone id (repeatable)")
    c.add_argument("--priority", default="normal", choices=PRIORITIES)
    c.add_argument("--name", default="")
    c = _cmd(isub, "key", cmd_input_key, "replace an input's key (prints the new one)")
    c.add_argument("id")
    c = _cmd(isub, "rm", cmd_input_rm, "remove an input")
    c.add_argument("id")


def _broadcast_commands(sub: Subparsers) -> None:
    """stop, stop-all, list, reach: broadcasts that aired or are airing."""
    c = _cmd(sub, "stop", cmd_stop, "stop a broadcast everywhere")
    c.add_argument("id", type=int)
    c = _cmd(sub, "stop-all", cmd_stop_all, "stop everything airing in zones")
    c.add_argument("--zone", action="append", required=True)
    c.add_argument("--priority", choices=PRIORITIES)
    c = _cmd(sub, "list", cmd_list, "recent broadcasts", listing=True)
    c.add_argument("--limit", type=int, default=50)
    c = _cmd(sub, "reach", cmd_reach, "which speakers confirmed playing a broadcast",
             listing=True)
    c.add_argument("id", type=int)
    c.add_argument("--wait", type=float, metavar="S",
                   help="poll until every online speaker confirmed, at most S seconds")


def _approval_commands(sub: Subparsers) -> None:
    _cmd(sub, "approvals", cmd_approvals, "broadcasts waiting for your approval", listing=True)
    for decision in ("approve", "reject"):
        c = _cmd(sub, decision, cmd_decide, f"{decision} a broadcast (or schedule) waiting "
                                            "for approval")
        c.add_argument("id")
        c.add_argument("--schedule", action="store_true", help="ID is a schedule's")
        c.add_argument("--note", default="")
        c.set_defaults(decision=decision)


def _clip_commands(sub: Subparsers) -> None:
    _cmd(sub, "clips", cmd_clips, "the clip library", listing=True)
    c = _cmd(sub, "upload", cmd_upload, "upload an audio file to the clip library")
    c.add_argument("file")
    c.add_argument("--name", help="default: the file's name")
    c = _cmd(sub, "tts", cmd_tts, "speak a text into a WAV file (preview)")
    c.add_argument("file", metavar="FILE.wav")
    c.add_argument("--text", required=True)


def _user_commands(sub: Subparsers) -> None:
    """audit, users, user add."""
    c = _cmd(sub, "audit", cmd_audit, "who did what, when, where (newest first)", listing=True)
    c.add_argument("--user")
    c.add_argument("--action")
    c.add_argument("--limit", type=int, default=50)
    _cmd(sub, "users", cmd_users, "users and their grants (admin)", listing=True)
    user = sub.add_parser("user", help="create users (admin)")
    c = _cmd(user.add_subparsers(dest="user_action", required=True), "add", cmd_user_add,
             "create a user with grants (--role R --zone Z, repeatable)")
    c.add_argument("name")
    c.add_argument("--role", action="append",
                   choices=["viewer", "operator", "approver", "emergency", "admin"])
    c.add_argument("--zone", action="append")
    c.add_argument("--full-name", default="")
    c.add_argument("--password-file", metavar="FILE")


def _speaker_commands(sub: Subparsers) -> None:
    """speakers, speaker ID ACTION, zone-command."""
    c = _cmd(sub, "speakers", cmd_speakers, "speakers: presence and telemetry", listing=True)
    c.add_argument("--zone", help="only this subtree")
    speaker = _cmd(sub, "speaker", cmd_speaker, "command one speaker")
    speaker.add_argument("id")
    actions = speaker.add_subparsers(dest="speaker_action", required=True)
    c = actions.add_parser("volume", help="set the volume (0-100)")
    c.add_argument("volume", type=float)
    c.set_defaults(device_cmd="set_volume")
    for name, device_cmd in (("mute", "mute"), ("unmute", "unmute"), ("reconnect", "reconnect")):
        actions.add_parser(name, help=device_cmd).set_defaults(device_cmd=device_cmd)
    c = actions.add_parser("test-tone", help="a sine on the speaker's own output")
    c.add_argument("--hz", type=float, default=1000.0)
    c.add_argument("--seconds", type=float, default=5.0)
    c.set_defaults(device_cmd="test_tone")
    c = _cmd(sub, "zone-command", cmd_zone_command, "command every speaker of a zone subtree",
             listing=True)
    c.add_argument("zone_id", metavar="ZONE")
    c.add_argument("cmd_name", metavar="CMD")
    c.add_argument("args", nargs="*", metavar="key=value")


def _schedule_commands(sub: Subparsers) -> None:
    _cmd(sub, "schedules", cmd_schedules, "schedules and their next occurrence", listing=True)
    schedule = sub.add_parser("schedule", help="add or remove schedules")
    ssub = schedule.add_subparsers(dest="schedule_action", required=True)
    c = _cmd(ssub, "add", cmd_schedule_add, "air something on a recurrence rule or once")
    c.add_argument("--zone", action="append", help="zone id (repeatable)")
    when = c.add_mutually_exclusive_group(required=True)
    when.add_argument("--rrule", help='RFC 5545 rule, e.g. "FREQ=DAILY;BYHOUR=6;BYMINUTE=0"')
    when.add_argument("--at", metavar="YYYY-MM-DDTHH:MM", help="a one-off, local time")
    c.add_argument("--start", metavar="YYYY-MM-DDTHH:MM:SS",
                   help="local time the rule counts from (default: today 00:00)")
    c.add_argument("--tz", help=f"IANA time zone (default: the server's, {DEFAULT_TZ})")
    c.add_argument("--duration", type=float, metavar="S", help="cut what airs after S seconds")
    _source_options(c, relay=True)
    c.add_argument("--priority", default="normal", choices=PRIORITIES)
    c.add_argument("--override-quiet-hours", action="store_true", help="admin; audited")
    c = _cmd(ssub, "rm", cmd_schedule_rm, "remove a schedule")
    c.add_argument("id")


def run(argv: list[str]) -> int:
    a = _parser().parse_args(argv)
    saved = _read_json(token_file())
    url = (a.url or default_url(a.var_dir, saved.get("url"))).rstrip("/")
    try:
        a.func(_client(url, saved), a)
    except ApiError as e:
        print(f"loa ctl: {NotSignedIn() if e.signed_out else e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `loa ctl list | head`: the reader had enough
        try:  # and Python's own flush at exit must not complain either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except (CtlError, OSError) as e:
        print(f"loa ctl: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0
