"""The SDP (RFC 4566, Opus per RFC 7587) that lets a plain RTP receiver play one channel.

GStreamer, ffmpeg, VLC and hardware IP speakers cannot do Loa's subscribe handshake; they play
a channel that a relay or the streamer pushes to a static destination, described by this SDP.
The description is declarative: ``c=`` and ``m=`` name where the receiver listens, not where
the sender is. Pure code: no sockets, no clock reads, no name resolution; the same inputs give
the same text, so receivers and caches see a stable document.
"""

from __future__ import annotations

import ipaddress
import re

from .packet import (
    EXT_URI_BROADCAST,
    EXT_URI_CAPTURE_TIME,
    EXT_URI_PRIORITY,
    OPUS_PT,
    ssrc_for,
)

DEFAULT_MULTICAST_TTL = 16
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


def channel_sdp(
    channel: str,
    addr: str,
    port: int,
    ptime_ms: int = 20,
    pt: int = OPUS_PT,
    session_name: str = "Loa channel",
    *,
    origin: str = "0.0.0.0",
    ttl: int = DEFAULT_MULTICAST_TTL,
) -> str:
    """SDP for ``channel`` arriving at ``addr:port`` (unicast or multicast), CRLF-terminated.

    ``origin`` is the sender's public address for the ``o=`` line (informational only).
    ``addr`` and ``origin`` must be IP addresses or host names: each is one field of its line,
    so anything else (a space, a line break, even in an IPv6 scope) raises ValueError.
    """
    _check_host(addr, "address")
    _check_host(origin, "origin")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    if not 0 <= pt < 128:
        raise ValueError(f"payload type {pt} out of range")
    ssrc = ssrc_for(channel)
    ip = _ip(addr)
    net = "IP6" if ":" in addr else "IP4"
    conn = addr
    # RFC 4566 section 5.7: an IPv4 multicast address carries a TTL; IPv6 multicast does not.
    if ip is not None and ip.version == 4 and ip.is_multicast:
        conn = f"{addr}/{ttl}"
    onet = "IP6" if ":" in origin else "IP4"
    # One channel, one SSRC, one description: derive the session id from the SSRC so that
    # fetching the SDP twice gives the same document (version bumps are not needed).
    lines = [
        "v=0",
        f"o=- {ssrc} 1 IN {onet} {origin}",
        f"s={_line_safe(session_name)}",
        f"i={_line_safe(channel)}",
        f"c=IN {net} {conn}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {pt}",
        *opus_lines(pt, ptime_ms),
        "a=recvonly",
        "a=rtcp-mux",  # sender reports ride on the media port (RFC 5761)
        f"a=extmap:1 {EXT_URI_CAPTURE_TIME}",
        f"a=extmap:2 {EXT_URI_BROADCAST}",
        f"a=extmap:3 {EXT_URI_PRIORITY}",
        f"a=ssrc:{ssrc} cname:loa-{_token(channel)}",
    ]
    return "\r\n".join(lines) + "\r\n"


def opus_lines(pt: int, ptime_ms: int) -> list[str]:
    """The media attributes of Loa's Opus: mono, in-band FEC, ``ptime_ms`` packets."""
    return [
        # RFC 7587 section 7: always "opus/48000/2", whatever the real channel count.
        f"a=rtpmap:{pt} opus/48000/2",
        f"a=fmtp:{pt} useinbandfec=1; stereo=0; sprop-stereo=0",
        f"a=ptime:{ptime_ms}",
    ]


def _ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(addr)
    except ValueError:
        return None  # a host name: allowed in c= (RFC 4566 section 5.7), no TTL added


def _check_host(host: str, what: str) -> None:
    # ipaddress accepts any text as an IPv6 scope ("fe80::1%x\r\na=..."): allow only what
    # can be one SDP field
    one_field = host.isascii() and host.isprintable() and " " not in host
    if not one_field or (_ip(host) is None and not (len(host) <= 253
                                                     and _HOST_NAME.fullmatch(host))):
        raise ValueError(f"{what} {host!r} is not an IP address or host name")


def _line_safe(s: str) -> str:
    # A CR or LF in a channel name would start a new SDP line: never let input do that (nor
    # pass a NUL, which SDP text may not hold: RFC 4566 section 9, byte-string).
    return s.replace("\r", " ").replace("\n", " ").replace("\0", " ") or "-"


def _token(s: str) -> str:
    # cname is a token (no spaces); keep it readable and unambiguous.
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s) or "_"
