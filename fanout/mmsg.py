"""Batched UDP system calls: ``sendmmsg`` for the fan-out, ``recvmmsg`` for simulated speakers.

Python's socket module has neither (it has ``sendmsg``/``recvmsg``, one datagram per call),
and no maintained PyPI package offers them for an existing socket without wrapping its own
event loop; the calls are two ``ctypes`` functions over C structures that have not changed
since Linux 3.0, so they are written here by hand.

:class:`SendBatch` is a precomputed array of ``mmsghdr`` for a fixed list of destinations,
all pointing at one shared ``iovec``: sending a packet to every destination sets that one
``iovec`` and makes ``ceil(n / 1024)`` system calls, with no allocation per destination. It
is rebuilt only when the destinations change. :class:`RecvBatch` is the receive side: up to
``size`` datagrams of one socket per call into preallocated buffers, with the kernel's
receive time of each (``SO_TIMESTAMPNS``) and numpy views over lengths, bytes and times.

Nothing here may raise for one bad destination: a send returns how many datagrams the kernel
refused and why, and the caller counts them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
from collections.abc import Sequence

import numpy as np

Addr = tuple[str, int]

# Linux caps one sendmmsg/recvmmsg call at UIO_MAXIOV messages.
MAX_BATCH = 1024
MSG_DONTWAIT = 0x40
# Python's socket module does not export SO_TIMESTAMPNS (= SCM_TIMESTAMPNS); 35 on every
# architecture with asm-generic socket numbers (x86-64, arm64).
SO_TIMESTAMPNS = 35


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


# The same layout as a numpy record, to fill thousands of headers without a Python loop.
_MMSGHDR = np.dtype({
    "names": ["name", "namelen", "iov", "iovlen"],
    "formats": [np.uint64, np.uint32, np.uint64, np.uint64],
    "offsets": [_Msghdr.msg_name.offset, _Msghdr.msg_namelen.offset, _Msghdr.msg_iov.offset,
                _Msghdr.msg_iovlen.offset],
    "itemsize": ctypes.sizeof(_Mmsghdr),
})

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int

_SOCKADDR_IN = struct.Struct("=H2s4s8x")  # family (host order), port (network), address
_SOCKADDR_IN6 = struct.Struct("=H2sI16sI")  # + flow info, address, scope id
_SOCKADDR_SIZE = 28  # room for either
# The kernel is out of room for this datagram now (socket buffer, device queue): the rest of
# the batch would fail the same way, so it is dropped rather than retried.
BACKLOG_ERRNOS = frozenset({errno.EAGAIN, errno.ENOBUFS})


def sockaddr(addr: Addr) -> bytes:
    """The C ``sockaddr_in``/``sockaddr_in6`` of a numeric address, padded to 28 bytes."""
    host, port = addr
    p = port.to_bytes(2, "big")
    if ":" in host:
        raw = _SOCKADDR_IN6.pack(socket.AF_INET6, p, 0, socket.inet_pton(socket.AF_INET6, host),
                                 0)
    else:
        raw = _SOCKADDR_IN.pack(socket.AF_INET, p, socket.inet_aton(host))
    return raw.ljust(_SOCKADDR_SIZE, b"\0")


class SendBatch:
    """One datagram to each of a fixed list of destinations, in as few system calls as Linux
    allows. Build once per destination change; :meth:`send` is the per-packet hot path."""

    __slots__ = ("addrs", "_names", "_iov", "_msgs", "_base", "_n", "_stride", "_start")

    def __init__(self, addrs: Sequence[Addr], names: bytes | None = None) -> None:
        """``names``: the addresses' :func:`sockaddr` bytes, concatenated, when the caller
        keeps them (a destination table converts each address once, not on every rebuild)."""
        self.addrs = tuple(addrs)
        n = self._n = len(self.addrs)
        if names is None:
            names = b"".join(sockaddr(a) for a in self.addrs)
        # Built with numpy, not a Python loop over ctypes structures: a table of thousands
        # is rebuilt whenever a subscriber joins, so this must cost microseconds, not ms.
        self._names = np.frombuffer(names or bytes(_SOCKADDR_SIZE), dtype=np.uint8).copy()
        family = self._names.reshape(-1, _SOCKADDR_SIZE)[:, :2].copy().view(np.uint16)[:, 0]
        self._iov = _Iovec()
        self._msgs = np.zeros(max(1, n), dtype=_MMSGHDR)
        self._msgs["name"] = (self._names.ctypes.data
                              + np.arange(len(self._msgs), dtype=np.uint64) * _SOCKADDR_SIZE)
        self._msgs["namelen"] = np.where(family == socket.AF_INET6, 28, 16)
        self._msgs["iov"] = ctypes.addressof(self._iov)
        self._msgs["iovlen"] = 1
        self._base = self._msgs.ctypes.data
        self._stride = _MMSGHDR.itemsize
        self._start = 0

    def __len__(self) -> int:
        return self._n

    def send(self, fd: int, data: bytes) -> tuple[int, int, int]:
        """Send ``data`` to every destination; returns ``(calls, backlog, errors)``: system
        calls made, datagrams dropped because the kernel had no room, and datagrams refused
        for another reason (one destination each; the rest are still sent)."""
        return self.send_at(fd, ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0,
                            len(data))

    def send_at(self, fd: int, address: int, length: int) -> tuple[int, int, int]:
        """:meth:`send` for a datagram already in memory at ``address`` (a numpy row)."""
        n = self._n
        if not n:
            return 0, 0, 0
        self._iov.iov_base = address
        self._iov.iov_len = length
        # When the kernel ran out of room part-way through the last packet, this one starts
        # with the destinations that missed it, so they are not always the list's tail.
        start = self._start
        calls = errors = 0
        for lo, hi in ((start, n), (0, start)):
            off, retried = lo, -1
            while off < hi:
                calls += 1
                sent = _sendmmsg(fd, self._base + off * self._stride, min(hi - off, MAX_BATCH),
                                 MSG_DONTWAIT)
                if sent > 0:
                    off += sent
                elif ctypes.get_errno() in BACKLOG_ERRNOS:
                    # no room now: the rest of this packet's destinations miss it
                    left = hi - off + (start if lo == start else 0)
                    self._start = off
                    return calls, left, errors
                elif retried != off:
                    # An earlier datagram's ICMP error (IP_RECVERR) is reported by the next
                    # send, which then sends nothing: try the same destination once more.
                    retried = off
                else:
                    errors += 1  # this destination refuses (EPERM, ENETUNREACH, ...): skip it
                    off += 1
        return calls, 0, errors


class RecvBatch:
    """Up to ``size`` datagrams of ``max_len`` bytes per ``recvmmsg`` call, with their kernel
    receive times when the socket has ``SO_TIMESTAMPNS`` on (see :func:`timestamp_socket`).

    After :meth:`recv` returns ``k``, ``lengths[:k]``, ``data[:k]`` (a uint8 array, one row per
    datagram) and ``times[:k]`` (wall-clock seconds, 0 where the kernel gave none) are valid
    until the next call."""

    _CMSG_SPACE = socket.CMSG_SPACE(16)

    def __init__(self, size: int = 64, max_len: int = 2048) -> None:
        self.size = size
        self.data = np.zeros((size, max_len), dtype=np.uint8)
        self._control = np.zeros((size, self._CMSG_SPACE), dtype=np.uint8)
        self._iovs = (_Iovec * size)()
        self._msgs = (_Mmsghdr * size)()
        base, ctrl = self.data.ctypes.data, self._control.ctypes.data
        for i in range(size):
            self._iovs[i].iov_base = base + i * max_len
            self._iovs[i].iov_len = max_len
            h = self._msgs[i].msg_hdr
            h.msg_iov = ctypes.pointer(self._iovs[i])
            h.msg_iovlen = 1
            h.msg_control = ctrl + i * self._CMSG_SPACE
        # Views over the C array: msg_len and msg_controllen of each message, no copying.
        # (numpy's stubs do not know that a ctypes array exports the buffer protocol)
        raw = np.frombuffer(self._msgs, dtype=np.uint8)  # type: ignore[call-overload]
        raw = raw.reshape(size, ctypes.sizeof(_Mmsghdr))
        self._len_view = raw[:, _Mmsghdr.msg_len.offset:_Mmsghdr.msg_len.offset + 4] \
            .view(np.uint32)[:, 0]
        off = _Msghdr.msg_controllen.offset
        self._controllen = raw[:, off:off + 8].view(np.uint64)[:, 0]
        self._controllen[:] = self._CMSG_SPACE
        self._msgs_addr = ctypes.addressof(self._msgs)
        self.lengths = np.zeros(size, dtype=np.int64)
        self.times = np.zeros(size, dtype=np.float64)

    def recv(self, fd: int) -> int:
        """Read what is queued (up to ``size``) without blocking; 0 when nothing is."""
        k: int = _recvmmsg(fd, self._msgs_addr, self.size, MSG_DONTWAIT, None)
        if k < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(err, os.strerror(err))
        self.lengths[:k] = self._len_view[:k]
        # One SCM_TIMESTAMPNS cmsg per message: a 16-byte cmsghdr then a timespec.
        ts = self._control[:k, 16:32].view(np.int64)
        stamped = self._controllen[:k] > 0
        self.times[:k] = np.where(stamped, ts[:, 0] + ts[:, 1] * 1e-9, 0.0)
        self._controllen[:k] = self._CMSG_SPACE  # the kernel overwrote it with what it used
        return k


def timestamp_socket(sock: socket.socket) -> None:
    """Have the kernel stamp each datagram's arrival (wall clock, ns) for :class:`RecvBatch`."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
