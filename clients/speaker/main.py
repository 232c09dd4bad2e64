"""``loa speaker``: the software IP speaker process. This module only wires the parts: the
configuration (``config.py``), the UDP edge (``net.py``), the playout and its sink
(``playout.py``, ``output.py``), the emergency path (``emergency.py``), metrics and HTTP
(``metrics.py``) and, with ``mqtt_url`` set, the MQTT control plane (``mqtt.py``,
``docs/mqtt.md``): retained status with a last will, telemetry, proof of play, commands, and
the emergency states of its zones. The broker being away never affects playout.

Emergency audio is cached under ``cache_dir`` and replayed from there while the network is gone
(``emergency.py``); the cache is read once at start-up and written by one worker thread.

What a small board does not use it does not load: the HTTP server (aiohttp), the metrics
(prometheus_client) and the MQTT side (aiomqtt, the pydantic message schemas) are imported
only when ``http`` or ``mqtt_url`` is set, and numpy never: a plain speaker holds about
39 MB, where it held 80 (``docs/operations.md``, "A small speaker").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import Addr, ConfigError
from common.tls import server_context
from device.streamer_time import StreamerTime
from device.trust import TrustedKeys
from wire import subscribe
from wire.addr import fmt_addr
from wire.auth import MediaGate
from wire.packet import RtpPacket
from wire.retransmit import LossTracker

from . import placement
from .clock import NS, LocalClock
from .config import SpeakerConfig, load_config
from .emergency import EmergencyCache, EmergencyPath
from .latency import Latency
from .net import EMERGENCY_TICK_S, TICK_S, Speaker, emergency_tick, resolve, tick
from .output import NullSink, PlayLog, Sink, SoundcardSink, WavSink
from .playout import RATE_HZ, OpusDecoder, Playout
from .rhythm import Rhythm, beat_s
from .store import FORWARD_TICK_S, forward_tick

if TYPE_CHECKING:  # imported where used, only when configured (see above)
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from device.link import DeviceLink

    from .mqtt import ToneOverlay
    from .store import ForwardPath

__all__ = ["ConfigError", "load_config", "open_sink", "run", "serve"]

log = logging.getLogger("loa.speaker")


def open_sink(cfg: SpeakerConfig, t0: float) -> Sink:
    if cfg.wav:
        return WavSink(cfg.wav, t0)
    if SoundcardSink.available():
        return SoundcardSink()
    return NullSink()


async def open_emergency(cfg: SpeakerConfig,
                         playout: Playout) -> tuple[EmergencyPath, ThreadPoolExecutor]:
    """The emergency path, its cache read, and the one thread that writes the cache."""
    cache = EmergencyCache(Path(cfg.cache_dir))
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emergency-cache")
    emergency = EmergencyPath(
        playout, cache, cached=await asyncio.to_thread(cache.load), states=cache.load_states(),
        volume_pct=cfg.emergency_volume, repeat_override_s=cfg.emergency_repeat_s,
        submit=writer.submit)
    playout.capture = emergency.recorder.add
    return emergency, writer


def open_forward(cfg: SpeakerConfig, playout: Playout, emergency: EmergencyPath,
                 trusted: TrustedKeys, writer: ThreadPoolExecutor) -> ForwardPath:
    """Store and forward (``store.py``): its plan and clips beside the emergency cache,
    written and decoded by the same worker thread."""
    from .store import ClipStore, ForwardPath

    forward = ForwardPath(
        playout, ClipStore(Path(cfg.cache_dir), cfg.store_mb * 1024 * 1024), cfg.zone,
        trusted.keyring, new_decoder=OpusDecoder, delay_s=cfg.delay_ms / 1000,
        emergency_on=lambda now: emergency.emergencies.current(time.time()) is not None,
        submit=writer.submit)
    forward.load(time.time())
    return forward


async def announce(cfg: SpeakerConfig, sock: socket.socket, speaker: Speaker,
                   emergency: EmergencyPath, registry: CollectorRegistry | None,
                   upstreams: list[Addr], https: ssl.SSLContext | None = None
                   ) -> web.AppRunner | None:
    """Start HTTP (HTTPS with ``https``) if configured and print the bound ports, one JSON
    line (tests and supervisors read them there): ``http`` is ``host:port``, ``http_url`` the
    URL with its scheme."""
    bound = sock.getsockname()
    listening: dict[str, Any] = {"event": "listening", "speaker": cfg.id,
                                 "udp": f"{bound[0]}:{bound[1]}"}
    runner = None
    if cfg.http:
        from .metrics import start_http

        assert registry is not None
        runner, http_bound = await start_http(cfg, speaker, emergency, registry, https)
        listening["http"] = f"{http_bound[0]}:{http_bound[1]}"
        listening["http_url"] = f"{'https' if https else 'http'}://{fmt_addr(http_bound)}"
    print(json.dumps(listening), flush=True)
    log.info("speaker %s on %s, channel %s, upstreams %s", cfg.id, listening["udp"],
             cfg.channel, upstreams)
    return runner


def open_link(cfg: SpeakerConfig, password: str, speaker: Speaker, overlay: ToneOverlay,
              emergency: EmergencyPath, registry: CollectorRegistry,
              family: int, tls_context: ssl.SSLContext | None = None,
              trusted: TrustedKeys | None = None,
              forward: ForwardPath | None = None,
              keep_move: Callable[[str], object] = lambda channel: None) -> DeviceLink:
    from .mqtt import SpeakerDevice, SpeakerLink

    assert cfg.mqtt is not None
    m = cfg.mqtt

    def move(channel: str) -> None:  # a config moved it: the leaf zone id is the channel's
        speaker.move(channel)
        keep_move(channel)
        emergency.forget_states(time.time())
        if forward is not None:
            forward.move(channel)

    device = SpeakerDevice(zone=cfg.zone or None, playout=speaker.playout,
                           client=speaker.client, send=speaker.send, overlay=overlay,
                           resolve=lambda addr: resolve(addr, family), move=move)
    return SpeakerLink(device, forward=forward, url=m.url, device_id=cfg.id, user=m.user,
                       password=password, registry=registry, zone=cfg.zone or None,
                       telemetry_s=m.telemetry_s, keepalive_s=m.keepalive_s,
                       on_emergency=lambda state: emergency.on_state(state, time.time()),
                       on_token=speaker.renew_token, password_file=m.password_file,
                       tls_context=tls_context,
                       on_keys=None if trusted is None else trusted.offer_now)


def rhythm(speaker: Speaker, playout: Playout, clock: LocalClock, emergency: EmergencyPath,
           cfg: SpeakerConfig) -> Rhythm:
    """The speaker's one source of wake-ups (``rhythm.py``): the playout every few packets
    while it plays (and the socket read then), at each datagram while it listens (nothing to
    play), the handshake and the emergency decisions riding on it."""

    beats: dict[float, float] = {}  # the playing beat by packet time (learnt from the stream)

    def period() -> float:
        # A quiet channel's playout only pads silence: beat as often as the handshake ticks,
        # and let the first packet of the next broadcast wake it.
        ptime_s = playout.ptime_s
        if playout.idle:
            return max(TICK_S, ptime_s)
        if (beat := beats.get(ptime_s)) is None:
            beat = beats[ptime_s] = beat_s(ptime_s, playout.delay_s)
        return beat

    def play(nudged: bool) -> None:
        if not nudged:  # a nudge comes right after the socket was read
            speaker.drain()
        now_ns = clock.now_ns()  # one clock read for both
        now = now_ns / NS
        playout.tick(now, speaker.time.shift_s(now_ns), r.reach())
        if playout.wake_at is not None:  # a missing frame to conceal, unless it comes
            r.within(playout.wake_at - now)
        # listen when nothing plays, or for an answer to a request (``net.py``)
        listen = playout.idle or speaker.awaiting(time.monotonic())
        if listen is not speaker.listening:
            speaker.listen(listen)
            if listen:  # the datagrams nudge the beat: no grid between them
                r.align(None)
        if speaker.anchor is not None:
            if not listen:  # the beats half a packet after the newest LOAS
                r.align(speaker.anchor + playout.ptime_s / 2)
            speaker.anchor = None

    def ask(job: Callable[[], None]) -> None:
        # The time is asked between two packets (``net.py``, ``tick``): a beat that follows
        # the stream is half a packet after one; a datagram's nudge is right after it.
        if speaker.listening:
            r.offbeat(job, "time")
        else:
            job()

    r = Rhythm(play, period)
    r.every("handshake", TICK_S, lambda: tick(speaker, ask))
    r.every("emergency", EMERGENCY_TICK_S, lambda: emergency_tick(emergency, speaker, cfg))
    speaker.nudge = r.nudge
    return r


def open_socket(bind: Addr, family: int) -> socket.socket:
    """The speaker's one UDP socket, bound and non-blocking (``net.py`` reads it)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind(bind)
    except OSError:
        sock.close()
        raise
    return sock


