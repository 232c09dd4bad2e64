"""Copies of each LOAS on a lossy last hop (``fanout/repeat.py``): when they go, where they
go, what they cost a speaker's gate, and the relay setting that turns them on."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from fanout.endpoint import FanoutEndpoint
from fanout.repeat import AFTER, MAX_REPEATS, MAX_WAITING, LoasRepeats
from tests.harness.keys import STREAM_KEY_ARGS
from tests.harness.subscriber import Subscriber
from tests.harness.wait import until
from wire import auth
from wire.packet import RtpPacket, ssrc_for

CH = "bt.vt.p1"
SSRC = ssrc_for(CH)


@pytest.fixture(scope="module")
def key() -> auth.SigningKey:
    return auth.SigningKey.generate()


def _packets(n: int, first: int = 0) -> list[bytes]:
    return [RtpPacket(SSRC, first + k, (first + k) * 960, b"\xf8" + bytes([k]) * 40).build()
            for k in range(n)]


def _signed(key: auth.SigningKey, pkts: list[bytes]) -> bytes:
    """One LOAS over ``pkts``, as the streamer signs a batch mid-broadcast."""
    return auth.sign_batch(key, CH, SSRC, int.from_bytes(pkts[0][2:4], "big"),
                           [auth.packet_hash(p) for p in pkts]).build()


def _label(data: bytes) -> str:
    return "L" if auth.is_loas(data) else f"s{int.from_bytes(data[2:4], 'big')}"


def test_copies_go_at_once_and_after_the_next_packets() -> None:
    """Two copies: one beside the original, one after the next packet; a third after the
    second packet. Copies of consecutive LOAS keep their order."""
    assert [LoasRepeats.copies(n).after for n in range(MAX_REPEATS + 1)] == [
        (), (AFTER[0],), tuple(sorted(AFTER[:2])), tuple(sorted(AFTER))]
    three = LoasRepeats.copies(3)
    assert three.after == (0, 1, 2)
    assert list(three.loas(b"A")) == [b"A"]
    assert list(three.packet()) == [b"A"]
    assert list(three.loas(b"B")) == [b"B"]  # an emergency: a LOAS after every packet
    assert list(three.packet()) == [b"A", b"B"]
    assert list(three.packet()) == [b"B"]
    assert list(three.packet()) == [] and len(three) == 0
    none = LoasRepeats.copies(0)
    assert list(none.loas(b"A")) == [] and list(none.packet()) == [] and len(none) == 0
    for n in (-1, MAX_REPEATS + 1):
        with pytest.raises(ValueError, match="copies"):
            LoasRepeats.copies(n)
    with pytest.raises(ValueError, match="each count once"):
        LoasRepeats((1, 1))


def test_copies_waiting_are_bounded() -> None:
    """LOAS with no packet between them (a stream of signatures alone) never pile up."""
    r = LoasRepeats((1, 2))
    for k in range(MAX_WAITING):
        r.loas(k.to_bytes(2, "big"))
    assert len(r) == MAX_WAITING
    r.loas(b"late")
    assert len(r) == MAX_WAITING
    assert b"late" not in r.packet()


def test_a_copy_costs_the_gate_no_signature_check(key: auth.SigningKey) -> None:
    """A speaker that has the original counts a copy as ``duplicate`` before any signature
    check: with its keys gone it would read ``unknown_key`` if it checked one. A copy of a
    LOAS still waiting for its packets is a duplicate too."""
    pkts = _packets(12)
    loas = _signed(key, pkts)
    gate: auth.MediaGate[bytes] = auth.MediaGate(CH, auth.Keyring([key.public]))
    for p in pkts:
        gate.hold(int.from_bytes(p[2:4], "big"), p, p, 0.0)
    assert gate.vouch(loas, 0.0) == pkts
    gate.keys = auth.Keyring([])
    for _ in range(3):
        assert gate.vouch(loas, 0.0) == [] and gate.last == "duplicate"
    assert gate.loas["duplicate"] == 3 and gate.loas["unknown_key"] == 0

    waiting: auth.MediaGate[bytes] = auth.MediaGate(CH, auth.Keyring([key.public]))
    assert waiting.vouch(loas, 0.0) == [] and waiting.last == auth.PENDING
    assert waiting.vouch(loas, 0.0) == [] and waiting.last == "duplicate"


@pytest.mark.parametrize("repeats", [2, 0])
async def test_a_relay_sends_its_subscribers_each_loas_again(key: auth.SigningKey,
                                                            repeats: int) -> None:
    """With two copies a subscriber gets ``L L s12 L``; a plain destination (which cannot
    verify) gets the LOAS once. Copies are counted; without ``loas_repeats`` there are none."""
    fanout = FanoutEndpoint(channel_ssrc=ssrc_for, registry=CollectorRegistry(),
                            process="relay", burst_s=0.0, loas_repeats=repeats)
    sub = Subscriber(CH, [])
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain.bind(("127.0.0.1", 0))
    plain.setblocking(False)
    addr = await fanout.start("127.0.0.1", 0)
    sub.client.upstreams = [addr]
    try:
        await sub.start()
        await until(lambda: fanout.table.subscribers(CH) == 1, 5, "subscribed")
        fanout.add_static(CH, plain.getsockname())
        pkts = _packets(14)
        loas = _signed(key, pkts[:12])
        for p in pkts[:12]:
            fanout.publish_subscribers(CH, p)
        fanout.publish_subscribers(CH, loas)  # a relay forwards a LOAS once it verifies
        fanout.publish_plain(CH, loas)
        for p in pkts[12:]:
            fanout.publish_subscribers(CH, p)
        want = ["L", "L", "s12", "L", "s13"] if repeats else ["L", "s12", "s13"]
        await until(lambda: len(sub.media) == 12 + len(want), 5, "every datagram")
        await asyncio.sleep(0.05)  # nothing more comes
        assert [_label(d) for d in sub.media[11:]] == ["s11", *want]
        assert all(d == loas for d in sub.media if auth.is_loas(d))
        got = []
        while True:
            try:
                got.append(plain.recv(2048))
            except BlockingIOError:
                break
        assert got == [loas]
        copies = fanout.registry.get_sample_value("loa_fanout_loas_copies_total",
                                                  {"process": "relay"}) or 0.0
        assert copies == repeats
    finally:
        sub.close()
        plain.close()
        fanout.close()


def test_the_relay_setting_is_checked_and_has_an_env_override(tmp_path: Path) -> None:
    from relay.main import ConfigError, load_config

    keys = ["--upstream", "10.0.0.1:5004", *STREAM_KEY_ARGS]
    assert load_config(keys, env={}).loas_repeats == 0
    assert load_config(keys, env={"LOA_RELAY_LOAS_REPEATS": "2"}).loas_repeats == 2
    cfg = tmp_path / "relay.toml"
    cfg.write_text("[relay]\nloas_repeats = 1\n")
    assert load_config(["--config", str(cfg), *keys], env={}).loas_repeats == 1
    with pytest.raises(ConfigError, match="loas_repeats"):
        load_config([*keys, "--loas-repeats", str(MAX_REPEATS + 1)], env={})
    with pytest.raises(ValueError, match="copies"):
        FanoutEndpoint(channel_ssrc=ssrc_for, registry=CollectorRegistry(), process="relay",
                       loas_repeats=-1)
