"""What a speaker tells about itself over HTTP: Prometheus metrics read from the counters the
sans-IO parts keep (at scrape time, nothing per packet), ``/healthz`` and ``/readyz``."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from common.config import Addr
from common.httpsec import add_security_headers
from device.trust import TrustedKeys, auth_metrics, keys_metrics
from wire import subscribe
from wire.auth import MediaGate

from .config import SpeakerConfig
from .emergency import OUTCOMES, EmergencyPath
from .net import Speaker


class SpeakerCollector(Collector):
    """Reads the counters the sans-IO parts keep, at scrape time."""

    def __init__(self, speaker: Speaker, emergency: EmergencyPath,
                 trusted: TrustedKeys | None = None) -> None:
        self.speaker = speaker
        self.emergency = emergency
        self.trusted = trusted

    def collect(self) -> Iterable[Metric]:
        s, e = self.speaker, self.emergency
        jb, p = s.playout.jitter, s.playout

        def counter(name: str, doc: str, value: float) -> Metric:
            return CounterMetricFamily(f"loa_speaker_{name}", doc, value=value)

        latency = HistogramMetricFamily("loa_speaker_latency_seconds",
                                        "Capture to arrival time of RTP packets")
        latency.add_metric([], s.latency.cumulative(), sum_value=s.latency.sum_s)
        yield latency
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
        yield counter("received_bytes", "UDP payload bytes from the current upstream, media, "
                      "RTCP and control (add 28 per datagram for IPv4 and UDP)", s.octets)
        yield counter("received_datagrams", "Datagrams from the current upstream", s.datagrams)
        yield GaugeMetricFamily("loa_speaker_quiet", "1 while the channel has nothing on air "
                                "(its upstream sends a heartbeat, not a stream)",
                                value=int(s.client.quiet))
        t = s.time
        yield counter("time_exchanges", "TIME answers taken from the upstream (clock sync)",
                      t.timeline.filter.taken)
        yield counter("time_rejected", "TIME answers refused as impossible (clock sync)",
                      t.timeline.filter.rejected)
        yield GaugeMetricFamily("loa_speaker_clock_offset_seconds", "The streamer's clock minus "
                                "this speaker's, as the clock sync estimates it (0 before)",
                                value=t.shift_s())
        yield GaugeMetricFamily("loa_speaker_clock_drift_ppm", "How much faster the streamer's "
                                "clock runs than this speaker's, ppm",
                                value=t.timeline.filter.drift_ppm())
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
        if s.recovery is not None:
            r = s.recovery
            nack = CounterMetricFamily(
                "loa_speaker_retransmit_packets", "Packets asked for again (RESEND kind 2), by "
                "outcome: asked (every try), recovered (came after being asked for), abandoned "
                "(given up: played by FEC or PLC)", labels=["outcome"])
            for outcome, n in (("asked", r.asked), ("recovered", r.recovered),
                               ("abandoned", r.abandoned)):
                nack.add_metric([outcome], n)
            yield nack
            yield counter("retransmit_requests", "RESEND kind 2 requests sent", r.requests)
            yield counter("retransmit_request_bytes", "Bytes of those requests (padded to the "
                          "size of their answer)", r.request_bytes)
        yield from gate_metrics(s.gate)
        yield from keys_metrics(self.trusted)


def gate_metrics(gate: MediaGate[Any] | None) -> Iterable[Metric]:
    """What a receiver's gate counted (the speaker's; ``docs/metrics.md``, "Signed media")."""
    if gate is None:
        yield from auth_metrics(False, {}, {}, "only media the streamer signed plays")
        return
    yield from auth_metrics(True, gate.dropped, gate.loas, "only media the streamer signed plays")
    yield GaugeMetricFamily("loa_media_auth_held_packets",
                            "Packets waiting for the LOAS of their batch", value=len(gate))


def health(cfg: SpeakerConfig, speaker: Speaker, emergency: EmergencyPath) -> dict[str, Any]:
    c, p = speaker.client, speaker.playout
    return {
        "speaker": cfg.id,
        "channel": c.channel,  # the one it plays now (a move changes it)
        "state": c.state.name.lower(),
        "upstream": f"{c.upstream[0]}:{c.upstream[1]}",
        "failovers": c.failovers,
        "quiet": c.quiet,
        "buffer_depth": p.jitter.depth,
        "broadcast": p.broadcast_id,
        "t0": p.timeline.t0,
        "packets_received": p.jitter.received,
        "emergency": emergency.status(time.time()),
    }


async def start_http(cfg: SpeakerConfig, speaker: Speaker, emergency: EmergencyPath,
                     registry: CollectorRegistry, https: ssl.SSLContext | None = None
                     ) -> tuple[web.AppRunner, Addr]:
    """Serve health, readiness and metrics on ``cfg.http``; over TLS with ``https``."""
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

    app = add_security_headers(web.Application(), hsts=https is not None)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.http[0], cfg.http[1], ssl_context=https)
    await site.start()
    bound = runner.addresses[0] if runner.addresses else cfg.http  # the real port when :0
    return runner, (str(bound[0]), int(bound[1]))
