"""Shared fixtures: free ports, an in-process streamer, audio analysis helpers."""

from __future__ import annotations

import socket

import numpy as np
import pytest


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_hz(x: np.ndarray, rate_hz: int = 48_000) -> float:
    """Frequency of the strongest FFT bin (Hann window)."""
    x = np.asarray(x, dtype=np.float64)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate_hz / len(x))


def rms_dbfs(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(20 * np.log10(np.sqrt(np.mean(x * x)) + 1e-12))


@pytest.fixture
async def streamer(tmp_path):
    from streamer.app import Streamer, StreamerConfig

    cfg = StreamerConfig(media_host="127.0.0.1", media_port=0, http_host="127.0.0.1",
                         http_port=0, var_dir=str(tmp_path / "var"))
    s = Streamer(cfg)
    await s.start()
    yield s
    await s.close()


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free port, AOF on, data in the test's tmp dir."""
    from streamer.control.services import RedisServer

    srv = RedisServer(tmp_path / "redis")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def redis_url(redis_server):
    return redis_server.url
