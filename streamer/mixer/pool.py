"""Encoder threads: one frame's Opus encodes, spread over the cores.

libopus, called through ctypes, releases the GIL while it encodes, and the encode is about
90 % of what a distinct programme costs per frame; so threads give the mixer every core without
a second process or an IPC contract. The pool runs ``job.encode()`` and nothing else: what
must stay serial (rendering the programmes, whose items and sources are shared between them;
packetization; the order packets leave in) stays on the thread that ticks, which encodes too
whenever it has nothing else to do. A job must touch only its own state and its own
programme's encoder, never another job's.

Threads start on first use, from the thread that ticks: on Linux a thread inherits the nice
value of the thread that creates it, so the encoder threads share playout's raised priority
(``streamer/playout.py``). They stop when the pool is closed or garbage collected; they hold no
reference to the pool or the mixer. Every counter here is touched by the ticking thread only.
"""

from __future__ import annotations

import queue
import threading
import weakref
from typing import Generic, Protocol, TypeVar


class Encodable(Protocol):
    def encode(self) -> None: ...


J = TypeVar("J", bound=Encodable)


def _work(todo: queue.SimpleQueue[J | None], done: queue.SimpleQueue[J]) -> None:
    while (job := todo.get()) is not None:
        job.encode()  # never raises: a job keeps its own error for the ticking thread
        done.put(job)


def _stop(todo: queue.SimpleQueue[J | None], threads: int) -> None:
    for _ in range(threads):
        todo.put(None)


class EncoderPool(Generic[J]):
    """``threads`` helper threads; the caller is the last worker (``steal``)."""

    def __init__(self, threads: int, name: str = "loa-encode") -> None:
        if threads < 1:
            raise ValueError("an encoder pool needs at least one thread")
        self.threads = threads
        self.name = name
        self._todo: queue.SimpleQueue[J | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[J] = queue.SimpleQueue()
        self._started = False
        #: jobs submitted and not yet handed back by ``steal``, ``poll`` or ``wait``
        self.pending = 0

    def _start(self) -> None:
        for i in range(self.threads):
            threading.Thread(target=_work, args=(self._todo, self._done),
                             name=f"{self.name}_{i}", daemon=True).start()
        self._finalizer = weakref.finalize(self, _stop, self._todo, self.threads)
        self._started = True

    def submit(self, job: J) -> None:
        if not self._started:
            self._start()
        self.pending += 1
        self._todo.put(job)

    def steal(self) -> J | None:
        """A submitted job no thread has taken yet, for the caller to encode itself."""
        try:
            job = self._todo.get_nowait()
        except queue.Empty:
            return None
        assert job is not None  # only ``close`` puts None, and not while jobs are pending
        self.pending -= 1
        return job

    def poll(self) -> J | None:
        """A job a thread has finished, or None at once."""
        if self._done.empty():
            return None
        self.pending -= 1
        return self._done.get()

    def wait(self) -> J:
        """The next job a thread finishes (blocks; call only while one is pending)."""
        job = self._done.get()
        self.pending -= 1
        return job

    def settle(self) -> None:
        """Take back every pending job, finished or not, unencoded if no thread took it yet:
        after a failed frame nothing of it may linger into the next one."""
        while self.pending:
            if self.steal() is None:
                self.wait()

    def close(self) -> None:
        self.settle()
        if self._started:
            self._finalizer()
            self._started = False
