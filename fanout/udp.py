"""Reading a UDP socket's backlog in one wake-up, beside asyncio's datagram transport.

asyncio's selector transport reads one datagram each time the socket is ready, then serves
the other callbacks and timers. A process that was busy or paused for a while (a relay in the
middle of a fan-out, a speaker whose CPU was taken by its neighbour) therefore wakes to one
datagram (or none, when a signal interrupted its wait), runs its timers against a half-read
socket, and reads the rest at one per loop iteration. ``drain`` reads what has queued,
boundedly; a timer that must see it all calls it first. It reads
through a duplicate descriptor of the transport's socket (asyncio hands out a wrapper without
``recv*``); asyncio made the file non-blocking, and the duplicate shares that.
``drain_stamped`` reads a socket the caller owns, with the kernel's receive time of each
datagram (``SO_TIMESTAMPNS``), for a process that reads at its own pace (the speaker).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
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


#: SO_TIMESTAMPNS (Linux's number on the boards Loa runs on; Python does not name it): the
#: kernel stamps each datagram with the wall time (CLOCK_REALTIME) it arrived at
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@ll")  # struct timespec: tv_sec, tv_nsec (native longs)
_STAMP_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


def stamp_arrivals(sock: socket.socket) -> bool:
    """Ask the kernel to stamp each datagram ``sock`` receives with its arrival time (read by
    :func:`drain_stamped`); False where the system cannot (the datagrams then carry 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def drain_stamped(sock: socket.socket, handle: Callable[[bytes, Any, int], None], limit: int,
                  max_size: int, on_error: Callable[[OSError], None]) -> None:
    """:func:`drain` with each datagram's kernel arrival time: ``handle(data, addr,
    real_ns)``, ``real_ns`` the wall clock's ns when it arrived (0 if not stamped,
    :func:`stamp_arrivals`). A process that reads its socket late (at its own pace) still
    knows when each datagram came."""
    unpack = _TIMESPEC.unpack_from
    for _ in range(limit):
        try:
            data, ancillary, _flags, addr = sock.recvmsg(max_size, _STAMP_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            on_error(e)
            return
        stamp = 0
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = unpack(raw)
                stamp = sec * 1_000_000_000 + nsec
        handle(data, addr, stamp)
