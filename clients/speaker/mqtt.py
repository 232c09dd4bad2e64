"""The speaker's side of the MQTT control plane: what it reports and what it obeys.

:class:`SpeakerDevice` is the speaker as a ``device.link.DeviceLink`` sees it:
status, telemetry, the commands of ``docs/mqtt.md`` (volume, mute, reconnect, upstream list,
test tone, token refresh) and the retained desired config. Volume and mute are the operator's:
an emergency overrides them while it plays without changing them (``playout.py``), so that
they are what applies again afterwards and what every ack and telemetry reports.
:class:`ToneOverlay` sits between the playout and the real sink: it plays the installer's test
tone and meters the output level for telemetry. Nothing here may block or stop playout:
commands change a few fields the playout reads on its next frame, and a command that cannot be
carried out is answered ``ok: false`` naming the field, never raised.
"""

from __future__ import annotations

import logging
import math
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from common.config import Addr, ConfigError, parse_hostport
from device.link import VERSION, CommandFailed, DeviceLink
from wire.addr import fmt_addr
from wire.messages import (
    SPEAKER_COMMANDS,
    DeviceConfig,
    RefreshToken,
    SetUpstream,
    SetVolume,
    SpeakerTelemetry,
    Status,
    Strict,
    TestTone,
    finite,
)
from wire.plan import clip_of_topic, clip_topic, plan_topic
from wire.subscribe import ClientState, SubscribeClient

from .output import Samples, Sink
from .playout import LEVEL_FLOOR_DBFS, MAX_FRAME, RATE_HZ, Playout, sum_of_squares, volume_gain
from .store import ForwardPath

#: test tone peak, before the volume: a quarter of full scale (-15 dBFS RMS) is loud enough
#: to check a horn and far from clipping whatever is playing under it
TEST_TONE_PEAK = 0.25

log = logging.getLogger("loa.speaker")

class ToneOverlay:
    """A :class:`Sink` wrapper: adds the test tone to what passes through (silence included)
    and keeps the sum of squares of the output for :meth:`take_level_dbfs`."""

    def __init__(self, sink: Sink, rate_hz: int = RATE_HZ) -> None:
        self.sink = sink
        self.rate_hz = rate_hz
        self._tone_left = 0
        self._phase = 0.0
        self._step = 0.0
        self._amp = 0.0
        self._sumsq = 0.0
        self._samples = 0
        #: the sum of squares of the next ``write``, if its writer measured it already (the
        #: playout does for its play log, ``Playout(measure_level=True)``): not summed twice
        self.measured: float | None = None

    def start_tone(self, hz: float, seconds: float, gain: float) -> None:
        self._step = 2 * math.pi * hz / self.rate_hz
        self._amp = TEST_TONE_PEAK * 32767 * gain
        self._tone_left = round(seconds * self.rate_hz)

    @property
    def tone_playing(self) -> bool:
        return self._tone_left > 0

    def write(self, pcm: Samples) -> None:
        measured, self.measured = self.measured, None
        if measured is not None and not self._tone_left and len(pcm) <= MAX_FRAME:
            self._sumsq += measured
            self._samples += len(pcm)
            self.sink.write(pcm)
            return
        for i in range(0, len(pcm), MAX_FRAME):
            self._write_chunk(pcm[i : i + MAX_FRAME])

    def _write_chunk(self, pcm: Samples) -> None:
        n = len(pcm)
        if self._tone_left:  # in Python, sample by sample: only while an installer listens
            k = min(n, self._tone_left)
            amp, step, phase = self._amp, self._step, self._phase
            mixed = array("h", [int(max(-32768.0, min(32767.0, x + amp * math.sin(
                phase + step * i)))) for i, x in enumerate(pcm[:k])])
            mixed.extend(pcm[k:])
            self._phase = (phase + step * k) % (2 * math.pi)
            self._tone_left -= k
            pcm = mixed
        self._sumsq += sum_of_squares(pcm)
        self._samples += n
        self.sink.write(pcm)

    def write_silence(self, n: int) -> None:
        while self._tone_left and n > 0:
            k = min(n, self._tone_left, MAX_FRAME)
            self._write_chunk(memoryview(bytes(2 * k)).cast("h"))
            n -= k
        if n > 0:
            self._samples += n
            self.sink.write_silence(n)

    def take_level_dbfs(self) -> float:
        """RMS level of the output since the last call (full-scale square wave = 0 dB)."""
        sumsq, n = self._sumsq, self._samples
        self._sumsq, self._samples = 0.0, 0
        if n == 0 or sumsq <= 0:
            return LEVEL_FLOOR_DBFS
        return round(max(10 * math.log10(sumsq / n / 32768.0**2), LEVEL_FLOOR_DBFS), 2)

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()


