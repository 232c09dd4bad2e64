"""Idle traffic: what a speaker's 4G link carries, and what its relay spends, on a quiet channel.

One run, one real ``relay.main`` subprocess, ``--subscribers`` receivers in a receiver process
(one UDP socket each, the real subscribe handshake with a token of its own, and the clock
sync a settled speaker does: a TIME every 5 s), fed by the streamer's own media pipeline in
this process (``Mixer`` → ``SigningSink`` → ``FanoutEndpoint``, ticked every 20 ms). Three
windows of ``--seconds`` each, in this order:

1. **silence streamed**: the mixer with ``idle_heartbeat_ms = 0``, Opus silence every frame, as
   Loa did before quiet channels (the baseline of this run);
2. **quiet**: ``idle_heartbeat_ms = 500`` (the default): the channel's heartbeat only;
3. **bulletin**: a 1 kHz tone on air, for what a speaker pays while something plays.

Per window: bytes per second per subscriber on the relay→speaker link, counting every
datagram the receivers got (media, RTCP, handshake and TIME answers) with 28 bytes of IPv4
and UDP header each; datagrams per second; the relay's CPU (``/proc/PID/stat`` utime + stime)
in cores, and per 5,000 subscribers. Ratios are against window 1 of the same run: the
machine is shared and noisy.

    python -m loadtest.bench_idle [--subscribers 5000] [--seconds 20] [--write]

``--mixer`` measures the streamer's side instead: the median time of one ``Mixer.tick`` of
1,000 channels, quiet channels against streaming silence, with nothing on air and with one
broadcast on half of them (in process, no sockets; ``--write`` puts it in its own section).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from common.secretfile import write_private
from fanout.endpoint import FanoutEndpoint
from fanout.mmsg import RecvBatch
from streamer.mixer.clock import FrameClock
from streamer.mixer.mixer import Mixer
from streamer.mixer.program import Item
from streamer.mixer.sources.tone import Tone
from streamer.signing import SigningSink
from wire.auth import SigningKey
from wire.packet import OPUS_PT, ssrc_for
from wire.priority import Priority
from wire.rtcp import PT_SR, report_ts
from wire.subscribe import MAGIC, ClientState, SubscribeClient

from ._report import machine, process_cpu_s, table, today, write_section
from .bench_relay import Child, relay_counter, start_handshakes
from .simspeakers import raise_fd_limit
from .tokens import issue_all, load_key

CHANNEL = "bench-idle-01"
IP_UDP = 28  # bytes of IPv4 + UDP header per datagram
WARMUP_S = 3.0
HANDSHAKE_TIMEOUT_S = 60.0
CHILD_LIFETIME_S = 900.0
TICK_S = 0.1  # the receivers' handshake ticks: keepalives, liveness
TIME_EVERY_S = 5.0  # a settled speaker's clock sync (device/streamer_time.py)
ROUND_S = 0.05
RECEIVE_BUFFER = 1 << 18
MAX_DATAGRAM = 2048
GOAL_BYTES_S = 200.0
SENT = "loa_fanout_packets_out_total"


# --------------------------------------------------------------------------- receiver process


class Receivers:
    """N sockets and their subscriptions; counts bytes and datagrams, answers the handshake,
    keeps each subscription alive the way a speaker does (packets, heartbeats, TIME)."""

    def __init__(self, n: int, names: list[str], tokens: list[bytes]) -> None:
        raise_fd_limit(n + 64)
        self.socks: list[socket.socket] = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            self.socks.append(s)
        self.fds = [s.fileno() for s in self.socks]
        self.names, self.tokens = names, tokens
        self.clients: list[SubscribeClient] = []
        self.started = 0
        self.octets = self.datagrams = 0
        self.batch = RecvBatch(size=64, max_len=MAX_DATAGRAM)
        self.next_time = [0.0] * n

    def subscribe(self, relay: tuple[str, int], now: float) -> None:
        self.clients = [SubscribeClient(name, CHANNEL, [relay], token=tok)
                        for name, tok in zip(self.names, self.tokens, strict=True)]
        # settled speakers ask the time every 5 s, spread over the interval
        self.next_time = [now + TIME_EVERY_S * i / len(self.clients)
                          for i in range(len(self.clients))]

    def send(self, i: int, msgs: list[tuple[bytes, tuple[str, int]]]) -> None:
        for data, addr in msgs:
            self.socks[i].sendto(data, addr)

    def read_all(self, now: float) -> None:
        batch, data, magic0 = self.batch, self.batch.data, MAGIC[0]
        for i, fd in enumerate(self.fds):
            while k := batch.recv(fd):
                self.datagrams += k
                self.octets += int(batch.lengths[:k].sum()) + IP_UDP * k
                if i >= self.started:
                    continue
                client = self.clients[i]
                kinds = data[:k, 1]
                media = kinds & 0x7F == OPUS_PT
                if media.any():  # the newest of the round says enough for liveness
                    last = int(media.nonzero()[0][-1])
                    client.heard_packet(now, int.from_bytes(data[last, 4:8].tobytes(), "big"))
                    client.on_media(now)
                else:
                    client.heard(now)  # signatures only, say
                # only handshake messages and sender reports need Python, one at a time
                for j in ((data[:k, 0] == magic0) | (kinds == PT_SR)).nonzero()[0]:
                    raw = bytes(data[j, :batch.lengths[j]])
                    if raw[0] == magic0:
                        self.send(i, client.handle(raw, client.upstream, now))
                    elif (ts := report_ts(raw)) is not None:
                        client.heard_report(now, ts)
                if k < batch.size:
                    break

    def tick(self, now: float) -> None:
        for j in range(self.started):
            c = self.clients[j]
            self.send(j, c.tick(now))
            if c.state is ClientState.SUBSCRIBED and now >= self.next_time[j]:
                self.next_time[j] = now + TIME_EVERY_S
                self.send(j, c.ask_time(time.monotonic_ns()))


def run_receiver(n: int, signing_key: str) -> int:
    names = [f"idle-speaker-{j}" for j in range(n)]
    rx = Receivers(n, names, issue_all(load_key(signing_key), names, [CHANNEL] * n))
    end = time.monotonic() + CHILD_LIFETIME_S
    handshaking, since = False, 0.0
    buf = b""

    def out(obj: object) -> None:
        print(json.dumps(obj), flush=True)

    out({"ports": [s.getsockname()[1] for s in rx.socks]})
    next_tick = time.monotonic()
    while time.monotonic() < end:
        if select.select([0], [], [], ROUND_S)[0]:
            chunk = os.read(0, 4096)
            if not chunk:
                return 0
            *lines, buf = (buf + chunk).split(b"\n")
            for line in lines:
                cmd, *args = line.decode().split()
                if cmd == "subscribe":
                    rx.subscribe((args[0], int(args[1])), time.monotonic())
                    handshaking, since = True, time.monotonic()
                elif cmd == "count":
                    rx.read_all(time.monotonic())
                    done = sum(1 for c in rx.clients if c.state is ClientState.SUBSCRIBED)
                    out({"octets": rx.octets, "datagrams": rx.datagrams, "subscribed": done,
                         "failovers": sum(c.failovers for c in rx.clients)})
                elif cmd == "quit":
                    return 0
        now = time.monotonic()
        rx.read_all(now)
        if handshaking:
            done = start_handshakes(rx, n, now)
            if done == n or now - since > HANDSHAKE_TIMEOUT_S:
                handshaking = False
                out({"subscribed": done, "seconds": round(now - since, 2)})
        if now >= next_tick:
            next_tick = now + TICK_S
            rx.tick(now)
    return 1


# --------------------------------------------------------------------------- the parent


class Upstream:
    """The streamer's media pipeline for one channel, ticked in real time."""

    def __init__(self, key: SigningKey) -> None:
        registry = CollectorRegistry()
        self.fanout = FanoutEndpoint(
            channel_ssrc=lambda ch: ssrc_for(ch) if ch == CHANNEL else None,
            registry=registry, process="bench", ptime_ms=20)
        self.sink = SigningSink(self.fanout, key, registry)
        self.mixer: Mixer | None = None
        self.addr = ("", 0)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.addr = await self.fanout.start("127.0.0.1", 0)
        clock = FrameClock(20, start_mono=loop.time(), start_wall=time.time())
        self.mixer = Mixer([CHANNEL], clock, self.sink, wall=time.time, workers=1,
                           idle_heartbeat_ms=None)
        self._task = asyncio.create_task(self._run(clock, self.mixer))

    async def _run(self, clock: FrameClock, mixer: Mixer) -> None:
        loop = asyncio.get_running_loop()
        while True:
            for k in clock.due(loop.time(), 0.0):
                mixer.tick(k)
                self.sink.sign_pending()
            await asyncio.sleep(max(0.0, clock.deadline() - loop.time()))

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.mixer is not None:
            self.mixer.close()
        self.fanout.close()


