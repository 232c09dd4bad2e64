"""Password hashing on threads of its own, never on an event loop.

An argon2 check costs tens of milliseconds of CPU by design. argon2-cffi releases the GIL for
the whole hash, so a check on one of these threads costs the playout thread (which runs at a
higher priority, ``streamer/playout.py``) only CPU that the kernel gives playout first. The
threads keep the default priority: a lower-priority thread that the kernel descheduled while
it held the GIL, just before or after a hash, would hold playout back with it (a priority
inversion). Not processes: a worker process outlives a streamer that is killed, and keeps
the pipes it inherited open (``loa up`` watches the streamer's). A pool of its own, so a
flood of sign-ins never queues TTS or decoding behind it.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from . import auth


class Hasher:
    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="loa-hash")
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