Send = Callable[[list[tuple[bytes, Addr]]], None]
Resolve = Callable[[Addr], Awaitable[Addr]]


class SpeakerDevice:
    """The speaker as its DeviceLink sees it (``device.link.Device``)."""

    kind = "speaker"
    commands = SPEAKER_COMMANDS

    def __init__(self, *, zone: str | None, playout: Playout, client: SubscribeClient,
                 send: Send, overlay: ToneOverlay, resolve: Resolve,
                 move: Callable[[str], None]) -> None:
        self.zone = zone
        self.playout = playout
        self.client = client
        self.send = send
        self.overlay = overlay
        self.resolve = resolve
        #: moves everything but the MQTT subscriptions (those are :class:`SpeakerLink`'s) to
        #: another channel: the media subscription, emergency states, store and forward
        self.move = move
        self.started = time.monotonic()
        self._received = 0
        self._lost = 0

    @property
    def channel(self) -> str:
        """The channel it plays now: its config's at start, then the last one it moved to."""
        return self.client.channel

    # ------------------------------------------------------------------ reports

    def status(self) -> Status:
        return Status(state="online", ts=time.time(), zone=self.zone, channel=self.channel,
                      upstream=fmt_addr(self.client.upstream), version=VERSION)

    def telemetry(self) -> SpeakerTelemetry:
        p, jb = self.playout, self.playout.jitter
        received, lost = jb.received - self._received, jb.lost - self._lost
        self._received, self._lost = jb.received, jb.lost
        return SpeakerTelemetry(
            ts=time.time(),
            buffer_ms=round(jb.depth * p.ptime_s * 1000, 1),
            loss_ratio=round(lost / (received + lost), 4) if received + lost else 0.0,
            level_dbfs=finite(self.overlay.take_level_dbfs(), LEVEL_FLOOR_DBFS),
            volume=p.volume_pct, muted=p.muted,
            uptime_s=round(time.monotonic() - self.started, 1),
            upstream=fmt_addr(self.client.upstream),
            emergency=p.emergency_playing,
        )

    def state(self) -> dict[str, Any]:
        c = self.client
        return {"volume": self.playout.volume_pct, "muted": self.playout.muted,
                "upstream": fmt_addr(c.upstream), "upstreams": [fmt_addr(u) for u in c.upstreams],
                "subscribed": c.state is ClientState.SUBSCRIBED,
                "test_tone": self.overlay.tone_playing,
                "emergency": self.playout.emergency_playing}

    # ------------------------------------------------------------------ commands

    async def execute(self, cmd: str, args: Strict) -> None:
        p = self.playout
        if isinstance(args, SetVolume):
            p.set_volume(args.volume)
        elif cmd == "mute":
            p.muted = True
        elif cmd == "unmute":
            p.muted = False
        elif cmd == "reconnect":
            self._handshake(self.client.upstreams)
        elif isinstance(args, SetUpstream):
            upstreams = await self._resolve_all(args.upstream)
            self._handshake(upstreams)
        elif isinstance(args, TestTone):
            # Played even when muted: an installer on the ladder wants to hear the horn; at the
            # current volume, so they hear what the villagers will.
            self.overlay.start_tone(args.hz, args.seconds, volume_gain(p.volume_pct))
        elif isinstance(args, RefreshToken):
            # Sent in the next HELLO/SUBSCRIBE; the current subscription stays as it is.
            self.client.token = args.token.encode()
        elif cmd != "ping":
            raise CommandFailed(f"cmd: {cmd} is not implemented by this speaker")

    async def configure(self, cfg: DeviceConfig) -> None:
        if cfg.channel is not None and cfg.channel != self.channel:
            # The leaf zone it was moved to, whose id is its channel's: first, so that an
            # upstream list in the same config handshakes for the new channel.
            log.info("config: moving from channel %s to %s", self.channel, cfg.channel)
            self.move(cfg.channel)
            self.zone = cfg.channel
        if cfg.volume is not None:
            self.playout.set_volume(cfg.volume)
        if cfg.muted is not None:
            self.playout.muted = cfg.muted
        if cfg.upstream is not None:
            upstreams = await self._resolve_all(cfg.upstream)
            if upstreams != self.client.upstreams:  # a reconnect must not re-handshake
                self._handshake(upstreams)

    async def _resolve_all(self, texts: list[str]) -> list[Addr]:
        out: list[Addr] = []
        for text in texts:
            try:
                out.append(await self.resolve(parse_hostport(text, "upstream")))
            except ConfigError as e:
                raise CommandFailed(f"args.{e}") from None
        return out

    def _handshake(self, upstreams: list[Addr]) -> None:
        """BYE the current upstream, then HELLO the first of ``upstreams``: the handshake and
        failover timers of :class:`SubscribeClient` take it from there."""
        c = self.client
        if c.state is ClientState.SUBSCRIBED:
            self.send(c.close())
        c.upstreams = list(upstreams)
        c.index = 0
        self.send(c.start(time.monotonic()))


