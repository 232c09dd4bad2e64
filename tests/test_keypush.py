"""A key rotation that touches no device (issue 18, "Trust"), against a real mosquitto and real
speaker processes: the streamer's key set (``streamer/control/keys.py``) announces the next key
over MQTT, endorsed by the key the speaker pins; the upstream switches to the new key in the
middle of a tone; the speaker plays on with no gap, keeps the set in its keys file and trusts
it again after a restart. A set endorsed by a key nobody pins is refused and counted.

A second speaker, pinning the same key but with no MQTT, goes silent at the switch: that shows
the new key is really in use, and that only the pushed set keeps the first one playing.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamer.control.keys import KeyAnnouncer
from tests.harness.audio import rms_dbfs
from tests.harness.broker import fleet_on, start_broker
from tests.harness.keys import TEST_KEY
from tests.harness.speaker import SpeakerProcess, speaker_process
from tests.harness.upstream import FRAME, RATE, ToneUpstream, serving
from tests.harness.wait import until
from tests.harness.zones import KP1
from wire import keyset
from wire.auth import SigningKey
from wire.messages import StreamKeys

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
