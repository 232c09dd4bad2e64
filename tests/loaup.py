"""`loa up` for tests: start the whole stack on free ports in a folder, sign in, stop it; and
the simulated speakers it runs, read back by what they recorded (their WAVs are anchored to
wall time, see the README)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from clients.ctl import call

RATE = 48_000


class Speaker:
    def __init__(self, info: dict) -> None:
        self.id, self.zone = info["id"], info["zone"]
        self.wav, self.log = Path(info["wav"]), Path(info["log"])

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    @property
    def t0(self) -> float:
        return next(e["t0"] for e in self.events() if e["event"] == "start")

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


def start_up(var: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], dict]:
    """``loa up`` in ``var`` (HTTP ports chosen by the system); returns the process and its
    state file, with ``token`` (the first admin's) added. Quiet hours are lifted on the whole
    tree: the tests air normal bulletins whatever the hour CI runs at."""
    proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "up", "--var-dir", str(var),
                             "--http-port", "0", "--relay-http-port", "0", "--ingest-port", "0"],
                            stdout=subprocess.PIPE, text=True,
                            env=None if env is None else {**os.environ, **env})
    state_file = var / "loa-up.json"
    deadline = time.monotonic() + 60
    while not state_file.exists():
        assert proc.poll() is None, "loa up exited"
        assert time.monotonic() < deadline, "loa up did not write its state file"
        time.sleep(0.1)
    state = json.loads(state_file.read_text())
    creds = json.loads(Path(state["admin_credentials"]).read_text())
    state["token"] = call(state["streamer_url"], "POST", "/api/v1/login", {
        "user": creds["user"], "password": creds["password"]})["token"]
    call(state["streamer_url"], "PATCH", "/api/v1/zones/brvt", {"quiet_hours": ""},
         token=state["token"])
    time.sleep(1.0)  # speakers complete their handshakes
    return proc, state


def stop_up(proc: subprocess.Popen[str], var: Path, state: dict) -> None:
    """Ctrl-C, as an operator would; every child must be gone and the state file removed."""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    assert not (var / "loa-up.json").exists()
    for spk in state["speakers"]:
        try:
            os.kill(spk["pid"], 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"speaker {spk['id']} outlived loa up")
