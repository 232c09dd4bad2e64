"""Clip library (multipart upload, checked by decoding, loudness-normalised) and TTS preview.

Uploads are refused before they are read whole: the declared length is checked first, and the
file part is written to disk a megabyte at a time with a cap, so a 10 GB upload costs a
megabyte of memory and at most the cap of disk, for as long as the request lasts. Decoding
(``ClipLibrary.add``) runs in a worker thread and stops at the clip's duration limit.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
import wave
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, Field

from streamer.control import auth
from streamer.control.broadcasts import ClipLibrary
from streamer.control.models import ClipMeta
from streamer.control.schemas import BadRequest, SpeechText
from streamer.mixer.sources import ClipError, ClipTooLong, TtsError
from streamer.mixer.sources.tts import in_speech_thread

from .core import API, ApiError, Ctx, NotFound

MAX_CLIP_BYTES = 64 * 1024 * 1024
_MULTIPART = {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary"},
                   "name": {"type": "string", "maxLength": 200}}}}}


class ClipList(BaseModel):
    clips: list[ClipMeta]


class TtsPreviewIn(BaseModel):
    text: SpeechText
    voice: str | None = Field(None, max_length=32, description="a voice name (GET "
                              "/api/v1/tts/voices); null: the default voice")


class VoicesOut(BaseModel):
    voices: list[str] = Field(description="the voice names a zone may choose (PATCH "
                              "/api/v1/zones/{id} voice)")


_PATH = re.compile(r"'?/[^\s']+'?")


def _too_big() -> ApiError:
    return ApiError(413, f"upload larger than {MAX_CLIP_BYTES} bytes", "file")


async def _read_upload(request: web.Request, clips: ClipLibrary) -> tuple[Path, int, str]:
    """The ``file`` part spooled to a file in the library (its path and size), and the name."""
    if request.content_length is not None and request.content_length > MAX_CLIP_BYTES + 65536:
        raise _too_big()
    if not request.content_type.startswith("multipart/form-data"):
        raise BadRequest("body", "must be multipart/form-data with a 'file' part")
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, HttpProcessingError) as e:
        raise BadRequest("body", f"not multipart: {e}") from None
    spooled: Path | None = None
    size, name = 0, ""
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, aiohttp.BodyPartReader):
                raise BadRequest("body", "nested multipart is not supported")
            if part.name == "file":
                if spooled is not None:
                    raise BadRequest("file", "more than one 'file' part")
                spooled = await asyncio.to_thread(clips.spool)
                size = await _spool(part, spooled)
                name = name or (part.filename or "")
            elif part.name == "name":
                name = (await part.read(decode=True))[:200].decode("utf-8", "replace")
            else:
                raise BadRequest(part.name or "body", "unknown form field")
        if spooled is None or size == 0:
            raise BadRequest("file", "empty or missing 'file' part")
    except BaseException as e:
        if spooled is not None:
            spooled.unlink(missing_ok=True)
        if isinstance(e, (ValueError, HttpProcessingError)) and not isinstance(e, BadRequest):
            raise BadRequest("body", f"malformed multipart body: {e}") from None
        raise
    return spooled, size, name


async def _spool(part: aiohttp.BodyPartReader, path: Path) -> int:
    """Write ``part`` to ``path`` a megabyte at a time, off the event loop; refuse it as soon
    as it passes ``MAX_CLIP_BYTES``."""
    size, buf = 0, bytearray()
    with await asyncio.to_thread(open, path, "wb", buffering=0) as f:
        while chunk := await part.read_chunk(1 << 20):
            size += len(chunk)
            if size > MAX_CLIP_BYTES:
                raise _too_big()
            buf += chunk
            if len(buf) >= 1 << 20:
                await asyncio.to_thread(f.write, buf)
                buf = bytearray()
        if buf:
            await asyncio.to_thread(f.write, buf)
    return size


@API.route("POST", "/api/v1/clips", summary="Upload audio (any format ffmpeg decodes, ≤ 64 MiB,"
           " ≤ clip_max_s of audio, 1 h by default); decoded, normalised to -16 LUFS",
           tag="clips", upload=_MULTIPART, response=ClipMeta, status=201,
           errors=(400, 401, 403, 413, 503))
async def upload_clip(ctx: Ctx) -> ClipMeta:
    ctx.require(auth.OPERATE, [], "upload clips")
    clips: ClipLibrary = ctx.services.clips
    upload, size, name = await _read_upload(ctx.request, clips)
    try:
        # hashing and decoding take seconds for a long clip: never on the event loop
        cid, clip = await asyncio.to_thread(clips.add, upload)
    except ClipTooLong as e:
        raise ApiError(413, f"{e} (the streamer's clip_max_s)", "file") from None
    except ClipError as e:  # the decoder names the file: the server's paths stay here
        why = _PATH.sub("the file", str(e).replace(str(upload), "the file"))
        raise BadRequest("file", f"not playable audio: {why}") from None
    assert clip.length is not None
    meta = ClipMeta(id=cid, name=name, seconds=clip.length / 48_000, bytes=size,
                    created=time.time(), created_by=ctx.me.name)
    await ctx.services.state.clips.put(cid, meta)
    await ctx.audit("upload_clip", cid, [], name=name, bytes=size)
    return meta


@API.route("GET", "/api/v1/clips", summary="The clip library", tag="clips", response=ClipList)
async def list_clips(ctx: Ctx) -> ClipList:
    clips = await ctx.services.state.clips.all()
    return ClipList(clips=sorted(clips, key=lambda c: -c.created))


@API.route("GET", "/api/v1/clips/{id}", summary="One clip's metadata", tag="clips",
           response=ClipMeta)
async def get_clip(ctx: Ctx) -> ClipMeta:
    meta = await ctx.services.state.clips.get(ctx.path("id")[:64])
    if meta is None:
        raise NotFound(f"clip {ctx.path('id')[:64]!r}")
    return meta


def wav_bytes(samples: np.ndarray, rate_hz: int = 48_000) -> bytes:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm)
    return buf.getvalue()


@API.route("POST", "/api/v1/tts/preview", summary="Speak a text (Vietnamese TTS); returns WAV",
           tag="clips", body=TtsPreviewIn,
           produces={"audio/wav": {"schema": {"type": "string", "format": "binary"}}})
async def tts_preview(ctx: Ctx) -> web.Response:
    body: TtsPreviewIn = ctx.body
    try:
        speech = await in_speech_thread(ctx.services.tts.speak, body.text, body.voice)
    except TtsError as e:
        raise BadRequest("text", str(e)) from None
    clip = speech.clip
    assert clip.length is not None
    headers = {"X-Loa-Voice": _ascii(speech.voice)}
    if speech.fallback:
        headers["X-Loa-Tts-Fallback"] = _ascii(speech.fallback)
    return web.Response(body=wav_bytes(clip.read(0, clip.length)), content_type="audio/wav",
                        headers=headers)


def _ascii(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode()[:300]


@API.route("GET", "/api/v1/tts/voices", summary="The voice names a zone may choose",
           tag="clips", response=VoicesOut)
async def tts_voices(ctx: Ctx) -> VoicesOut:
    return VoicesOut(voices=list(ctx.services.tts.voice_names))
