"""``loa speaker``: the software IP speaker process (sockets, clocks, signals, HTTP).

One UDP socket carries the subscribe handshake and the media from the current upstream; every
datagram is demultiplexed here (control, RTCP, RTP) and handed to the sans-IO parts
(:class:`~streamer.rtp.subscribe.SubscribeClient`, :class:`~clients.speaker.playout.Playout`).
This edge must never let a datagram, however malformed, stop the process: each one is counted
under ``loa_speaker_bad_datagrams_total{reason}`` and dropped.

Configuration, lowest precedence first: defaults, ``--config FILE.toml`` (same keys with
underscores), environment ``LOA_SPEAKER_<KEY>`` (``LOA_SPEAKER_UPSTREAM`` comma-separated),
command-line flags.

With ``mqtt_url`` set the speaker also joins the MQTT control plane (``mqtt.py``,
``docs/mqtt.md``): retained status with a last will, telemetry, proof of play, commands, and the
emergency states of its zones. The broker being away never affects playout.

Emergency audio is cached under ``cache_dir`` and replayed from there while the network is gone
(``emergency.py``); the cache is read once at start-up and written by one worker thread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.config import Addr, ConfigError, check_range, load
from common.procmetrics import watch_process
from fanout import udp
from streamer.control.fleet import DeviceLink, check_device_mqtt, read_password_file
from streamer.control.messages import valid_zone_id
from streamer.rtp import packet, rtcp, subscribe
from streamer.rtp.packet import MalformedPacket

from .emergency import OUTCOMES, EmergencyCache, EmergencyPath, stream_lost
from .mqtt import SpeakerDevice, ToneOverlay
from .output import NullSink, PlayLog, Sink, SoundcardSink, WavSink
from .playout import RATE_HZ, OpusDecoder, Playout, play_forever

log = logging.getLogger("loa.speaker")

TICK_S = 0.2
BAD_REASONS = ("malformed", "foreign_source", "foreign_ssrc", "bad_capture_time", "error")
# A capture time further than this from our wall clock cannot be placed on the timeline: the
# sender is broken or hostile (clocks are NTP-disciplined to well under a second).
CAPTURE_WINDOW_S = 10.0
DRAIN = 128  # queued datagrams read per wake-up beyond asyncio's one (2.5 s at 20 ms)
MAX_DATAGRAM = 65535  # never truncate: a cut packet would be read as a malformed one


@dataclass
class SpeakerConfig:
    channel: str = ""
    upstream: list[Addr] = field(default_factory=list)
    id: str = ""
    bind: Addr = ("0.0.0.0", 0)
    delay_ms: int = 300
    wav: str | None = None
    log: str | None = None
    volume: float = 100.0
    mute: bool = False
    http: Addr | None = None
    failover_s: float = 3.0
    mqtt_url: str | None = None
    mqtt_user: str = ""
    mqtt_password_file: str | None = None
    mqtt_keepalive_s: int = 30
    telemetry_s: float = 10.0
    zone: str = ""
    var_dir: str = "var"
    cache_dir: str = ""
    emergency_volume: float = 100.0
    offline_after_s: float = 10.0
    emergency_repeat_s: float | None = None

    def __post_init__(self) -> None:
        if not self.channel:
            raise ConfigError("channel", "required")
        if not self.upstream:
            raise ConfigError("upstream", "at least one host:port required")
        self.id = self.id or socket.gethostname()
        check_range("delay_ms", self.delay_ms, 0, 10_000)
        check_range("volume", self.volume, 0, 100)
        check_range("failover_s", self.failover_s, 0.2, 3600)
        check_range("emergency_volume", self.emergency_volume, 0, 100)
        check_range("offline_after_s", self.offline_after_s, 0.2, 3600)
        if self.emergency_repeat_s is not None:
            check_range("emergency_repeat_s", self.emergency_repeat_s, 1, 86_400)
        # one directory per speaker id: several simulated speakers may share a var dir
        self.cache_dir = self.cache_dir or str(Path(self.var_dir) / "cache" / self.id)
        check_device_mqtt(self)
        if self.zone and not valid_zone_id(self.zone):
            raise ConfigError("zone", f"{self.zone!r} is not a dotted zone id")
        if self.mqtt_url:
            # a channel is named after its leaf zone
            self.zone = self.zone or (self.channel if valid_zone_id(self.channel) else "")


def _arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loa speaker", description="Software IP speaker.")
    p.add_argument("--config", help="TOML file with the same keys (underscores)")
    p.add_argument("--id", help="speaker identity (default: host name)")
    p.add_argument("--channel", help="channel to play")
    p.add_argument("--upstream", action="append", metavar="HOST:PORT",
                   help="relay or streamer; repeat for failover, in order of preference")
    p.add_argument("--bind", metavar="HOST:PORT", help="local UDP address (default 0.0.0.0:0)")
    p.add_argument("--delay-ms", type=int, help="playout delay after capture time (default 300)")
    p.add_argument("--wav", metavar="PATH", help="write the output to this WAV file")
    p.add_argument("--log", metavar="PATH", help="proof-of-play log (JSON lines)")
    p.add_argument("--volume", type=float, help="0-100 %%, dB law: 100 = 0 dB, 0.5 dB per %%")
    p.add_argument("--mute", action="store_true", default=None,
                   help="start muted (keeps receiving and logging, plays silence)")
    p.add_argument("--http", metavar="HOST:PORT", help="serve /healthz, /readyz and /metrics here")
    p.add_argument("--failover-s", type=float,
                   help="move to the next upstream after this long without progress (default 3)")
    p.add_argument("--mqtt-url", metavar="URL",
                   help="join the control plane: mqtt://host:port (or mqtts://)")
    p.add_argument("--mqtt-user", help="MQTT user name (default: the speaker id)")
    p.add_argument("--mqtt-password-file", metavar="PATH",
                   help="file whose first line is the MQTT password")
    p.add_argument("--mqtt-keepalive-s", type=int,
                   help="MQTT keepalive; the broker says offline after 1.5x (default 30)")
    p.add_argument("--telemetry-s", type=float, help="telemetry period (default 10)")
    p.add_argument("--zone", help="leaf zone id for group commands (default: the channel)")
    p.add_argument("--var-dir", help="where the speaker keeps state (default ./var)")
    p.add_argument("--cache-dir", metavar="PATH",
                   help="emergency audio and states (default VAR_DIR/cache/ID)")
    p.add_argument("--emergency-volume", type=float,
                   help="volume of emergencies until an emergency state says otherwise "
                        "(default 100)")
    p.add_argument("--offline-after-s", type=float,
                   help="no packet for this long means no stream: replay a cached emergency "
                        "(default 10)")
    p.add_argument("--emergency-repeat-s", type=float,
                   help="replay cadence used instead of each emergency's repeat_s (tests, "
                        "demos; default: the emergency's own)")
    return p


def load_config(argv: Sequence[str] | None = None,
                env: Mapping[str, str] | None = None) -> SpeakerConfig:
    args = vars(_arg_parser().parse_args(argv))
    return load(SpeakerConfig, args, env_prefix="LOA_SPEAKER_", path=args.pop("config"), env=env,
                section="speaker")


# --------------------------------------------------------------------------- the UDP edge


class Speaker(asyncio.DatagramProtocol):
    """Demultiplexes the speaker's socket into the handshake and the playout."""

    def __init__(self, client: subscribe.SubscribeClient, playout: Playout,
                 latency: Histogram) -> None:
        self.client = client
        self.playout = playout
        self.latency = latency
        self.ssrc = packet.ssrc_for(client.channel)
        self.transport: asyncio.DatagramTransport | None = None
        self.last_media = time.monotonic()  # of the last packet played; the start until then
        self.bad = dict.fromkeys(BAD_REASONS, 0)
        self.control = 0
        self.rtcp = 0
        self._error_logged = float("-inf")
        self._sock: socket.socket | None = None  # reads the backlog (fanout/udp.py)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # the selector loop's UDP transport does not subclass DatagramTransport (3.11)
        self.transport = cast(asyncio.DatagramTransport, transport)
        self._sock = udp.duplicate(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, out: Iterable[tuple[bytes, Addr]]) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for data, addr in out:
            self.transport.sendto(data, addr)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._datagram(data, addr)
        self.drain()

    def drain(self) -> None:
        """Read what has queued on the socket. After a pause (this CPU taken for a second),
        the backlog must reach the playout before its next turn: at asyncio's one datagram
        per wake-up it would find a second of stream missing and end the broadcast, then
        start it again."""
        if self._sock is not None:
            udp.drain(self._sock, self._datagram, DRAIN, MAX_DATAGRAM, self.error_received)

    def _datagram(self, data: bytes, addr: Any) -> None:
        try:
            self._receive(data, (addr[0], addr[1]))
        except MalformedPacket:
            self.bad["malformed"] += 1
        except Exception:
            # A bug, not bad input: an exception escaping here would make asyncio close the
            # socket, i.e. silence the speaker. Count it and log at most once a minute.
            self.bad["error"] += 1
            now = time.monotonic()
            if now - self._error_logged > 60:
                self._error_logged = now
                log.exception("datagram from %s failed", addr)

    def _receive(self, data: bytes, addr: Addr) -> None:
        client = self.client
        if addr != client.upstream:  # cheapest filter first: only the current upstream talks
            self.bad["foreign_source"] += 1
            return
        if subscribe.is_control(data):
            self.control += 1
            before = client.index
            self.send(client.handle(data, addr, time.monotonic()))
            if client.index != before:
                log.warning("upstream %s refused us; trying %s", addr, client.upstream)
            return
        if packet.is_rtcp(data):
            rtcp.parse_compound(data)  # sender reports are not needed: capture times are
            self.rtcp += 1
            return
        if not packet.is_rtp(data):
            raise MalformedPacket("neither control, RTCP nor RTP")
        pkt = packet.parse(data)
        if pkt.ssrc != self.ssrc:
            self.bad["foreign_ssrc"] += 1
            return
        capture_time = pkt.capture_time
        now = time.time()
        if capture_time is None or abs(now - capture_time) > CAPTURE_WINDOW_S:
            self.bad["bad_capture_time"] += 1
            return
        self.last_media = time.monotonic()
        client.on_media(self.last_media)
        self.latency.observe(max(0.0, now - capture_time))
        self.playout.receive(pkt, capture_time)

    def error_received(self, exc: Exception) -> None:
        log.debug("socket error (ICMP from a dead upstream?): %s", exc)


