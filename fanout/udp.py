"""Reading a UDP socket's backlog in one wake-up, beside asyncio's datagram transport.

asyncio's selector transport reads one datagram each time the socket is ready, then serves
the other callbacks and timers. A process that was busy or paused for a while (a relay in the
middle of a fan-out, a speaker whose CPU was taken by its neighbour) therefore wakes to one
datagram (or none, when a signal interrupted its wait), runs its timers against a half-read
socket, and reads the rest at one per loop iteration. ``drain`` reads what has queued,
boundedly; a timer that must see it all calls it first. It reads
through a duplicate descriptor of the transport's socket (asyncio hands out a wrapper without
``recv*``); asyncio made the file non-blocking, and the duplicate shares that.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any


def duplicate(transport: asyncio.BaseTransport) -> socket.socket:
    """A socket object on a new descriptor for the transport's socket (the caller closes it)."""
    sock = transport.get_extra_info("socket")
    return socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))


def drain(sock: socket.socket, handle: Callable[[bytes, Any], None], limit: int,
          max_size: int, on_error: Callable[[OSError], None]) -> None:
    """Hand up to ``limit`` queued datagrams (of at most ``max_size`` bytes) to ``handle``;
    stop at the first empty read. An ``OSError`` (an ICMP error report) goes to ``on_error``
    and ends the round."""
    for _ in range(limit):
        try:
            data, addr = sock.recvfrom(max_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            on_error(e)
            return
        handle(data, addr)
