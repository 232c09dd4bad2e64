"""``loa relay``: receive each channel once from upstream, fan it out to speakers and relays.

Configuration, lowest precedence first: built-in defaults, ``--config FILE.toml``,
``LOA_RELAY_*`` environment variables, command-line flags. Everything is validated before any
socket is opened; a bad value exits with status 2 and a message naming the field. On startup
the process prints one JSON line, ``{"media": "host:port", "http": "http://host:port"}``, so a
parent (``loa up``, tests) learns the bound ports; logs go to stderr. SIGINT/SIGTERM send BYE
upstream and exit. This module is wiring only: no protocol logic lives here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from streamer.config import ConfigError, parse_hostport
from streamer.rtp.packet import ssrc_for
from streamer.rtp.subscribe import Addr

from .fanout import FanoutEndpoint
from .http import add_media_routes
from .upstream import Upstream

log = logging.getLogger("loa.relay")


@dataclass
class RelayConfig:
    id: str = field(default_factory=lambda: f"relay-{socket.gethostname()}")
    media: Addr = ("0.0.0.0", 5004)
    http: Addr = ("0.0.0.0", 8081)
    upstream: list[Addr] = field(default_factory=list)
    static: list[tuple[str, Addr]] = field(default_factory=list)
    public_host: str = ""
    ptime_ms: int = 20
    keepalive_s: int = 5
    expire_s: float = 15.0
    failover_s: float = 3.0
    linger_s: float = 3.0
    log_level: str = "INFO"


def parse_static(text: str, field_name: str = "static") -> tuple[str, Addr]:
    channel, sep, dest = text.partition("=")
    if not sep or not channel.strip():
        raise ConfigError(field_name, f"{text!r} is not CHANNEL=host:port")
    addr = parse_hostport(dest, field_name)
    if addr[1] == 0:
        raise ConfigError(field_name, "a static destination needs a port")
    return (channel.strip(), addr)


_SCALARS = {"ptime_ms": int, "keepalive_s": int, "expire_s": float, "failover_s": float,
            "linger_s": float}


def _apply(cfg: RelayConfig, key: str, value: Any, source: str) -> None:
    name = f"{source}{key}"
    if key in ("id", "public_host", "log_level"):
        if not isinstance(value, str) or (key == "id" and not value):
            raise ConfigError(name, "must be a non-empty string")
        if key == "log_level" and value.upper() not in logging.getLevelNamesMapping():
            raise ConfigError(name, f"{value!r} is not a log level")
        setattr(cfg, key, value)
    elif key in ("media", "http"):
        if not isinstance(value, str):
            raise ConfigError(name, "must be a host:port string")
        setattr(cfg, key, parse_hostport(value, name))
    elif key == "upstream":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(name, "must be a list of host:port strings")
        cfg.upstream = [parse_hostport(i, name) for i in items if i.strip()]
    elif key == "static":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(name, "must be a list of CHANNEL=host:port strings")
        cfg.static = [parse_static(i, name) for i in items if i.strip()]
    elif key in _SCALARS:
        try:
            v = _SCALARS[key](value)
        except (TypeError, ValueError):
            raise ConfigError(name, f"{value!r} is not a number") from None
        if isinstance(value, bool) or v <= 0:
            raise ConfigError(name, "must be a positive number")
        setattr(cfg, key, v)
    else:
        raise ConfigError(name, "unknown setting")


def load_config(
    argv: Sequence[str] | None = None, env: dict[str, str] | None = None
) -> RelayConfig:
    ap = argparse.ArgumentParser(prog="loa relay", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="TOML file")
    ap.add_argument("--id", help="relay identity, used in handshakes and metrics")
    ap.add_argument("--media", help="UDP host:port to listen on for subscribers (port 0: any)")
    ap.add_argument("--http", help="HTTP host:port (SDP, listen-in, health, metrics)")
    ap.add_argument("--upstream", action="append", help="host:port of an upstream, in order of "
                    "preference; repeat for failover")
    ap.add_argument("--static", action="append", help="CHANNEL=host:port: push a channel to a "
                    "plain RTP receiver (unicast or multicast); repeatable")
    ap.add_argument("--public-host", help="this relay's address as receivers see it (SDP o=)")
    ap.add_argument("--ptime-ms", type=int)
    ap.add_argument("--failover-s", type=float)
    ap.add_argument("--linger-s", type=float)
    ap.add_argument("--log-level")
    args = ap.parse_args(argv)
    env = dict(os.environ) if env is None else env

    cfg = RelayConfig()
    path = args.config or env.get("LOA_RELAY_CONFIG")
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError("config", f"cannot read {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("config", f"{path}: {e}") from None
        data = data.get("relay", data)  # a [relay] table or top-level keys
        for k, v in data.items():
            _apply(cfg, k, v, f"{path}: ")
    for k in ("id", "media", "http", "upstream", "static", "public_host", "log_level",
              *_SCALARS):
        v = env.get(f"LOA_RELAY_{k.upper()}")
        if v is not None:
            _apply(cfg, k, v, "LOA_RELAY_")
    for k in ("id", "media", "http", "upstream", "static", "public_host", "ptime_ms",
              "failover_s", "linger_s", "log_level"):
        v = getattr(args, k)
        if v is not None:
            _apply(cfg, k, v, "--")
    if not cfg.upstream:
        raise ConfigError("upstream", "at least one upstream host:port is required")
    if any(port == 0 for _, port in cfg.upstream):
        raise ConfigError("upstream", "an upstream needs a port")
    return cfg


async def run(cfg: RelayConfig, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    registry = CollectorRegistry()
    upstream: Upstream | None = None

    def channel_ssrc(channel: str) -> int | None:
        # A relay knows no channel list: anything upstream has not rejected may exist.
        if upstream is not None and upstream.is_unknown(channel):
            return None
        return ssrc_for(channel)

    def on_change(channel: str, n_consumers: int) -> None:
        if upstream is not None:
            upstream.want(channel, n_consumers)

    fanout = FanoutEndpoint(
        channel_ssrc=channel_ssrc, registry=registry, process="relay", ptime_ms=cfg.ptime_ms,
        keepalive_s=cfg.keepalive_s, expire_s=cfg.expire_s, on_change=on_change,
    )
    upstream = Upstream(
        fanout, cfg.upstream, identity=cfg.id, registry=registry, failover_s=cfg.failover_s,
        linger_s=cfg.linger_s, on_unknown=fanout.reject_channel,
    )
    media = await fanout.start(*cfg.media)
    await upstream.start()
    for channel, dest in cfg.static:
        fanout.add_static(channel, dest)

    app = web.Application()
    add_media_routes(app, fanout, ptime_ms=cfg.ptime_ms,
                     public_host=cfg.public_host or _public_host(media[0]),
                     health=lambda: {"id": cfg.id, "upstream": upstream.subscribed()})
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, cfg.http[0], cfg.http[1])
    await site.start()
    http_addr = runner.addresses[0]
    print(json.dumps({"media": _fmt(media), "http": f"http://{_fmt(http_addr)}", "id": cfg.id}),
          flush=True)
    log.info("relay %s: media %s, http %s, upstream %s", cfg.id, _fmt(media), _fmt(http_addr),
             ", ".join(_fmt(a) for a in cfg.upstream))
    try:
        await stop.wait()
    finally:
        log.info("relay %s stopping", cfg.id)
        upstream.close()  # BYE upstream before the socket closes
        fanout.close()
        await runner.cleanup()


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
    except OSError as e:
        print(f"loa relay: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
