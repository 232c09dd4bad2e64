"""Loss recovery on the last hop (issue 13 item 4): frames a speaker conceals, and the bytes
each way, with and without asking for lost packets again (``RESEND`` kind 2), and with the
relay sending 0, 1 or 2 copies of each ``LOAS`` (``loas_repeats``).

One channel of speech (``espeak-ng``, the streamer's default Opus settings: FEC on for 10 %
loss, 32 kb/s VBR) crosses a simulated 4G last hop, 5 ms at a time: a relay's ``PacketRing``
and ``LoasRepeats`` and the streamer's ``ChannelSigner`` on one side, the speaker's own
sans-IO parts on the
other (``MediaGate`` with its ``RESEND`` of lost signatures, ``LossTracker`` for lost
packets). Every datagram each way (packets, ``LOAS``, requests, answers) crosses the lossy
link and arrives ``RTT_S / 2`` later; what only recovery sends crosses loss chains of its own
with the same statistics, so that the stream loses the same datagrams in both runs (copies of
a ``LOAS`` are part of the stream, as on a real link, and cross its chain). A frame
is decoded one frame before its play time (capture + playout delay): from its own packet if
the gate has proven it by then, else from the next packet's in-band FEC if that one is proven
(``FEC``), else it is **concealed** (PLC).
The baseline, FEC and PLC alone, is measured in the same run on the same loss pattern (the
same seed).

    python -m loadtest.bench_loss [--frames N] [--write]
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from dataclasses import dataclass, field

from common.opus import RATE_HZ, OpusEncoder
from fanout.repeat import LoasRepeats
from fanout.ring import PacketRing
from wire import subscribe as sub
from wire.auth import BATCH_MS, ChannelSigner, Keyring, MediaGate, SigningKey
from wire.packet import RtpPacket, ssrc_for
from wire.retransmit import LossTracker, answer

from ._report import machine, table, today, write_section
from .bench_signing import speech
from .lossy import IP_UDP, gilbert

RTT_S = 0.06
STEP_S = 0.005
PTIME_S = 0.02
#: (name, loss, mean run of losses): random loss is independent, runs of 1 / (1 - p) on average
#: (``loadtest/lossy.py``)
SHAPES = (("10 % random", 0.10, 1 / 0.9), ("5 % in bursts of 3", 0.05, 3.0))
DELAYS_MS = (300, 500)
CH = "bench"


def opus_payloads(frames: int) -> list[bytes]:
    pcm, _ = speech()
    n = RATE_HZ // 50
    enc = OpusEncoder(n)
    clip = [bytes(enc.encode(pcm[k * n:(k + 1) * n])) for k in range(len(pcm) // n)]
    return [clip[k % len(clip)] for k in range(frames)]


@dataclass
class Run:
    frames: int
    own: int = 0
    fec: int = 0
    concealed: int = 0
    down_bytes: int = 0  # relay → speaker, IP bytes offered (before loss)
    up_bytes: int = 0  # speaker → relay: requests
    retransmitted: int = 0
    nacks: int = 0
    seconds: float = field(init=False)

    def __post_init__(self) -> None:
        self.seconds = self.frames * PTIME_S


def simulate(payloads: list[bytes], key: SigningKey, p: float, burst: float, delay_s: float,
             recover: bool, both_ways: bool, seed: int, after: tuple[int, ...] = ()) -> Run:
    """``after``: the relay sends each LOAS again after that many further packets
    (``fanout/repeat.py``); the copies are part of the stream and cross its loss chain."""
    # the stream (packets and LOAS) loses the same datagrams with and without recovery; what
    # only recovery sends (answers; requests) crosses loss chains of its own, alike. Copies of
    # a LOAS take their place in the stream's chain, as on a real link: a burst that takes
    # the original may take the next datagrams too
    stream = gilbert(p, burst, random.Random(seed))
    extra = gilbert(p, burst, random.Random(seed + 1))
    up = gilbert(p, burst, random.Random(seed + 2)) if both_ways else (lambda: False)
    ssrc = ssrc_for(CH)
    signer = ChannelSigner(key, CH, ssrc, BATCH_MS // 20)
    ring = PacketRing(0.0, PTIME_S)
    repeats = LoasRepeats(after)
    gate: MediaGate[int] = MediaGate(CH, Keyring([key.public]))
    tracker = LossTracker(deadline_s=max(0.05, delay_s - 0.04)) if recover else None
    n = len(payloads)
    run = Run(n)
    proven = [float("inf")] * (n + 1)
    queue: list[tuple[float, int, str, bytes]] = []  # (arrival, order, where, datagram)
    order = 0

    def send_down(data: bytes, now: float, reply: bool = False) -> None:
        nonlocal order
        run.down_bytes += len(data) + IP_UDP
        if not (extra() if reply else stream()):
            order += 1
            heapq.heappush(queue, (now + RTT_S / 2, order, "speaker", data))

    def send_up(data: bytes, now: float) -> None:
        nonlocal order
        run.up_bytes += len(data) + IP_UDP
        if not up():
            order += 1
            heapq.heappush(queue, (now + RTT_S / 2, order, "relay", data))

    def prove(items: list[int], now: float) -> None:
        for k in items:
            proven[k] = min(proven[k], now)

    steps_per_frame = round(PTIME_S / STEP_S)
    k = 0
    step = 0
    end = (n + 1) * steps_per_frame + round((delay_s + 1.0) / STEP_S)
    while step < end:
        now = step * STEP_S
        if step % steps_per_frame == 0 and k < n:
            data = RtpPacket(ssrc, k & 0xFFFF, k * 960, payloads[k]).build()
            ring.add(data, now)
            send_down(data, now)
            for copy in repeats.packet():
                send_down(copy, now)
            k += 1
            for sig in signer.add(data, (k - 1) & 0xFFFF, 0) + (signer.flush() if k == n else []):
                ring.add(sig, now)
                send_down(sig, now)
                for copy in repeats.loas(sig):
                    send_down(copy, now)
        while queue and queue[0][0] <= now:
            _, _, where, data = heapq.heappop(queue)
            if where == "relay":  # a request: RESEND kind 1 (a LOAS) or 2 (packets)
                msg = sub.parse(data)
                if msg.kind == sub.RESEND_LOAS:
                    loas = ring.loas_for(msg.seq)
                    if loas is not None:
                        send_down(loas, now, reply=True)
                else:
                    seqs = sub.Resend(("", 0), CH, msg.seq, msg.kind, msg.mask).seqs
                    for packet in answer(seqs, len(data), ring.packet)[0]:
                        run.retransmitted += 1
                        send_down(packet, now, reply=True)
            elif data[1] == 204:  # a LOAS
                prove(gate.vouch(data, now), now)
            else:
                seq = int.from_bytes(data[2:4], "big")
                if tracker is not None:
                    tracker.arrived(seq, len(data), now)
                kk = _unwrap(seq, k)
                gate.hold(seq, data, kk, now)
                if gate.late:
                    prove(gate.take_late()[0], now)
        # the speaker's periodic work (it runs on every arrival and every 200 ms)
        gate.expire(now - delay_s - 0.2)
        if (seq := gate.overdue(now)) is not None:
            send_up(_resend_loas(seq), now)
        if tracker is not None:
            for first, mask, size in tracker.due(now):
                run.nacks += 1
                send_up(_nack(first, mask, size), now)
        step += 1
    for j in range(n):
        decode = j * PTIME_S + delay_s - PTIME_S
        if proven[j] <= decode:
            run.own += 1
        elif proven[j + 1] <= decode:
            run.fec += 1
        else:
            run.concealed += 1
    return run


def _unwrap(seq: int, sent: int) -> int:
    """The frame index of ``seq``, the latest sent being ``sent - 1``."""
    return sent - 1 - ((sent - 1 - seq) & 0xFFFF)


def _resend_loas(seq: int) -> bytes:
    return sub.Message(sub.MsgType.RESEND, CH, cookie=bytes(24), seq=seq).build()


def _nack(first: int, mask: int, size: int) -> bytes:
    return sub.Message(sub.MsgType.RESEND, CH, cookie=bytes(24), seq=first,
                       kind=sub.RESEND_PACKETS, mask=mask, size=size).build()


#: (playout delay ms, LOAS copies): the main table's rows for each loss shape and direction
SETTINGS = ((300, 0), (300, 1), (300, 2), (500, 0))
#: the relay's spacings (fanout/repeat.py ``after``) compared at 300 ms; the shipped ones first
SPACINGS = ((1,), (0, 1), (0, 1, 2), (0,), (2,), (1, 2), (1, 3), (1, 2, 3))


@dataclass
class Row:
    shape: str
    delay_ms: int
    both: bool
    copies: int
    base: Run  # FEC and PLC alone, no copies: today's speaker behind today's relay
    rec: Run  # recovery, with the relay's copies


def measure(frames: int, seed: int) -> tuple[list[Row], list[tuple[str, tuple[int, ...], Run]]]:
    key = SigningKey.generate()
    payloads = opus_payloads(frames)
    rows = [Row("no loss", 500, False, 0,
                *(simulate(payloads, key, 0.0, 1.0, 0.5, r, False, seed) for r in (False, True)))]
    for name, p, burst in SHAPES:
        for both in (False, True):
            base = {d: simulate(payloads, key, p, burst, d / 1000, False, both, seed)
                    for d in DELAYS_MS}
            for delay_ms, copies in SETTINGS:
                rec = simulate(payloads, key, p, burst, delay_ms / 1000, True, both, seed,
                               LoasRepeats.copies(copies).after)
                rows.append(Row(name, delay_ms, both, copies, base[delay_ms], rec))
    spacing = [(name, after, simulate(payloads, key, p, burst, 0.3, True, False, seed, after))
               for name, p, burst in SHAPES for after in SPACINGS]
    return rows, spacing


def _kbps(b: int, run: Run) -> str:
    return f"{b * 8 / run.seconds / 1000:.1f}"


def _share(n: int, run: Run) -> str:
    return f"{n / run.frames:.3%}"


def render(rows: list[Row], spacing: list[tuple[str, tuple[int, ...], Run]], frames: int,
           cmd: str) -> str:
    body = []
    for r in rows:
        base, rec = r.base, r.rec
        body.append([
            r.shape, "both ways" if r.both else "down only", f"{r.delay_ms} ms", str(r.copies),
            _share(base.concealed, base), f"**{_share(rec.concealed, rec)}**",
            f"{base.fec / base.frames:.2%}", f"{rec.fec / rec.frames:.2%}",
            _kbps(base.down_bytes, base), _kbps(rec.down_bytes, rec),
            _kbps(base.up_bytes, base), _kbps(rec.up_bytes, rec),
            f"{(rec.down_bytes + rec.up_bytes) / (base.down_bytes + base.up_bytes) - 1:+.1%}"])

    def row(shape: str, delay_ms: int, copies: int, both: bool = False) -> Row:
        return next(r for r in rows if (r.shape, r.delay_ms, r.copies, r.both)
                    == (shape, delay_ms, copies, both))

    def verdict(r: Row) -> str:
        c = r.rec.concealed
        return (f"{_share(c, r.rec)} at {r.delay_ms} ms with {r.copies} "
                f"cop{'y' if r.copies == 1 else 'ies'} of each `LOAS` "
                f"({'met' if c <= r.rec.frames / 1000 else 'not met'})")

    random10 = SHAPES[0][0]
    per_copy = [(row(s, 300, 2).rec.down_bytes - row(s, 300, 0).rec.down_bytes) / 2
                * 8 / row(s, 300, 0).rec.seconds / 1000 for s, _, _ in SHAPES]
    goal = (f"**Goal** (issue 13: at most 0.1 % of frames concealed at 10 % random loss on the "
            f"relay→speaker link): {verdict(row(random10, 300, 2))}; "
            f"{verdict(row(random10, 300, 1))}; {verdict(row(random10, 500, 0))}; against "
            f"{_share(row(random10, 300, 0).base.concealed, row(random10, 300, 0).base)} "
            f"with FEC and PLC alone at 300 ms. A copy costs "
            f"{min(per_copy):.1f}–{max(per_copy):.1f} kb/s down.")
    spaced = [[name, ", ".join(map(str, after)), f"**{_share(run.concealed, run)}**",
               _kbps(run.down_bytes, run)] for name, after, run in spacing]
    return f"""## Loss recovery on the last hop (`loadtest/bench_loss.py`)

