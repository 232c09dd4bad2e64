"""Relay fan-out: delivered packets/s, loss, and the relay's CPU per packet vs a raw sender.

One channel is published at real time (a 100-byte RTP packet every 20 ms, sequence numbers
incrementing) by an in-process upstream (a ``FanoutEndpoint``, as the streamer has) to a real
``relay.main`` subprocess. ``--subscribers`` receivers live in a separate receiver process: one
UDP socket each, each doing the real subscribe handshake with the relay, all on one epoll
selector, counting packets and sequence gaps per subscriber.

The baseline, in the same run and to the same receiver sockets: a minimal raw Python sender
process (a ``socket.sendto`` loop over the N addresses, same packet, same 20 ms pace). Both
senders' CPU is read from ``/proc/PID/stat`` (utime + stime) over a window of ``--seconds``.

How to read the figures: "delivered" is what the receivers got; "loss" is sequence gaps ÷
(received + gaps), over all subscribers; "CPU µs per delivered packet" is the sender's CPU in
the window ÷ packets delivered in it, and the headline is relay ÷ raw. The relay must also
receive from upstream, answer keepalives and run its HTTP server, so a ratio near 1 means the
relay's fan-out path costs no more than the cheapest possible Python loop; the absolute µs
depend on the shared 2-core machine and are not comparable between runs. Traffic only goes to
127.0.0.1, every process is bounded in time and stopped at the end.

    python -m loadtest.bench_relay [--subscribers 1000] [--seconds 10] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import select
import selectors
import signal
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from relay.fanout import FanoutEndpoint
from streamer.rtp.packet import RtpPacket, ssrc_for
from streamer.rtp.subscribe import ClientState, SubscribeClient, is_control

from ._report import ROOT, machine, process_cpu_s, table, today, write_section

CHANNEL = "bench-relay-01"
PTIME_S = 0.020
PAYLOAD = bytes(range(68))  # + 32-byte Loa RTP header = 100 bytes, a 32 kb/s Opus frame
WARMUP_S = 1.0
HANDSHAKE_BATCH = 100  # handshakes in flight at once, so the relay's socket buffer keeps up
HANDSHAKE_TIMEOUT_S = 30.0
CHILD_LIFETIME_S = 300.0  # any child process exits on its own after this, whatever happens
TICK_S = 0.2


def _packet(seq: int) -> bytes:
    return RtpPacket(ssrc_for(CHANNEL), seq & 0xFFFF, (seq * 960) & 0xFFFF_FFFF, PAYLOAD).build()


# --------------------------------------------------------------------------- receiver process


class _Commands:
    """Line-oriented commands on stdin, read without blocking the selector."""

    def __init__(self) -> None:
        self._buf = b""

    def read(self) -> list[str] | None:
        chunk = os.read(0, 4096)
        if not chunk:
            return None  # parent gone
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        return [line.decode().strip() for line in lines]


def run_receiver(n: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        socks.append(s)
    sel.register(0, selectors.EVENT_READ, -1)
    commands = _Commands()
    received, gaps, last = [0] * n, [0] * n, [-1] * n
    clients: list[SubscribeClient] = []
    started = 0
    handshake_since = 0.0
    handshaking = False
    end = time.monotonic() + CHILD_LIFETIME_S

    def out(obj: object) -> None:
        print(json.dumps(obj), flush=True)

    def send(i: int, msgs: list[tuple[bytes, tuple[str, int]]]) -> None:
        for data, addr in msgs:
            socks[i].sendto(data, addr)

    out({"ports": [s.getsockname()[1] for s in socks]})
    next_tick = time.monotonic()
    while True:
        now = time.monotonic()
        if now > end:
            return 1
        for key, _ in sel.select(TICK_S):
            i = key.data
            if i < 0:
                lines = commands.read()
                if lines is None:
                    return 0
                for line in lines:
                    cmd, *args = line.split()
                    if cmd == "subscribe":
                        relay = (args[0], int(args[1]))
                        clients = [SubscribeClient(f"bench-speaker-{j}", CHANNEL, [relay])
                                   for j in range(n)]
                        started, handshaking, handshake_since = 0, True, now
                    elif cmd == "reset":
                        received, gaps, last = [0] * n, [0] * n, [-1] * n
                        out({"reset": True})
                    elif cmd == "report":
                        out({"received": sum(received), "gaps": sum(gaps),
                             "min": min(received), "max": max(received),
                             "silent": received.count(0),
                             "with_loss": sum(1 for g in gaps if g)})
                    elif cmd == "unsubscribe":
                        for j in range(started):
                            if clients[j].state is ClientState.SUBSCRIBED:
                                send(j, clients[j].close())
                        clients, started = [], 0
                        out({"unsubscribed": True})
                    elif cmd == "quit":
                        return 0
                continue
            sock = socks[i]
            while True:
                try:
                    data, addr = sock.recvfrom(2048)
                except BlockingIOError:
                    break
                if is_control(data):
                    if i < started:
                        send(i, clients[i].handle(data, addr, now))
                    continue
                if len(data) < 12 or data[1] & 0x7F != 111:
                    continue  # not Opus RTP (e.g. an RTCP report)
                seq = data[2] << 8 | data[3]
                prev = last[i]
                if prev >= 0:
                    d = (seq - prev) & 0xFFFF
                    if d == 0 or d >= 0x8000:
                        continue  # duplicate or late: neither counted nor a new high
                    gaps[i] += d - 1
                last[i] = seq
                received[i] += 1
                if i < started:
                    clients[i].on_media(now)
        now = time.monotonic()
        if handshaking:
            done = sum(1 for c in clients[:started] if c.state is ClientState.SUBSCRIBED)
            while started < n and started - done < HANDSHAKE_BATCH:
                send(started, clients[started].start(now))
                started += 1
            if done == n or now - handshake_since > HANDSHAKE_TIMEOUT_S:
                handshaking = False
                out({"subscribed": done, "seconds": round(now - handshake_since, 2)})
        if now >= next_tick:
            next_tick = now + TICK_S
            for j in range(started):
                send(j, clients[j].tick(now))


# --------------------------------------------------------------------------- raw sender process


def run_raw() -> int:
    """The baseline: the cheapest Python sender, a sendto loop at the same pace."""
    ports = json.loads(sys.stdin.readline())["ports"]
    dests = [("127.0.0.1", int(p)) for p in ports]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pkt = bytearray(_packet(0))
    print(json.dumps({"ready": True}), flush=True)
    seq = 0
    deadline = time.monotonic()
    end = deadline + CHILD_LIFETIME_S
    while deadline < end:
        if select.select([0], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break  # "stop" or EOF from the parent
        struct.pack_into("!HI", pkt, 2, seq & 0xFFFF, (seq * 960) & 0xFFFF_FFFF)
        data = bytes(pkt)
        for d in dests:
            try:
                sock.sendto(data, d)
            except OSError:
                pass
        seq += 1
        deadline += PTIME_S
    return 0


# --------------------------------------------------------------------------- the parent


class Upstream:
    """Stands in for the streamer: one channel, one 100-byte packet every 20 ms."""

    def __init__(self) -> None:
        self.fanout = FanoutEndpoint(
            channel_ssrc=lambda ch: ssrc_for(ch) if ch == CHANNEL else None,
            registry=CollectorRegistry(), process="bench", ptime_ms=20)
        self.addr = ("", 0)
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.addr = await self.fanout.start("127.0.0.1", 0)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        deadline = time.monotonic()
        while True:
            self.fanout.publish(CHANNEL, _packet(self.sent))
            self.sent += 1
            deadline += PTIME_S
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.fanout.close()


class Child:
    """A subprocess spoken to in JSON lines; always killed in the end."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc, self.name = proc, name

    @classmethod
    async def spawn(cls, name: str, *args: str, stderr: object = None) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=stderr)  # type: ignore[arg-type]
        return cls(proc, name)

    async def line(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise RuntimeError(f"{self.name} exited ({await self.proc.wait()})")
        return dict(json.loads(raw))

    async def ask(self, command: str, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.line(timeout)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.returncode is not None:
            return
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.send_signal(sig)
            await asyncio.wait_for(self.proc.wait(), 5)
        except (TimeoutError, ProcessLookupError):
            self.proc.kill()
            await self.proc.wait()


@dataclass
class Window:
    seconds: float
    cpu_s: float
    received: int
    gaps: int
    silent: int
    with_loss: int
    drops: dict[str, int]  # kernel receive-buffer drops in the window, by socket group

    @property
    def pps(self) -> float:
        return self.received / self.seconds

    @property
    def loss(self) -> float:
        return self.gaps / max(1, self.received + self.gaps)

    @property
    def cpu_us_per_packet(self) -> float:
        return self.cpu_s / max(1, self.received) * 1e6


def udp_drops(ports: frozenset[int]) -> int:
    """Datagrams the kernel dropped (receive buffer full) on our UDP sockets at ``ports``."""
    total = 0
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].rsplit(":", 1)[1], 16) in ports:
            total += int(f[-1])
    return total


