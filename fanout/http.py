"""HTTP routes every media process serves (streamer and relay): SDP, listen-in, health, metrics.

``GET /channels/{id}.sdp`` describes a channel for plain RTP receivers. Such a receiver cannot
do the subscribe handshake, so it can only play a channel that this process pushes to it: a
static destination (``--static CHANNEL=host:port`` on a relay). Without ``?addr=&port=`` the
SDP names the channel's first static destination; with them it names that address (which
must then be configured as a static destination for media to arrive). ``GET
/listen/{channel}.ogg`` streams the channel's Opus packets as Ogg/Opus, unchanged; a quiet
channel's pause (``docs/protocol.md``, "Quiet channels") is filled with Opus silence as its
heartbeats come, so a browser keeps playing in real time instead of waiting. Listen-in
runs off the fan-out path: the listener only enqueues, and a client that cannot keep up is
dropped rather than buffered without bound. Who may listen is the process's to say
(``may_listen``): a relay serves holders of a listen token the streamer signed
(:func:`listen_tokens`), the streamer also signed-in users and public channels. Errors are
JSON naming the offending field.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from wire import token
from wire.auth import Keyring
from wire.ogg import OggOpusWriter
from wire.packet import MalformedPacket, is_rtcp, opus_samples
from wire.packet import parse as parse_rtp
from wire.rtcp import report_ts
from wire.sdp import channel_sdp

from .endpoint import FanoutEndpoint

log = logging.getLogger(__name__)

LISTEN_QUEUE_PACKETS = 250  # 5 s of 20 ms packets: past that the client is too slow
LISTEN_IDLE_CHECK_S = 5.0
MAX_LISTENERS = 200
#: a 20 ms Opus frame of digital silence (CELT fullband, its silence flag set: what libopus
#: makes of zeros), written for each frame of a pause
SILENT_FRAME = b"\xf8\xff\xfe"
SILENT_SAMPLES = 960
MAX_FILL_SAMPLES = 10 * 48_000  # a longer jump is a new stream, not a pause: not filled
TS_MOD = 1 << 32


def pause_frames(next_ts: int, ts: int) -> int:
    """Silent frames that fill a listener's stream from ``next_ts`` (where its last packet
    ended) up to ``ts`` (a packet's or a heartbeat's RTP timestamp); 0 for a timestamp that
    is not ahead, or too far ahead to be a pause."""
    gap = (ts - next_ts) % TS_MOD
    return gap // SILENT_SAMPLES if gap <= MAX_FILL_SAMPLES else 0


def _error(status: int, message: str, field: str) -> web.Response:
    return web.json_response({"error": message, "field": field}, status=status)


class _ListenQueue:
    """The fan-out side of one listen-in client: enqueue, or mark the client as too slow.
    The fan-out may run on another thread than the HTTP handler (the streamer's playout
    thread): the packet then crosses to the handler's loop."""

    __slots__ = ("queue", "overflowed", "_loop", "_thread")

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(size)
        self.overflowed = False
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    def __call__(self, packet: bytes) -> None:
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self._put, packet)
        else:
            self._put(packet)

    def _put(self, packet: bytes) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(packet)
        except asyncio.QueueFull:
            self.overflowed = True


#: ``may_listen(request, channel)``: why a listen-in request is refused, or None
ListenCheck = Callable[[web.Request, str], Awaitable[str | None]]


def listen_tokens(keys: Keyring, wall: Callable[[], float] = time.time) -> ListenCheck:
    """Listen-in for holders of a listen token (``?token=``, ``wire/token.py``) signed by
    ``keys``: what a relay asks, and the streamer of anyone not signed in."""
    async def may_listen(request: web.Request, channel: str) -> str | None:
        data = token.from_url(request.query.get("token", ""))
        if not data:
            return ("listen-in needs a listen token: ?token= from POST /api/v1/listen on the "
                    "streamer")
        verdict = token.check_listen(keys, data, channel, wall())
        return f"listen token refused: {verdict}" if isinstance(verdict, str) else None
    return may_listen


def add_media_routes(
    app: web.Application,
    fanout: FanoutEndpoint,
    *,
    ptime_ms: int,
    public_host: str,
    health: Any = None,
    ready: Any = None,
    may_listen: ListenCheck | None = None,
) -> None:
    """Add ``/channels/{id}.sdp``, ``/listen/{channel}.ogg``, ``/healthz``, ``/readyz`` and
    ``/metrics``.

    ``health`` is an optional callable returning extra JSON fields for ``/healthz``; ``ready``
    an optional coroutine function returning ``{"checks": {"redis": True, …}, …}``: ``/readyz``
    answers 503 while any check is false (a load balancer then sends no one here); its other
    fields (the streamer's ``degraded``, ``pending_writes``) are added to the answer as they are.
    ``may_listen(request, channel)`` says why a listen-in request is refused (401), or None
    to serve it; without it listen-in is open.
    """
    routes = MediaRoutes(fanout, ptime_ms=ptime_ms, public_host=public_host, health=health,
                         ready=ready, may_listen=may_listen)
    app.router.add_get("/channels/{id}.sdp", routes.sdp)
    app.router.add_get("/listen/{channel}.ogg", routes.listen)
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/readyz", routes.readyz)
    app.router.add_get("/metrics", routes.metrics)


