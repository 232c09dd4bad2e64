"""Live inputs sending now — browser studio sessions and RTP ingest streams — by id.

An input owns a :class:`LiveBuffer` while it sends. Any number of broadcasts may air it at
once (its own talk-over in a commune and an emergency officer's province-wide warning that
uses the same voice), each through its own reader. When the input stops sending, every
broadcast that airs it ends (``done``): a live item with no input must not hold a channel.
"""

from __future__ import annotations

import logging
from typing import Any

from streamer.mixer.sources.live import LiveBuffer, LiveReader

from .broadcasts import Broadcasts
from .models import BroadcastRecord, BroadcastState
from .schemas import BadRequest, LiveSource

log = logging.getLogger(__name__)
#: a voice over WebRTC or SRTP arrives every 20 ms give or take the network's and the event
#: loop's jitter: play it this far behind the newest sample so that jitter is not heard
LIVE_LATENCY_S = 0.12
LIVE_SLACK_S = 0.25


def studio_input(session_id: str) -> str:
    return f"studio-{session_id}"


def input_sdp(plane: Any, key: str) -> tuple[str, str, str]:
    """The ingest endpoint's "host:port", the SDP and an ffmpeg command line that send to it
    with ``key``."""
    from wire.ingest import sdp_for

    from .api.core import ApiError

    host, port = plane.ingest_addr
    if plane.ingest is None or not port:
        raise ApiError(503, "RTP ingest is not enabled on this streamer")
    # send_bye + rtcpport on the media port: the input ends at once when ffmpeg stops;
    # -sdp_file keeps the SDP (with the key) off the terminal
    cmd = ("ffmpeg -re -i INPUT -c:a libopus -b:a 64k -ac 1 -rtpflags send_bye "
           "-sdp_file /dev/null -f rtp "
           f"-srtp_out_suite AES_CM_128_HMAC_SHA1_80 -srtp_out_params {key} "
           f"'srtp://{host}:{port}?rtcpport={port}'")
    return f"{host}:{port}", sdp_for(host, port, key), cmd


class LiveInputs:
    def __init__(self, broadcasts: Broadcasts) -> None:
        self.broadcasts = broadcasts
        self.buffers: dict[str, LiveBuffer] = {}

    def open(self, input_id: str, buffer: LiveBuffer | None = None) -> LiveBuffer:
        buf = self.buffers.get(input_id)
        if buf is None or buf.closed:
            buf = self.buffers[input_id] = buffer or LiveBuffer()
        return buf

    def source(self, s: LiveSource) -> tuple[LiveReader, dict[str, Any]]:
        """The reader a broadcast of ``s`` plays, or a 400 naming ``source.input``."""
        return self.source_of(s.input)

    def source_of(self, input_id: str) -> tuple[LiveReader, dict[str, Any]]:
        buf = self.buffers.get(input_id)
        if buf is None or buf.closed:
            raise BadRequest("source.input", f"live input {input_id!r} is not sending now")
        return buf.reader(LIVE_LATENCY_S, LIVE_SLACK_S), {"kind": "live", "input": input_id}

    def airing(self, input_id: str) -> list[BroadcastRecord]:
        return [r for r in self.broadcasts.live.values()
                if r.source.get("kind") == "live" and r.source.get("input") == input_id]

    async def close(self, input_id: str) -> list[int]:
        """The input stopped: its buffer closes and the broadcasts airing it are done."""
        buf = self.buffers.pop(input_id, None)
        if buf is not None:
            buf.close()
        ended = []
        for rec in self.airing(input_id):
            await self.broadcasts.stop(rec, BroadcastState.DONE)
            ended.append(rec.id)
        if ended:
            log.info("live input %s ended: broadcasts %s done", input_id, ended)
        return ended