async def measure(receiver: Child, sender_pid: int, seconds: float,
                  watch: dict[str, frozenset[int]]) -> Window:
    drops0 = {name: udp_drops(ports) for name, ports in watch.items()}
    await receiver.ask("reset")
    t0, cpu0 = time.monotonic(), process_cpu_s(sender_pid)
    await asyncio.sleep(seconds)
    cpu1 = process_cpu_s(sender_pid)
    r = await receiver.ask("report")
    t1 = time.monotonic()
    drops = {name: udp_drops(ports) - drops0[name] for name, ports in watch.items()}
    return Window(t1 - t0, cpu1 - cpu0, r["received"], r["gaps"], r["silent"], r["with_loss"],
                  drops)


async def relay_counter(http: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(http + "/metrics") as r:
        text = await r.text()
    return sum(float(m.group(1)) for m in
               re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


@dataclass
class Result:
    raw: Window
    relay: Window
    subscribed: int
    handshake_s: float
    relay_sent: float  # loa_fanout_packets_out_total during the relay window
    send_errors: float  # loa_fanout_send_errors_total since the relay started
    expired: float  # loa_fanout_dropped_subscribers_total since the relay started


async def bench(n: int, seconds: float) -> Result:
    children: list[Child] = []
    upstream: Upstream | None = None
    log = tempfile.NamedTemporaryFile(prefix="bench-relay-", suffix=".log", delete=False)
    try:
        receiver = await Child.spawn("receiver", "-m", "loadtest.bench_relay", "--role",
                                     "receiver", "--subscribers", str(n))
        children.append(receiver)
        ports = (await receiver.line(30))["ports"]
        receivers = frozenset(ports)

        # Baseline: the raw sender to the same sockets, no handshake needed.
        raw = await Child.spawn("raw sender", "-m", "loadtest.bench_relay", "--role", "raw")
        children.append(raw)
        assert raw.proc.stdin is not None
        raw.proc.stdin.write(json.dumps({"ports": ports}).encode() + b"\n")
        await raw.line()
        await asyncio.sleep(WARMUP_S)
        raw_w = await measure(receiver, raw.proc.pid, seconds, {"receivers": receivers})
        await raw.stop()

        # The relay, fed by the in-process upstream, with every receiver subscribed.
        upstream = Upstream()
        await upstream.start()
        relay = await Child.spawn(
            "relay", "-m", "relay.main", "--id", "bench-relay", "--media", "127.0.0.1:0",
            "--http", "127.0.0.1:0", "--upstream", f"127.0.0.1:{upstream.addr[1]}",
            stderr=log)
        children.append(relay)
        info = await relay.line(15)
        host, port = str(info["media"]).rsplit(":", 1)
        sub = await receiver.ask(f"subscribe {host} {port}", HANDSHAKE_TIMEOUT_S + 5)
        await asyncio.sleep(WARMUP_S)
        out0 = await relay_counter(str(info["http"]), "loa_fanout_packets_out_total")
        watch = {"receivers": receivers, "relay": frozenset({int(port)})}
        relay_w = await measure(receiver, relay.proc.pid, seconds, watch)
        out1 = await relay_counter(str(info["http"]), "loa_fanout_packets_out_total")
        send_errors = await relay_counter(str(info["http"]), "loa_fanout_send_errors_total")
        expired = await relay_counter(str(info["http"]), "loa_fanout_dropped_subscribers_total")
        await receiver.ask("unsubscribe")
        return Result(raw_w, relay_w, sub["subscribed"], sub["seconds"], out1 - out0,
                      send_errors, expired)
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


def render(res: Result, n: int, seconds: float, cmd: str) -> str:
    raw, relay = res.raw, res.relay
    expected_pps = n / PTIME_S
    rows = []
    for name, w in (("raw Python sendto loop (baseline)", raw), ("relay (`relay.main`)", relay)):
        rows.append([name, f"{w.pps:,.0f}", f"{w.pps / expected_pps:.3f}", f"{w.loss:.4f}",
                     f"{w.silent}", f"{w.cpu_s / w.seconds:.2f}", f"{w.cpu_us_per_packet:.2f}",
                     f"{w.cpu_us_per_packet / raw.cpu_us_per_packet:.2f}"])
    ratio = relay.cpu_us_per_packet / raw.cpu_us_per_packet
    return f"""## Relay (`loadtest/bench_relay.py`)

{today()}, {machine()}; 1 channel at 50 packets/s of 100 bytes, {n} subscribers
({res.subscribed} handshaken in {res.handshake_s} s), {seconds:g} s window per sender.

```
{cmd}
```

**Relay CPU per delivered packet: {ratio:.2f}× the raw Python sender's.**

{table(["sender", "delivered packets/s", "of expected", "loss (seq gaps)",
        "silent subscribers", "sender CPU (cores)", "CPU µs per delivered packet",
        "ratio to raw"], rows)}

Expected: {expected_pps:,.0f} packets/s. In the relay window the relay counted
{res.relay_sent:,.0f} packets out (`loa_fanout_packets_out_total`); since it started,
{res.send_errors:.0f} send errors and {res.expired:.0f} subscribers expired for silence.
Kernel receive-buffer drops in the window: at the receivers' sockets
{raw.drops["receivers"]} (raw) and {relay.drops["receivers"]} (relay); at the relay's media
socket, which receives the subscribers' handshakes and keepalives, {relay.drops["relay"]}.

What limits it: one `sendto` system call per packet per subscriber from one Python thread
(asyncio's datagram transport in the relay); no `sendmmsg` batching yet. The receivers share
the same 2 cores in one Python process, so loss here can be the receiver falling behind, not
the relay; the "packets out" counter and the per-socket drops tell which side dropped. The
simulated subscribers tick together, so their keepalives reach the relay in bursts of
hundreds; drops at the relay's socket mean its receive buffer cannot absorb such a burst
(as after a relay restart, when every speaker handshakes at once). A subscriber whose
keepalives are all lost for `expire_s` (15 s) is expired and stops receiving until it notices
(3 s) and handshakes again: with a window longer than 15 s that shows as loss."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0, help="measurement window per sender")
    ap.add_argument("--write", action="store_true", help="rewrite its docs/BENCHMARKS.md section")
    ap.add_argument("--role", choices=("main", "receiver", "raw"), default="main",
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role == "receiver":
        return run_receiver(args.subscribers)
    if args.role == "raw":
        return run_raw()
    if not 1 <= args.subscribers <= 5000 or not 1 <= args.seconds <= 60:
        ap.error("--subscribers must be 1..5000 and --seconds 1..60")
    cmd = ".venv/bin/python -m loadtest.bench_relay " + " ".join(
        sys.argv[1:] if argv is None else argv)
    res = asyncio.run(bench(args.subscribers, args.seconds))
    text = render(res, args.subscribers, args.seconds, cmd.strip())
    print(text)
    if args.write:
        write_section("bench_relay", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