async def tick_forever(speaker: Speaker) -> None:
    """Handshake retries, keepalives and failover, every 200 ms."""
    client = speaker.client
    while True:
        before = client.index
        speaker.send(client.tick(time.monotonic()))
        if client.index != before:
            log.warning("failing over to upstream %s:%d", *client.upstream)
        await asyncio.sleep(TICK_S)


async def emergency_forever(emergency: EmergencyPath, speaker: Speaker,
                            cfg: SpeakerConfig) -> None:
    """Offline replay decisions every 200 ms. A failure is logged (once a minute at most) and
    the loop goes on: this task must outlive any bug in it."""
    logged = float("-inf")
    while True:
        try:
            silent_s = time.monotonic() - speaker.last_media
            subscribed = speaker.client.state is subscribe.ClientState.SUBSCRIBED
            emergency.tick(time.time(), stream_lost(silent_s, subscribed, cfg.offline_after_s,
                                                    cfg.failover_s))
        except Exception:
            if time.monotonic() - logged > 60:
                logged = time.monotonic()
                log.exception("emergency tick failed")
        await asyncio.sleep(TICK_S)


# --------------------------------------------------------------------------- metrics, HTTP


class SpeakerCollector(Collector):
    """Reads the counters the sans-IO parts keep, at scrape time."""

    def __init__(self, speaker: Speaker, emergency: EmergencyPath) -> None:
        self.speaker = speaker
        self.emergency = emergency

    def collect(self) -> Iterable[Metric]:
        s, e = self.speaker, self.emergency
        jb, p = s.playout.jitter, s.playout

        def counter(name: str, doc: str, value: float) -> Metric:
            return CounterMetricFamily(f"loa_speaker_{name}", doc, value=value)

        yield counter("packets_received", "RTP packets of our channel received", jb.received)
        yield counter("packets_lost", "Frames missing at play time (FEC, PLC or skipped)",
                      jb.lost)
        yield counter("packets_late", "Packets arriving after their frame was played", jb.late)
        yield counter("packets_duplicate", "Duplicate packets dropped", jb.duplicates)
        yield counter("jitter_resets", "Sequence restarts accepted (upstream restart)",
                      jb.resets)
        yield counter("fec_recoveries", "Frames recovered with Opus in-band FEC", p.fec)
        yield counter("plc_frames", "Frames concealed with Opus PLC", p.plc)
        yield counter("late_samples", "Samples trimmed because they came after their time",
                      p.late_samples)
        yield counter("control_messages", "Handshake messages from the upstream", s.control)
        yield counter("rtcp_packets", "RTCP datagrams received (ignored)", s.rtcp)
        yield counter("failovers", "Moves to another upstream", s.client.failovers)
        bad = CounterMetricFamily("loa_speaker_bad_datagrams", "Datagrams dropped, by reason",
                                  labels=["reason"])
        for reason, n in s.bad.items():
            bad.add_metric([reason], n)
        bad.add_metric(["bad_opus"], p.bad_payloads)
        yield bad
        yield GaugeMetricFamily("loa_speaker_buffer_depth_packets", "Packets in the jitter buffer",
                                value=jb.depth)
        yield GaugeMetricFamily("loa_speaker_subscribed", "1 when media is subscribed",
                                value=float(s.client.state is subscribe.ClientState.SUBSCRIBED))
        yield GaugeMetricFamily("loa_speaker_broadcast_id", "Broadcast on air (0 = none)",
                                value=p.broadcast_id)
        yield GaugeMetricFamily("loa_speaker_emergency_playing",
                                "1 while an emergency plays (streamed, or replayed locally)",
                                value=float(p.emergency_playing))
        yield counter("emergency_replays", "Cached emergencies replayed by the speaker itself "
                      "for want of a stream", e.replays)
        states = CounterMetricFamily("loa_speaker_emergency_states",
                                     "Emergency states received, by outcome", labels=["outcome"])
        for outcome in OUTCOMES:
            states.add_metric([outcome], e.messages[outcome])
        yield states


