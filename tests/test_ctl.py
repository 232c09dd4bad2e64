"""``loa ctl`` against a real in-process streamer: sign-in and its token file, tables, clean
errors, multipart upload, TTS preview, reach polling. The CLI is blocking (urllib), so it runs
in a thread while the streamer serves on the test's event loop."""

from __future__ import annotations

import asyncio
import io
import json
import re
import stat
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from clients.ctl import run
from streamer.control.models import Presence, Speaker
from tests.harness.audio import peak_hz, rms_dbfs
from tests.harness.net import free_port

OP = "brvt.vung-tau.thang-tam"  # the commune our operator runs
OTHER = "brvt.chau-duc.kim-long"  # the next commune
#: a broadcast just handed to the mixer: in its 3 channels, or waiting for the next frame
AIRING = r"(on_air\s+3/3|waiting\s+0/3)"


class Ctl:
    def __init__(self, streamer, tmp_path: Path, capsys) -> None:
        self.streamer, self.tmp, self.capsys = streamer, tmp_path, capsys
        self.token_file = tmp_path / "config" / "loa" / "token.json"
        creds = json.loads((tmp_path / "var" / "admin-credentials.json").read_text())
        self.admin_password = self.secret("admin", creds["password"])

    def secret(self, name: str, password: str) -> Path:
        path = self.tmp / f"{name}.password"
        path.write_text(password + "\n")
        return path

    async def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(run, list(argv))
        out = self.capsys.readouterr()
        return code, out.out, out.err

    async def ok(self, *argv: str) -> str:
        code, out, err = await self(*argv)
        assert code == 0, err
        return out

    async def login_admin(self) -> str:
        return await self.ok("--url", self.streamer.http_url, "login", "--user", "admin",
                             "--password-file", str(self.admin_password))


