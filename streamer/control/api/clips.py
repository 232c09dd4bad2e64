"""Clip library (multipart upload, checked by decoding, loudness-normalised) and TTS preview.

Uploads are refused before they are read whole: the declared length is checked first and the
stream is read with a cap, so a 10 GB upload costs at most the cap in memory.
"""

from __future__ import annotations

import asyncio
import io
import time
import wave

import aiohttp
import numpy as np
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel

from streamer.control import auth
from streamer.control.models import ClipMeta
from streamer.control.schemas import BadRequest, SpeechText
from streamer.mixer.sources import ClipError, TtsError

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


def _too_big() -> ApiError:
    return ApiError(413, f"upload larger than {MAX_CLIP_BYTES} bytes", "file")


async def _read_upload(request: web.Request) -> tuple[bytes, str]:
    if request.content_length is not None and request.content_length > MAX_CLIP_BYTES + 65536:
        raise _too_big()
    if not request.content_type.startswith("multipart/form-data"):
        raise BadRequest("body", "must be multipart/form-data with a 'file' part")
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, HttpProcessingError) as e:
        raise BadRequest("body", f"not multipart: {e}") from None
    data, name = b"", ""
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, aiohttp.BodyPartReader):
                raise BadRequest("body", "nested multipart is not supported")
            if part.name == "file":
                chunks, size = [], 0
                while chunk := await part.read_chunk(1 << 20):
                    size += len(chunk)
                    if size > MAX_CLIP_BYTES:
                        raise _too_big()
                    chunks.append(chunk)
                data, name = b"".join(chunks), name or (part.filename or "")
            elif part.name == "name":
                name = (await part.read(decode=True))[:200].decode("utf-8", "replace")
            else:
                raise BadRequest(part.name or "body", "unknown form field")
    except (ValueError, HttpProcessingError) as e:
        raise BadRequest("body", f"malformed multipart body: {e}") from None
    if not data:
        raise BadRequest("file", "empty or missing 'file' part")
    return data, name


@API.route("POST", "/api/v1/clips", summary="Upload audio (any format ffmpeg decodes, ≤ 64 MiB,"
           " ≤ 1 h); decoded, normalised to -16 LUFS", tag="clips", upload=_MULTIPART,
           response=ClipMeta, status=201, errors=(400, 401, 403, 413, 503))
async def upload_clip(ctx: Ctx) -> ClipMeta:
    ctx.require(auth.OPERATE, [], "upload clips")
    data, name = await _read_upload(ctx.request)
    try:
        cid, clip = await asyncio.to_thread(ctx.services.clips.add, data)
    except ClipError as e:
        raise BadRequest("file", f"not playable audio: {e}") from None
    meta = ClipMeta(id=cid, name=name, seconds=clip.length / 48_000, bytes=len(data),
                    created=time.time(), created_by=ctx.me.name)
    await ctx.services.state.clips.put(cid, meta)
    await ctx.audit("upload_clip", cid, [], name=name, bytes=len(data))
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
        clip = await asyncio.to_thread(ctx.services.tts.synthesize, body.text)
    except TtsError as e:
        raise BadRequest("text", str(e)) from None
    return web.Response(body=wav_bytes(clip.samples), content_type="audio/wav")
