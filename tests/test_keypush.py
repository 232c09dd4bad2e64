"""A key rotation that touches no device (issue 18, "Trust"), against a real mosquitto and real
speaker processes: the streamer's key set (``streamer/control/keys.py``) announces the next key
over MQTT, endorsed by the key the speaker pins; the upstream switches to the new key in the
middle of a tone; the speaker plays on with no gap, keeps the set in its keys file and trusts
it again after a restart. A set endorsed by a key nobody pins is refused and counted.

A second speaker, pinning the same key but with no MQTT, goes silent at the switch: that shows
the new key is really in use, and that only the pushed set keeps the first one playing. And the
real streamer retains its set at start and after a SIGHUP, as the table in
``streamer/control/keys.py`` says.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.secretfile import write_private
from device.edge import payload_bytes
from device.trust import TrustedKeys
from streamer.app import Streamer, StreamerConfig
from streamer.control.broker import STREAMER_USER
from streamer.control.keys import KeyAnnouncer
from tests.harness.audio import rms_dbfs
from tests.harness.broker import fleet_on, start_broker
from tests.harness.keys import TEST_KEY, write_test_key
from tests.harness.relay import relay_process
from tests.harness.speaker import SpeakerProcess, speaker_process
from tests.harness.subscriber import Subscriber
from tests.harness.upstream import FRAME, RATE, ToneUpstream, serving
from tests.harness.wait import until
from tests.harness.zones import KP1
from wire import keyset, token
from wire.auth import SigningKey
from wire.messages import KEYS_TOPIC, StreamKeys, parse

pytestmark = pytest.mark.realtime  # audio against the wall clock: see conftest.py


def levels(pcm: np.ndarray) -> np.ndarray:
    """RMS level of each 20 ms block."""
    blocks = pcm[: len(pcm) // FRAME * FRAME].reshape(-1, FRAME)
    return np.array([rms_dbfs(b) for b in blocks])


def playing(spk: SpeakerProcess) -> bool:
    pcm = spk.samples()
    return len(pcm) > RATE and rms_dbfs(pcm[-RATE // 10:]) > -40


async def updates(spk: SpeakerProcess, outcome: str) -> float:
    return (await spk.metrics()).get(f"loa_stream_keys_updates_total[outcome={outcome}]", 0.0)


async def reached(spk: SpeakerProcess, outcome: str, n: int) -> bool:
    return await updates(spk, outcome) >= n


async def test_a_pushed_key_set_carries_a_speaker_through_a_rotation_with_no_gap(
        mosquitto: Any, tmp_path: Path) -> None:
    pw = start_broker(mosquitto, {"spk-a": KP1})
    pw_file = tmp_path / "spk-a.password"
    pw_file.write_text(pw["spk-a"] + "\n")
    keys_file = tmp_path / "spk-a" / "stream-keys"
    new = SigningKey.generate()
    mqtt = ("--mqtt-url", mosquitto.url, "--mqtt-password-file", str(pw_file),
            "--keys-file", str(keys_file))
    # both speakers pin TEST_KEY only (tests/harness/keys.py adds it)
    async with serving(ToneUpstream) as up, fleet_on(mosquitto, pw) as (fleet, _), \
            speaker_process(tmp_path, "spk-a", "--channel", KP1, "--upstream", up.addr,
                            *mqtt) as spk, \
            speaker_process(tmp_path, "spk-b", "--channel", KP1, "--upstream",
                            up.addr) as unpushed:
        await until(lambda: playing(spk) and playing(unpushed), 15, "the tone on both")
        announcer = KeyAnnouncer(TEST_KEY, new)  # the streamer, with next_signing_key set
        announcer.start(fleet)
        await until(lambda: reached(spk, "accepted", 1), 10, "the announced set taken")
        assert oct(keys_file.stat().st_mode & 0o777) == "0o600"
        kept = keyset.parse(base64.b64decode(keys_file.read_text()))
        assert kept.keys == (TEST_KEY.public, new.public) and kept.endorser == TEST_KEY.id

        await asyncio.sleep(1.0)
        t = time.time()
        up.rotate(new)  # the streamer's SIGHUP: it signs with the new key from now on
        announcer.switched(new)
        announcer.publish_soon()
        await asyncio.sleep(2.0)
        heard = levels(await spk.wait_window(t - 0.5, t + 1.5))
        assert heard.min() > -30, heard.round(1).tolist()  # the tone without a gap
        silent = levels(await unpushed.wait_window(t - 0.5, t + 1.5))
        assert silent[-25:].max() < -100, silent.round(1).tolist()  # unknown_key: nothing
        assert silent[:20].min() > -30  # it played until the switch
        await until(lambda: reached(spk, "accepted", 2), 10, "the switched set taken")
        m = await spk.metrics()
        assert m["loa_stream_keys_updates_total[outcome=accepted]"] == 2
        assert m[f"loa_stream_key_trusted[key_id={new.id:08x}][source=pushed]"] == 1
        assert m[f"loa_stream_key_trusted[key_id={TEST_KEY.id:08x}][source=pinned]"] == 1

        # someone with the broker's write access retains a set endorsed by a key not pinned
        rogue = SigningKey.generate()
        forged = keyset.sign(rogue, [rogue.public], int(time.time() * 1000))
        await fleet.push_keys(StreamKeys(keyset=base64.b64encode(forged).decode()))
        await until(lambda: reached(spk, "unendorsed", 1), 10, "the forged set counted")
        m = await spk.metrics()
        assert not any(k.startswith(f"loa_stream_key_trusted[key_id={rogue.id:08x}]") for k in m)
        t = time.time()
        await asyncio.sleep(1.2)
        assert levels(await spk.wait_window(t + 0.2, t + 1.0)).min() > -30  # B still plays
        await spk.stop()
        await announcer.close()

    # restarted, the broker's retained set forged: the keys file alone keeps it trusting B
    async with serving(ToneUpstream) as up:
        up.rotate(new)
        async with speaker_process(tmp_path, "spk-a2", "--channel", KP1, "--upstream", up.addr,
                                   *mqtt, speaker_id="spk-a") as again:
            await until(lambda: playing(again), 15, "the tone after a restart")
            await until(lambda: reached(again, "unendorsed", 1), 10, "the forged set refused")
            assert await updates(again, "accepted") == 0


async def retained_keys(broker: Any, user: str, password: str) -> keyset.KeySet:
    """The key set retained on ``loa/v1/keys``, read as a device reads it."""
    async with aiomqtt.Client(broker.host, broker.port, username=user,
                              password=password) as c:
        await c.subscribe(KEYS_TOPIC, qos=1)
        async for message in c.messages:
            grant = parse(StreamKeys, payload_bytes(message))
            return keyset.parse(base64.b64decode(grant.keyset))
    raise AssertionError("no key set")


def published(s: Streamer) -> float:
    return s.registry.get_sample_value("loa_stream_keys_published_total") or 0.0


async def test_the_streamer_retains_its_set_at_start_and_after_each_sighup(
        mosquitto: Any, redis_url: str, tmp_path: Path) -> None:
    """``next_signing_key`` announced at start, endorsed by the current key; after the switch
    (SIGHUP) the set is the new key and the old one, endorsed by the old one, and a device
    pinning the old key alone takes each set in turn."""
    pw = start_broker(mosquitto, {"spk-a": KP1})
    (tmp_path / "streamer.password").write_text(pw[STREAMER_USER] + "\n")
    nxt = SigningKey.generate()
    next_path = tmp_path / "next-signing-key.pem"
    write_private(next_path, nxt.to_pem())
    cfg = StreamerConfig(media_host="127.0.0.1", media_port=0, http_host="127.0.0.1",
                         http_port=0, var_dir=str(tmp_path / "var"), redis_url=redis_url,
                         ingest_port=-1, signing_key=write_test_key(tmp_path / "key.pem"),
                         next_signing_key=str(next_path), mqtt_url=mosquitto.url,
                         mqtt_password_file=str(tmp_path / "streamer.password"))
    device = TrustedKeys([TEST_KEY.public])
    s = Streamer(cfg)
    await s.start()
    try:
        await until(lambda: published(s) >= 1, 10, "the set published")
        ks = await retained_keys(mosquitto, "spk-a", pw["spk-a"])
        assert (ks.keys, ks.endorser) == ((TEST_KEY.public, nxt.public), TEST_KEY.id)
        assert device.offer(ks.build(), time.time()) == keyset.ACCEPTED
        # the operator moves the next key in place and sends SIGHUP
        s.key_path.write_bytes(nxt.to_pem())
        next_path.unlink()
        s.reload_key()
        await until(lambda: published(s) >= 2, 10, "the switch published")
        ks = await retained_keys(mosquitto, "spk-a", pw["spk-a"])
        assert (ks.keys, ks.endorser) == ((nxt.public, TEST_KEY.public), TEST_KEY.id)
        assert device.offer(ks.build(), time.time()) == keyset.ACCEPTED
        await until(lambda: s.signing.key.id == nxt.id, 5, "the new key signing")
        # SIGHUP with nothing changed, or a next key file that is not a key, publishes nothing
        s.reload_key()
        next_path.write_bytes(b"not a key\n")
        s.reload_key()
        await asyncio.sleep(0.5)
        assert published(s) == 2
        # the rotation after: a third key announced beside the two
        third = SigningKey.generate()
        write_private(next_path, third.to_pem())
        s.reload_key()
        await until(lambda: published(s) >= 3, 10, "the third key announced")
        ks = await retained_keys(mosquitto, "spk-a", pw["spk-a"])
        assert set(ks.keys) == {nxt.public, third.public, TEST_KEY.public}
        assert device.offer(ks.build(), time.time()) == keyset.ACCEPTED
    finally:
        await s.close()


async def relay_metrics(http: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as s, s.get(http + "/metrics") as r:
        text = await r.text()
    return {smp.name + "".join(f"[{k}={v}]" for k, v in sorted(smp.labels.items())): smp.value
            for fam in text_string_to_metric_families(text) for smp in fam.samples}


async def test_a_relay_takes_the_pushed_set_for_media_and_for_tokens(
        mosquitto: Any, tmp_path: Path) -> None:
    """A relay pinning the old key: a token signed by the next key is refused until the set
    arrives and accepted after; once the upstream signs with the next key, the relay still
    verifies every batch and forwards its LOAS (only verified ones ever pass)."""
    pw = start_broker(mosquitto, {}, relays=("relay-k",))
    pw_file = tmp_path / "relay.password"
    pw_file.write_text(pw["relay-k"] + "\n")
    new = SigningKey.generate()
    signed_by_new = token.issue(new, "spk-1", [KP1], time.time(), 3600)
    async with serving(ToneUpstream) as up, fleet_on(mosquitto, pw) as (fleet, _), \
            relay_process(tmp_path, "relay-k", "--upstream", up.addr, "--require-tokens", "on",
                          "--mqtt-url", mosquitto.url, "--mqtt-password-file", str(pw_file),
                          "--keys-file", str(tmp_path / "relay-keys")) as relay:
        early = Subscriber(KP1, [relay.media], identity="spk-1", token=signed_by_new)
        await early.start()
        await until(lambda: early.rejects, 10, "the token of an unknown key refused")
        early.close()
        announcer = KeyAnnouncer(TEST_KEY, new)
        announcer.start(fleet)
        accepted = "loa_stream_keys_updates_total[outcome=accepted]"
        await until(lambda: _at_least(relay.http, accepted, 1), 10, "the set taken")
        sub = Subscriber(KP1, [relay.media], identity="spk-1", token=signed_by_new)
        await sub.start()
        try:
            await sub.wait_packets(50, timeout=10)
            up.rotate(new)
            await asyncio.sleep(0.5)  # the batches signed by the old key are through
            before = sub.rtcp
            await asyncio.sleep(1.5)
            assert sub.rtcp >= before + 4, (before, sub.rtcp)  # ~6 batches of 240 ms
            m = await relay_metrics(relay.http)
            assert m.get("loa_media_auth_loas_total[outcome=unknown_key]", 0) == 0
        finally:
            sub.close()
            await announcer.close()


async def _at_least(http: str, name: str, n: float) -> bool:
    return (await relay_metrics(http)).get(name, 0.0) >= n
