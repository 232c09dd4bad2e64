"""Password hashing in worker processes, never in the streamer's own.

An argon2 check costs tens of milliseconds of CPU by design. In a thread of the streamer it
would still share the interpreter with the playout thread: the hash itself releases the GIL,
but a worker thread that the kernel deschedules while it holds the GIL (before or after the
hash) holds playout back with it. In a process of its own, at a lower priority, a flood of
sign-ins costs the playout thread nothing but CPU the kernel gives it first. The processes
start from a fork server (never a fork of the streamer, whose threads a fork would copy
half-way) on first use; ``close`` stops them.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from . import auth

NICE = 10


def _lower_priority() -> None:
    os.nice(NICE)


class Hasher:
    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("forkserver"),
                initializer=_lower_priority)
        return self._pool

    async def verify(self, argon2_hash: str | None, password: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(), auth.verify_password, argon2_hash,
                                          password)

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(), auth.hash_password, password)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
