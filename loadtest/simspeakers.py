"""Simulated IP speakers: thousands of real subscribers in one process, timing emergencies.

Each simulated speaker owns one UDP socket and does the real subscribe handshake
(``SubscribeClient``) with its relay, presenting a subscription token of its own (signed once at
start with the streamer's key, ``loadtest/tokens.py``), so the relay sees N distinct
subscribers, each with its own address, cookie, keepalives and destination-table entry, as it
would see a fleet of boxes.
They share one asyncio loop, but the loop watches a single descriptor: every speaker socket
sits in one epoll set, and a burst of 5,000 ready sockets is drained in one callback, without
5,000 transports and protocol objects.

What a speaker records is its first packet at priority 3 (emergency) after :meth:`arm`, and
the time the kernel received it (``SO_TIMESTAMPNS``, wall clock), not the moment this process
got round to reading it: with thousands of sockets on a busy core the figure is then the path
to the speaker, not the simulator's backlog. The rest of the stream (silence and programmes,
50 packets a second per speaker at 20 ms) is what a real speaker decodes and plays, on its own
CPU; here it would cost more than the relay under test, on the same two cores. So a socket
filter drops it in the kernel before it is queued: only handshake messages reach this process,
and, from :meth:`arm` until a speaker has its first emergency packet, emergency packets and
other senders' layouts, of which it reads the broadcast id and priority at their fixed offsets
in Loa's 32-byte header (the full parser only for other layouts). The relay cannot tell (UDP
has no receiver feedback). Because the silence is hidden, a simulated speaker never fails over
for silence; it still handshakes again when its relay rejects a keepalive. The simulator
measures; it does not play, decode or authenticate media.

``python -m loadtest.simspeakers`` runs a fleet in a child process driven by JSON lines on
stdin, at a lower scheduling priority (``nice`` +10) so that on a shared machine it never
takes a core from the streamer or the relays it measures (its own delay does not count, the
kernel stamped the arrivals); :class:`SimSpeakersProcess` is the parent's handle and
:class:`TimeToAir` turns arrivals into p50/p99/max.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ctypes
import json
import math
import os
import resource
import select
import socket
import struct
import sys
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import ConfigError, parse_hostport
from wire.auth import SigningKey
from wire.packet import MalformedPacket
from wire.priority import Priority
from wire.subscribe import MAGIC, MAX_NAME, Addr, ClientState, SubscribeClient

from .children import ask, quit_child, read_line
from .header import capture_of, payload_of, peek
from .tokens import issue_all, load_key

# Python's socket module exports neither: SO_TIMESTAMPNS (= SCM_TIMESTAMPNS) and
# SO_ATTACH_FILTER, on every Linux architecture with asm-generic socket numbers (x86-64, arm64).
SO_TIMESTAMPNS = 35
SO_ATTACH_FILTER = 26
_TIMESPEC = struct.Struct("@qq")
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
RECEIVE_BUFFER = 1 << 18
HANDSHAKE_BATCH = 200  # handshakes in flight at once, so the relay's socket buffer keeps up
TICK_S = 0.2
MAX_DATAGRAM = 2048
CHILD_LIFETIME_S = 900.0  # a child exits on its own after this, whatever its parent does
CHILD_NICE = 10


@dataclass(frozen=True, slots=True)
class Arrival:
    """One speaker's first emergency packet: kernel receive time and the capture time the
    streamer stamped in it (Unix s; NaN if it carried none), and its broadcast id."""

    wall: float
    broadcast_id: int
    capture: float = math.nan


# The socket filters, by hand because no library attaches one: classic BPF (linux/filter.h),
# run by the kernel on each datagram before it is queued. On a UDP socket its absolute offsets
# count from the UDP header, so the payload starts at 8. Loa's fixed layout is recognised as in
# ``header.fixed_layout``: 0x90, then 0xBEDE at 12, then the priority element's header at 30.
_UDP = 8
_LD_W, _LD_H, _LD_B = 0x20, 0x28, 0x30  # BPF_LD | BPF_W/H/B | BPF_ABS
_JEQ, _JGE, _JGT, _RET = 0x15, 0x35, 0x25, 0x06  # BPF_JMP | BPF_JEQ/JGE/JGT | BPF_K, BPF_RET
_KEEP, _DROP = (_RET, 0, 0, 0xFFFF), (_RET, 0, 0, 0)  # keep up to 64 KiB of it, or nothing
_HANDSHAKE = (  # (code, skip if true, skip if false, k)
    (_LD_W, 0, 0, _UDP),
    (_JEQ, 0, 1, int.from_bytes(MAGIC, "big")),
    _KEEP,
    _DROP,
)
_EMERGENCY = (
    (_LD_W, 0, 0, _UDP),
    (_JEQ, 11, 0, int.from_bytes(MAGIC, "big")),  # a handshake message: keep
    (_LD_B, 0, 0, _UDP + 1),
    (_JGE, 0, 1, 192),
    (_JGT, 0, 9, 223),  # second byte 192-223: RTCP, drop
    (_LD_B, 0, 0, _UDP),
    (_JEQ, 0, 6, 0x90),  # not Loa's layout: keep, for the parser
    (_LD_H, 0, 0, _UDP + 12),
    (_JEQ, 0, 4, 0xBEDE),
    (_LD_B, 0, 0, _UDP + 30),
    (_JEQ, 0, 2, 0x30),
    (_LD_B, 0, 0, _UDP + 31),
    (_JEQ, 0, 1, Priority.EMERGENCY),  # Loa media: keep only emergency
    _KEEP,
    _DROP,
)


class SocketFilter:
    """A classic BPF program ready for ``SO_ATTACH_FILTER`` (which replaces any earlier one)."""

    def __init__(self, program: tuple[tuple[int, int, int, int], ...]) -> None:
        self._code = ctypes.create_string_buffer(
            b"".join(struct.pack("HBBI", *i) for i in program))
        # struct sock_fprog {unsigned short len; struct sock_filter *filter;}
        self._fprog = struct.pack("HP", len(program), ctypes.addressof(self._code))

    def attach(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, self._fprog)


#: between measurements, and once a speaker has what it was armed for
ONLY_HANDSHAKES = SocketFilter(_HANDSHAKE)
#: from ``arm`` on: handshakes, emergency packets, and foreign layouts for the parser
EMERGENCIES = SocketFilter(_EMERGENCY)


def spread(n: int, channels: Sequence[str]) -> list[str]:
    """Speaker i listens to ``channels[i % len(channels)]``: an even spread over the leaves."""
    if not channels:
        raise ValueError("channels: at least one channel is needed")
    return [channels[i % len(channels)] for i in range(n)]


def _kernel_time(ancdata: list[tuple[int, int, bytes]]) -> float:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, ns = _TIMESPEC.unpack_from(data)
            return float(sec + ns * 1e-9)
    return time.time()  # not stamped: only if the option was refused, which __init__ checks


def raise_fd_limit(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            raise OSError(f"{n} sockets need RLIMIT_NOFILE {n}; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


class SimSpeakers:
    """N simulated speakers; speaker i listens to ``channels[i]`` through
    ``relays[i % len(relays)]``. With ``capture_packets`` each also keeps the payloads of the
    first packets of the emergency it saw (for checking what aired, not only when)."""

    def __init__(self, channels: Sequence[str], relays: Sequence[Addr], *,
                 capture_packets: int = 0, host: str = "127.0.0.1",
                 key: SigningKey | None = None) -> None:
        """``key``: signs each speaker's subscription token (None: they present none)."""
        if not relays:
            raise ValueError("relays: at least one relay is needed")
        for ch in set(channels):
            if not 0 < len(ch.encode()) <= MAX_NAME:
                raise ValueError(f"channels: {ch!r} is not a channel id (1-{MAX_NAME} bytes)")
        if capture_packets < 0:
            raise ValueError("capture_packets: must not be negative")
        n = len(channels)
        raise_fd_limit(n + 256)
        self.channels = list(channels)
        self.capture_packets = capture_packets
        names = [f"sim-speaker-{i}" for i in range(n)]
        self.clients = [SubscribeClient(name, ch, [relays[i % len(relays)]], token=tok,
                                        # it reads no media: never silent, never fails over
                                        media_timeout_s=math.inf, silence_s=math.inf,
                                        quiet_silence_s=math.inf)
                        for i, (name, ch, tok) in enumerate(
                            zip(names, channels, issue_all(key, names, channels), strict=True))]
        self.socks: list[socket.socket] = []
        self._epoll = select.epoll()
        self._by_fd: dict[int, int] = {}
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            ONLY_HANDSHAKES.attach(s)
            s.bind((host, 0))
            s.setblocking(False)
            self._epoll.register(s.fileno(), select.EPOLLIN)
            self._by_fd[s.fileno()] = i
        if self.socks and not self.socks[0].getsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS):
            raise OSError("the kernel refused SO_TIMESTAMPNS: arrival times would be wrong")
        self.ports = [s.getsockname()[1] for s in self.socks]
        self._buf = bytearray(MAX_DATAGRAM)
        self._bufs = [self._buf]
        self._watching = [False] * n
        self._ignore: frozenset[int] = frozenset()
        self.arrivals: list[Arrival | None] = [None] * n
        self.captured: list[list[bytes]] = [[] for _ in range(n)]
        self._started = 0
        self._acked = 0
        self._ticker: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, timeout_s: float = 60.0) -> int:
        """Handshake every speaker (``HANDSHAKE_BATCH`` at a time); returns how many are
        subscribed when all are, or when ``timeout_s`` has passed."""
        loop = asyncio.get_running_loop()
        loop.add_reader(self._epoll.fileno(), self._drain)
        self._ticker = asyncio.create_task(self._tick_loop())
        deadline = loop.time() + timeout_s
        while self.subscribed() < len(self.clients) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return self.subscribed()

    def subscribed(self) -> int:
        return sum(1 for c in self.clients if c.state is ClientState.SUBSCRIBED)

    def close(self) -> None:
        """BYE to the relays, then close every socket."""
        if self._ticker is not None:
            self._ticker.cancel()
            asyncio.get_running_loop().remove_reader(self._epoll.fileno())
        for i, c in enumerate(self.clients):
            if c.state is ClientState.SUBSCRIBED:
                self._send(i, c.close())
        for s in self.socks:
            s.close()
        self._epoll.close()

    # ------------------------------------------------------------------ measurement

    def arm(self, ignore: Collection[int] = ()) -> None:
        """Forget earlier arrivals; from now on record each speaker's first emergency packet
        whose broadcast id is not in ``ignore`` (earlier emergencies still fading out)."""
        n = len(self.clients)
        self._ignore = frozenset(ignore)
        self.arrivals = [None] * n
        self.captured = [[] for _ in range(n)]
        self._watching = [True] * n
        for s in self.socks:
            EMERGENCIES.attach(s)

    # ------------------------------------------------------------------ sockets

    def _drain(self) -> None:
        # One datagram per ready socket per pass: epoll is level-triggered, so a socket with
        # more waiting is reported again on the next pass, and no read ends in an exception.
        now = time.monotonic()
        socks, by_fd, buf = self.socks, self._by_fd, self._buf
        for fd, _ in self._epoll.poll(0, len(socks)):
            i = by_fd[fd]
            try:
                n, anc, _, addr = socks[i].recvmsg_into(self._bufs, _ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            if n >= 7 and buf.startswith(MAGIC):
                self._control(i, bytes(buf[:n]), addr, now)
            elif self._watching[i]:
                self._watch(i, n, anc)

    def _watch(self, i: int, n: int, anc: list[tuple[int, int, bytes]]) -> None:
        buf = self._buf
        bid, prio = peek(buf, n)
        arrival = self.arrivals[i]
        if arrival is None:
            if prio != Priority.EMERGENCY or bid in self._ignore:
                return
            self.arrivals[i] = Arrival(_kernel_time(anc), bid, capture_of(buf, n))
        elif bid != arrival.broadcast_id or prio < 0:
            return
        captured = self.captured[i]
        if len(captured) < self.capture_packets:
            captured.append(payload_of(buf, n))
        if len(captured) >= self.capture_packets:
            self._watching[i] = False
            ONLY_HANDSHAKES.attach(self.socks[i])

    def _control(self, i: int, data: bytes, addr: tuple[str, int], now: float) -> None:
        client = self.clients[i]
        was = client.state
        try:
            out = client.handle(data, (addr[0], addr[1]), now)
        except (MalformedPacket, ValueError):
            return  # not a message this speaker can read: a real one would count and drop it
        self._send(i, out)
        if was is not ClientState.SUBSCRIBED and client.state is ClientState.SUBSCRIBED:
            self._acked += 1
            self._launch(now)

    def _send(self, i: int, out: list[tuple[bytes, Addr]]) -> None:
        for data, addr in out:
            try:
                self.socks[i].sendto(data, addr)
            except OSError:
                pass  # a full send buffer: the client's retry timer sends it again

    def _launch(self, now: float) -> None:
        while self._started < len(self.clients) and self._started - self._acked < HANDSHAKE_BATCH:
            self._send(self._started, self.clients[self._started].start(now))
            self._started += 1

    async def _tick_loop(self) -> None:
        while True:
            now = time.monotonic()
            self._launch(now)
            for i in range(self._started):
                self._send(i, self.clients[i].tick(now))
            await asyncio.sleep(TICK_S)


# --------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class TimeToAir:
    """Time from ``t0`` to each expected speaker's first packet of one emergency."""

    expected: int
    seconds: list[float]  # per speaker that saw it within the deadline, sorted
    deadline_s: float

    @classmethod
    def of(cls, arrivals: Sequence[Arrival | None], t0: float, broadcast_id: int,
           speakers: Iterable[int], deadline_s: float) -> TimeToAir:
        speakers = list(speakers)
        seen = sorted(a.wall - t0 for a in (arrivals[i] for i in speakers)
                      if a is not None and a.broadcast_id == broadcast_id)
        return cls(len(speakers), [s for s in seen if s <= deadline_s], deadline_s)

    @property
    def missing(self) -> int:
        """Expected speakers that did not get it within the deadline."""
        return self.expected - len(self.seconds)

    def ms(self, q: float) -> float:
        """Percentile ``q`` (0-100) in milliseconds; NaN if nobody got it."""
        if not self.seconds:
            return math.nan
        return float(np.percentile(self.seconds, q)) * 1000.0

    @property
    def span_ms(self) -> float:
        """First to last arrival: how long the fan-out took once the packet existed."""
        return (self.seconds[-1] - self.seconds[0]) * 1000.0 if self.seconds else math.nan

    def summary(self) -> str:
        return (f"p50 {self.ms(50):.1f} ms, p99 {self.ms(99):.1f} ms, max {self.ms(100):.1f} ms"
                f" ({len(self.seconds)}/{self.expected} within {self.deadline_s:g} s)")


@dataclass(frozen=True)
class Report:
    arrivals: list[Arrival | None]
    counts: list[int]  # emergency packets captured per speaker
    captured: dict[int, list[bytes]]  # their payloads, when asked for


# --------------------------------------------------------------------------- the child process


def _out(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _report(fleet: SimSpeakers, payloads: bool) -> dict[str, object]:
    return {
        "first": [None if a is None else [a.wall, a.broadcast_id, a.capture]
                  for a in fleet.arrivals],
        "counts": [len(c) for c in fleet.captured],
        "captured": {str(i): [base64.b64encode(p).decode() for p in c]
                     for i, c in enumerate(fleet.captured) if c and payloads},
    }


async def serve(channels: list[str], relays: list[Addr], capture_packets: int,
                handshake_timeout_s: float, key: SigningKey | None = None) -> int:
    """Run a fleet; commands on stdin, one JSON line answered per command:
    ``arm [ID,ID…]`` (ids to ignore), ``report``, ``captured`` (the report with the captured
    payloads), ``quit``. EOF also quits."""
    fleet = SimSpeakers(channels, relays, capture_packets=capture_packets, key=key)
    try:
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        t0 = time.monotonic()
        n = await fleet.start(handshake_timeout_s)
        _out({"subscribed": n, "seconds": round(time.monotonic() - t0, 2), "ports": fleet.ports})
        end = t0 + CHILD_LIFETIME_S
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), max(0.0, end - time.monotonic()))
            except TimeoutError:
                return 1  # the parent forgot us
            if not line:
                return 0  # the parent is gone
            cmd, *args = line.decode(errors="replace").split() or [""]
            if cmd == "arm":
                try:
                    ignore = {int(x) for x in args[0].split(",")} if args else set()
                except ValueError:
                    _out({"error": "arm: the ids to ignore must be integers, comma-separated"})
                    continue
                fleet.arm(ignore)
                _out({"armed": True})
            elif cmd in ("report", "captured"):
                _out(_report(fleet, payloads=cmd == "captured"))
            elif cmd == "quit":
                return 0
            else:
                _out({"error": f"unknown command {cmd!r}"})
    finally:
        fleet.close()