@dataclass
class Window:
    name: str
    seconds: float
    octets: int
    datagrams: int
    relay_cpu_s: float
    n: int
    relay_sent: float  # datagrams the relay sent (loa_fanout_packets_out_total)

    @property
    def bytes_s(self) -> float:
        """Per subscriber."""
        return self.octets / self.seconds / self.n

    @property
    def datagrams_s(self) -> float:
        return self.datagrams / self.seconds / self.n

    @property
    def sent_s(self) -> float:
        """Datagrams the relay sent per second per subscriber: more than the receivers got
        means they fell behind (a loaded machine), and the bytes are an underestimate."""
        return self.relay_sent / self.seconds / self.n

    @property
    def cores(self) -> float:
        return self.relay_cpu_s / self.seconds


def rx_queued(ports: frozenset[int]) -> int:
    """Bytes waiting in the receive queues of our UDP sockets at ``ports``."""
    total = 0
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].rsplit(":", 1)[1], 16) in ports:
            total += int(f[4].split(":")[1], 16)
    return total


async def drained(ports: frozenset[int], timeout_s: float = 30.0) -> None:
    """Wait until the receivers have read what the last window left queued: a backlog read
    in the next window would be counted in it."""
    deadline = time.monotonic() + timeout_s
    while rx_queued(ports) > 64 * len(ports) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


