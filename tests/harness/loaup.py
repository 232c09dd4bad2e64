"""A ``loa up`` stack for the tests: start it on free ports with its own var dir, read its state
file, sign in, and read what its simulated speakers recorded (their WAVs are anchored to wall
time, see the README)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from clients.ctl import call

RATE = 48_000


class Speaker:
    """One simulated speaker of the stack, by what it logged and recorded."""

    def __init__(self, info: dict) -> None:
        self.id, self.zone = info["id"], info["zone"]
        self.wav, self.log = Path(info["wav"]), Path(info["log"])

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    @property
    def t0(self) -> float:
        """Wall time of the WAV's first sample: a restarted speaker starts a new WAV, and its
        play log (appended to) a new ``start`` line."""
        return [e["t0"] for e in self.events() if e["event"] == "start"][-1]

    def plays(self, bid: int) -> list[dict]:
        return [e for e in self.events() if e["event"] == "play" and e["broadcast"] == bid]

    def samples(self) -> np.ndarray:
        data = self.wav.read_bytes()
        i = 12  # walk the RIFF chunks: the header may still be growing
        while i + 8 <= len(data):
            cid, size = data[i:i + 4], int.from_bytes(data[i + 4:i + 8], "little")
            if cid == b"data":
                body = data[i + 8:]
                return np.frombuffer(body[: len(body) // 2 * 2], "<i2").astype(np.float32) / 32768
            i += 8 + size
        raise AssertionError(f"{self.wav} has no data chunk")

    def window(self, start: float, end: float) -> np.ndarray:
        """Samples played between two wall times; waits for the WAV (flushed every second)
        to reach ``end``."""
        a, b = round((start - self.t0) * RATE), round((end - self.t0) * RATE)
        assert 0 <= a < b
        deadline = time.monotonic() + 5
        while len(x := self.samples()) < b:
            assert time.monotonic() < deadline, f"{self.id}: window not recorded"
            time.sleep(0.1)
        return x[a:b]


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children_of(pid: int) -> set[int]:
    """The live processes whose parent is ``pid``."""
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(d))
    return out


def port_outside_ephemeral_range() -> int:
    """A free UDP port below the kernel's ephemeral range: once its owner dies, no process
    binding port 0 (other tests, thousands of simulated speakers) can take it meanwhile."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 12_000), low), 200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free UDP port below the ephemeral range")


class LoaUp:
    """``loa up`` as a user runs it: in a session of its own, like a terminal's foreground job,
    so that :meth:`ctrl_c` can signal its whole process group as a terminal does."""

    def __init__(self, var: Path, *args: str, env: dict[str, str] | None = None) -> None:
        """``env``: added to this process's environment (``LOA_STREAMER_…`` settings)."""
        self.var = var
        self.stderr_path = var / "loa-up.stderr"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamer.cli", "up", "--var-dir", str(var),
                 "--http-port", "0", "--relay-http-port", "0", "--ingest-port", "0", *args],
                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                env=None if env is None else {**os.environ, **env})
        deadline = time.monotonic() + 60
        while not self.state_file.exists():
            assert self.proc.poll() is None, f"loa up exited: {self.stderr()}"
            assert time.monotonic() < deadline, "loa up did not write its state file"
            time.sleep(0.1)
        state = self.state()
        self.url = state["streamer_url"]
        creds = json.loads(Path(state["admin_credentials"]).read_text())
        self.token = call(self.url, "POST", "/api/v1/login", {
            "user": creds["user"], "password": creds["password"]})["token"]

    @property
    def state_file(self) -> Path:
        return self.var / "loa-up.json"

    def state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def speakers(self, zone_prefix: str = "") -> list[Speaker]:
        return [Speaker(s) for s in self.state()["speakers"] if s["zone"].startswith(zone_prefix)]

    def pid_of(self, name: str) -> int:
        return next(p["pid"] for p in self.state()["processes"] if p["name"] == name)

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        return call(self.url, method, path, body, token=self.token)

    def broadcast(self, **body: Any) -> dict:
        return self.api("POST", "/api/v1/broadcasts", body)

    def lift_quiet_hours(self) -> None:
        """The tests air normal bulletins whatever the hour CI runs at (README)."""
        self.api("PATCH", "/api/v1/zones/brvt", {"quiet_hours": ""})

    def ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to the whole foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def kill(self) -> None:
        """After a failed test: nothing of the stack may outlive it."""
        if self.proc.poll() is None:
            pids = children_of(self.proc.pid)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for pid in pids:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