class MediaRoutes:
    """The handlers of :func:`add_media_routes`, over one fan-out endpoint."""

    def __init__(self, fanout: FanoutEndpoint, *, ptime_ms: int, public_host: str,
                 health: Any = None, ready: Any = None,
                 may_listen: ListenCheck | None = None) -> None:
        self.fanout = fanout
        self.may_listen = may_listen
        self.ptime_ms = ptime_ms
        self.public_host = public_host
        self.health = health
        self.ready = ready
        self.listeners = 0

    async def sdp(self, request: web.Request) -> web.Response:
        fanout = self.fanout
        channel = request.match_info["id"]
        if not fanout.channel_known(channel):
            return _error(404, f"unknown channel {channel!r}", "channel")
        q = request.query
        if "addr" in q or "port" in q:
            host = q.get("addr", "")
            try:
                ipaddress.ip_address(host)
            except ValueError:
                return _error(400, "addr must be a numeric IPv4 or IPv6 address", "addr")
            try:
                port = int(q.get("port", ""))
                if not 0 < port < 65536:
                    raise ValueError
            except ValueError:
                return _error(400, "port must be an integer in 1..65535", "port")
        else:
            statics = fanout.statics(channel)
            if not statics:
                return _error(
                    404,
                    f"channel {channel!r} has no static destination: a plain RTP receiver "
                    "cannot subscribe, so configure one (relay --static CHANNEL=host:port) "
                    "or ask for ?addr=HOST&port=N of an existing static destination",
                    "channel",
                )
            host, port = statics[0]
        try:
            text = channel_sdp(channel, host, port, ptime_ms=self.ptime_ms,
                               origin=self.public_host, session_name=f"Loa {channel}")
        except ValueError as e:  # e.g. an IPv6 scope that is not one SDP field
            return _error(400, str(e), "addr")
        return web.Response(text=text, content_type="application/sdp")

    async def listen(self, request: web.Request) -> web.StreamResponse:
        fanout = self.fanout
        channel = request.match_info["channel"]
        if not fanout.channel_known(channel):
            return _error(404, f"unknown channel {channel!r}", "channel")
        if self.may_listen is not None and (why := await self.may_listen(request, channel)):
            return _error(401, why, "token")
        if self.listeners >= MAX_LISTENERS:
            return _error(503, "too many listen-in clients", "channel")
        resp = web.StreamResponse(headers={
            "Content-Type": "audio/ogg",
            "Cache-Control": "no-cache, no-store",
            # Public and the same for everyone, so a web page on another origin (a commune's
            # site with an <audio> player) may play it; every other response is same-origin.
            "Cross-Origin-Resource-Policy": "cross-origin",
        })
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        writer = OggOpusWriter(random.getrandbits(32), title=channel)
        await resp.write(writer.headers())
        q = _ListenQueue(LISTEN_QUEUE_PACKETS)
        self.listeners += 1
        fanout.add_listener(channel, q)
        next_ts: int | None = None  # where the last packet written ends, in RTP samples
        try:
            while not q.overflowed:
                try:
                    packet = await asyncio.wait_for(q.queue.get(), LISTEN_IDLE_CHECK_S)
                except TimeoutError:
                    # No media for a while: notice a client that went away meanwhile, or a
                    # channel that upstream has since said does not exist.
                    closing = request.transport is None or request.transport.is_closing()
                    if closing or not fanout.channel_known(channel):
                        break
                    continue
                if is_rtcp(packet):
                    ts = report_ts(packet)
                    if ts is not None and next_ts is not None and (
                            n := pause_frames(next_ts, ts)):
                        await resp.write(b"".join(writer.packet(SILENT_FRAME, SILENT_SAMPLES)
                                                  for _ in range(n)))
                        next_ts = (next_ts + n * SILENT_SAMPLES) % TS_MOD
                    continue
                try:
                    rtp = parse_rtp(packet)
                    samples = opus_samples(rtp.payload)
                except MalformedPacket:
                    continue
                out = [writer.packet(SILENT_FRAME, SILENT_SAMPLES)
                       for _ in range(pause_frames(next_ts, rtp.ts) if next_ts is not None
                                      else 0)]
                out.append(writer.packet(rtp.payload, samples))
                await resp.write(b"".join(out))
                next_ts = (rtp.ts + samples) % TS_MOD
            if q.overflowed:
                log.info("listen-in client %s on %s too slow: dropped", request.remote, channel)
        except ConnectionError:
            pass  # the client went away mid-write
        finally:
            fanout.remove_listener(channel, q)
            self.listeners -= 1
        return resp

    async def healthz(self, request: web.Request) -> web.Response:
        fanout = self.fanout
        media = fanout.local_addr
        body: dict[str, Any] = {
            "status": "ok",
            "process": fanout.process,
            "media": f"{media[0]}:{media[1]}" if media else None,
            "channels": len(fanout.channels()),
            "subscribers": fanout.server.count,
            "listeners": self.listeners,
        }
        if self.health is not None:
            body.update(self.health())
        return web.json_response(body)

    async def readyz(self, request: web.Request) -> web.Response:
        checks: dict[str, bool] = {"media": self.fanout.local_addr is not None}
        more: dict[str, Any] = dict(await self.ready()) if self.ready is not None else {}
        checks.update(more.pop("checks", {}))
        ok = all(checks.values())
        return web.json_response({"ready": ok, "checks": checks, **more},
                                 status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.fanout.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