def health(cfg: SpeakerConfig, speaker: Speaker, emergency: EmergencyPath) -> dict[str, Any]:
    c, p = speaker.client, speaker.playout
    return {
        "speaker": cfg.id,
        "channel": cfg.channel,
        "state": c.state.name.lower(),
        "upstream": f"{c.upstream[0]}:{c.upstream[1]}",
        "failovers": c.failovers,
        "buffer_depth": p.jitter.depth,
        "broadcast": p.broadcast_id,
        "t0": p.timeline.t0,
        "packets_received": p.jitter.received,
        "emergency": emergency.status(time.time()),
    }


async def start_http(cfg: SpeakerConfig, speaker: Speaker, emergency: EmergencyPath,
                     registry: CollectorRegistry) -> tuple[web.AppRunner, Addr]:
    assert cfg.http is not None

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(health(cfg, speaker, emergency))

    async def readyz(_: web.Request) -> web.Response:
        ok = speaker.client.state is subscribe.ClientState.SUBSCRIBED
        return web.json_response({"ready": ok, "checks": {"subscribed": ok}},
                                 status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": "text/plain; version=0.0.4"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.http[0], cfg.http[1])
    await site.start()
    bound = runner.addresses[0] if runner.addresses else cfg.http  # the real port when :0
    return runner, (str(bound[0]), int(bound[1]))


# --------------------------------------------------------------------------- process


async def _resolve(addr: Addr, family: int) -> Addr:
    """SubscribeClient compares source addresses, so names must become the IPs replies use."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            addr[0], addr[1], family=family, type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise ConfigError("upstream", f"cannot resolve {addr[0]}: {e}") from None
    sockaddr = infos[0][4]
    return str(sockaddr[0]), int(sockaddr[1])


def open_sink(cfg: SpeakerConfig, t0: float) -> Sink:
    if cfg.wav:
        return WavSink(cfg.wav, t0)
    if SoundcardSink.available():
        return SoundcardSink()
    return NullSink()


def mqtt_password(cfg: SpeakerConfig) -> str:
    assert cfg.mqtt_password_file is not None
    try:
        return read_password_file(cfg.mqtt_password_file)
    except (OSError, ValueError) as e:  # the message names the file, never its content
        raise ConfigError("mqtt_password_file", f"{cfg.mqtt_password_file}: {e}") from None


async def serve(cfg: SpeakerConfig) -> int:
    """Run a speaker until SIGINT/SIGTERM; returns the exit status."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in cfg.bind[0] else socket.AF_INET
    upstreams = [await _resolve(u, family) for u in cfg.upstream]
    password = mqtt_password(cfg) if cfg.mqtt_url else None

    t0 = time.time()
    sink = open_sink(cfg, t0)
    overlay = None
    if cfg.mqtt_url:  # the test tone and the telemetry level meter
        sink = overlay = ToneOverlay(sink)
    play_log = PlayLog(cfg.log) if cfg.log else None
    link: DeviceLink | None = None

    def on_event(event: dict[str, Any]) -> None:
        if play_log:
            play_log.write(event)
        try:
            emergency.on_event(event)
        except Exception:  # called from inside the playout: never let it stop playing
            log.exception("emergency cache failed on %s", event.get("event"))
        if link is not None and event.get("event") == "play":
            link.report_played(event)

    playout = Playout(
        sink, OpusDecoder(), t0, delay_ms=cfg.delay_ms, volume_pct=cfg.volume, muted=cfg.mute,
        capacity=max(512, cfg.delay_ms // 5), on_event=on_event,
        emergency_volume_pct=cfg.emergency_volume,
    )
    cache = EmergencyCache(Path(cfg.cache_dir))
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emergency-cache")
    emergency = EmergencyPath(
        playout, cache, cached=await asyncio.to_thread(cache.load), states=cache.load_states(),
        volume_pct=cfg.emergency_volume, repeat_override_s=cfg.emergency_repeat_s,
        submit=writer.submit)
    playout.capture = emergency.recorder.add
    if play_log:
        play_log.write({"event": "start", "t0": playout.timeline.t0, "rate_hz": RATE_HZ,
                        "channel": cfg.channel, "speaker": cfg.id})
    client = subscribe.SubscribeClient(identity=cfg.id, channel=cfg.channel, upstreams=upstreams,
                                       failover_s=cfg.failover_s, media_timeout_s=cfg.failover_s)
    registry = CollectorRegistry()
    latency = Histogram("loa_speaker_latency_seconds", "Capture to arrival time of RTP packets",
                        buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0),
                        registry=registry)
    speaker = Speaker(client, playout, latency)
    registry.register(SpeakerCollector(speaker, emergency))

    transport, _ = await loop.create_datagram_endpoint(lambda: speaker, local_addr=cfg.bind,
                                                       family=family)
    bound = transport.get_extra_info("sockname")
    listening: dict[str, Any] = {"event": "listening", "speaker": cfg.id,
                                 "udp": f"{bound[0]}:{bound[1]}"}
    runner = None
    if cfg.http:
        runner, http_bound = await start_http(cfg, speaker, emergency, registry)
        listening["http"] = f"{http_bound[0]}:{http_bound[1]}"
    print(json.dumps(listening), flush=True)  # tests and supervisors read the bound ports here
    log.info("speaker %s on %s, channel %s, upstreams %s", cfg.id, listening["udp"],
             cfg.channel, upstreams)

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    speaker.send(client.start(time.monotonic()))
    tasks = [asyncio.create_task(play_forever(playout, receive=speaker.drain)),
             asyncio.create_task(tick_forever(speaker)),
             asyncio.create_task(emergency_forever(emergency, speaker, cfg)),
             watch_process(registry)]
    if cfg.mqtt_url and password is not None and overlay is not None:
        device = SpeakerDevice(channel=cfg.channel, zone=cfg.zone or None, playout=playout,
                               client=client, send=speaker.send, overlay=overlay,
                               resolve=lambda addr: _resolve(addr, family))
        link = DeviceLink(device, url=cfg.mqtt_url, device_id=cfg.id, user=cfg.mqtt_user,
                          password=password, registry=registry, zone=cfg.zone or None,
                          telemetry_s=cfg.telemetry_s, keepalive_s=cfg.mqtt_keepalive_s,
                          on_emergency=lambda state: emergency.on_state(state, time.time()))
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
        playout.close(time.time())
        writer.shutdown(wait=True)  # an emergency that was playing is in the cache first
        sink.close()
        if play_log:
            play_log.close()
        transport.close()
        if runner:
            await runner.cleanup()
    log.info("speaker %s stopped", cfg.id)
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``loa speaker``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_config(argv)
        return asyncio.run(serve(cfg))
    except ConfigError as e:
        print(f"loa speaker: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # address in use, unwritable WAV or log path
        print(f"loa speaker: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run())
