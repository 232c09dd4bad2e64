"""The streamer signs every channel's packets on their way to the fan-out (``wire/auth.py``).

:class:`SigningSink` stands between the mixer and the fan-out endpoint: each block of packets
goes out at once, untouched, and is kept; once the whole frame is out (``sign_pending``, which
the frame loop calls after it has handed every programme's packets to the socket), each
channel's packet is hashed into that channel's batch, and a batch that closes sends its
``LOAS`` on the channel. So signing never holds a frame's media back, and the emergency's
packets, sent first, are hashed first. Channels start their batches
on different frames (the phase is their SSRC modulo the batch length), so that a thousand
channels sign a few at a time, never all on one frame. A channel that falls quiet
(``Mixer`` with ``idle_heartbeat_ms``) has its open batch signed at once: its last packets
are proven now, not when the next broadcast fills the batch. A frame's sender reports go out
after its LOAS: the heartbeat that tells a channel is quiet must never reach a subscriber
before the proof of the packets sent before it, or the speaker takes them, proven after the
heartbeat, for the stream going on, and conceals past them the sequence numbers the next
broadcast will use (``docs/protocol.md``, "Quiet channels"). It runs on the playout thread, like
the mixer: per channel per frame one SHA-256 of ~100 bytes, per batch one Ed25519 signature
(``docs/BENCHMARKS.md``, "Signed media").

The key lives in a PEM file (PKCS#8, as ``openssl genpkey -algorithm ed25519`` writes it),
0600, created on first start when missing. :meth:`SigningSink.rotate` swaps it between two
frames: every open batch is signed with the old key first, so receivers that pin both keys
hear no gap (``docs/operations.md``, "Signing keys").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from common.secretfile import write_private
from fanout.endpoint import FanoutEndpoint
from wire.auth import BATCH_MS, BadKey, ChannelSigner, SigningKey
from wire.packet import HEADER_LEN, ssrc_for
from wire.rtcp import PT_SR

log = logging.getLogger("loa.signing")

_PRIORITY_AT = HEADER_LEN - 1  # the priority extension's value byte (wire/packet.py)


def load_or_create_key(path: Path) -> SigningKey:
    """The signing key in ``path``; a new one written there (0600) if there is no file.
    Raises :class:`BadKey` for a file that is not an Ed25519 PEM key."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        key = SigningKey.generate()
        write_private(path, key.to_pem())
        log.warning("created a new signing key %s (id %08x); devices must pin its public key "
                    "%s", path, key.id, key.public_text)
        return key
    except OSError as e:
        raise BadKey(f"cannot read {path}: {e.strerror}") from None
    return SigningKey.from_pem(pem)


class SigningSink:
    """The mixer's ``PacketSink``: publishes through ``fanout`` and signs what it published."""

    def __init__(self, fanout: FanoutEndpoint, key: SigningKey, registry: CollectorRegistry,
                 ptime_ms: int = 20) -> None:
        self.fanout = fanout
        self.key = key
        self.frames = max(1, BATCH_MS // ptime_ms)  # 12 at 20 ms, 6 at 40, 4 at 60
        self._signers: dict[str, ChannelSigner] = {}
        self._next: SigningKey | None = None
        self._pending: list[tuple[Sequence[str], np.ndarray]] = []
        self._reports: list[tuple[Sequence[str], np.ndarray]] = []  # sent after the LOAS
        self._pausing: list[str] = []
        self.signatures = Counter("loa_media_signatures_total",
                                  "LOAS packets signed (one per channel per batch)",
                                  registry=registry)
        self.key_info = Gauge("loa_media_signing_key", "1 for the id of the key signing now",
                              ["key_id"], registry=registry)
        self.key_info.labels(f"{key.id:08x}").set(1)

    def rotate(self, key: SigningKey) -> None:
        """Sign with ``key`` from the next frame on (any thread may call this)."""
        self._next = key

    def publish_block(self, channels: Sequence[str], block: np.ndarray) -> None:
        # the mixer made the block for this call: kept, not copied
        if block.shape[0] and block[0, 1] == PT_SR:  # not media: after the frame's LOAS
            self._reports.append((channels, block))
            return
        self.fanout.publish_block(channels, block)
        self._pending.append((channels, block))

    def pause(self, channels: Sequence[str]) -> None:
        self.fanout.pause(channels)
        self._pausing.extend(channels)

    def sign_pending(self) -> None:
        """Hash and sign what the frame sent (call once its media is out), then send the
        frame's sender reports."""
        if self._next is not None:
            self._switch()
        signers, publish = self._signers, self.fanout.publish
        for channels, block in self._pending:
            level = int(block[0, _PRIORITY_AT])
            seqs = block[:, 2:4].view(">u2")[:, 0].tolist()  # each channel numbers its own
            for i, channel in enumerate(channels):
                signer = signers.get(channel)
                if signer is None:
                    signer = signers[channel] = self._signer(channel)
                for loas in signer.add(block[i], seqs[i], level):
                    publish(channel, loas)
                    self.signatures.inc()
        self._pending.clear()
        for channel in self._pausing:
            if (signer := signers.get(channel)) is not None:
                for loas in signer.flush():
                    publish(channel, loas)
                    self.signatures.inc()
        self._pausing.clear()
        for channels, block in self._reports:
            self.fanout.publish_block(channels, block)
        self._reports.clear()

    def forget(self, channel: str) -> None:
        """``channel`` left the mixer (a zone edit): its signer goes, so that a channel of that
        name added again starts its batches afresh, with its sequence numbers. Call on the
        playout thread, as :meth:`sign_pending` is."""
        self._signers.pop(channel, None)

    def _signer(self, channel: str) -> ChannelSigner:
        ssrc = ssrc_for(channel)
        return ChannelSigner(self.key, channel, ssrc, self.frames, phase=ssrc % self.frames)

    def _switch(self) -> None:
        new, self._next = self._next, None
        assert new is not None
        for channel, signer in self._signers.items():
            for loas in signer.flush():
                self.fanout.publish(channel, loas)
                self.signatures.inc()
            signer.key = new
        self.key_info.labels(f"{self.key.id:08x}").set(0)
        self.key_info.labels(f"{new.id:08x}").set(1)
        log.info("signing key %08x replaces %08x", new.id, self.key.id)
        self.key = new


def default_key_path(var_dir: str) -> Path:
    return Path(var_dir) / "signing-key.pem"


def key_path(configured: str, var_dir: str) -> Path:
    return Path(os.path.expanduser(configured)) if configured else default_key_path(var_dir)