{today()}, {machine()}.

```
{cmd}
```

{frames:,} frames ({frames * PTIME_S / 60:.0f} min) of espeak-ng speech at the streamer's
default Opus settings (FEC on for 10 % loss, 32 kb/s VBR), signed in 240 ms batches, through a
simulated 4G last hop with a {RTT_S * 1000:.0f} ms round trip. The speaker is the real sans-IO
code: its `MediaGate` (which asks again for a lost `LOAS`) and, with recovery, its
`LossTracker` (RESEND kind 2, `wire/retransmit.py`) answered from a relay's `PacketRing`; the
relay's copies of each `LOAS` (`loas_repeats`, `fanout/repeat.py`) are sent by the real
`LoasRepeats`. "Concealed": frames neither proven in time nor rebuilt from the next packet's
FEC (PLC); "FEC": frames rebuilt from the next packet. Loss on the relay→speaker direction
only, or on both (then requests are lost too); answers and requests cross loss chains of
their own with the same statistics, so the stream itself loses the same datagrams with
recovery and without; copies of a `LOAS` are datagrams of the stream and cross its chain,
as on a real link (a burst that takes the original takes the next datagrams too, so from the
first copy on the stream's pattern differs from the FEC-only run's). kb/s are IP bytes
(28 bytes of IPv4+UDP per datagram) per second of audio, offered to the link: down =
relay→speaker (media, `LOAS` and their copies, answers), up = speaker→relay (requests;
keepalives, about 0.1 kb/s, left out). "FEC only" is today's speaker (`retransmit = false`)
behind a relay sending no copies, measured in the same run on the same loss pattern.

