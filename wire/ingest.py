"""The live ingest's contract with a sender (``loa studio``, ffmpeg, a hardware encoder):
the input key and the SDP that describes sending to the ingest (``docs/ingest.md``).

Sans-IO; the ingest itself is ``streamer/live/ingest.py``.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from .packet import OPUS_PT
from .sdp import opus_lines

KEY_BYTES = 30  # AES_CM_128_HMAC_SHA1_80: 16-byte master key + 14-byte master salt
DYNAMIC_PT = range(96, 128)  # RFC 7587: Opus always has a dynamic payload type


def new_key() -> str:
    """A fresh input key: base64 of 30 random bytes, the form ffmpeg's ``-srtp_out_params``
    and SDP's ``a=crypto ... inline:`` take."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def parse_key(key: str) -> bytes:
    """The 30 key bytes of a base64 input key; ValueError naming ``key`` when it is not one."""
    try:
        raw = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("key: not base64 (expected 40 characters from `new_key`)") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"key: {len(raw)} bytes, expected {KEY_BYTES} "
                         "(a 16-byte AES key and a 14-byte salt, base64)")
    return raw


def sdp_for(host: str, port: int, key: str, pt: int = OPUS_PT) -> str:
    """The SDP (RFC 4566, RFC 4568 ``a=crypto``) that describes sending one input to the ingest
    at ``host:port``: Opus/48000 over SRTP with rtcp-mux, 20 ms packets. CRLF-terminated."""
    raw = parse_key(key)
    if not host or any(c in host for c in " \r\n"):
        raise ValueError(f"host: {host!r} is not a host name or address")
    if not 0 < port < 65536:
        raise ValueError(f"port: {port} out of range")
    if pt not in DYNAMIC_PT:
        raise ValueError(f"pt: {pt} is not a dynamic payload type (96-127)")
    net = "IP6" if ":" in host else "IP4"
    lines = [
        "v=0",
        f"o=- 0 0 IN {net} {host}",
        "s=Loa ingest",
        f"c=IN {net} {host}",
        "t=0 0",
        f"m=audio {port} RTP/SAVP {pt}",
        *opus_lines(pt, 20),
        "a=rtcp-mux",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(raw).decode()}",
        "a=recvonly",
    ]
    return "\r\n".join(lines) + "\r\n"
