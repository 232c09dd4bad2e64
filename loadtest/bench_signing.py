"""Signed media: what the signatures cost in bytes on the wire and in the streamer's CPU.

* **Bytes.** Speech (``espeak-ng``, normalised like a bulletin; pink noise if espeak-ng is
  missing) encoded with the streamer's default Opus settings at 20, 40 and 60 ms frames,
  packetised with Loa's 32-byte header and signed by the streamer's own ``ChannelSigner``
  (a batch of 240 ms). The ``LOAS`` bytes are given as a share of the Opus bit rate, of the RTP
  datagrams and of the IP traffic (28 bytes of IPv4 + UDP header per datagram).
* **Streamer CPU.** A ``Mixer`` on one core produces frames for many channels twice, once into
  a sink that drops the packets and once through ``streamer/signing.py``'s ``SigningSink`` in
  front of the same sink, in interleaved rounds: CPU per frame with signing ÷ without (paired
  per round, median). Two shapes: 82 communes × 4 channels, each commune its own programme
  (the 06:00 peak), and one broadcast to 1,000 channels (province-wide: one encode, so
  signing is most of the work per channel).

* **Loss.** One channel's packets and ``LOAS`` through a simulated lossy link (random, and in
  bursts) into a real ``MediaGate``: the share of packets that do not play, with signing and
  without.

    python -m loadtest.bench_signing [--frames N] [--rounds R] [--loss-batches B] [--write]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
from prometheus_client import CollectorRegistry

from common.opus import RATE_HZ, OpusEncoder
from streamer.mixer.clock import FrameClock
from streamer.mixer.guard import DeadlineGuard
from streamer.mixer.mixer import Mixer
from streamer.mixer.program import Item
from streamer.mixer.sources.tone import Tone
from streamer.signing import SigningSink
from wire.auth import BATCH_MS, OVERDUE_S, ChannelSigner, Keyring, MediaGate, SigningKey
from wire.packet import HEADER_LEN, RtpPacket, ssrc_for
from wire.priority import Priority

from ._report import machine, median, table, today, write_section
from .lossy import gilbert

IP_UDP = 28
SPEECH = ("Ủy ban nhân dân xã thông báo: do ảnh hưởng của cơn bão số chín, từ chiều nay đến "
          "hết ngày mai, bà con không ra khơi, neo đậu tàu thuyền tại nơi tránh trú an toàn, "
          "chằng chống nhà cửa và theo dõi thông tin trên loa truyền thanh của xã.")
BYTES_GOAL = 0.10
CPU_SHAPES = (("82 communes × 4 channels, 82 programmes", 82, 4),
              ("1 broadcast to 1,000 channels", 1, 1000))


def speech() -> tuple[np.ndarray, str]:
    """Float32 mono 48 kHz speech, and what it is."""
    try:
        from streamer.mixer.sources.tts import EspeakProvider

        clip = EspeakProvider().synthesize(SPEECH)
        return np.asarray(clip.read(0, clip.length), dtype=np.float32), "espeak-ng speech"
    except Exception:  # no espeak-ng: pink-ish noise at a speech-like level
        rng = np.random.default_rng(7)
        x = np.cumsum(rng.standard_normal(RATE_HZ * 20)).astype(np.float32)
        x -= np.convolve(x, np.ones(480) / 480, mode="same").astype(np.float32)
        return (0.1 * x / np.abs(x).max()).astype(np.float32), "filtered noise"


def wire_bytes(pcm: np.ndarray, ptime_ms: int) -> dict[str, float]:
    """Bytes per second of audio: Opus payload, RTP datagrams, LOAS datagrams."""
    frame = RATE_HZ * ptime_ms // 1000
    enc = OpusEncoder(frame)
    key = SigningKey.generate()
    signer = ChannelSigner(key, "bench", ssrc_for("bench"), BATCH_MS // ptime_ms)
    payload = rtp = loas = packets = signatures = 0
    n = len(pcm) // frame
    for k in range(n):
        data = RtpPacket(ssrc_for("bench"), k & 0xFFFF, k * frame,
                         enc.encode(pcm[k * frame:(k + 1) * frame])).build()
        payload += len(data) - HEADER_LEN
        rtp += len(data)
        packets += 1
        for sig in signer.add(data, k, 0):
            loas += len(sig)
            signatures += 1
    for sig in signer.flush():
        loas += len(sig)
        signatures += 1
    seconds = n * ptime_ms / 1000
    return {"payload": payload / seconds, "rtp": rtp / seconds, "loas": loas / seconds,
            "ip_rtp": (rtp + packets * IP_UDP) / seconds,
            "ip_loas": (loas + signatures * IP_UDP) / seconds}


LOSS_SHAPES = (("1 % random", 0.01, 1), ("5 % random", 0.05, 1), ("10 % random", 0.10, 1),
               ("5 % in bursts of 3", 0.05, 3))


RTT_S = 0.06  # a 4G round trip for a RESEND and the LOAS sent back
LOSS_RUNS = (("signed, no RESEND, 300 ms delay", False, 0.3),
             ("signed + RESEND, 300 ms delay", True, 0.3),
             ("signed + RESEND, 500 ms delay", True, 0.5))


def lossy_run(batches: int, p: float, burst: int, key: SigningKey, resend: bool,
              delay_s: float, seed: int) -> tuple[float, float]:
    """One channel through a lossy last hop, frame by frame: (share of packets lost on the
    way, share not proven before their play time). A receiver with ``resend`` asks for each
    overdue LOAS again as a speaker does (``MediaGate.overdue``); the request and the answer
    cross the same lossy link and come back after ``RTT_S``."""
    rng = np.random.default_rng(seed)
    lost = gilbert(p, burst, rng)
    signer = ChannelSigner(key, "bench", ssrc_for("bench"), BATCH_MS // 20)
    gate: MediaGate[int] = MediaGate("bench", Keyring([key.public]))
    kept: dict[int, bytes] = {}  # the sender's LOAS by first seq, as a relay's ring keeps them
    answers: list[tuple[float, bytes]] = []  # LOAS re-sent, with their arrival time
    sent = arrived = played = 0

    def count(items: list[int], now: float) -> int:
        return sum(1 for k in items if now <= k * 0.02 + delay_s)

    for k in range(batches * signer.frames):
        now = k * 0.02
        data = RtpPacket(ssrc_for("bench"), k & 0xFFFF, k * 960, k.to_bytes(8, "big")).build()
        sent += 1
        if not lost():
            arrived += 1
            gate.hold(k & 0xFFFF, data, k, now)
            if gate.late:
                played += count(gate.take_late()[0], now)
        for sig in signer.add(data, k & 0xFFFF, 0):
            kept[int.from_bytes(sig[16:18], "big")] = sig
            if not lost():
                played += count(gate.vouch(sig, now), now)
        for at, sig in [a for a in answers if a[0] <= now]:
            answers.remove((at, sig))
            played += count(gate.vouch(sig, now), now)
        gate.expire(now - delay_s - 0.2)
        if resend and (seq := gate.overdue(now)) is not None and not lost() and not lost():
            first = next((f for f, sig in kept.items() if (seq - f) % 65536 < sig[18]), None)
            if first is not None:
                answers.append((now + RTT_S, kept[first]))
    return 1 - arrived / sent, 1 - played / sent


def loss(batches: int, seed: int = 1) -> list[tuple[str, float, list[float]]]:
    """Per loss shape: packets lost on the way (what an unsigned stream loses), and the
    share not proven in time for each of ``LOSS_RUNS``."""
    key = SigningKey.generate()
    rows = []
    for name, p, burst in LOSS_SHAPES:
        runs = [lossy_run(batches, p, burst, key, resend, delay, seed)
                for _, resend, delay in LOSS_RUNS]
        rows.append((name, runs[0][0], [r[1] for r in runs]))
    return rows


class Discard:
    """Drops every packet; has both calls ``SigningSink`` makes."""

    def publish_block(self, channels: Sequence[str], block: np.ndarray) -> None:
        pass

    def publish(self, channel: str, packet: bytes) -> None:
        pass


def mixer_run(communes: int, per: int, sign: bool, frames: int) -> Callable[[], None]:
    channels = [f"tinh.x{i}.k{j}" for i in range(communes) for j in range(per)]
    clock = FrameClock(20, start_mono=0.0, start_wall=1_800_000_000.0)
    sink: Discard | SigningSink = Discard()
    if sign:
        sink = SigningSink(Discard(), SigningKey.generate(), CollectorRegistry())  # type: ignore[arg-type]
    mixer = Mixer(channels, clock, sink, wall=time.time, workers=1,
                  guard=DeadlineGuard(0.02, degrade_at=math.inf))
    for i in range(communes):
        mixer.start(Item(i + 1, Priority.NORMAL, Tone(200.0 + 7.0 * i, None), i + 1),
                    channels[i * per:(i + 1) * per])
    after = sink.sign_pending if isinstance(sink, SigningSink) else (lambda: None)
    mixer.tick(0)
    after()
    next_k = 1

    def run() -> None:
        nonlocal next_k
        for k in range(next_k, next_k + frames):
            mixer.tick(k)
            after()  # as the frame loop does, once the frame's media is out
        next_k += frames

    run()  # warm up: encoders created, every channel's signer made, batches phased
    return run


def _cpu(run: Callable[[], None]) -> float:
    t0 = time.process_time()
    run()
    return time.process_time() - t0


def cpu(frames: int, rounds: int) -> list[tuple[str, float, float, float]]:
    """Per shape: CPU ms per frame without and with signing, and the paired median ratio."""
    out = []
    for name, communes, per in CPU_SHAPES:
        plain, signed = (mixer_run(communes, per, s, frames) for s in (False, True))
        a, b, ratio = [], [], []
        for _ in range(rounds):
            x, y = _cpu(plain), _cpu(signed)
            a.append(x)
            b.append(y)
            ratio.append(y / x)
        out.append((name, median(a) / frames * 1e3, median(b) / frames * 1e3, median(ratio)))
    return out


def render(sizes: dict[int, dict[str, float]], what: str,
           cpu_rows: list[tuple[str, float, float, float]],
           loss_rows: list[tuple[str, float, list[float]]], batches: int, cmd: str, frames: int,
           rounds: int) -> str:
    rows = []
    for ptime, b in sizes.items():
        rows.append([f"{ptime} ms", f"{BATCH_MS // ptime}", f"{b['payload'] * 8 / 1000:.1f}",
                     f"{b['loas'] * 8 / 1000:.2f}", f"**{b['loas'] / b['payload']:.1%}**",
                     f"{b['loas'] / b['rtp']:.1%}", f"{b['ip_loas'] / b['ip_rtp']:.1%}"])
    at20 = sizes.get(20)
    verdict = "" if at20 is None else (
        f"At 20 ms the signatures are **{at20['loas'] / at20['rtp']:.1%} of the RTP stream** "
        f"({at20['loas'] / at20['payload']:.1%} of the Opus bit rate alone), "
        f"{'within' if at20['loas'] / at20['rtp'] <= BYTES_GOAL else 'over'} the 10 % goal.")
    cpu_table = table(("shape", "CPU ms per frame, unsigned", "signed", "signed ÷ unsigned"),
                      [[n, f"{a:.2f}", f"{b:.2f}", f"**{r:.2f}**"] for n, a, b, r in cpu_rows])
    return f"""## Signed media (`loadtest/bench_signing.py`)