class SpeakerLink(DeviceLink):
    """A speaker's DeviceLink that also keeps store and forward's plan and clips
    (``store.py``): it reads its zone's retained plan, and subscribes to the retained clip
    topics the plan names only while the clip is missing from the disk, so that a reconnect
    downloads no clip twice. A config that moves the speaker to another zone moves its zone
    topics (group commands, emergency states, the plan) with it."""

    def __init__(self, device: SpeakerDevice, *, forward: ForwardPath | None,
                 now: Callable[[], float] = time.time, **kw: Any) -> None:
        self.forward = forward  # before the zone topics are made (``zone_topics``)
        super().__init__(device, **kw)
        self.speaker = device
        self.now = now
        self._clip_subs: set[str] = set()
        self._subs_client: aiomqtt.Client | None = None

    @property
    def _plan_topic(self) -> str | None:
        return plan_topic(self.zone) if self.forward and self.zone else None

    def zone_topics(self, zone: str | None) -> list[str]:
        topics = super().zone_topics(zone)
        return topics + [plan_topic(zone)] if self.forward and zone else topics

    async def handle(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        forward = self.forward
        sha = clip_of_topic(topic)
        if forward is None or (topic != self._plan_topic and sha is None):
            await super().handle(client, topic, payload)
            zone = self.speaker.zone
            if zone is not None and zone != self.zone:  # a config moved the speaker
                await self._follow(client, zone)
            return
        self.metrics.messages.labels("plan" if sha is None else "clip").inc()
        if sha is None:
            forward.on_plan(payload, self.now())
        else:
            forward.on_clip(sha, payload)
        try:
            await self._sync_clips(client, forward)
        except aiomqtt.MqttError as e:
            self._log.warning(("clips", "mqtt"), "clip subscriptions not changed: %s", e)

    async def _follow(self, client: aiomqtt.Client, zone: str) -> None:
        log.info("zone topics: from %s to %s", self.zone, zone)
        await self.move(zone)
        await self._publish_status(client)  # names the new channel and zone at once
        if self.forward is not None:  # the old plan's clips are no longer wanted
            await self._sync_clips(client, self.forward)

    async def _sync_clips(self, client: aiomqtt.Client, forward: ForwardPath) -> None:
        if client is not self._subs_client:  # a new session starts with none
            self._subs_client, self._clip_subs = client, set()
        want = {clip_topic(sha) for sha in forward.missing()}
        drop, add = self._clip_subs - want, want - self._clip_subs
        if drop:
            await client.unsubscribe(sorted(drop))
        if add:
            await client.subscribe([(t, 1) for t in sorted(add)])
        self._clip_subs = want