def host_port(text: str) -> Addr:
    """An argparse type for a relay's ``host:port`` (``common.config.parse_hostport``)."""
    try:
        return parse_hostport(text, "relay")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--speakers", type=int, required=True)
    ap.add_argument("--channel", action="append", required=True,
                    help="a leaf channel; speakers are spread evenly over those given")
    ap.add_argument("--relay", type=host_port, action="append", required=True,
                    help="host:port of a relay; speakers are spread evenly over those given")
    ap.add_argument("--capture", type=int, default=0,
                    help="keep the payloads of this many emergency packets per speaker")
    ap.add_argument("--handshake-timeout-s", type=float, default=60.0)
    ap.add_argument("--signing-key", default="", help="PEM file of the streamer's key: signs "
                    "each speaker's subscription token (default: none, for relays that "
                    "require no token)")
    args = ap.parse_args(argv)
    if not 1 <= args.speakers <= 20_000:
        ap.error("--speakers must be 1..20000")
    if not 0 <= args.capture <= 10_000:
        ap.error("--capture must be 0..10000")
    os.nice(CHILD_NICE)
    try:
        return asyncio.run(serve(spread(args.speakers, args.channel), args.relay, args.capture,
                                 args.handshake_timeout_s, load_key(args.signing_key)))
    except (ValueError, OSError) as e:
        print(f"simspeakers: {e}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- the parent's handle


class SimSpeakersProcess:
    """A fleet in a child process (``python -m loadtest.simspeakers``); always stopped by
    :meth:`close`."""

    def __init__(self, proc: asyncio.subprocess.Process, channels: list[str],
                 ready: dict[str, Any]) -> None:
        self.proc = proc
        self.channels = channels
        self.ports = [int(p) for p in ready["ports"]]
        self.subscribed = int(ready["subscribed"])
        self.handshake_s = float(ready["seconds"])

    @classmethod
    async def spawn(cls, n: int, channels: Sequence[str], relays: Sequence[Addr], *,
                    capture_packets: int = 0, handshake_timeout_s: float = 60.0,
                    stderr: Any = None, signing_key: str = "") -> SimSpeakersProcess:
        """``signing_key``: PEM file of the streamer's key, which signs the speakers'
        subscription tokens ("": they present none)."""
        argv = ["-m", "loadtest.simspeakers", "--speakers", str(n), "--capture",
                str(capture_packets), "--handshake-timeout-s", str(handshake_timeout_s),
                "--signing-key", signing_key]
        argv += [a for ch in channels for a in ("--channel", ch)]
        argv += [a for host, port in relays for a in ("--relay", f"{host}:{port}")]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *argv, cwd=Path(__file__).resolve().parents[1],
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=stderr, limit=1 << 26)
        try:
            ready = await read_line(proc, handshake_timeout_s + 30)
        except BaseException:
            await quit_child(proc)
            raise
        return cls(proc, spread(n, channels), ready)

    async def _ask(self, command: str, timeout: float = 30.0) -> dict[str, Any]:
        return await ask(self.proc, command, timeout, "simulated speakers")

    async def arm(self, ignore: Collection[int] = ()) -> None:
        await self._ask("arm " + ",".join(str(i) for i in sorted(ignore)))

    async def report(self, payloads: bool = False) -> Report:
        r = await self._ask("captured" if payloads else "report")
        return Report(
            [None if a is None else Arrival(a[0], int(a[1]), a[2]) for a in r["first"]],
            [int(c) for c in r["counts"]],
            {int(i): [base64.b64decode(p) for p in ps] for i, ps in r["captured"].items()})

    async def wait_for(self, broadcast_id: int, speakers: Collection[int], timeout_s: float,
                       packets: int = 1) -> Report:
        """Poll until every speaker in ``speakers`` has ``packets`` packets (1 = the first;
        more only with capture) of ``broadcast_id``, or ``timeout_s`` has passed; the report
        then carries the captured payloads."""
        deadline = time.monotonic() + timeout_s
        while True:
            rep = await self.report()
            done = all((a := rep.arrivals[i]) is not None and a.broadcast_id == broadcast_id
                       and (packets <= 1 or rep.counts[i] >= packets) for i in speakers)
            if done or time.monotonic() > deadline:
                return await self.report(payloads=True) if packets > 1 else rep
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        await quit_child(self.proc)

if __name__ == "__main__":
    sys.exit(main())
