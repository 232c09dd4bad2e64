"""A stand-in for the central source system's report webhook: a real aiohttp server on a free
port that checks each push's signature the way ``docs/operations.md`` tells a receiver to,
refuses the first delivery of every report id with 503 and a ``Retry-After`` (so the streamer
must retry, not sooner than asked), and keeps every request it got, with when it came."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Push:
    report_id: str
    timestamp: str
    signature: str
    body: bytes
    verified: bool
    status: int  # what the receiver answered
    at: float  # when it came (time.monotonic())

    @property
    def report(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Central:
    secret: bytes
    pushes: list[Push] = field(default_factory=list)
    url: str = ""
    #: the Retry-After of its 503 answers, in seconds
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None

    async def start(self) -> Central:
        app = web.Application()
        app.router.add_post("/loa/reports", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/loa/reports"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def of(self, report_id: str) -> list[Push]:
        return [p for p in self.pushes if p.report_id == report_id]

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        ts = request.headers.get("X-Loa-Timestamp", "")
        sig = request.headers.get("X-Loa-Signature", "")
        rid = request.headers.get("X-Loa-Report-Id", "")
        # the recipe: HMAC-SHA256 over "<timestamp>.<body>", compared in constant time
        want = "sha256=" + hmac.new(self.secret, ts.encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
        verified = hmac.compare_digest(want, sig)
        seen = any(p.report_id == rid and p.verified for p in self.pushes)
        status = 401 if not verified else 200 if seen else 503
        self.pushes.append(Push(rid, ts, sig, body, verified, status, time.monotonic()))
        return web.json_response({"ok": status == 200}, status=status, headers={
            "Retry-After": str(self.retry_after_s)} if status == 503 else None)