@pytest.fixture
def ctl(streamer, tmp_path, monkeypatch, capsys):
    c = Ctl(streamer, tmp_path, capsys)
    monkeypatch.setenv("LOA_CTL_TOKEN_FILE", str(c.token_file))
    monkeypatch.delenv("LOA_URL", raising=False)
    monkeypatch.delenv("LOA_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)  # var/loa-up.json is the test's, never the checkout's
    return c


def first_id(table_out: str) -> int:
    return int(table_out.splitlines()[1].split()[0])


async def test_login_stores_a_private_token_then_whoami_zones_logout_and_demo_login(
        ctl, tmp_path):
    out = await ctl.login_admin()
    assert "signed in to " + ctl.streamer.http_url + " as admin" in out
    assert stat.S_IMODE(ctl.token_file.stat().st_mode) == 0o600
    saved = json.loads(ctl.token_file.read_text())
    assert saved["url"] == ctl.streamer.http_url and len(saved["token"]) >= 16
    # no --url from here on: the token file remembers where it was issued
    out = await ctl.ok("whoami")
    assert out.startswith("admin (First administrator) at " + ctl.streamer.http_url)
    assert re.search(r"^admin\s+brvt$", out, re.M)
    out = await ctl.ok("zones")
    assert "Phường Thắng Tam" in out
    assert re.search(r"^brvt\s+Tỉnh .*22:00-05:00 \(default\)", out, re.M)
    assert re.search(rf"^    {re.escape(OP)}\s", out, re.M)  # indented two levels deep
    assert re.search(rf"^      {re.escape(OP)}\.kp-1\s.*22:00-05:00 \(inherited\)\s+-", out,
                     re.M)
    revoked = ctl.token_file.read_text()
    assert (await ctl.ok("logout")).strip() == "signed out"
    assert not ctl.token_file.exists()
    code, out, err = await ctl("whoami")
    assert (code, out) == (1, "")
    assert err == "loa ctl: not signed in: run loa ctl login\n"
    # a token the server revoked reads the same, not as a bare 401
    ctl.token_file.write_text(revoked)
    code, _, err = await ctl("zones")
    assert code == 1 and err == "loa ctl: not signed in: run loa ctl login\n"
    # an expired token is not even sent; nor is a token to a server that did not issue it
    ctl.token_file.write_text(json.dumps({**json.loads(revoked), "expires": time.time() - 1}))
    code, _, err = await ctl("zones")
    assert (code, err) == (1, "loa ctl: not signed in: run loa ctl login "
                              "(the saved token expired)\n")
    ctl.token_file.write_text(revoked)
    code, _, err = await ctl("--url", "http://127.0.0.1:1", "zones")
    assert (code, err) == (1, "loa ctl: not signed in: run loa ctl login "
                              f"(the saved token is for {ctl.streamer.http_url})\n")

    # no user given: the first admin of a stack started by loa up (demo convenience)
    ctl.token_file.unlink()
    (tmp_path / "var" / "loa-up.json").write_text(json.dumps({
        "streamer_url": ctl.streamer.http_url,
        "admin_credentials": str(tmp_path / "var" / "admin-credentials.json")}))
    out = await ctl.ok("login")
    assert "as admin (from " in out and "admin-credentials.json" in out
    assert "admin (First administrator) at " in await ctl.ok("whoami")
    # a dead server is one clean line too
    code, _, err = await ctl("--url", f"http://127.0.0.1:{free_port()}", "login", "--user",
                             "admin", "--password-file", str(ctl.admin_password))
    assert code == 1 and err.startswith("loa ctl: cannot reach http://127.0.0.1:")
    assert "Traceback" not in err


async def test_broadcast_shows_in_list_and_reach_waits_with_nobody_expected(ctl):
    await ctl.login_admin()
    out = await ctl.ok("broadcast", "--zone", OP, "--tone", "600", "--seconds", "30",
                       "--label", "thử loa")
    bid = first_id(out)
    assert re.search(rf"^{bid}\s+normal\s+{AIRING}\s+tone 600 Hz 30.0 s\s+{OP}\s+admin"
                     r"\s+thử loa$", out, re.M)
    out = await ctl.ok("list")
    assert re.search(rf"^{bid}\s+normal\s+{AIRING}\s+tone 600 Hz", out, re.M)
    listed = json.loads(await ctl.ok("list", "--json"))
    assert [b["id"] for b in listed["broadcasts"]] == [bid]
    out = await ctl.ok("reach", str(bid), "--wait", "1")
    assert out.splitlines()[0].startswith("reach 0/0 confirmed (0%) · 0 offline · ")
    assert f"broadcast {bid}: expected 0, confirmed 0" in out
    out = await ctl.ok("stop", str(bid))
    assert re.search(rf"^{bid}\s+normal\s+stopped\s", out, re.M)
    out = await ctl.ok("stop-all", "--zone", "brvt")
    assert out.strip() == "nothing was airing there"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_speakers_table_commands_and_reach_polling(ctl, streamer, monkeypatch):
    state = streamer.state
    for sid, zone, presence in (("loa-kp1-a", f"{OP}.kp-1", "online"),
                                ("loa-kp1-b", f"{OP}.kp-1", "offline"),
                                ("loa-kl-tay", f"{OTHER}.ap-tay", "online")):
        await state.speakers.put(sid, Speaker(id=sid, zone=zone))
        await state.set_presence(sid, Presence(state=presence, ts=time.time()))
    await state.set_telemetry("loa-kp1-a", {
        "ts": time.time(), "buffer_ms": 60, "loss_ratio": 0.012, "level_dbfs": -23.44,
        "volume": 80, "muted": False, "uptime_s": 100})
    await ctl.login_admin()
    out = await ctl.ok("speakers", "--zone", OP)
    assert re.search(rf"^loa-kp1-a\s+{re.escape(OP)}\.kp-1\s+online\s+80\s+-23.4 dBFS\s+1.2%$",
                     out, re.M)
    assert re.search(rf"^loa-kp1-b\s+{re.escape(OP)}\.kp-1\s+offline$", out, re.M)
    assert "loa-kl-tay" not in out
    assert "loa-kl-tay" in await ctl.ok("speakers")

    code, _, err = await ctl("speaker", "loa-kp1-a", "mute")
    assert (code, err) == (1, "loa ctl: 503: no MQTT broker configured (mqtt_url)\n")
    # commands over a real broker to real speakers: tests/test_e2e.py

    bid = first_id(await ctl.ok("broadcast", "--zone", OP, "--tone", "800", "--seconds", "1"))
    tty = Terminal()
    with monkeypatch.context() as m:
        m.setattr(sys, "stdout", tty)
        assert await asyncio.to_thread(run, ["reach", str(bid), "--wait", "1"]) == 0
    progress, _, rest = tty.getvalue().partition("\n")
    frames = progress.split("\r")[1:]
    assert len(frames) >= 3  # polled every 0.5 s, each poll rewriting the same line
    assert all(f.startswith("reach 0/2 confirmed (0%) · 1 offline · ") for f in frames)
    assert frames[-1].endswith(" s · time up\x1b[K")
    assert re.search(r"^loa-kp1-a\s+\S+\s+not confirmed", rest, re.M)
    assert re.search(r"^loa-kp1-b\s+\S+\s+offline", rest, re.M)

    waiting = asyncio.create_task(ctl("reach", str(bid), "--wait", "20"))
    await asyncio.sleep(0.7)
    assert not waiting.done()
    now = time.time()
    await state.record_played(bid, "loa-kp1-a", {"start": now - 1, "end": now,
                                                 "level_dbfs": -20.0})
    code, out, err = await waiting
    assert code == 0, err
    assert out.splitlines()[0].startswith("reach 1/2 confirmed (50%) · 1 offline · ")
    assert "time up" not in out
    assert re.search(r"^loa-kp1-a\s+\S+\s+confirmed\s+\S+\s+1.0 s\s+-20.0 dBFS$", out, re.M)


async def test_operator_next_door_gets_one_clean_line_and_exit_1(ctl):
    await ctl.login_admin()
    pw = ctl.secret("op", "correct horse battery")
    out = await ctl.ok("user", "add", "op-thang-tam", "--role", "operator", "--zone", OP,
                       "--password-file", str(pw))
    assert re.search(rf"^op-thang-tam\s+operator@{re.escape(OP)}$", out, re.M)
    assert "op-thang-tam" in await ctl.ok("users")
    code, _, err = await ctl("user", "add", "op2", "--role", "operator", "--password-file",
                             str(pw))
    assert code == 1 and "one --zone per --role" in err
    code, _, err = await ctl("broadcast", "--zone", "brvt.nowhere", "--tone", "600")
    assert (code, err) == (1, "loa ctl: 400: unknown zone 'brvt.nowhere' (zones)\n")

    await ctl.ok("login", "--user", "op-thang-tam", "--password-file", str(pw))
    code, out, err = await ctl("broadcast", "--zone", OTHER, "--tone", "600")
    assert (code, out) == (1, "")
    assert re.fullmatch(rf"loa ctl: 403: .*{re.escape(OTHER)}.* \(zones\)\n", err), err
    assert "Traceback" not in err
    assert len(ctl.streamer.broadcasts.live) == 0
    code, _, err = await ctl("login", "--user", "op-thang-tam", "--password-file",
                             str(ctl.admin_password))
    assert (code, err) == (1, "loa ctl: 401: wrong user name or password (password)\n")
    await ctl.login_admin()  # the refusal was audited where the admin sees it
    out = await ctl.ok("audit", "--user", "op-thang-tam", "--action", "create_broadcast")
    assert re.search(rf"^\S+ \S+\s+op-thang-tam\s+create_broadcast\s+/api/v1/broadcasts\s+"
                     rf"{re.escape(OTHER)}\s+denied\s", out, re.M)


async def test_approval_zone_holds_a_bulletin_until_approved(ctl):
    await ctl.login_admin()
    out = await ctl.ok("zone", "set", OP, "--approval", "on", "--quiet-hours", "none")
    assert re.search(rf"^{re.escape(OP)}\s+Phường Thắng Tam\s+none\s+yes\s*$", out, re.M)
    out = await ctl.ok("zones")
    assert re.search(rf"^      {re.escape(OP)}\.kp-1\s.*none \(inherited\)\s+yes \(inherited\)",
                     out, re.M)
    bid = first_id(await ctl.ok("broadcast", "--zone", OP, "--tone", "500"))
    assert re.search(rf"^{bid}\s+normal\s+pending_approval\s", await ctl.ok("approvals"), re.M)
    out = await ctl.ok("approve", str(bid), "--note", "ok")
    assert re.search(rf"^{bid}\s+normal\s+{AIRING}\s", out, re.M)
    assert json.loads(await ctl.ok("approvals", "--json"))["broadcasts"] == []
    out = await ctl.ok("zone", "set", OP, "--quiet-hours", "inherit", "--approval", "off")
    assert re.search(rf"^{re.escape(OP)}\s.*22:00-05:00 \(inherited\)\s+-\s*$", out, re.M)


async def test_schedules_add_list_approve_and_remove(ctl):
    await ctl.login_admin()
    out = await ctl.ok("schedule", "add", "--zone", OP, "--rrule",
                       "FREQ=DAILY;BYHOUR=6;BYMINUTE=0", "--start", "2026-01-01T00:00:00",
                       "--text", "Chào buổi sáng", "--label", "bản tin sáng")
    daily = out.splitlines()[1].split()[0]
    # DAYTIME is 2026-11-23 10:00 local, so the next 06:00 is tomorrow's
    assert re.search(rf"^{daily}\s+FREQ=DAILY;BYHOUR=6;BYMINUTE=0\s+2026-11-24 06:00:00\s+"
                     rf"tts “Chào buổi sáng” +normal\s+{re.escape(OP)}\s+enabled\s+bản tin sáng$",
                     out, re.M), out
    code, _, err = await ctl("schedule", "add", "--zone", OP, "--at", "2026-11-25T23:30",
                             "--tone", "440")
    assert code == 1 and err.startswith("loa ctl: 409: ") and "quiet" in err

    await ctl.ok("zone", "set", OP, "--approval", "on")
    out = await ctl.ok("schedule", "add", "--zone", OP, "--at", "2026-11-25T07:30", "--tone",
                       "440", "--seconds", "3", "--priority", "priority")
    held = out.splitlines()[1].split()[0]
    assert re.search(rf"^{held}\s+once 2026-11-25 07:30:00\s+tone 440 Hz 3.0 s\s+priority\s+"
                     rf"{re.escape(OP)}\s+enabled, waiting for approval$", out, re.M), out
    out = await ctl.ok("approvals")
    assert re.search(rf"^{held}\s+once 2026-11-25 07:30:00\s", out, re.M)
    out = await ctl.ok("approve", "--schedule", held)
    assert re.search(rf"^{held}\s+once 2026-11-25 07:30:00\s+2026-11-25 07:30:00\s.*"
                     r"\s+enabled$", out, re.M), out
    out = await ctl.ok("schedules")
    assert [line.split()[0] for line in out.splitlines()[1:]] == sorted([daily, held])
    assert (await ctl.ok("schedule", "rm", daily)).strip() == f"schedule {daily} removed"
    listed = json.loads(await ctl.ok("schedules", "--json"))["schedules"]
    assert [s["id"] for s in listed] == [held]


async def test_upload_a_wav_broadcast_it_by_clip_id_and_preview_tts(ctl, tmp_path):
    wav = tmp_path / "chuông 700 Hz.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=f=700:d=1", str(wav)],
                   check=True)
    await ctl.login_admin()
    out = await ctl.ok("upload", str(wav), "--name", "Chuông báo")
    clip = re.search(r"^([0-9a-f]{32})\s+Chuông báo\s+1.0\s", out, re.M)
    assert clip, out
    assert re.search(rf"^{clip[1]}\s+Chuông báo\s+1.0\s.*admin$", await ctl.ok("clips"), re.M)
    out = await ctl.ok("broadcast", "--zone", OP, "--clip", clip[1])
    assert re.search(rf"^\d+\s+normal\s+{AIRING}\s+clip {clip[1][:12]} 1.0 s\s", out, re.M)
    # a file name uploads it first (with the file's name) and airs the new clip
    out = await ctl.ok("broadcast", "--zone", OTHER, "--clip", str(wav))
    assert f"clip {clip[1][:12]} 1.0 s" in out  # same audio, same content-addressed clip
    names = [c["name"] for c in json.loads(await ctl.ok("clips", "--json"))["clips"]]
    assert names == ["chuông 700 Hz.wav"]  # the re-upload renamed the one clip

    out_wav = tmp_path / "preview.wav"
    out = await ctl.ok("tts", str(out_wav), "--text", "Thông báo lúc 17 giờ 30")
    assert re.fullmatch(rf"wrote {re.escape(str(out_wav))}: \d+\.\d s of speech\n", out)
    with wave.open(str(out_wav)) as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    x = np.frombuffer(pcm, "<i2").astype(np.float64) / 32768
    assert len(x) > rate // 2
    assert rms_dbfs(x) > -40  # not silence
    spec = np.abs(np.fft.rfft(x)) ** 2
    hz = np.fft.rfftfreq(len(x), 1 / rate)
    assert spec[(hz > 80) & (hz < 4000)].sum() > 0.5 * spec.sum()  # speech band, not hiss
    assert 80 < peak_hz(x, rate) < 4000
    code, _, err = await ctl("tts", str(tmp_path / "x.wav"), "--text", "   ")
    assert code == 1 and err.startswith("loa ctl: 400: ") and err.endswith("(text)\n")