async def window(name: str, receiver: Child, relay_pid: int, relay_http: str, seconds: float,
                 n: int, ports: frozenset[int]) -> Window:
    await drained(ports)
    c0 = await receiver.ask("count")
    sent0 = await relay_counter(relay_http, SENT)
    t0, cpu0 = time.monotonic(), process_cpu_s(relay_pid)
    await asyncio.sleep(seconds)
    cpu1 = process_cpu_s(relay_pid)
    sent1 = await relay_counter(relay_http, SENT)
    c1 = await receiver.ask("count")
    t1 = time.monotonic()
    if c1["subscribed"] != n or c1["failovers"] != c0["failovers"]:
        raise RuntimeError(f"{name}: {c1['subscribed']} of {n} subscribed, "
                           f"{c1['failovers'] - c0['failovers']} failovers in the window")
    return Window(name, t1 - t0, c1["octets"] - c0["octets"],
                  c1["datagrams"] - c0["datagrams"], cpu1 - cpu0, n, sent1 - sent0)


async def bench(n: int, seconds: float) -> tuple[list[Window], float]:
    children: list[Child] = []
    upstream: Upstream | None = None
    log = tempfile.NamedTemporaryFile(prefix="bench-idle-", suffix=".log", delete=False)
    key = SigningKey.generate()
    key_file = Path(log.name).with_suffix(".key.pem")
    write_private(key_file, key.to_pem())
    try:
        receiver = await Child.spawn("receiver", "-m", "loadtest.bench_idle", "--role",
                                     "receiver", "--subscribers", str(n),
                                     "--signing-key", str(key_file))
        children.append(receiver)
        ports = frozenset((await receiver.line(60))["ports"])
        upstream = Upstream(key)
        await upstream.start()
        relay = await Child.spawn(
            "relay", "-m", "relay.main", "--id", "bench-idle", "--media", "127.0.0.1:0",
            "--http", "127.0.0.1:0", "--upstream", f"127.0.0.1:{upstream.addr[1]}",
            "--stream-key", key.public_text, stderr=log)
        children.append(relay)
        info = await relay.line(15)
        host, port = str(info["media"]).rsplit(":", 1)
        started = time.monotonic()
        sub = await receiver.ask(f"subscribe {host} {port}", HANDSHAKE_TIMEOUT_S + 5)
        if sub["subscribed"] != n:
            raise RuntimeError(f"only {sub['subscribed']} of {n} subscribed")
        # settle: the relay's own clock sync, every subscriber's first TIME
        await asyncio.sleep(max(WARMUP_S, TIME_EVERY_S - (time.monotonic() - started)))
        mixer = upstream.mixer
        assert mixer is not None
        pid, http = relay.proc.pid, str(info["http"])
        out = [await window("silence streamed (before)", receiver, pid, http, seconds, n, ports)]
        mixer.set_idle_heartbeat(500)
        await asyncio.sleep(WARMUP_S)
        out.append(await window("quiet (heartbeat)", receiver, pid, http, seconds, n, ports))
        mixer.start(Item(1, Priority.NORMAL, Tone(1000, None), 1), [CHANNEL])
        await asyncio.sleep(WARMUP_S)
        out.append(await window("bulletin on air", receiver, pid, http, seconds, n, ports))
        return out, sub["seconds"]
    except Exception:
        log.flush()
        sys.stderr.write(Path(log.name).read_text()[-2000:])
        raise
    finally:
        if upstream is not None:
            upstream.close()
        for child in reversed(children):
            await child.stop()
        log.close()
        os.unlink(log.name)
        key_file.unlink()


