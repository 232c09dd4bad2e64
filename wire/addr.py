"""``host:port`` addresses, as configuration and device payloads (``upstream``) spell them.

Pure code: it parses and formats text and never resolves a name.
"""

from __future__ import annotations


def parse_hostport(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; port 0 is allowed (the caller decides what it means).
    Raises ValueError naming what is wrong."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]:")
    else:
        host, sep, rest = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not host:port")
    try:
        port = int(rest)
    except ValueError:
        raise ValueError(f"port in {text!r} is not a number") from None
    if not 0 <= port < 65536:
        raise ValueError(f"port {port} out of range")
    return (host, port)


def fmt_addr(addr: tuple[str, int]) -> str:
    """``host:port``, or ``[v6]:port`` for an IPv6 host: what :func:`parse_hostport` reads."""
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
