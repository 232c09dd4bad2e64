"""``loa relay``: receive each channel once from upstream, fan it out to speakers and relays.

Configuration, lowest precedence first: built-in defaults, ``--config FILE.toml``,
``LOA_RELAY_*`` environment variables, command-line flags. Everything is validated before any
socket is opened; a bad value exits with status 2 and a message naming the field. On startup
the process prints one JSON line, ``{"media": "host:port", "http": "http://host:port"}``, so a
parent (``loa up``, tests) learns the bound ports; logs go to stderr. SIGINT/SIGTERM send BYE
upstream and exit. With ``mqtt_url`` set the relay joins the MQTT control plane
(``relay/mqtt.py``, ``docs/mqtt.md``); the broker being away never affects the fan-out. This
module is wiring only: no protocol logic lives here. With ``tls_cert``/``tls_key`` the HTTP
port speaks HTTPS only and the line says ``https://`` (``docs/operations.md``, "TLS").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from common.config import Addr, ConfigError, Static, load
from common.httpsec import add_security_headers
from common.procmetrics import watch_process
from common.tls import check_pair, server_context
from device.link import DeviceLink
from device.mqtt_config import DeviceMqttKeys
from device.trust import StreamTrustKeys, TokenKeys, TrustedKeys, auth_metrics, keys_metrics
from fanout.endpoint import FanoutEndpoint
from fanout.http import add_media_routes, listen_tokens
from fanout.repeat import MAX_REPEATS
from wire import subscribe
from wire.auth import Keyring
from wire.packet import ssrc_for

from .mqtt import RelayDevice
from .upstream import Upstream

log = logging.getLogger("loa.relay")


@dataclass
class RelayConfig(DeviceMqttKeys, StreamTrustKeys, TokenKeys):
    id: str = field(default_factory=lambda: f"relay-{socket.gethostname()}")
    media: Addr = ("0.0.0.0", 5004)
    http: Addr = ("0.0.0.0", 8081)
    upstream: list[Addr] = field(default_factory=list)
    static: list[Static] = field(default_factory=list)
    public_host: str = ""
    ptime_ms: int = 20
    keepalive_s: int = 5
    expire_s: float = 15.0
    failover_s: float = subscribe.FAILOVER_S
    silence_ms: int = round(subscribe.SILENCE_S * 1000)
    linger_s: float = 3.0
    burst_ms: int = 200
    #: send subscribers the packets they ask for again and ask upstream for those this relay
    #: lost (RESEND kind 2; ``docs/operations.md``, "Loss recovery"): bytes only where
    #: packets are lost
    retransmit: bool = True
    #: send subscribers each LOAS signature this many times more (0-3), within the next
    #: packets (``fanout/repeat.py``): for speakers on a lossy last hop (4G) at the default
    #: 300 ms playout delay, +4.8 kb/s per copy and subscriber (``docs/operations.md``)
    loas_repeats: int = 0
    log_level: str = "INFO"
    #: subscribers must present a token signed by a pinned streamer key (``wire/token.py``);
    #: on by default, off only on a test bench (``docs/operations.md``, "Subscription tokens")
    require_tokens: bool = True
    #: HTTPS instead of HTTP: PEM certificate chain and its key, both or neither
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise ConfigError("id", "must be a non-empty string")
        if self.log_level.upper() not in logging.getLevelNamesMapping():
            raise ConfigError("log_level", f"{self.log_level!r} is not a log level")
        for key in ("ptime_ms", "keepalive_s", "expire_s", "failover_s", "silence_ms",
                    "linger_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(key, "must be a positive number")
        if not 0 <= self.burst_ms <= 1000:
            raise ConfigError("burst_ms", "must be 0 (no burst) to 1000 ms, and below the "
                              "speakers' playout delay")
        if not 0 <= self.loas_repeats <= MAX_REPEATS:
            raise ConfigError("loas_repeats", f"must be 0 (none) to {MAX_REPEATS} copies")
        if not self.upstream:
            raise ConfigError("upstream", "at least one upstream host:port is required")
        if any(port == 0 for _, port in self.upstream):
            raise ConfigError("upstream", "an upstream needs a port")
        self.mqtt  # noqa: B018 (building the settings checks them)
        check_pair("tls_cert", self.tls_cert, "tls_key", self.tls_key)
        self.keyring  # noqa: B018
        _token_keys(self, self.trusted_keys())  # tokens can be checked
        self.token_source()  # the token file is readable


def load_config(
    argv: Sequence[str] | None = None, env: dict[str, str] | None = None
) -> RelayConfig:
    ap = argparse.ArgumentParser(prog="loa relay", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="TOML file (keys as below, at the top or in [relay])")
    ap.add_argument("--id", help="relay identity, used in handshakes and metrics")
    ap.add_argument("--media", help="UDP host:port to listen on for subscribers (port 0: any)")
    ap.add_argument("--http", help="HTTP host:port (SDP, listen-in, health, metrics)")
    ap.add_argument("--upstream", action="append", help="host:port of an upstream, in order of "
                    "preference; repeat for failover")
    ap.add_argument("--static", action="append", help="CHANNEL=host:port: push a channel to a "
                    "plain RTP receiver (unicast or multicast); repeatable")
    ap.add_argument("--public-host", help="this relay's address as receivers see it (SDP o=)")
    ap.add_argument("--ptime-ms", type=int)
    ap.add_argument("--failover-s", type=float, help="move to the next upstream when a "
                    "handshake step is unanswered this long (default 0.5)")
    ap.add_argument("--silence-ms", type=int, help="move to the next upstream when a channel's "
                    "stream from it stops this long (default 300: 15 frames)")
    ap.add_argument("--linger-s", type=float)
    ap.add_argument("--burst-ms", type=int, help="recent packets sent to a new subscriber at "
                    "once (default 200; keep it below the speakers' playout delay; 0: none)")
    ap.add_argument("--retransmit", help="on (default) or off: send subscribers the packets "
                    "they ask for again, and ask upstream for those this relay lost "
                    "(docs/operations.md, \"Loss recovery\")")
    ap.add_argument("--loas-repeats", type=int, help="send subscribers each LOAS again this "
                    "many times (0-3, default 0; 2 for 4G speakers at a 300 ms playout delay: "
                    "docs/operations.md, \"Loss recovery\")")
    ap.add_argument("--log-level")
    ap.add_argument("--mqtt-url", help="join the control plane: mqtt://host:port (or mqtts://)")
    ap.add_argument("--mqtt-user", help="MQTT user name (default: the relay id)")
    ap.add_argument("--mqtt-password-file", help="file whose first line is the MQTT password")
    ap.add_argument("--mqtt-keepalive-s", type=int, help="MQTT keepalive (default 30)")
    ap.add_argument("--telemetry-s", type=float, help="telemetry period (default 10)")
    ap.add_argument("--stream-key", action="append", dest="stream_keys", metavar="BASE64",
                    help="the streamer's public key (repeat during a key rotation): only media "
                         "it signed is proven to plain destinations and listen-in, and only "
                         "its LOAS are forwarded")
    ap.add_argument("--keys-file", help="keep the stream key set the streamer pushes over "
                    "MQTT here (0600), and trust it again at start")
    ap.add_argument("--verify-media", help="on (default) or off: off forwards everything "
                    "unverified (a test bench only)")
    ap.add_argument("--token-file", help="this relay's subscription token (base64, as `loa "
                    "token` writes it); read again when it changes")
    ap.add_argument("--require-tokens", help="on (default) or off: subscribers need a token "
                    "signed by a pinned streamer key; off lets anyone subscribe (a test bench "
                    "only)")
    ap.add_argument("--tls-cert", help="serve HTTPS: PEM certificate chain (with --tls-key)")
    ap.add_argument("--tls-key", help="PEM private key of --tls-cert")
    ap.add_argument("--mqtt-ca", help="mqtts://: PEM CA certificates (default: the system's)")
    ap.add_argument("--mqtt-cert", help="mqtts://: PEM client certificate (with --mqtt-key)")
    ap.add_argument("--mqtt-key", help="mqtts://: PEM private key of --mqtt-cert")
    args = vars(ap.parse_args(argv))
    return load(RelayConfig, args, env_prefix="LOA_RELAY_", path=args.pop("config"), env=env,
                section="relay")


async def run(cfg: RelayConfig, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    password = cfg.mqtt.password() if cfg.mqtt is not None else None
    mqtt_tls = cfg.mqtt.tls_context() if cfg.mqtt is not None else None
    https = server_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert and cfg.tls_key else None
    registry = CollectorRegistry()
    process_watch = watch_process(registry)
    upstream: Upstream | None = None

    def channel_ssrc(channel: str) -> int | None:
        # A relay knows no channel list: anything upstream has not rejected may exist.
        if upstream is not None and upstream.is_unknown(channel):
            return None
        return ssrc_for(channel)

    def on_change(channel: str, n_consumers: int) -> None:
        if upstream is not None:
            upstream.want(channel, n_consumers)

    def timeline() -> int | None:  # TIME from our subscribers: the streamer's time, as we know it
        return upstream.timeline_ns() if upstream is not None else None

    # one keyring for the gates, listen-in and tokens: a key set pushed over MQTT changes it
    trusted = cfg.trusted_keys()
    fanout = FanoutEndpoint(
        channel_ssrc=channel_ssrc, registry=registry, process="relay", ptime_ms=cfg.ptime_ms,
        keepalive_s=cfg.keepalive_s, expire_s=cfg.expire_s, on_change=on_change,
        burst_s=cfg.burst_ms / 1000, tokens=_token_keys(cfg, trusted), timeline=timeline,
        retransmit=cfg.retransmit, loas_repeats=cfg.loas_repeats,
    )
    keys = trusted.keyring if trusted is not None and cfg.verify_media else None
    tokens = cfg.token_source()
    if keys is None:
        log.warning("verify_media is off: this relay forwards media nobody signed")
    upstream = Upstream(
        fanout, cfg.upstream, identity=cfg.id, registry=registry, failover_s=cfg.failover_s,
        silence_s=cfg.silence_ms / 1000,
        linger_s=cfg.linger_s, on_unknown=fanout.reject_channel, keys=keys,
        token=tokens.token if tokens is not None else b"", token_source=tokens,
        retransmit=cfg.retransmit,
    )
    registry.register(AuthCollector(upstream, trusted))
    media = await fanout.start(*cfg.media)
    await upstream.start()
    for channel, dest in cfg.static:
        fanout.add_static(channel, dest)

    app = add_security_headers(web.Application(), hsts=https is not None)
    add_media_routes(app, fanout, ptime_ms=cfg.ptime_ms,
                     public_host=cfg.public_host or _public_host(media[0]),
                     health=lambda: {"id": cfg.id, "upstream": upstream.subscribed()},
                     may_listen=None if keys is None else listen_tokens(keys))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, cfg.http[0], cfg.http[1], ssl_context=https)
    await site.start()
    http_addr = runner.addresses[0]
    scheme = "https" if https else "http"
    print(json.dumps({"media": _fmt(media), "http": f"{scheme}://{_fmt(http_addr)}",
                      "id": cfg.id}), flush=True)
    log.info("relay %s: media %s, http %s, upstream %s", cfg.id, _fmt(media), _fmt(http_addr),
             ", ".join(_fmt(a) for a in cfg.upstream))
    link: DeviceLink | None = None
    if cfg.mqtt is not None and password is not None:
        m = cfg.mqtt
        link = DeviceLink(RelayDevice(fanout, upstream), url=m.url, device_id=cfg.id,
                          user=m.user, password=password, registry=registry,
                          telemetry_s=m.telemetry_s, keepalive_s=m.keepalive_s,
                          tls_context=mqtt_tls, on_token=upstream.renew_token,
                          password_file=m.password_file,
                          on_keys=None if trusted is None else trusted.offer_now)
        link.start()
    try:
        await stop.wait()
    finally:
        log.info("relay %s stopping", cfg.id)
        if link is not None:
            await link.close()  # says offline while the broker can still hear us
        process_watch.cancel()
        upstream.close()  # BYE upstream before the socket closes
        fanout.close()
        await runner.cleanup()


def _token_keys(cfg: RelayConfig, trusted: TrustedKeys | None) -> Keyring | None:
    """The keys subscribers' tokens must be signed with (None: no token needed)."""
    if not cfg.require_tokens:
        return None
    if trusted is None:
        raise ConfigError("require_tokens", "subscribers' tokens are checked with the "
                          "streamer's key: pin it in stream_keys (--stream-key), or, on a test "
                          "bench only, set require_tokens = false (--require-tokens off)")
    return trusted.keyring


class AuthCollector(Collector):
    """``loa_media_auth_*``: what the channels' gates counted, at scrape time."""

    def __init__(self, upstream: Upstream, trusted: TrustedKeys | None) -> None:
        self.upstream = upstream
        self.trusted = trusted

    def collect(self) -> Iterable[Metric]:
        u = self.upstream
        yield from auth_metrics(u.keys is not None, u.auth_dropped, u.auth_loas,
                                "only LOAS that verify are forwarded")
        yield from keys_metrics(self.trusted)


def _fmt(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _public_host(bound: str) -> str:
    if bound not in ("0.0.0.0", "::"):
        return bound
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "0.0.0.0"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = load_config(argv)
    except ConfigError as e:
        print(f"loa relay: bad configuration: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(cfg, stop)

    try:
        asyncio.run(_main())
    except ConfigError as e:
        print(f"loa relay: bad configuration: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"loa relay: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