{today()}, {machine()}.

```
{cmd}
```

**Bytes.** {what}, the streamer's default Opus settings (32 kb/s VBR), a `LOAS` of 116 bytes
per channel per 240 ms batch. {verdict}

{table(("frame", "packets per batch", "Opus kb/s", "LOAS kb/s", "LOAS ÷ Opus bit rate",
        "LOAS ÷ RTP bytes", "LOAS ÷ IP bytes (28-byte IPv4+UDP each)"), rows)}

**Streamer CPU**, one core, a `Mixer` with its frames dropped (socket costs are
`bench_relay`'s), {rounds} interleaved rounds of {frames} frames, medians; per channel per
frame one SHA-256 of the datagram, per channel per batch one Ed25519 signature (~30 µs),
channels' batches spread over the batch's frames. The frame loop signs after the frame's media
is out (`sign_pending`), so this is CPU the playout thread spends, not lag a packet waits:

{cpu_table}

**Loss on the last hop.** A lost `LOAS` would lose its whole batch, and so does a batch with
three or more of its packets lost. A receiver holding packets that no `LOAS` proved
{OVERDUE_S * 1000:.0f} ms after they came asks its upstream for that `LOAS` again (`RESEND`,
`docs/protocol.md`), which the upstream sends from the last ones it keeps. Packets not proven
before their play time, through a real `MediaGate` behind a simulated lossy link ({batches:,}
batches of 12 packets at 20 ms, the `LOAS`, the `RESEND` and its answer as likely to be lost
as a packet, {RTT_S * 1000:.0f} ms round trip):

{table(("loss on the link", "lost, unsigned", *(name for name, _, _ in LOSS_RUNS)),
       [[n, f"{a:.2%}", *(f"**{x:.2%}**" for x in r)] for n, a, r in loss_rows])}

With `RESEND` a lost `LOAS` costs little more than the packets lost themselves once the
playout delay leaves room for a round trip after the batch (the 400–500 ms that 4G
deployments should use anyway); at the default 300 ms the first packets of a batch whose
`LOAS` was lost are already late when it comes back. Batches with three or more packets lost
stay lost: retransmitting packets is issue 13's loss recovery.

**Added glass-to-horn delay: none.** The speaker plays every sample at capture time + its
playout delay, signed or not; the wait for a batch's `LOAS` (at most 240 ms − one frame +
the LOAS's transit) is spent inside that delay, and relays add no wait at all (they forward
packets at once and verify the LOAS when it comes). What signing takes is margin: of the
default 300 ms delay, 60 ms remain for network jitter at the speaker's last hop, so 4G
deployments should set `delay_ms` to 400-500 (`docs/protocol.md`, "Signed media")."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=250, help="frames per measured run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--loss-batches", type=int, default=5000,
                    help="batches sent through each simulated lossy link")
    ap.add_argument("--write", action="store_true", help="rewrite its docs/BENCHMARKS.md section")
    args = ap.parse_args(argv)
    if not 10 <= args.frames <= 10_000 or not 1 <= args.rounds <= 50:
        ap.error("--frames must be 10..10000 and --rounds 1..50")
    cmd = ".venv/bin/python -m loadtest.bench_signing " + " ".join(
        sys.argv[1:] if argv is None else argv)
    pcm, what = speech()
    sizes = {p: wire_bytes(pcm, p) for p in (20, 40, 60)}
    text = render(sizes, what, cpu(args.frames, args.rounds), loss(args.loss_batches),
                  args.loss_batches, cmd.strip(), args.frames, args.rounds)
    print(text)
    if args.write:
        write_section("bench_signing", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
