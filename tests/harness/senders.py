"""A system above that sends bulletins in (``streamer/control/inbound.py``): its Ed25519 key,
its registration on the in-process streamer, and its signed requests."""

from __future__ import annotations

import base64
import json
import time

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from streamer.control.inbound import message
from tests.harness.api import call
from tests.harness.zones import OP

PATH = "/api/v1/inbound/bulletins"


class Sender:
    def __init__(self, sid: str) -> None:
        self.id = sid
        self.key = Ed25519PrivateKey.generate()
        self.public = base64.b64encode(self.key.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw)).decode()

    def headers(self, method: str, path: str, body: bytes, at: float | None = None,
                key: Ed25519PrivateKey | None = None) -> dict[str, str]:
        stamp = str(int(time.time() if at is None else at))
        sig = (key or self.key).sign(message(method, path, stamp, body))
        return {"X-Loa-Sender": self.id, "X-Loa-Timestamp": stamp,
                "X-Loa-Signature": base64.b64encode(sig).decode(),
                "Content-Type": "application/json"}


async def register(streamer, sender: Sender, zones=(OP,)) -> None:
    status, body = await call(streamer, "POST", "/api/v1/senders", json={
        "id": sender.id, "name": "Hệ thống thông tin nguồn trung ương", "zones": list(zones),
        "public_key": sender.public})
    assert status == 201, body


async def send(streamer, sender: Sender, bulletin: dict | bytes, **headers_kw):
    body = bulletin if isinstance(bulletin, bytes) else json.dumps(bulletin).encode()
    h = sender.headers("POST", PATH, body, **headers_kw)
    async with aiohttp.ClientSession() as http, http.post(streamer.http_url + PATH, data=body,
                                                          headers=h) as r:
        return r.status, await r.json()


async def receipt(streamer, sender: Sender, ref: str):
    path = f"{PATH}/{ref}"
    async with aiohttp.ClientSession() as http, http.get(
            streamer.http_url + path, headers=sender.headers("GET", path, b"")) as r:
        return r.status, await r.json()
