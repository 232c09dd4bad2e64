"""Subscription tokens (``wire/token.py``): issued and signed by the streamer, checked offline
by the handshake server; and against a real relay that requires them (``--require-tokens``):
no token, garbage, an expired one, another channel's or another device's get a REJECT and not
one media packet, and a renewed token keeps a speaker playing past the old one's end. A
streamer and a relay require them by default: turning the check off is an explicit choice."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from pathlib import Path

import pytest

from tests.harness.keys import STREAM_KEY_ARGS, TEST_KEY, token_for
from tests.harness.relay import relay_process
from tests.harness.speaker import speaker_process
from tests.harness.subscriber import Subscriber
from tests.harness.upstream import ToneUpstream, serving
from tests.harness.wait import until
from tests.harness.zones import KP1, KP2
from wire import subscribe, token
from wire.auth import Keyring, SigningKey
from wire.subscribe import ClientState, MsgType, RejectReason, SubscribeServer

NOW = 1_900_000_000.0  # tests below pass their own clock: no wall-clock dependence
KEYS = Keyring([TEST_KEY.public])


def test_issue_and_check():
    t = token.issue(TEST_KEY, "spk-1", [KP1], NOW, 3600)
    parsed = token.check(KEYS, t, "spk-1", KP1, NOW + 10)
    assert isinstance(parsed, token.Token)
    assert (parsed.identity, parsed.channels, parsed.expires) == ("spk-1", (KP1,), NOW + 3600)
    assert token.check(KEYS, t, "spk-1", KP1, NOW + 3600) == token.EXPIRED
    assert token.check(KEYS, t, "spk-1", KP1, NOW - token.SKEW_S - 1) == token.EXPIRED
    assert token.check(KEYS, t, "spk-2", KP1, NOW) == token.FORBIDDEN
    assert token.check(KEYS, t, "spk-1", KP2, NOW) == token.FORBIDDEN
    other = token.issue(SigningKey.generate(), "spk-1", [KP1], NOW, 3600)
    assert token.check(KEYS, other, "spk-1", KP1, NOW) == token.BAD
    for i in range(len(t)):  # any changed byte: refused, never an exception
        forged = bytearray(t)
        forged[i] ^= 0x01
        assert token.check(KEYS, bytes(forged), "spk-1", KP1, NOW) != parsed
    for garbage in (b"", b"\x01", os.urandom(1024), t[:-1], t + b"\x00"):
        assert token.check(KEYS, garbage, "spk-1", KP1, NOW) == token.BAD


@pytest.mark.parametrize("channels, channel, ok", [
    (["*"], KP1, True),
    (["brvt.vung-tau"], KP1, True),  # a zone prefix covers every channel below it
    (["brvt.vung"], KP1, False),  # but not a name that merely starts alike
    ([KP2, KP1], KP1, True),
    (["ba-ria/long-hai"], "ba-ria/long-hai/cum-1", True),
])
def test_channel_patterns(channels, channel, ok):
    t = token.issue(TEST_KEY, "r", channels, NOW, 60)
    assert isinstance(token.check(KEYS, t, "r", channel, NOW), token.Token) is ok


def test_bad_tokens_cannot_be_issued():
    for channels in ([], ["x"] * 33, [""], ["x" * 129]):
        with pytest.raises(ValueError):
            token.issue(TEST_KEY, "r", channels, NOW, 60)


def handshake(server: SubscribeServer, tok: bytes, channel: str = KP1, identity: str = "spk-1",
              now: float = 0.0, addr: tuple[str, int] = ("10.0.0.9", 5004)) -> subscribe.Message:
    hello = subscribe.Message(MsgType.HELLO, channel, identity=identity, token=tok).build()
    cookie = subscribe.parse(server.handle(hello, addr, now)[0] or b"").cookie
    sub = subscribe.Message(MsgType.SUBSCRIBE, channel, identity=identity, token=tok,
                            cookie=cookie).build()
    return subscribe.parse(server.handle(sub, addr, now)[0] or b"")


def test_the_handshake_refuses_each_bad_token_by_reason_and_ends_at_expiry():
    wall = [NOW]

    def check(identity: str, channel: str, data: bytes) -> float | str:
        v = token.check(KEYS, data, identity, channel, wall[0])
        return v if isinstance(v, str) else v.expires - wall[0]

    server = SubscribeServer(secret=b"s" * 32, channel_ssrc=lambda c: 7, check_token=check)
    good = token.issue(TEST_KEY, "spk-1", [KP1], NOW, 60)
    assert handshake(server, b"").reason == RejectReason.BAD_TOKEN
    assert handshake(server, os.urandom(300)).reason == RejectReason.BAD_TOKEN
    old = token.issue(TEST_KEY, "spk-1", [KP1], NOW - 7200, 3600)
    assert handshake(server, old).reason == RejectReason.EXPIRED_TOKEN
    assert handshake(server, good, channel=KP2).reason == RejectReason.FORBIDDEN
    assert handshake(server, good, identity="spk-2").reason == RejectReason.FORBIDDEN
    assert server.count == 0
    assert handshake(server, good).type is MsgType.SUBACK and server.count == 1
    # renewed at 50 s with a token to 150 s: still there at 100 s, gone at 150 s
    wall[0] = NOW + 50
    assert handshake(server, token.issue(TEST_KEY, "spk-1", [KP1], NOW + 50, 100),
                     now=50).type is MsgType.SUBACK
    assert server.expire(0) == [] and server.count == 1
    gone = server.expire(150)  # silence is not why (keepalives are not simulated here)
    assert [g.why for g in gone] == ["expired"]
    server2 = SubscribeServer(secret=b"s" * 32, channel_ssrc=lambda c: 7, check_token=check,
                              expire_s=1e9)
    wall[0] = NOW
    assert handshake(server2, good).type is MsgType.SUBACK
    assert server2.expire(59) == []
    assert [g.why for g in server2.expire(60)] == ["token_expired"]


def test_a_new_token_makes_the_client_handshake_again():
    client = subscribe.SubscribeClient(identity="spk-1", channel=KP1,
                                       upstreams=[("10.0.0.1", 5004)], token=b"old")
    client.state = ClientState.SUBSCRIBED
    out = client.set_token(b"new", 10.0)
    assert client.state is ClientState.HELLO
    assert subscribe.parse(out[0][0]).token == b"new"
    assert client.set_token(b"new", 11.0) == []


# --------------------------------------------------------------------------- a real relay


async def subscriber(relay_addr: tuple[str, int], tok: bytes, channel: str = KP1,
                     identity: str = "spk-1") -> Subscriber:
    sub = Subscriber(channel, [relay_addr], identity=identity, token=tok)
    await sub.start()
    return sub


async def test_a_relay_requiring_tokens_sends_nothing_without_a_good_one(tmp_path: Path):
    now = time.time()
    bad = {
        "none": (b"", KP1, "spk-1"),
        "garbage": (os.urandom(1000), KP1, "spk-1"),
        "expired": (token.issue(TEST_KEY, "spk-1", [KP1], now - 7200, 3600), KP1, "spk-1"),
        "other channel": (token.issue(TEST_KEY, "spk-1", [KP2], now, 3600), KP1, "spk-1"),
        "other device": (token.issue(TEST_KEY, "spk-2", [KP1], now, 3600), KP1, "spk-1"),
        "other key": (token.issue(SigningKey.generate(), "spk-1", [KP1], now, 3600), KP1,
                      "spk-1"),
    }
    async with serving(ToneUpstream) as up, \
            relay_process(tmp_path, "relay", "--upstream", up.addr,
                          "--require-tokens", "on") as relay:
        refused = {name: await subscriber(relay.media, t, ch, who)
                   for name, (t, ch, who) in bad.items()}
        good = await subscriber(relay.media, token.issue(TEST_KEY, "spk-1", [KP1], now, 3600))
        try:
            await good.wait_packets(50, timeout=10)
            await asyncio.sleep(1.0)
            for name, sub in refused.items():
                assert sub.payloads == [] and sub.rtcp == 0, name
                assert sub.rejects, name
            outcomes = await _handshakes(relay.http)
            assert outcomes.get("reject_bad_token", 0) >= 3
            assert outcomes.get("reject_expired_token", 0) >= 1
            assert outcomes.get("reject_forbidden", 0) >= 2
        finally:
            for sub in [*refused.values(), good]:
                sub.close()


async def _handshakes(http: str) -> dict[str, float]:
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s, s.get(http + "/metrics") as r:
        text = await r.text()
    return {smp.labels["outcome"]: smp.value for fam in text_string_to_metric_families(text)
            if fam.name == "loa_fanout_handshakes" for smp in fam.samples
            if smp.name.endswith("_total")}


@pytest.mark.realtime
async def test_a_renewed_token_file_keeps_the_speaker_playing(tmp_path: Path):
    """The speaker's token runs out 6 s after it starts; the file is renewed at 3 s and the
    tone goes on past 6 s. A speaker whose token is not renewed goes silent, and the relay
    says why (``loa_fanout_dropped_subscribers_total{reason="token_expired"}``)."""
    now = time.time()
    renewed, kept = tmp_path / "renewed.token", tmp_path / "kept.token"
    for f, who in ((renewed, "spk-r"), (kept, "spk-k")):
        f.write_text(base64.b64encode(token.issue(TEST_KEY, who, [KP1], now, 6)).decode())
    async with serving(ToneUpstream) as up, \
            relay_process(tmp_path, "relay", "--upstream", up.addr,
                          "--require-tokens", "on") as relay, \
            speaker_process(tmp_path, "spk-r", "--channel", KP1, "--upstream",
                            relay.media_addr, "--token-file", str(renewed)) as r, \
            speaker_process(tmp_path, "spk-k", "--channel", KP1, "--upstream",
                            relay.media_addr, "--token-file", str(kept)) as k:
        await until(r.subscribed, 10, "subscribed")
        await asyncio.sleep(max(0.0, now + 3 - time.time()))
        renewed.write_text(base64.b64encode(
            token.issue(TEST_KEY, "spk-r", [KP1], time.time(), 60)).decode())
        await asyncio.sleep(max(0.0, now + 9 - time.time()))
        end = time.time()
        heard = await r.wait_window(end - 2.0, end - 0.5)
        silent = await k.wait_window(end - 2.0, end - 0.5)
        assert abs(heard).max() > 0.1 and abs(silent).max() == 0
        assert await _dropped(relay.http, "token_expired") >= 1


async def _dropped(http: str, reason: str) -> float:
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s, s.get(http + "/metrics") as r:
        text = await r.text()
    return sum(smp.value for fam in text_string_to_metric_families(text)
               if fam.name == "loa_fanout_dropped_subscribers" for smp in fam.samples
               if smp.name.endswith("_total") and smp.labels["reason"] == reason)


# --------------------------------------------------------------------------- on by default


async def test_a_streamer_and_a_relay_require_tokens_without_being_told(streamer,
                                                                        tmp_path: Path):
    """The ``streamer`` fixture and the relay are started with no ``require_tokens`` setting:
    at each, a subscriber without a token gets a REJECT and no media, one with a good token
    its channel, quiet: its heartbeats (the relay's own subscription upstream presents its
    token too)."""
    assert streamer.cfg.require_tokens and streamer.token_keys is not None
    async with relay_process(tmp_path, "relay", "--upstream", streamer.media_addr) as relay:
        where = {"streamer": _addr(streamer.media_addr), "relay": relay.media}
        without = {k: await subscriber(a, b"", identity=f"none-{k}") for k, a in where.items()}
        good = {k: await subscriber(a, token_for(f"spk-{k}", [KP1]), identity=f"spk-{k}")
                for k, a in where.items()}
        try:
            await until(lambda: all(s.rtcp >= 3 for s in good.values()), 10,
                        "the quiet channel's heartbeats")
            assert all(s.client.quiet and s.client.failovers == 0 for s in good.values())
            await until(lambda: all(s.rejects for s in without.values()), 5, "REJECTs")
            await asyncio.sleep(0.5)
            for k, sub in without.items():
                assert sub.rejects[0] == RejectReason.BAD_TOKEN, k
                assert sub.payloads == [] and sub.rtcp == 0, k
                assert sub.client.state is not ClientState.SUBSCRIBED, k
            assert (await _handshakes(relay.http)).get("reject_bad_token", 0) >= 1
        finally:
            for sub in [*without.values(), *good.values()]:
                sub.close()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def test_the_default_is_on_and_off_is_said_explicitly(tmp_path: Path) -> None:
    from common.config import ConfigError
    from relay.main import load_config
    from streamer.app import StreamerConfig

    base = ["--upstream", "127.0.0.1:5004"]
    assert load_config([*base, *STREAM_KEY_ARGS], env={}).require_tokens is True
    assert StreamerConfig(redis_url="redis://127.0.0.1:1").require_tokens is True
    off = load_config([*base, "--verify-media", "off", "--require-tokens", "off"], env={})
    assert off.require_tokens is False and off.keyring is None
    # tokens on, media not verified, no key to check tokens with: both ways out are named
    with pytest.raises(ConfigError) as e:
        load_config([*base, "--verify-media", "off"], env={})
    assert e.value.field == "require_tokens"
    assert "stream_keys" in str(e.value) and "require_tokens = false" in str(e.value)
    with pytest.raises(ConfigError) as e:  # a bad key, though media is not verified
        load_config([*base, "--verify-media", "off", "--stream-key", "nope"], env={})
    assert e.value.field == "stream_keys"


def test_a_relay_without_a_key_for_tokens_exits_2_saying_how_to_fix_it() -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("LOA_RELAY_")}
    r = subprocess.run([sys.executable, "-m", "relay.main", "--upstream", "127.0.0.1:5004",
                        "--media", "127.0.0.1:0", "--http", "127.0.0.1:0",
                        "--verify-media", "off"], cwd=Path(__file__).resolve().parents[1],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stdout == "", r.stdout  # nothing started
    assert "bad configuration: require_tokens" in r.stderr and "--stream-key" in r.stderr
    assert "--require-tokens off" in r.stderr and "Traceback" not in r.stderr
