"""The streamer process: zone tree → mixer → fan-out endpoint, the frame loop, HTTP, and the
control plane (state in Redis, the scheduler, the MQTT fleet).

Wiring only. Playout — the frame clock, the mixer's ticks and the media socket — runs on a
thread and event loop of its own (``streamer/playout.py``), so nothing the control side does on
the main loop (HTTP, MQTT, Redis, the scheduler) can hold a frame back; CPU-heavy control work
(TTS, decoding, loudness, password hashing) runs in worker threads. The streamer's media socket
answers the same subscribe handshake as a relay, so relays (and, on a small site, speakers)
subscribe to it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from common.config import ConfigError, check_range
from common.httpsec import add_security_headers
from common.opus import OpusSettings
from common.procmetrics import watch_process
from common.tls import check_pair, server_context
from device.mqtt_config import broker_tls_context, check_mqtt_tls, read_password_file
from fanout.endpoint import FanoutEndpoint
from fanout.http import add_media_routes
from streamer.board import add_board_routes
from streamer.console import add_console_routes
from streamer.control import auth
from streamer.control.api import add_api_routes
from streamer.control.api.listen import streamer_may_listen
from streamer.control.broadcasts import Broadcasts, ClipLibrary
from streamer.control.devices import Devices
from streamer.control.fleet import Fleet
from streamer.control.grants import TokenIssuer
from streamer.control.keys import KeyAnnouncer
from streamer.control.lease import Lease, default_holder
from streamer.control.live import studio_input
from streamer.control.peer import ClipMirror, add_peer_routes
from streamer.control.plane import Plane
from streamer.control.presence import STALE_AFTER_S, FleetRecorder
from streamer.control.scheduler import Scheduler
from streamer.control.state import SENTINEL_SCHEME, State, parse_sentinel_url, redis_client
from streamer.control.throttle import LoginThrottle
from streamer.control.upward import UPWARD, Upward
from streamer.live.ingest import IngestServer
from streamer.live.page import add_studio_routes
from streamer.live.webrtc import StudioSession, StudioSessions
from streamer.mixer.clock import FrameClock
from streamer.mixer.mixer import Mixer
from streamer.mixer.sources.clip import MAX_SECONDS as CLIP_MAX_S
from streamer.mixer.sources.tts_http import voice_from_config
from streamer.playout import FrameLoop, Playout
from streamer.signing import SigningSink, key_path, load_or_create_key
from streamer.zones import ZoneTree
from wire.auth import BadKey, Keyring, SigningKey
from wire.packet import ssrc_for

log = logging.getLogger("loa.streamer")
CONTROL_WORKERS = 2
#: long enough for a refusal to reach the client before its connection closes (an unread body
#: then makes the kernel reset it, which can drop an answer not yet read)
LINGER_S = 1.0

_OPUS = OpusSettings()  # the defaults, so they are written once


@dataclass
class StreamerConfig:
    media_host: str = "0.0.0.0"
    media_port: int = 5004
    http_host: str = "0.0.0.0"
    http_port: int = 8000
    public_host: str = "127.0.0.1"
    zones: str | None = None  # path of a zone TOML file; None = the sample tree
    ptime_ms: int = 20
    #: Opus encoder settings (``OpusSettings``; defaults and their reasons in
    #: ``docs/BENCHMARKS.md``, "Opus settings"): VBR target bit rate, application
    #: (audio/voip/lowdelay), complexity 0-10, in-band FEC and the loss it is sized for
    bitrate: int = _OPUS.bitrate
    opus_application: str = _OPUS.application
    opus_complexity: int = _OPUS.complexity
    opus_fec: bool = _OPUS.fec
    opus_loss_perc: int = _OPUS.loss_perc
    #: a channel with nothing on air sends a sender report this often and no media (0: it
    #: streams Opus silence every frame, for plain RTP receivers that cannot take DTX);
    #: subscribers tell such a quiet channel from a dead upstream after 1.5 s without a
    #: heartbeat, so at most 500 ms leaves room for two lost ones (``docs/protocol.md``)
    idle_heartbeat_ms: int = 500
    var_dir: str = "var"
    #: Redis holding all control-plane state (required; ``loa up`` starts a private one)
    redis_url: str = ""
    #: where the first admin's credentials are written when the store has no user yet
    admin_credentials: str = ""
    #: MQTT broker of the fleet ("" = no fleet control); the streamer's own login
    mqtt_url: str = ""
    mqtt_user: str = "streamer"
    mqtt_password_file: str = ""
    #: directory where the broker reads ``passwd``/``acl`` and writes ``mosquitto.pid``:
    #: the streamer keeps them in step with the device registry ("" = managed elsewhere)
    mqtt_broker_dir: str = ""
    #: a device not heard from over MQTT for this long reads ``unknown``, not ``online``
    #: (``docs/api.md``): more than 3 times the devices' ``telemetry_s``
    presence_stale_s: float = STALE_AFTER_S
    #: RTP/SRTP ingest for encoders and ``loa studio`` (``docs/ingest.md``); -1 = off
    ingest_host: str = "0.0.0.0"
    ingest_port: int = 5006
    #: sign-in throttle (``docs/api.md``): failures allowed per client address and per user
    #: name within the window before 429
    login_failures_per_address: int = 20
    login_failures_per_user: int = 5
    login_window_s: float = 300.0
    #: the argon2id cost of a new password hash (``docs/api.md``, "Sign-in throttling"):
    #: memory in KiB and passes; the default is argon2-cffi's (64 MiB, 3 passes)
    password_hash_memory_kib: int = 65_536
    password_hash_time_cost: int = 3
    #: longest decoded duration of an uploaded clip, in seconds (``docs/api.md``, clips)
    clip_max_s: float = CLIP_MAX_S
    #: threads that encode distinct programmes, the playout thread included; 0 = one per core
    #: (``docs/playout.md``)
    mixer_workers: int = 0
    #: the most a frame's tick may begin before its deadline, in ms; 0 = one frame. The lead
    #: adapts below it to how long ticks take (``docs/playout.md``, "The production lead")
    lead_max_ms: float = 0.0
    #: PEM file of the Ed25519 key that signs every channel's media, created (0600) when
    #: missing; "" = ``<var_dir>/signing-key.pem``. SIGHUP reads it again (key rotation,
    #: ``docs/operations.md``, "Signing keys")
    signing_key: str = ""
    #: PEM file of the key to sign with after the next rotation ("" or a missing file: none):
    #: announced in the key set devices get over MQTT, signed by the current key, so that they
    #: trust it before the switch. SIGHUP reads it again (``docs/operations.md``, "Signing keys")
    next_signing_key: str = ""
    #: relays (and speakers) subscribing here must present a token this streamer signed
    #: (``wire/token.py``, ``loa token``); on by default, off only on a test bench
    #: (``docs/operations.md``, "Subscription tokens")
    require_tokens: bool = True
    #: how long the tokens issued to registered devices over MQTT last, hours (renewed every
    #: third of it; ``docs/operations.md``, "Subscription tokens")
    token_lifetime_h: float = 24.0
    #: HTTPS instead of HTTP: PEM certificate chain and its key, both or neither
    #: (``docs/operations.md``, "TLS")
    tls_cert: str = ""
    tls_key: str = ""
    #: ``mqtts://`` only: PEM CA certificates of the broker ("" = the system's), and a client
    #: certificate and its key for a broker that asks for one
    mqtt_ca: str = ""
    mqtt_cert: str = ""
    mqtt_key: str = ""
    #: a pair of streamers on one Redis: the time to live of the lease that makes one of them
    #: active, in ms; 0 = this streamer is the only one, always active
    #: (``docs/operations.md``, "A standby streamer")
    ha_lease_ms: int = 0
    #: this streamer's name in the lease ("" = host:pid:random)
    ha_id: str = ""
    #: where the other streamer of the pair reaches this one's HTTP, to copy its clips
    #: ("" = the URL it serves: ``public_host`` and ``http_port``)
    ha_peer_url: str = ""
    #: a priority bulletin from above airs by itself after this long unless an operator
    #: decided (``docs/api.md``, "Bulletins from above"); a request may say otherwise
    inbound_decide_s: float = 600.0
    #: a commercial voice over HTTP: its voice file (TOML: endpoint, credentials file, voices
    #: per zone, request and response shapes); "" = espeak-ng only (``docs/operations.md``,
    #: "Voices")
    tts_voice_file: str = ""
    #: the province's own bulletin terms (TOML or JSON ``terms`` table: term -> spoken form),
    #: read on top of the built-in lexicon; "" = the built-in one only
    tts_lexicon: str = ""
    #: reports upward (``docs/reports-upward.md``): the central system's webhook ("" = no
    #: push), the file holding the HMAC-SHA256 key that signs each push, and the period each
    #: report covers (daily: yesterday's local day; weekly: last ISO week)
    report_webhook_url: str = ""
    report_webhook_secret_file: str = ""
    report_period: str = "daily"

    def __post_init__(self) -> None:
        if self.ptime_ms not in (20, 40, 60):
            raise ConfigError("ptime_ms", "must be 20, 40 or 60")
        self.opus  # noqa: B018 (building the settings validates them)
        check_range("media_port", self.media_port, 0, 65_535)
        check_range("http_port", self.http_port, 0, 65_535)
        check_range("ingest_port", self.ingest_port, -1, 65_535)
        check_range("login_failures_per_address", self.login_failures_per_address, 1, 10**9)
        check_range("login_failures_per_user", self.login_failures_per_user, 1, 10**9)
        check_range("login_window_s", self.login_window_s, 1, 86_400)
        # argon2 needs 8 KiB per lane (4 lanes); above 4 GiB a sign-in would swap a small box
        check_range("password_hash_memory_kib", self.password_hash_memory_kib, 32, 4 * 2**20)
        check_range("password_hash_time_cost", self.password_hash_time_cost, 1, 100)
        check_range("clip_max_s", self.clip_max_s, 1, 86_400)
        check_range("mixer_workers", self.mixer_workers, 0, 256)
        check_range("lead_max_ms", self.lead_max_ms, 0, self.ptime_ms)
        check_range("idle_heartbeat_ms", self.idle_heartbeat_ms, 0, 500)
        check_range("token_lifetime_h", self.token_lifetime_h, 0.01, 24 * 30)
        check_range("presence_stale_s", self.presence_stale_s, 1, 86_400)
        check_range("inbound_decide_s", self.inbound_decide_s, 1, 86_400)
        if self.ha_lease_ms:
            check_range("ha_lease_ms", self.ha_lease_ms, 300, 60_000)
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://", SENTINEL_SCHEME)):
            raise ConfigError("redis_url", "must be a redis:// or redis+sentinel:// URL (set "
                              "LOA_REDIS_URL)")
        if self.redis_url.startswith(SENTINEL_SCHEME):
            try:
                parse_sentinel_url(self.redis_url)
            except ValueError as e:
                raise ConfigError("redis_url", str(e)) from None
        check_pair("tls_cert", self.tls_cert, "tls_key", self.tls_key)
        if self.report_period not in ("daily", "weekly"):
            raise ConfigError("report_period", "must be daily or weekly")
        if self.report_webhook_url:
            if not self.report_webhook_url.startswith(("http://", "https://")):
                raise ConfigError("report_webhook_url", "must be an http:// or https:// URL")
            if not self.report_webhook_secret_file:
                raise ConfigError("report_webhook_secret_file",
                                  "is required with report_webhook_url (the HMAC key)")
        check_mqtt_tls(self.mqtt_url, self.mqtt_ca, self.mqtt_cert, self.mqtt_key)

    @property
    def opus(self) -> OpusSettings:
        return OpusSettings(application=self.opus_application, complexity=self.opus_complexity,
                            fec=self.opus_fec, loss_perc=self.opus_loss_perc,
                            bitrate=self.bitrate)


class Streamer:
    """The wired process; ``start`` binds everything, ``close`` releases it."""

    def __init__(self, cfg: StreamerConfig) -> None:
        self.cfg = cfg
        self.registry = CollectorRegistry()
        self.zones = ZoneTree.load(cfg.zones)
        self.http_url = ""
        self.media_addr = ""

    async def start(self) -> None:
        cfg = self.cfg
        # the TLS files are read before any socket opens: a bad one is a ConfigError naming it
        https = server_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert else None
        mqtt_tls = broker_tls_context(cfg.mqtt_url, cfg.mqtt_ca, cfg.mqtt_cert, cfg.mqtt_key)
        report_secret = self._report_secret()
        loop = asyncio.get_running_loop()
        # Few control workers: each thread that wants the GIL is one more the playout thread
        # may queue behind (docs/playout.md); control work can wait, frames cannot.
        loop.set_default_executor(ThreadPoolExecutor(CONTROL_WORKERS, "loa-work"))
        self.process_watch = watch_process(self.registry)
        channels = self.zones.channels()
        #: the channels the media endpoint answers for; zone edits change it (``_rechannel``)
        self.known = known = set(channels)
        self.key_path = key_path(cfg.signing_key, cfg.var_dir)
        try:
            key = load_or_create_key(self.key_path)
        except BadKey as e:
            raise ConfigError("signing_key", f"{self.key_path}: {e}") from None
        self.next_key_path = (Path(os.path.expanduser(cfg.next_signing_key))
                              if cfg.next_signing_key else None)
        try:
            next_key = self._next_key()
        except BadKey as e:
            raise ConfigError("next_signing_key", str(e)) from None
        #: the key set retained for the fleet (published once the fleet's broker is known)
        self.key_set = KeyAnnouncer(key, next_key, registry=self.registry)
        #: the keys subscribers' tokens may be signed with: this one, and the next after a
        #: rotation (tokens signed before it stay good until they expire)
        self.token_keys = Keyring([key.public]) if cfg.require_tokens else None
        #: the keys listen tokens may be signed with (grows on a rotation, like token_keys)
        self.listen_keys = Keyring([key.public])
        self.fanout = FanoutEndpoint(
            channel_ssrc=lambda c: ssrc_for(c) if c in known else None,
            registry=self.registry, process="streamer", ptime_ms=cfg.ptime_ms,
            tokens=self.token_keys,
            timeline=self._timeline_ns,
        )
        self.playout = Playout()
        self.playout.start()
        if not self.playout.raised_priority:
            log.warning("playout runs at the default priority (raising it needs CAP_SYS_NICE): "
                        "a machine busy with other work can delay frames")
        media = await self.playout.run(self.fanout.start(cfg.media_host, cfg.media_port))
        self.clock = FrameClock(cfg.ptime_ms, start_mono=loop.time(), start_wall=time.time())
        self.signing = SigningSink(self.fanout, key, self.registry, cfg.ptime_ms)
        log.info("media signed with key %08x, public key %s", self.signing.key.id,
                 self.signing.key.public_text)
        self.mixer = Mixer(channels, self.clock, self.signing, wall=time.time, opus=cfg.opus,
                           registry=self.registry, workers=cfg.mixer_workers or None,
                           idle_heartbeat_ms=cfg.idle_heartbeat_ms or None)
        log.info("Opus encoder: %s", cfg.opus.label())
        self.state = State(cfg.redis_url, Path(cfg.var_dir) / "state-journal.jsonl",
                           self.registry)
        self.clips = clips = ClipLibrary(Path(cfg.var_dir) / "clips", max_seconds=cfg.clip_max_s)
        tts = voice_from_config(cfg.tts_voice_file, cfg.tts_lexicon, cfg.var_dir, self.registry)
        self.broadcasts = Broadcasts(self.mixer, self.zones.leaves, clips, self.state, tts=tts,
                                     registry=self.registry)
        # The mixer reports from the playout thread; the broadcasts (which set on_finished)
        # live on this loop.
        finished = self.mixer.on_finished
        self.mixer.on_finished = lambda item_id: loop.call_soon_threadsafe(finished, item_id)
        password = read_password_file(cfg.mqtt_password_file) if cfg.mqtt_password_file else ""
        devices = Devices(self.state, broker_dir=cfg.mqtt_broker_dir,
                          service_user=cfg.mqtt_user, service_password=password)
        recorder = FleetRecorder(self.state, self.registry, cfg.presence_stale_s)
        self.plane = Plane(self.state, self.zones, self.broadcasts, clips, self.broadcasts.tts,
                           self.mixer, self.registry, devices, recorder)
        self._broker_login = password, mqtt_tls  # read now: a bad file fails the start
        self.plane.inbound_decide_s = cfg.inbound_decide_s
        auth.set_hash_cost(cfg.password_hash_memory_kib, cfg.password_hash_time_cost)
        self.plane.logins = LoginThrottle(per_address=cfg.login_failures_per_address,
                                          per_user=cfg.login_failures_per_user,
                                          window_s=cfg.login_window_s)
        self.plane.signing_key = lambda: self.signing.key
        self.plane.editor.channels_changed = self._rechannel
        #: reports upward: built here, pushing only while this streamer is active
        self.upward = Upward(self.plane, cfg.report_webhook_url, report_secret,
                             cfg.report_period, self.registry)  # type: ignore[arg-type]
        #: whether the control plane runs here: always for a lone streamer, while it holds the
        #: lease for one of a pair (``control/lease.py``)
        self.active = False
        self.lease: Lease | None = None
        self.lost_lease = asyncio.Event()  # the lease went to the other streamer: step down
        if cfg.ha_lease_ms:
            self.lease = Lease(redis_client(cfg.redis_url, max_connections=2),
                               cfg.ha_id or default_holder(), cfg.ha_lease_ms / 1000,
                               self.registry)
            if not await self.lease.try_acquire():
                self.fanout.server.standby = True
                log.warning("standby: %s holds the lease; taking over when it lapses",
                            await self.lease.holder_now())
        if not self.fanout.server.standby:
            await self._take_control(takeover=False)
        app = add_security_headers(web.Application(client_max_size=80 * 1024 * 1024,
                                                   middlewares=[self._standby_guard]),
                                   hsts=https is not None)
        add_api_routes(app, self.plane, self.registry)
        app[UPWARD] = self.upward
        add_studio_routes(app)
        add_console_routes(app)
        add_peer_routes(app, clips, self.listen_keys)
        add_board_routes(app, self.plane, self.listen_keys)
        add_media_routes(app, self.fanout, ptime_ms=cfg.ptime_ms, public_host=cfg.public_host,
                         health=lambda: {"process": "streamer", "channels": len(self.known),
                                         "frame": self.clock.frame,
                                         "programs": len(self.mixer.programs),
                                         "role": self.role},
                         ready=self._ready,
                         may_listen=streamer_may_listen(self.plane, self.listen_keys))
        # a request whose body was refused partway (an upload over the cap) is read and thrown
        # away for at most LINGER_S after the answer, then its connection closes: aiohttp's
        # 10 s would read on past the cap, and hold a stopping streamer that long
        self.runner = web.AppRunner(app, access_log=None, lingering_time=LINGER_S)
        await self.runner.setup()
        await web.TCPSite(self.runner, cfg.http_host, cfg.http_port, ssl_context=https).start()
        http_port = self.runner.addresses[0][1]
        self.frames = self.playout.submit(
            FrameLoop(self.clock, self.mixer, self.registry,
                      lead_max_s=cfg.lead_max_ms / 1000 or None,
                      after_frame=self.signing.sign_pending).run())
        self.http_url = f"{'https' if https else 'http'}://{cfg.public_host}:{http_port}"
        self.media_addr = f"{cfg.public_host}:{media[1]}"
        if self.lease is not None:
            self.holding = asyncio.create_task(self._hold_lease())
            self.mirroring: asyncio.Task[None] | None = None
            if not self.active:
                self.mirroring = asyncio.create_task(ClipMirror(
                    clips, self.state, self.lease, lambda: self.signing.key,
                    self.registry).run())
        log.info("streamer (%s): %d channels, media %s, http %s", self.role, len(channels),
                 self.media_addr, self.http_url)

    def _report_secret(self) -> bytes:
        """The webhook's HMAC key, read at the start (a missing file fails it, named)."""
        path = self.cfg.report_webhook_secret_file
        if not self.cfg.report_webhook_url:
            return b""
        try:
            secret = Path(os.path.expanduser(path)).read_bytes().strip()
        except OSError as e:
            raise ConfigError("report_webhook_secret_file", f"{path}: {e.strerror}") from None
        if len(secret) < 16:
            raise ConfigError("report_webhook_secret_file", f"{path}: shorter than 16 bytes")
        return secret

    @property
    def role(self) -> str:
        """"active", "standby", or "taking over" (between the lease and a running control
        plane)."""
        if self.active:
            return "active"
        return "standby" if self.fanout.server.standby else "taking over"

    def _rechannel(self, added: list[str], removed: list[str]) -> None:
        """A zone edit added or removed channels: the media endpoint answers for the new ones
        and refuses the old ones' subscribers (REJECT unknown channel), on the playout loop."""
        self.known.update(added)
        self.known.difference_update(removed)
        for channel in removed:
            self.playout.submit(self._reject(channel))

    async def _reject(self, channel: str) -> None:
        self.signing.forget(channel)
        self.fanout.reject_channel(channel)

    async def _take_control(self, takeover: bool) -> None:
        """Everything a streamer does beside playing: the state, the fleet, broadcasts on air
        when the last holder stopped, the scheduler, the live inputs. ``takeover``: another
        streamer was active a moment ago (``Broadcasts.recover``)."""
        cfg = self.cfg
        # the last active streamer was alive when it last renewed the lease: a time to live
        # (and a renewal's deadline) before it lapsed, at most
        lapsed_since = (time.time() - cfg.ha_lease_ms / 1000 - 1.0) if takeover else None
        await self.plane.load()
        if cfg.mqtt_url:
            password, tls_context = self._broker_login
            self.plane.fleet = Fleet(cfg.mqtt_url, cfg.mqtt_user, password,
                                     self.plane.recorder, self.registry, tls_context=tls_context)
            await self.plane.fleet.start()
            self.plane.tokens = TokenIssuer(
                self.state, self.plane.fleet, lambda: self.signing.key, self.registry,
                lifetime_s=cfg.token_lifetime_h * 3600)
            self.granting = asyncio.create_task(self.plane.tokens.run())
            self.key_set.start(self.plane.fleet)
        await self.broadcasts.recover(takeover=takeover)
        self.plane.scheduler = await self._scheduler(lapsed_since)
        self.watching = asyncio.create_task(self.plane.alerts.watch(self.mixer, self.state))
        self.plane.forward.start()  # zone plans for speakers to play offline (forward.py)
        await self.plane.inbox.start()  # bulletins from above still pending (inbound.py)
        await self.plane.board.start()  # e-boards' items (board.py)
        await self.plane.bootstrap_admin(Path(cfg.admin_credentials or
                                              Path(cfg.var_dir) / "admin-credentials.json"))
        await self._live_inputs()
        self.upward.start()
        self.active = True

    async def _hold_lease(self) -> None:
        """A standby's wait for the lease, the takeover, then the active streamer's renewals
        until another streamer holds the lease (``lost_lease``: the process steps down)."""
        assert self.lease is not None
        try:
            if not self.active:
                await self.lease.acquire()
                began = time.monotonic()
                self.fanout.server.standby = False  # relays may subscribe while it starts
                if self.mirroring is not None:
                    self.mirroring.cancel()
                log.warning("taking over (lease epoch %d)", self.lease.epoch)
                await self._take_control(takeover=True)
                log.warning("active: took over in %.0f ms after the lease",
                            (time.monotonic() - began) * 1000)
            await self.lease.advertise(self.cfg.ha_peer_url or self.http_url)
            await self.lease.keep()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the standby could not take over: stepping down")
        self.lost_lease.set()

    @web.middleware
    async def _standby_guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Until its control plane runs, a streamer answers only health, readiness and
        metrics; the rest is the active streamer's (503, JSON naming it)."""
        if self.active or request.path in ("/healthz", "/readyz", "/metrics"):
            response: web.StreamResponse = await handler(request)
            return response
        holder = await self.lease.holder_now() if self.lease is not None else None
        return web.json_response(
            {"error": "standby", "message": f"this streamer is {self.role}: ask the active "
             f"one ({holder or 'unknown'})", "field": None}, status=503,
            headers={"Retry-After": "1"})

    async def _live_inputs(self) -> None:
        """The browser studio (WebRTC) and the RTP ingest port, feeding ``plane.inputs``."""
        cfg, plane = self.cfg, self.plane

        async def closed(session: StudioSession) -> None:
            await plane.inputs.close(studio_input(session.id))

        plane.studio = StudioSessions(on_close=closed)
        if cfg.ingest_port < 0:
            return
        plane.ingest = IngestServer(
            lambda: plane.input_keys, plane.ingest_audio, on_start=plane.ingest_started,
            on_end=plane.ingest_ended, on_refused=plane.ingest_refused, registry=self.registry)
        _, port = await plane.ingest.start(cfg.ingest_host, cfg.ingest_port)
        plane.ingest_addr = (cfg.public_host, port)

    async def _ready(self) -> dict[str, Any]:
        """What the API needs: Redis, and the broker when fleet control is configured. The
        mixer plays on without either, and emergency and stop work without Redis: what is
        degraded and how many state writes wait for Redis are reported beside the checks."""
        try:
            redis_ok = await asyncio.wait_for(self.state.ping(), 1.0)
        except Exception:
            redis_ok = False
        checks = {"redis": redis_ok}
        if self.plane.fleet is not None:
            checks["mqtt"] = self.plane.fleet.connected
        more: dict[str, Any] = {}
        if self.lease is not None:  # a standby is alive but not ready: route to the active
            checks["active"] = self.active
            more = {"role": self.role, "lease_epoch": self.lease.epoch,
                    "lease_holder": await self.lease.holder_now()}
        return {"checks": checks, "degraded": self.state.degraded(),
                "pending_writes": len(self.state.journal), **more}

    async def _scheduler(self, taken_up_from: float | None) -> Scheduler:
        """The schedules in Redis, fired on their frames by the mixer (``scheduler.py``);
        those that never fired from ``taken_up_from`` (a takeover) or from now."""
        b = self.broadcasts
        scheduler = Scheduler(
            self.mixer, b.prepare_scheduled, b.channels_of, self.plane.quiet_for,
            on_fired=b.fired, on_skipped=b.skipped, on_cancelled=b.cancelled)
        last = {k: datetime.fromtimestamp(v, UTC) for k, v in
                (await self.state.last_fired()).items()}
        scheduler.load(await self.state.schedules.all(), last_fired=last,
                       taken_up_from=taken_up_from)
        self.scheduling = asyncio.create_task(scheduler.run())
        return scheduler

    def reload_key(self) -> None:
        """Read the signing key file again and sign with it from the next frame (SIGHUP), and
        the next key's file; retain the fleet's key set again if either changed it
        (``control/keys.py``). A file that cannot be read changes nothing and says why."""
        try:
            key = SigningKey.from_pem(self.key_path.read_bytes())
        except (OSError, BadKey) as e:
            log.error("signing key %s not reloaded, still signing with %08x: %s",
                      self.key_path, self.signing.key.id, e)
            return
        changed = False
        if key.id != self.signing.key.id:
            if self.token_keys is not None:
                self.token_keys.add(key.public)
            self.listen_keys.add(key.public)
            self.signing.rotate(key)
            changed = self.key_set.switched(key)
        try:
            changed = self.key_set.announce(self._next_key()) or changed
        except BadKey as e:
            log.error("next signing key %s not read, the key set stays as it was: %s",
                      self.next_key_path, e)
        if changed:
            self.key_set.publish_soon()

    def _timeline_ns(self) -> int | None:
        """What TIME answers (on the playout thread): the capture times' timeline, i.e. the
        frame clock's; None in the moment before the frame clock exists."""
        clock: FrameClock | None = getattr(self, "clock", None)
        return None if clock is None else clock.timeline_ns(time.monotonic())

    def _next_key(self) -> SigningKey | None:
        """The key in ``next_signing_key`` (None: not configured, or no file there now);
        raises :class:`BadKey` for a file that cannot be read or is not an Ed25519 key."""
        if self.next_key_path is None:
            return None
        try:
            pem = self.next_key_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise BadKey(f"{self.next_key_path}: {e.strerror}") from None
        try:
            return SigningKey.from_pem(pem)
        except BadKey as e:
            raise BadKey(f"{self.next_key_path}: {e}") from None

    async def _close_media(self) -> None:
        """On the playout loop: the last frame, then the media socket."""
        self.frames.cancel()
        self.mixer.close()
        self.fanout.close()

    async def close(self) -> None:
        for task in (getattr(self, "holding", None), getattr(self, "mirroring", None)):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # a standby (or one stopped while taking over) has run none or part of the control
        # plane: each part is closed if it was started
        for task in (getattr(self, "scheduling", None), getattr(self, "watching", None)):
            if task is not None:
                task.cancel()
        self.plane.events.close()  # event streams end first: the HTTP server waits for them
        await self.plane.reach.close()
        await self.plane.forward.close()
        self.plane.inbox.close()
        self.plane.board.close()
        await self.upward.close()
        if self.plane.scheduler is not None:
            await self.plane.scheduler.close()
        if self.plane.tokens is not None:
            self.granting.cancel()
            await self.plane.tokens.close()
        await self.key_set.close()
        if self.plane.fleet is not None:
            await self.plane.fleet.close()
        self.process_watch.cancel()
        self.plane.hasher.close()
        if self.plane.studio is not None:
            await self.plane.studio.close_all()
        await self.broadcasts.close()
        if self.plane.ingest is not None:
            self.plane.ingest.close()
        if self.playout.running:
            await self.playout.run(self._close_media())
            self.playout.close()
        if self.lease is not None:  # after the media: never two streamers playing at once
            await self.lease.release()
            await self.lease.r.aclose()
        await self.runner.cleanup()
        await self.state.close()


async def serve(cfg: StreamerConfig, stop: asyncio.Event | None = None) -> bool:
    """Run until ``stop``; False if it ended because the lease went to another streamer."""
    stop = stop or asyncio.Event()
    streamer = Streamer(cfg)
    await streamer.start()
    host, port = streamer.plane.ingest_addr
    print(json.dumps({"process": "streamer", "media": streamer.media_addr,
                      "http": streamer.http_url, "ingest": f"{host}:{port}" if port else "",
                      "stream_key": streamer.signing.key.public_text, "role": streamer.role}),
          flush=True)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, streamer.reload_key)
    try:
        stopping = asyncio.create_task(stop.wait())
        stepping_down = asyncio.create_task(streamer.lost_lease.wait())
        await asyncio.wait([stopping, stepping_down], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        stepping_down.cancel()
    finally:
        await streamer.close()
    return not streamer.lost_lease.is_set()


#: the exit status of a streamer that lost its lease to the other of its pair (systemd
#: starts it again, as the standby: ``Restart=always``)
STEPPED_DOWN = 75  # EX_TEMPFAIL


def run(cfg: StreamerConfig) -> int:
    async def main() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await serve(cfg, stop)

    return 0 if asyncio.run(main()) else STEPPED_DOWN