async def serve(cfg: SpeakerConfig) -> int:
    """Run a speaker until SIGINT/SIGTERM; returns the exit status."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in cfg.bind[0] else socket.AF_INET
    upstreams = [await resolve(u, family) for u in cfg.upstream]
    password = cfg.mqtt.password() if cfg.mqtt is not None else None
    mqtt_tls = cfg.mqtt.tls_context() if cfg.mqtt is not None else None
    https = server_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert and cfg.tls_key else None

    configured = cfg.channel
    if (moved := placement.moved_to(Path(cfg.cache_dir), configured)) is not None:
        log.info("playing channel %s, where the control plane moved it (config: %s)",
                 moved, configured)
        cfg.channel = cfg.zone = moved
    clock = LocalClock(cfg.clock_offset_ms, cfg.clock_drift_ppm)
    if cfg.clock_offset_ms or cfg.clock_drift_ppm:
        log.warning("running on a clock %+g ms off and %+g ppm fast (a test setting)",
                    cfg.clock_offset_ms, cfg.clock_drift_ppm)
    t0 = clock.now()
    sink = open_sink(cfg, t0)
    overlay: ToneOverlay | None = None
    if cfg.mqtt is not None:  # the test tone and the telemetry level meter
        from .mqtt import ToneOverlay

        sink = overlay = ToneOverlay(sink)
    play_log = PlayLog(cfg.log) if cfg.log else None
    link: DeviceLink | None = None
    forward: ForwardPath | None = None

    def on_event(event: dict[str, Any]) -> None:
        if play_log:
            play_log.write(event)
        try:
            emergency.on_event(event)
        except Exception:  # called from inside the playout: never let it stop playing
            log.exception("emergency cache failed on %s", event.get("event"))
        if forward is not None:
            forward.on_event(event)
        if link is not None and event.get("event") == "play":
            # the log is on this speaker's clock; upstream, times are the streamer's
            shift = speaker.time.shift_s()
            link.report_played({**event, "start": event["start"] + shift,
                                "end": event["end"] + shift})

    playout = Playout(
        sink, OpusDecoder(), t0, delay_ms=cfg.delay_ms, volume_pct=cfg.volume, muted=cfg.mute,
        capacity=max(512, cfg.delay_ms // 5), on_event=on_event,
        emergency_volume_pct=cfg.emergency_volume,
        # the level of what played is for the play log and the MQTT link's proof of play
        measure_level=bool(cfg.log) or cfg.mqtt is not None,
    )
    emergency, writer = await open_emergency(cfg, playout)
    if play_log:
        play_log.write({"event": "start", "t0": playout.timeline.t0, "rate_hz": RATE_HZ,
                        "channel": cfg.channel, "speaker": cfg.id,
                        # this clock against the system's (they differ only in tests)
                        "wall_t0": clock.wall(playout.timeline.t0),
                        "clock_drift_ppm": cfg.clock_drift_ppm})
    tokens = cfg.token_source()
    client = subscribe.SubscribeClient(identity=cfg.id, channel=cfg.channel, upstreams=upstreams,
                                       failover_s=cfg.failover_s,
                                       silence_s=cfg.silence_ms / 1000,
                                       token=tokens.token if tokens is not None else b"")
    trusted = cfg.trusted_keys()
    keys = trusted.keyring if trusted is not None and cfg.verify_media else None
    if keys is None:
        log.warning("verify_media is off: this speaker plays media nobody signed")
    gate = None if keys is None else MediaGate[tuple[RtpPacket, float]](cfg.channel, keys)
    # a packet asked for again is still worth having until its frame is decoded, one frame
    # before its play time; it was found missing when the next one came, a frame after it
    recovery = (LossTracker(deadline_s=max(0.05, cfg.delay_ms / 1000 - 0.04))
                if cfg.retransmit else None)
    speaker = Speaker(client, playout, Latency(), gate, StreamerTime(clock.now_ns), recovery)
    speaker.tokens = tokens
    registry = None  # metrics only for someone to read them: HTTP (the MQTT link keeps some)
    if cfg.http or cfg.mqtt is not None:
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()
    if cfg.http:
        from .metrics import SpeakerCollector

        assert registry is not None
        registry.register(SpeakerCollector(speaker, emergency, trusted))
    sock = open_socket(cfg.bind, family)
    speaker.attach(sock)
    runner = await announce(cfg, sock, speaker, emergency, registry, upstreams, https)

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    speaker.send(client.start(time.monotonic()))
    beat = rhythm(speaker, playout, clock, emergency, cfg)
    if cfg.mqtt is not None and cfg.zone and trusted is not None and cfg.store_mb > 0:
        forward = store = open_forward(cfg, playout, emergency, trusted, writer)
        if registry is not None:
            from .store import ForwardCollector

            registry.register(ForwardCollector(store))
        beat.every("forward", FORWARD_TICK_S, lambda: forward_tick(store, speaker, cfg))
    tasks = [asyncio.create_task(beat.run())]
    if cfg.http:  # the lag probe wakes the loop 4 times a second: only for a reader
        from common.procmetrics import watch_process

        assert registry is not None
        tasks.append(watch_process(registry))
    if password is not None and overlay is not None:
        assert registry is not None
        link = open_link(cfg, password, speaker, overlay, emergency, registry, family,
                         mqtt_tls, trusted, forward,
                         keep_move=lambda channel: writer.submit(
                             placement.remember, Path(cfg.cache_dir), configured, channel))
        link.start()
    try:
        await stop.wait()
    finally:
        if link is not None:
            await link.close()  # says offline while the broker can still hear us
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if client.state is subscribe.ClientState.SUBSCRIBED:
            speaker.send(client.close())  # BYE: the upstream stops sending at once
        playout.close(clock.now())
        writer.shutdown(wait=True)  # an emergency that was playing is in the cache first
        sink.close()
        if play_log:
            play_log.close()
        speaker.detach()
        sock.close()
        if runner:
            await runner.cleanup()
    log.info("speaker %s stopped", cfg.id)
    return 0


def event_loop() -> Callable[[Coroutine[Any, Any, int]], int]:
    """``uvloop.run`` when uvloop is installed (a project dependency), else ``asyncio.run``.
    The speaker's event loop wakes about 17 times a second while it plays (every 60 ms at
    20 ms packets): in C (libuv) a wake-up costs half what asyncio's Python loop costs
    (``docs/BENCHMARKS.md``, "A lighter speaker")."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``loa speaker``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_config(argv)
        return event_loop()(serve(cfg))
    except ConfigError as e:
        print(f"loa speaker: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # address in use, unwritable WAV or log path
        print(f"loa speaker: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run())
