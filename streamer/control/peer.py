"""What the streamers of a pair give each other: the clip library (``docs/operations.md``,
"A standby streamer").

Uploaded clips live on the disk of the streamer that took the upload (``ClipLibrary``, keyed
by the SHA-256 of the upload); only their metadata is in Redis. So a standby mirrors the
active streamer's library while it waits: every ``MIRROR_EVERY_S`` it lists the clips in
Redis, and fetches each one it lacks from the active streamer (``GET /peer/clips/{id}``, at
the address the active one advertised with its lease), checks that the bytes hash to the
clip's id, and decodes them into its own library. A scheduled clip then airs after a
takeover as it would have. It asks with a peer token (``wire/token.py``, identity
``peer:streamer``, scope ``clips``, five minutes) signed with the signing key the two share:
nobody else can read a clip that has not aired yet.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from wire import token
from wire.auth import Keyring, SigningKey

from .broadcasts import ClipLibrary
from .lease import Lease
from .state import State

log = logging.getLogger("loa.peer")

PEER_IDENTITY = "peer:streamer"
PEER_SCOPE = "clips"
TOKEN_LIFETIME_S = 300
MIRROR_EVERY_S = 5.0
SCHEME = "LoaPeer"  # Authorization: LoaPeer <base64url token>
CHUNK = 1 << 20
FETCH_TIMEOUT_S = 120.0  # an hour of MP3 at 128 kb/s is 58 MB


def peer_token(key: SigningKey) -> str:
    return token.to_url(token.issue(key, PEER_IDENTITY, [PEER_SCOPE], time.time(),
                                    TOKEN_LIFETIME_S))


def add_peer_routes(app: web.Application, clips: ClipLibrary, keys: Keyring) -> None:
    """``GET /peer/clips/{id}``: a clip's upload as received, for the other streamer of the
    pair (401 without a peer token signed by one of ``keys``, 404 for no such clip)."""

    async def clip_file(request: web.Request) -> web.StreamResponse:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        verdict = token.check(keys, token.from_url(value.strip()), PEER_IDENTITY, PEER_SCOPE,
                              time.time()) if scheme == SCHEME else token.BAD
        if isinstance(verdict, str):
            return web.json_response({"error": "unauthorized", "field": None,
                                      "message": f"a peer token is needed ({verdict})"},
                                     status=401)
        cid = request.match_info["id"]
        path = clips.directory / cid
        if not ClipLibrary.valid_id(cid) or not path.is_file():
            return web.json_response({"error": "not_found", "field": "id",
                                      "message": f"no clip {cid!r}"}, status=404)
        return web.FileResponse(path)

    app.router.add_get("/peer/clips/{id}", clip_file)


class ClipMirror:
    """A standby's copy of the active streamer's clip library (:meth:`run` until cancelled)."""

    def __init__(self, clips: ClipLibrary, state: State, lease: Lease,
                 key: Callable[[], SigningKey], registry: CollectorRegistry | None = None
                 ) -> None:
        self.clips = clips
        self.state = state
        self.lease = lease
        self.key = key
        self.m_copied = Counter("loa_peer_clips_total", "Clips a standby streamer copied from "
                                "the active one, by outcome", ["outcome"], registry=registry)

    async def run(self) -> None:
        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S, connect=2)) as http:
            while True:
                try:
                    await self.sync(http)
                except Exception:  # Redis or the peer away: the next turn tries again
                    log.warning("clip mirror: this turn failed", exc_info=True)
                await asyncio.sleep(MIRROR_EVERY_S)

    async def sync(self, http: aiohttp.ClientSession) -> int:
        """Fetch every clip in Redis that this library lacks; returns how many it copied."""
        missing = [c.id for c in await self.state.clips.all()
                   if ClipLibrary.valid_id(c.id) and not (self.clips.directory / c.id).is_file()]
        if not missing:
            return 0
        url = await self.lease.url_now()
        if url is None:
            return 0
        copied = 0
        for cid in missing:
            try:
                await self._fetch(http, url, cid)
            except Exception as e:
                self.m_copied.labels("failed").inc()
                log.warning("clip %s not copied from %s: %s", cid, url, e)
                continue
            self.m_copied.labels("copied").inc()
            copied += 1
        return copied

    async def _fetch(self, http: aiohttp.ClientSession, url: str, cid: str) -> None:
        spool = self.clips.spool()
        try:
            sha = hashlib.sha256()
            headers = {"Authorization": f"{SCHEME} {peer_token(self.key())}"}
            async with http.get(f"{url}/peer/clips/{cid}", headers=headers) as r:
                if r.status != 200:
                    raise OSError(f"HTTP {r.status}")
                with open(spool, "wb") as out:
                    async for chunk in r.content.iter_chunked(CHUNK):
                        sha.update(chunk)
                        await asyncio.to_thread(out.write, chunk)
            if sha.hexdigest()[:len(cid)] != cid:
                raise ValueError("the bytes do not hash to the clip's id")
            got, _ = await asyncio.to_thread(self.clips.add, Path(spool))
            assert got == cid
            log.info("clip %s copied from the active streamer", cid)
        finally:
            Path(spool).unlink(missing_ok=True)