{table(("loss", "where", "playout delay", "LOAS copies", "concealed, FEC only",
        "concealed, recovery", "FEC, FEC only", "FEC, recovery", "down kb/s, FEC only",
        "down kb/s, recovery", "up kb/s, FEC only", "up kb/s, recovery",
        "bytes both ways, recovery ÷ FEC only"), body)}

{goal}

Where the copies go, at 300 ms, loss on the relay→speaker direction only, with recovery: the
relay's spacing is the number of the channel's packets after which each copy follows the
original (0: right after it). `loas_repeats` = 1, 2 and 3 are the first three rows.

{table(("loss", "copies after packets", "concealed", "down kb/s"), spaced)}

Why these spacings. At 300 ms and a 60 ms round trip a batch's first frame is decoded 280 ms
after its packet left, and the batch's `LOAS` leaves 220 ms after it: a copy is in time for
that frame only if it leaves within 30 ms of the original, beside it or right after the next
packet, and each packet later costs one more of the batch's first frames (the "2" row). One
copy goes after the next packet: as good as beside the original under random loss, better in
bursts, which take neighbours together. Two go beside the original and after the next packet:
the first frame is then lost only with all three (p³), where "1, 2" leaves it p² (10 %² of the
batches, a frame in twelve: 0.08 % on its own); no three datagrams in a row hold the original
and both copies (`LOAS`, copy, next packet, copy), so a burst of three leaves one. A third
copy, after the second packet, helps bursts a little more.

