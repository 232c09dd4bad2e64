"""Subscription tokens: the streamer says who may subscribe to which channels, until when.

A token is issued by the streamer and signed with its Ed25519 key (the key that signs the
media, ``wire/auth.py``, under another domain tag), so that relays check it offline with the
public key they already pin. It names one identity (the device id the subscriber gives in its
HELLO), the channels it may receive (exact names, zone prefixes such as ``brvt.vung-tau`` for
every channel below, or ``*``), and its validity. It travels in the handshake's token field
(``wire/subscribe.py``, at most 1,024 bytes). ``docs/protocol.md`` has the byte table,
lifetimes and revocation.

Pure code: callers pass ``now`` (Unix seconds).
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature

from .auth import SIG_LEN, Keyring, SigningKey
from .packet import MalformedPacket

VERSION = 1
_DOMAIN = b"loa/token/1\x00"
_HEAD = struct.Struct("!BIII")  # version, key id, issued, expires
MAX_TOKEN = 1024
MAX_NAME = 128
#: how far a token's start may be ahead of the verifier's clock (clocks are NTP-disciplined)
SKEW_S = 300
#: why a token is refused (the REJECT reason, and ``loa_fanout_handshakes_total`` outcome)
BAD, EXPIRED, FORBIDDEN = "bad_token", "expired_token", "forbidden"
#: the identity of a listen-in token starts so: ``GET /listen/{channel}.ogg?token=``
LISTEN_PREFIX = "listen:"


@dataclass(frozen=True, slots=True)
class Token:
    key_id: int
    issued: int
    expires: int
    identity: str
    channels: tuple[str, ...]
    signature: bytes = b""

    def body(self) -> bytes:
        out = [_HEAD.pack(VERSION, self.key_id, self.issued, self.expires),
               _str8(self.identity), bytes((len(self.channels),))]
        out += [_str8(c) for c in self.channels]
        return b"".join(out)

    def build(self) -> bytes:
        return self.body() + self.signature

    def allows(self, channel: str) -> bool:
        """``channel`` is one of the token's, or below one of its zone prefixes, or it says
        ``*``."""
        for c in self.channels:
            if c == "*" or channel == c or channel.startswith((c + ".", c + "/")):
                return True
        return False


def _str8(s: str) -> bytes:
    b = s.encode()
    if not b or len(b) > MAX_NAME:
        raise ValueError(f"a name is 1 to {MAX_NAME} bytes")
    return bytes((len(b),)) + b


def issue(key: SigningKey, identity: str, channels: Sequence[str], now: float,
          lifetime_s: float) -> bytes:
    """A signed token for ``identity`` on ``channels`` from ``now`` for ``lifetime_s``."""
    if not channels or len(channels) > 32:
        raise ValueError("a token names 1 to 32 channels or zone prefixes")
    t = Token(key.id, int(now), int(now + lifetime_s), identity, tuple(channels))
    signed = t.body()
    out = signed + key.private.sign(_DOMAIN + signed)
    if len(out) > MAX_TOKEN:
        raise ValueError(f"the token would be {len(out)} bytes, over {MAX_TOKEN}")
    return out


def parse(data: bytes) -> Token:
    """The fields of a token (not yet verified); :class:`MalformedPacket` if it is not one."""
    if not SIG_LEN + _HEAD.size + 3 <= len(data) <= MAX_TOKEN:
        raise MalformedPacket("not a token: wrong length")
    version, kid, issued, expires = _HEAD.unpack_from(data)
    if version != VERSION:
        raise MalformedPacket(f"token version {version}")
    i = _HEAD.size
    end = len(data) - SIG_LEN
    names: list[str] = []
    count = -1
    while i < end:
        n = data[i]
        if n == 0 or i + 1 + n > end:
            raise MalformedPacket("token field overruns")
        try:
            name = data[i + 1 : i + 1 + n].decode()
        except UnicodeDecodeError:
            raise MalformedPacket("token name is not UTF-8") from None
        names.append(name)
        i += 1 + n
        if len(names) == 1:  # after the identity: the channel count
            if i >= end:
                raise MalformedPacket("token without channels")
            count = data[i]
            i += 1
    if count < 1 or len(names) != count + 1:
        raise MalformedPacket("token channel count")
    return Token(kid, issued, expires, names[0], tuple(names[1:]), bytes(data[end:]))


def to_url(data: bytes) -> str:
    """A token as a URL query value (base64url, no padding)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def from_url(text: str) -> bytes:
    """The token of a URL query value; ``b""`` for one that is not base64url."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return b""


def check_listen(keys: Keyring, data: bytes, channel: str, now: float) -> Token | str:
    """The token, if ``data`` is a listen-in token (identity ``listen:…``) the pinned keys
    signed, allowing ``channel``, valid at ``now``; otherwise why not."""
    try:
        identity = parse(data).identity
    except MalformedPacket:
        return BAD
    if not identity.startswith(LISTEN_PREFIX):
        return FORBIDDEN
    return check(keys, data, identity, channel, now)


def check(keys: Keyring, data: bytes, identity: str, channel: str, now: float) -> Token | str:
    """The token, if ``data`` is one the pinned keys signed, for ``identity``, allowing
    ``channel``, valid at ``now``; otherwise why not (``BAD``, ``EXPIRED``, ``FORBIDDEN``)."""
    try:
        token = parse(data)
    except MalformedPacket:
        return BAD
    public = keys.get(token.key_id)
    if public is None:
        return BAD
    try:
        public.verify(token.signature, _DOMAIN + data[: len(data) - SIG_LEN])
    except InvalidSignature:
        return BAD
    if now >= token.expires or now + SKEW_S < token.issued:
        return EXPIRED
    if token.identity != identity or not token.allows(channel):
        return FORBIDDEN
    return token