def render(windows: list[Window], n: int, seconds: float, cmd: str) -> str:
    base = windows[0]
    rows = [(w.name, f"{w.bytes_s:,.0f}", f"{w.datagrams_s:.1f}", f"{w.sent_s:.1f}",
             f"{w.bytes_s * 86_400 / 1e6:,.1f}", f"{w.cores:.3f}",
             f"{w.cores * 5000 / n:.3f}", f"{w.bytes_s / base.bytes_s:.3f}",
             f"{w.cores / max(1e-9, base.cores):.2f}") for w in windows]
    quiet = windows[1]
    verdict = "met" if quiet.bytes_s <= GOAL_BYTES_S else "NOT met"
    return "\n".join([
        "## Idle traffic (`loadtest/bench_idle.py`, issue 13)",
        "",
        f"{today()}, {machine()}.",
        "",
        "```",
        cmd,
        "```",
        "",
        f"{n:,} subscribers of one channel on one relay (the real subscribe handshake, a TIME "
        f"every 5 s as a settled speaker does), fed by the streamer's own mixer, signing and "
        f"fan-out, {seconds:g} s windows. Bytes per subscriber on the relay→speaker link: "
        "every datagram (media, RTCP, handshake, TIME answers) with its 28 bytes of IPv4/UDP "
        "header. The relay's CPU over each window. Ratios are against the first window of "
        "the same run (streaming Opus silence, as before quiet channels; "
        "`docs/protocol.md`, \"Quiet channels\").",
        "",
        table(("window", "bytes/s per speaker", "datagrams/s per speaker",
               "relay sent datagrams/s per speaker", "MB per day",
               "relay CPU (cores)", "relay CPU per 5,000 (cores)", "bytes ÷ streamed",
               "relay CPU ÷ streamed"), rows),
        "",
        f"Goal ≤ {GOAL_BYTES_S:.0f} bytes/s per idle speaker: **{verdict}** "
        f"({quiet.bytes_s:,.0f} bytes/s, {quiet.bytes_s * 86_400 * 30 / 1e6:,.1f} MB a month "
        f"against {base.bytes_s * 86_400 * 30 / 1e9:,.1f} GB streaming silence).",
    ])


class _Discard:
    def publish_block(self, channels: object, block: object) -> None:
        pass

    def pause(self, channels: object) -> None:
        pass


def tick_us(heartbeat_ms: int | None, on_air: bool, channels: int = 1000,
            frames: int = 1000) -> float:
    """Median µs of one ``Mixer.tick`` of ``channels`` channels (one encoder thread)."""
    chans = [f"p.d{i // 20}.c{i}" for i in range(channels)]
    m = Mixer(chans, FrameClock(20, start_mono=0.0, start_wall=0.0), _Discard(),
              wall=time.time, workers=1, idle_heartbeat_ms=heartbeat_ms)
    if on_air:
        m.start(Item(1, Priority.NORMAL, Tone(1000, None), 1), chans[:channels // 2])
    for k in range(50):  # past the tail: the quiet ones are quiet
        m.tick(k)
    spent = []
    for k in range(50, 50 + frames):
        t0 = time.perf_counter()
        m.tick(k)
        spent.append(time.perf_counter() - t0)
    m.close()
    return statistics.median(spent) * 1e6


def render_mixer(cmd: str) -> str:
    rows = []
    for on_air in (False, True):
        streamed, quiet = tick_us(None, on_air), tick_us(500, on_air)
        rows.append(("half on air" if on_air else "nothing on air", f"{streamed:.0f}",
                     f"{quiet:.0f}", f"{quiet / streamed:.2f}"))
    return "\n".join([
        "### The mixer's side of quiet channels",
        "",
        f"{today()}, {machine()}. `{cmd}`: the median time of one `Mixer.tick` of 1,000 "
        "channels (1,000 frames, one encoder thread), streaming silence against quiet channels "
        "(heartbeats, no encode for a programme whose channels are all quiet).",
        "",
        table(("on air", "streamed silence (µs)", "quiet channels (µs)", "quiet ÷ streamed"),
              rows),
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=20.0, help="each window")
    ap.add_argument("--write", action="store_true", help="rewrite its docs/BENCHMARKS.md section")
    ap.add_argument("--mixer", action="store_true",
                    help="the mixer's tick with and without quiet channels, in process")
    ap.add_argument("--role", choices=("main", "receiver"), default="main",
                    help=argparse.SUPPRESS)
    ap.add_argument("--signing-key", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role == "receiver":
        return run_receiver(args.subscribers, args.signing_key)
    if not 1 <= args.subscribers <= 10_000 or not 5 <= args.seconds <= 300:
        ap.error("--subscribers must be 1..10000 and --seconds 5..300")
    cmd = ".venv/bin/python -m loadtest.bench_idle " + " ".join(
        sys.argv[1:] if argv is None else argv)
    if args.mixer:
        text = render_mixer(cmd.strip())
        print(text)
        if args.write:
            write_section("bench_idle_mixer", text)
        return 0
    windows, _ = asyncio.run(bench(args.subscribers, args.seconds))
    text = render(windows, args.subscribers, args.seconds, cmd.strip())
    print(text)
    if args.write:
        write_section("bench_idle", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