What is left at 300 ms is of two kinds, about half each, at 10 % random loss with two copies
as in bursts of 3: batches whose original and copies were all lost (p³ at random; in bursts,
one of four datagrams or more, a third of the bursts), and batches with three or more packets
still missing when their `LOAS` came (their last packets lost, asked for again, back a round
trip later), which it cannot prove until one of them is back, too late for the first frame:
copies cannot mend that. In bursts that leaves 1.4 %, isolated frames that PLC covers, so
speech stays intelligible, but a link that loses in bursts still wants 500 ms. Asking sooner
for a lost `LOAS` cannot pay: it is noticed at best when the next batch's first packet comes,
240 ms after the batch's first plus the way down, and the answer is a round trip later, past
280 ms; nor can a relay send a signature sooner, only the streamer
signs, once the batch is complete. Each copy is 144 bytes on the wire (116 and IPv4+UDP) every
240 ms: 4.8 kb/s per speaker, 4.5–4.7 kb/s net of the re-asked signatures it saves. It costs
the speaker no signature check: a copy of a `LOAS` it has is counted `duplicate` on its
signature alone (`tests/test_loas_repeats.py`).

Retransmission costs bytes only where packets are lost: nothing on a clean link, about twice
the loss rate (the request, padded to the size of its answer so that a relay never sends more
than it is sent, and the packet again) on a lossy one. Redundancy pays on every packet
whether it is lost or not: a delayed duplicate of each datagram is +100 % of the stream and
still leaves p² of the packets lost (1 % at 10 % random loss, before FEC); RFC 2198 RED at
depth 2 adds some +120 % of Opus bytes (`bench_codec`, "RED instead of in-band FEC") for p³
(0.1 %), and a RED block is not the signed datagram: a speaker would have to rebuild each
original packet, header included, to check it against its `LOAS`. Copies of the `LOAS` are
redundancy too, but of 116 bytes per 240 ms, not of every packet.

What recovery needs is time. Lost packets come back within a round trip or two; without copies
what is left is the first packets of a batch whose `LOAS` was lost: they wait for it to be
asked for again (once a packet a batch and one past the first has come, 260 ms after it at
20 ms frames; 280 ms at the latest) and for the answer, too late at 300 ms (the "300 ms, 0"
rows); at 500 ms a lost signature has two or three tries. With the requests lost too ("both
ways"), lost requests for packets leave about 0.16 % at 500 ms, and as much at 300 ms with two
copies. Random loss is independent here (a lost datagram is followed by another 10 % of the
time); earlier runs modelled it as runs of exactly one lost datagram, which gave 0.018 % at
500 ms and would flatter a copy sent beside the original.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=30_000, help="frames per simulated run")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--write", action="store_true", help="rewrite its docs/BENCHMARKS.md section")
    args = ap.parse_args(argv)
    if not 1_000 <= args.frames <= 1_000_000:
        ap.error("--frames must be 1000..1000000")
    cmd = ".venv/bin/python -m loadtest.bench_loss " + " ".join(
        sys.argv[1:] if argv is None else argv)
    text = render(*measure(args.frames, args.seed), args.frames, cmd.strip())
    print(text)
    if args.write:
        write_section("bench_loss", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

