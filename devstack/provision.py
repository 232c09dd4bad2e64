"""Register ``loa up``'s relay and speakers through the streamer's API, as the first admin.

Each device gets a fresh MQTT password each run, kept in a 0600 file under ``var/secrets/``
and handed to the device as a file name, never on its command line. Speakers are registered
with their positions; one registered by an earlier run gets its position again (it may have
been registered before speakers had one).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp

from common.secretfile import write_private


class SampleSpeaker(NamedTuple):
    id: str
    zone: str  # a leaf zone (channel)
    lat: float
    lon: float


async def provision(url: str, credentials: Path, secrets_dir: Path, relays: list[str],
                    speakers: list[SampleSpeaker]) -> dict[str, Path]:
    """Register the relay and speakers through the API as the first admin (a fresh MQTT
    password each run, kept in 0600 files); {} when there are no admin credentials here."""
    try:
        creds = json.loads(credentials.read_text())
    except (OSError, ValueError):
        print(f"loa up: no admin credentials in {credentials}; devices run without MQTT",
              file=sys.stderr)
        return {}
    out: dict[str, Path] = {}
    async with aiohttp.ClientSession(base_url=url) as http:
        async with http.post("/api/v1/login", json=creds) as r:
            if r.status != 200:
                raise RuntimeError(f"cannot sign in as {creds.get('user')}: {await r.text()}")
            headers = {"Authorization": f"Bearer {(await r.json())['token']}"}
        devices: list[tuple[str, dict[str, Any]]] = [("relays", {"id": rid}) for rid in relays]
        devices += [("speakers", s._asdict()) for s in speakers]
        for kind, body in devices:
            async with http.post(f"/api/v1/{kind}", json=body, headers=headers) as r:
                if r.status == 201:
                    password = (await r.json())["mqtt"]["password"]
                elif r.status == 409:  # registered by an earlier run: issue a new password
                    if kind == "speakers":
                        await _place(http, headers, body)
                    async with http.post(f"/api/v1/{kind}/{body['id']}/credentials",
                                         headers=headers) as r2:
                        if r2.status != 201:
                            raise RuntimeError(f"{body['id']}: {await r2.text()}")
                        password = (await r2.json())["password"]
                else:
                    raise RuntimeError(f"cannot register {body['id']}: {await r.text()}")
            out[str(body["id"])] = secrets_dir / f"{body['id']}.mqtt"
            write_private(out[str(body["id"])], password + "\n")
    return out


async def _place(http: aiohttp.ClientSession, headers: dict[str, str],
                 speaker: dict[str, Any]) -> None:
    """Put a speaker registered by an earlier run back in its zone at its position."""
    body = {k: speaker[k] for k in ("zone", "lat", "lon")}
    async with http.patch(f"/api/v1/speakers/{speaker['id']}", json=body,
                          headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"cannot place {speaker['id']}: {await r.text()}")


def mqtt_args(device: str, mqtt_url: str, secrets: dict[str, Path]) -> list[str]:
    """A provisioned device's broker options; none for a device without a login."""
    if device not in secrets:
        return []
    return ["--mqtt-url", mqtt_url, "--mqtt-password-file", str(secrets[device])]
