"""``loa up`` as a supervisor, with real processes: a child that dies (speaker, relay,
streamer, broker, Redis) is restarted and the stack plays again; speakers fail over to the
streamer while the relay cannot come back; Ctrl-C stops everything, in order, in under 3 s,
without a traceback anywhere. Everything under ``var/`` is its user's alone (directories
0700, files 0600), and no password is in a log, in ``loa-up.json`` or on a command line."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from clients.ctl import ApiError
from tests.harness.audio import peak_hz, rms_dbfs
from tests.harness.loaup import (
    RATE,
    LoaUp,
    Speaker,
    alive,
    children_of,
    port_outside_ephemeral_range,
)
from tests.harness.wait import wait_for
from wire import keyset, token
from wire.auth import Keyring, SigningKey

pytestmark = pytest.mark.realtime  # audio against the wall clock: see conftest.py

#: the supervised children of a default ``loa up``: Redis, Mosquitto, streamer, relay, speakers
CHILDREN = 2 + 1 + 1 + 6


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    # the relay's port is squatted below: nobody else may take it first; the speakers send
    # telemetry every second (10 s by default), so that one sent after a restart comes soon
    up = LoaUp(tmp_path_factory.mktemp("up"), "--relay-media-port",
               str(port_outside_ephemeral_range()), env={"LOA_SPEAKER_TELEMETRY_S": "1"})
    up.lift_quiet_hours()
    yield up
    up.kill()


def plays_tone(spk: Speaker, bid: int, hz: float, after: float = 0.0) -> bool:
    """``spk`` logged a play of ``bid`` that started after ``after`` (wall time), and what it
    recorded then is the tone."""
    plays = [p for p in spk.plays(bid) if p["start"] > after and p["end"] - p["start"] > 0.5]
    if not plays:
        return False
    p = plays[-1]
    return abs(peak_hz(spk.window(p["start"] + 0.1, p["end"] - 0.1)) - hz) < 5


def hears_tone(spk: Speaker, bid: int, hz: float, after: float) -> bool:
    """``spk`` began to play ``bid`` after ``after`` (wall time), and the half second after
    its first 0.1 s, once recorded, is the tone throughout (no tenth of a second of it
    silent): a play under way, not waited for to its end."""
    starts = [e["start"] for e in spk.events()
              if e["event"] == "play_start" and e["broadcast"] == bid and e["start"] > after]
    if not starts:
        return False
    a, b = starts[-1] + 0.1, starts[-1] + 0.6
    if len(spk.samples()) < round((b - spk.t0) * RATE):
        return False
    x = spk.window(a, b)
    return abs(peak_hz(x) - hz) < 5 and min(
        rms_dbfs(c) for c in np.array_split(x, 5)) > -40


def test_a_killed_speaker_is_restarted_and_plays_again(up):
    (spk,) = up.speakers("brvt.con-dao")
    old = up.pid_of(spk.id)
    killed = time.time()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: up.pid_of(spk.id) != old, timeout=8, what="loa-up.json names a new pid")
    new = up.pid_of(spk.id)
    assert alive(new) and new in children_of(up.proc.pid)
    assert re.search(rf"{spk.id} killed by SIGKILL; restart in \d\.\d s", up.stderr())
    assert next(p for p in up.state()["processes"] if p["name"] == spk.id)["restarts"] == 1
    b = up.broadcast(zones=[spk.zone], source={"kind": "tone", "hz": 700, "seconds": 2})
    wait_for(lambda: plays_tone(spk, b["id"], 700, after=killed), timeout=8,
             what="the restarted speaker plays the tone")
    first = next(p for p in spk.plays(b["id"]) if p["start"] > killed)
    assert first["start"] - killed < 10.0


def test_speakers_play_through_the_streamer_while_the_relay_is_down(up):
    relay = up.state()["relays"][0]
    host, port = relay["media"].rsplit(":", 1)
    os.kill(relay["pid"], signal.SIGKILL)
    # reaped: all its threads are gone, and its socket with them (a zombie leader is not enough)
    wait_for(lambda: "relay-1 killed by SIGKILL" in up.stderr(), timeout=5)
    # The relay's port taken: every restart fails until the test gives it back, so "down"
    # lasts as long as the test needs, and nothing but the streamer can feed the speakers.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind((host, int(port)))
        killed = time.time()
        # long enough for the speakers' media timeout (3 s) and their new handshake
        b = up.broadcast(zones=["brvt"], source={"kind": "tone", "hz": 900, "seconds": 7})
        spks = up.speakers()
        wait_for(lambda: all(hears_tone(s, b["id"], 900, after=killed) for s in spks),
                 timeout=15, what="every speaker plays the tone through the streamer")
        up.api("DELETE", f"/api/v1/broadcasts/{b['id']}")  # heard: the next test starts idle
        assert not alive(relay["pid"]) and up.pid_of("relay-1") == relay["pid"]
        assert re.search(r"relay-1 did not start \(exited with code 1", up.stderr())
    # the port is free again: the next attempt brings the relay back, on the same address
    wait_for(lambda: up.pid_of("relay-1") != relay["pid"], timeout=20, what="relay restarted")
    assert alive(up.pid_of("relay-1")) and up.state()["relays"][0]["media"] == relay["media"]


def test_a_killed_streamer_comes_back_on_its_ports_and_the_speakers_play_again(up):
    old, pid = up.state(), up.pid_of("streamer")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: up.pid_of("streamer") != pid, timeout=30, what="streamer restarted")
    state = up.state()
    assert (state["streamer_url"], state["streamer_media"]) == (
        old["streamer_url"], old["streamer_media"])
    restarted = time.time()
    # long enough for relay and speakers to find it again (handshakes back off to 4 s a step)
    b = up.broadcast(zones=["brvt"], source={"kind": "tone", "hz": 1100, "seconds": 7})
    spks = up.speakers()
    wait_for(lambda: all(hears_tone(s, b["id"], 1100, after=restarted) for s in spks),
             timeout=20, what="every speaker plays the tone")
    up.api("DELETE", f"/api/v1/broadcasts/{b['id']}")  # heard: the next test starts idle


def test_a_restarted_broker_and_redis_are_picked_up_again(up):
    logs = {name: up.var / "logs" / f"{name}.log" for name in ("streamer", "relay-1")}

    def connects(name: str) -> int:
        return logs[name].read_text().count("connected to the broker")

    before = {name: connects(name) for name in logs}
    for name in ("mosquitto", "redis"):
        pid = up.pid_of(name)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda n=name, p=pid: up.pid_of(n) != p, timeout=10, what=f"{name} restarted")
    wait_for(lambda: all(connects(name) > before[name] for name in logs), timeout=30,
             what="the streamer and the relay back on the broker")

    def speakers_back() -> bool:
        """Telemetry (every second here) sent after the restarts from every speaker, heard
        by the streamer and stored."""
        try:
            speakers = up.api("GET", "/api/v1/speakers")["speakers"]
        except (ApiError, OSError):  # the streamer's Redis connection comes back first
            return False
        return len(speakers) == 6 and all(
            s["telemetry"] and s["telemetry"]["ts"] > restarted for s in speakers)

    restarted = time.time()
    wait_for(speakers_back, timeout=30, what="speakers back on the broker")
    b = up.broadcast(zones=["brvt"], source={"kind": "tone", "hz": 600, "seconds": 1})
    # proof of play: speakers → broker → streamer → Redis
    wait_for(lambda: len(up.api("GET", f"/api/v1/broadcasts/{b['id']}/reach")["confirmed"])
             == 6, timeout=10, what="every speaker confirmed the broadcast")


def passwords(var: Path) -> dict[str, str]:
    """Every secret of the stack, read from where it is kept: the private Redis's password,
    the first admin's, and each broker login's (the streamer's, the relay's, the speakers')."""
    found = {"redis": (var / "redis" / "password").read_text().strip(),
             "admin": json.loads((var / "admin-credentials.json").read_text())["password"],
             "mqtt streamer": (var / "mosquitto" / "streamer.password").read_text().strip()}
    for f in (var / "secrets").glob("*.mqtt"):
        found[f"mqtt {f.stem}"] = f.read_text().strip()
    assert len(found) == 3 + 1 + 6 and all(len(p) >= 16 for p in found.values()), found
    return found


def assert_private(var: Path) -> None:
    """``var`` and every directory in it 0700, every file 0600, nothing else there (no
    socket, no pipe, no link)."""
    assert stat.S_IMODE(var.stat().st_mode) == 0o700
    for root, dirs, files in os.walk(var):
        for name in [*dirs, *files]:
            path = Path(root, name)
            st = path.lstat()
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(
                st.st_mode) else "other"
            assert (kind, stat.S_IMODE(st.st_mode)) in {("dir", 0o700), ("file", 0o600)}, (
                path, kind, oct(st.st_mode))


def assert_no_password_in_logs(var: Path) -> None:
    """No secret in a log (every child's, the servers', ``loa up``'s own stderr, the
    speakers' play logs) nor in ``loa-up.json``."""
    logs = [*var.rglob("*.log"), *var.rglob("*.jsonl"), var / "loa-up.stderr"]
    assert len([p for p in logs if p.suffix == ".log"]) == 8 + 2
    if (var / "loa-up.json").exists():
        logs.append(var / "loa-up.json")
    secrets = passwords(var)
    for log in logs:
        text = log.read_text(errors="replace")
        for what, password in secrets.items():
            assert password not in text, f"the {what} password is in {log}"


def test_var_is_private_and_no_password_is_logged_or_on_a_command_line(up):
    assert_private(up.var)
    assert_no_password_in_logs(up.var)
    state = up.state()
    redis_password = passwords(up.var)["redis"]
    assert state["redis_url"].startswith("redis://127.0.0.1:")
    assert state["redis_password_file"] == str(up.var / "redis" / "password")
    secrets = passwords(up.var).values()
    for pid in children_of(up.proc.pid) | {up.proc.pid}:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert not any(p in cmdline for p in secrets), cmdline
    # and the private Redis asks for it
    port = int(state["redis_url"].rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=port).ping()
    assert redis.Redis(port=port, password=redis_password).ping()


def test_every_device_got_its_own_token_over_mqtt_and_the_relay_requires_one(up):
    """The streamer and the relay require subscription tokens in ``loa up``; each device got
    its own over MQTT (kept 0600 in var/tokens), for its own channels, and they play."""
    key = (up.var / "signing-key.pem").read_bytes()
    keys = Keyring([SigningKey.from_pem(key).public])
    devices = {"relay-1": "*", **{s.id: s.zone for s in up.speakers()}}
    wait_for(lambda: all((up.var / "tokens" / f"{d}.token").exists() for d in devices), 20,
             "every device's token file")
    for device, channel in devices.items():
        data = base64.b64decode((up.var / "tokens" / f"{device}.token").read_text())
        probe = "any.channel" if channel == "*" else channel
        t = token.check(keys, data, device, probe, time.time())
        assert isinstance(t, token.Token), (device, t)
        assert token.check(keys, data, "someone-else", probe, time.time()) == token.FORBIDDEN
    assert_private(up.var)


def test_every_device_keeps_the_streamers_key_set_pushed_over_mqtt(up):
    """The streamer retains its key set (``loa/v1/keys``); the relay and each speaker took it,
    endorsed by the key they pin, and keep it 0600 in var/keys for their next start."""
    key = SigningKey.from_pem((up.var / "signing-key.pem").read_bytes())
    devices = ["relay-1", *(s.id for s in up.speakers())]
    wait_for(lambda: all((up.var / "keys" / f"{d}.keys").exists() for d in devices), 20,
             "every device's keys file")
    for device in devices:
        ks = keyset.parse(base64.b64decode((up.var / "keys" / f"{device}.keys").read_text()))
        assert ks.keys == (key.public,) and ks.endorser == key.id, device
    assert_private(up.var)


def test_ctrl_c_stops_every_child_in_under_3_s_without_a_traceback(up):
    children = children_of(up.proc.pid)
    assert len(children) == CHILDREN
    assert children == {p["pid"] for p in up.state()["processes"]}  # loa-up.json is true
    started = time.monotonic()
    up.ctrl_c()
    assert up.proc.wait(timeout=10) == 0
    took_s = time.monotonic() - started
    assert not any(alive(pid) for pid in children)
    assert took_s < 3.0, took_s
    assert not up.state_file.exists()
    logs = [*(up.var / "logs").glob("*.log"), up.var / "redis" / "redis-server.log",
            up.var / "mosquitto" / "mosquitto.log", up.stderr_path]
    assert len(logs) == 8 + 3
    for log in logs:
        assert "Traceback" not in log.read_text(), log
    # dependency order: the broker saw every client leave before it stopped itself
    connected: set[str] = set()
    for line in (up.var / "mosquitto" / "mosquitto.log").read_text().splitlines():
        if m := re.search(r"New client connected from \S+ as (\S+)", line):
            connected.add(m[1])
        elif m := re.search(r"Client (\S+) (disconnected|closed its connection)", line):
            connected.discard(m[1])
        elif "terminating" in line:
            break
    assert "terminating" in line and connected == set(), connected


def test_after_the_stop_var_is_still_private_and_no_log_holds_a_password(up):
    """What the servers write as they stop (Redis's dump, the broker's database) and the
    logs' last lines included."""
    assert up.proc.poll() is not None, "runs after the Ctrl-C test"
    assert (up.var / "redis" / "dump.rdb").exists()
    assert_private(up.var)
    assert_no_password_in_logs(up.var)
