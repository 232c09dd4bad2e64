"""TLS as an option (``common/tls.py``, ``docs/operations.md``, "TLS"): HTTPS with HSTS from the
relay, the speaker and the streamer, ``mqtts://`` from a device and the streamer's fleet to a
real Mosquitto that speaks only TLS, and every bad TLS setting stopping a process at start with
status 2 and the key named. The certificates come from a CA made for each test
(``tests/harness/tls.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from common.config import ConfigError
from device.mqtt_config import mqtt_tls_context, parse_mqtt_url
from loadtest.children import stop_process
from tests.harness.broker import TlsMosquitto, fleet_on, start_broker
from tests.harness.keys import STREAM_KEY_ARGS, listen_query, with_trust
from tests.harness.speaker import speaker_process
from tests.harness.tls import Pki, make_pki
from tests.harness.upstream import ToneUpstream, serving
from tests.harness.wait import until

ROOT = Path(__file__).resolve().parent.parent
ZONE = "brvt.vung-tau.thang-tam.kp-1"
HSTS = "max-age=31536000"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
async def tone() -> AsyncIterator[ToneUpstream]:
    async with serving(ToneUpstream) as up:
        yield up


@contextlib.asynccontextmanager
async def relay(tmp_path: Path, upstream: str, *args: str, name: str = "relay-1"
                ) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, Any], Path]]:
    """A ``loa relay`` process: its process, the JSON line it printed, its stderr file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOA_RELAY_")}
    stderr = tmp_path / f"{name}.stderr"
    with open(stderr, "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.main", "--id", name, "--media", "127.0.0.1:0",
            "--http", "127.0.0.1:0", "--upstream", upstream, *with_trust(args, tmp_path, name),
            cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line, stderr.read_text()
        yield proc, json.loads(line), stderr
    finally:
        await stop_process(proc)


async def get(url: str, ssl_context: ssl.SSLContext | bool | None = None
              ) -> tuple[int, dict[str, str]]:
    """Status and headers of a GET; reads no more of the body than the headers."""
    async with aiohttp.ClientSession() as s, s.get(url, ssl=ssl_context) as r:
        return r.status, dict(r.headers)


async def assert_https_only(url: str, pki: Pki) -> None:
    """``url`` (https://…) answers 200 with HSTS to a client trusting our CA, fails
    verification for one that trusts only the system's CAs or another CA, and serves no page
    over plain HTTP."""
    assert url.startswith("https://"), url
    status, headers = await get(url, pki.client_context())
    assert status == 200
    assert headers.get("Strict-Transport-Security") == HSTS
    assert headers.get("X-Content-Type-Options") == "nosniff"  # the other headers too
    for untrusting in (None, pki.client_context(pki.other_ca)):
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get(url, untrusting)
    with pytest.raises(aiohttp.ClientError):
        await get("http://" + url.removeprefix("https://"))


# --------------------------------------------------------------------------- HTTPS


async def test_relay_serves_https_with_hsts_and_nothing_in_plain_text(
        tmp_path: Path, pki: Pki) -> None:
    async with relay(tmp_path, "127.0.0.1:9", "--tls-cert", str(pki.cert),
                     "--tls-key", str(pki.key)) as (_, info, _):
        assert info["http"].startswith("https://127.0.0.1:")
        await assert_https_only(info["http"] + "/healthz", pki)


async def test_relay_over_plain_http_sends_no_hsts(tmp_path: Path) -> None:
    async with relay(tmp_path, "127.0.0.1:9") as (_, info, _):
        assert info["http"].startswith("http://")
        status, headers = await get(info["http"] + "/healthz")
        assert status == 200 and "Strict-Transport-Security" not in headers


async def test_speaker_serves_https_with_hsts(tmp_path: Path, pki: Pki) -> None:
    async with speaker_process(tmp_path, "tls-speaker", "--channel", ZONE,
                               "--upstream", "127.0.0.1:9", "--var-dir", str(tmp_path / "sp"),
                               "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)) as sp:
        assert sp.info["http_url"] == f"https://{sp.info['http']}"
        await assert_https_only(sp.info["http_url"] + "/healthz", pki)


async def test_streamer_serves_https_with_hsts(tmp_path: Path, pki: Pki, redis_url: str) -> None:
    from streamer.app import Streamer, StreamerConfig

    cfg = StreamerConfig(media_host="127.0.0.1", media_port=0, http_host="127.0.0.1",
                         http_port=0, var_dir=str(tmp_path / "var"), redis_url=redis_url,
                         ingest_port=-1, tls_cert=str(pki.cert), tls_key=str(pki.key))
    s = Streamer(cfg)
    await s.start()
    try:
        await assert_https_only(s.http_url + "/healthz", pki)
        # the API too: a sign-in over HTTPS
        creds = json.loads((tmp_path / "var" / "admin-credentials.json").read_text())
        async with aiohttp.ClientSession() as http, http.post(
                f"{s.http_url}/api/v1/login", ssl=pki.client_context(),
                json={"user": creds["user"], "password": creds["password"]}) as r:
            assert r.status == 200
            assert r.headers.get("Strict-Transport-Security") == HSTS
    finally:
        await s.close()


# --------------------------------------------------------------------------- MQTT over TLS


def tls_broker(tmp_path: Path, pki: Pki, **kw: Any) -> TlsMosquitto:
    return TlsMosquitto(tmp_path / "mosquitto", pki.cert, pki.key, pki.ca, **kw)


@pytest.fixture
async def broker(tmp_path: Path, pki: Pki) -> AsyncIterator[TlsMosquitto]:
    srv = tls_broker(tmp_path, pki)
    yield srv
    srv.stop()


async def test_relay_joins_the_fleet_over_mqtts_with_the_ca_file(
        tmp_path: Path, pki: Pki, broker: TlsMosquitto, tone: ToneUpstream) -> None:
    pw = start_broker(broker, {}, relays=("relay-1",))
    (tmp_path / "relay.password").write_text(pw["relay-1"])
    assert broker.url.startswith("mqtts://")
    # the streamer's side over TLS too: its Fleet reads the retained status
    async with fleet_on(broker, pw, tls_context=mqtt_tls_context(str(pki.ca))) as (fleet, rec), \
            relay(tmp_path, tone.addr, "--mqtt-url", broker.url, "--mqtt-ca", str(pki.ca),
                  "--mqtt-password-file", str(tmp_path / "relay.password")):
        await until(lambda: rec.state("relay-1") == "online", 15, "relay online over mqtts")
        assert (await fleet.command("relay", "relay-1", "ping")).ok


async def test_relay_with_the_wrong_ca_stays_off_the_broker_and_keeps_relaying(
        tmp_path: Path, pki: Pki, broker: TlsMosquitto, tone: ToneUpstream) -> None:
    pw = start_broker(broker, {}, relays=("relay-1",))
    (tmp_path / "relay.password").write_text(pw["relay-1"])
    async with fleet_on(broker, pw, tls_context=mqtt_tls_context(str(pki.ca))) as (_, rec), \
            relay(tmp_path, tone.addr, "--mqtt-url", broker.url, "--mqtt-ca", str(pki.other_ca),
                  "--mqtt-password-file", str(tmp_path / "relay.password")
                  ) as (proc, info, stderr):
        def refused() -> bool:
            text = stderr.read_text()
            return "cannot connect to the broker" in text and "CERTIFICATE_VERIFY_FAILED" in text

        await until(refused, 15, "the relay logging why it cannot connect")
        # the media path does not care: the listen-in streams the upstream's tone
        async with aiohttp.ClientSession() as http, \
                http.get(f"{info['http']}/listen/{ZONE}.ogg{listen_query(ZONE)}") as r:
            assert r.status == 200
            got = b""
            while len(got) < 4096:
                chunk = await asyncio.wait_for(r.content.read(4096), 10)
                assert chunk, "the listen-in ended"
                got += chunk
        assert got.startswith(b"OggS")
        async with aiohttp.ClientSession() as http, http.get(f"{info['http']}/metrics") as r:
            assert "loa_mqtt_connected 0.0" in await r.text()
        assert proc.returncode is None
        assert rec.status("relay-1") is None  # it never said online: it never got in


async def test_speaker_presents_its_client_certificate_to_a_broker_that_asks(
        tmp_path: Path, pki: Pki, tone: ToneUpstream) -> None:
    broker = tls_broker(tmp_path, pki, require_certificate=True)
    try:
        pw = start_broker(broker, {"spk-a": ZONE, "spk-b": ZONE})
        for name in ("spk-a", "spk-b"):
            (tmp_path / f"{name}.password").write_text(pw[name])
        ctx = mqtt_tls_context(str(pki.ca), str(pki.client_cert), str(pki.client_key))

        def mqtt(name: str, *extra: str) -> tuple[str, ...]:
            return ("--channel", ZONE, "--upstream", tone.addr, "--var-dir",
                    str(tmp_path / name), "--mqtt-url", broker.url, "--mqtt-ca", str(pki.ca),
                    "--mqtt-password-file", str(tmp_path / f"{name}.password"), *extra)

        async with fleet_on(broker, pw, tls_context=ctx) as (_, rec), \
                speaker_process(tmp_path, "spk-a", *mqtt("spk-a", "--mqtt-cert",
                                str(pki.client_cert), "--mqtt-key", str(pki.client_key))), \
                speaker_process(tmp_path, "spk-b", *mqtt("spk-b")) as b:
            await until(lambda: rec.state("spk-a") == "online", 15, "spk-a online")
            # without a certificate the broker hangs up; the speaker plays on regardless
            await until(lambda: "cannot connect to the broker" in b.stderr.read_text()
                        or "connection lost" in b.stderr.read_text(), 15, "spk-b refused")
            await until(b.subscribed, 10, "spk-b subscribed to its upstream")
            assert b.proc.returncode is None and rec.status("spk-b") is None
    finally:
        broker.stop()


# --------------------------------------------------------------------------- bad settings


def test_bad_tls_settings_stop_relay_and_speaker_at_start_naming_the_key(
        tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    from clients.speaker.main import run as speaker_main
    from relay.main import main as relay_main

    password = tmp_path / "password"
    password.write_text("secret\n")
    missing = str(tmp_path / "missing.pem")
    cert, key, ca = str(pki.cert), str(pki.key), str(pki.ca)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(serialization.load_pem_private_key(pki.key.read_bytes(), None)
                          .private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"pass")))
    mqtts = ["--mqtt-url", "mqtts://127.0.0.1:1", "--mqtt-password-file", str(password)]
    cases = [
        (["--tls-cert", cert], "tls_key"),
        (["--tls-key", key], "tls_cert"),
        (["--tls-cert", missing, "--tls-key", key], "tls_cert"),
        (["--tls-cert", cert, "--tls-key", missing], "tls_key"),
        (["--tls-cert", key, "--tls-key", key], "tls_cert"),  # no certificate in it
        (["--tls-cert", cert, "--tls-key", cert], "tls_key"),  # no key in it
        (["--tls-cert", cert, "--tls-key", str(pki.client_key)], "tls_key"),  # not its key
        (["--tls-cert", cert, "--tls-key", str(encrypted)], "tls_key"),  # never a prompt
        (["--mqtt-url", "mqtt://127.0.0.1:1", "--mqtt-password-file", str(password),
          "--mqtt-ca", ca], "mqtt_ca"),  # a CA beside plain MQTT would encrypt nothing
        ([*mqtts, "--mqtt-ca", missing], "mqtt_ca"),
        ([*mqtts, "--mqtt-ca", key], "mqtt_ca"),
        ([*mqtts, "--mqtt-cert", str(pki.client_cert)], "mqtt_key"),
        ([*mqtts, "--mqtt-cert", str(pki.client_cert), "--mqtt-key", key], "mqtt_key"),
    ]
    speaker = ["--id", "spk-a", "--channel", ZONE, "--upstream", "127.0.0.1:9",
               "--http", "127.0.0.1:0", "--var-dir", str(tmp_path / "var"), *STREAM_KEY_ARGS]
    relay_argv = ["--id", "relay-1", "--media", "127.0.0.1:0", "--http", "127.0.0.1:0",
                  "--upstream", "127.0.0.1:9", *STREAM_KEY_ARGS]
    for argv, key_name in cases:
        assert speaker_main(speaker + argv) == 2, argv
        assert f"{key_name}:" in capsys.readouterr().err, argv
        assert relay_main(relay_argv + argv) == 2, argv
        assert f"{key_name}:" in capsys.readouterr().err, argv
    # a speaker has nothing to serve over TLS without --http
    no_http = [a for a in speaker if a not in ("--http", "127.0.0.1:0")]
    assert speaker_main([*no_http, "--tls-cert", cert, "--tls-key", key]) == 2
    assert "tls_cert:" in capsys.readouterr().err


def test_tls_keys_come_from_toml_environment_and_flags_like_every_key(
        tmp_path: Path, pki: Pki) -> None:
    from clients.speaker.config import load_config as speaker_config
    from relay.main import load_config as relay_config

    toml = tmp_path / "relay.toml"
    toml.write_text(f'[relay]\nupstream = ["127.0.0.1:9"]\ntls_cert = "{pki.key}"\n'
                    f'tls_key = "{pki.key}"\n')
    env = {"LOA_RELAY_TLS_CERT": str(pki.cert)}
    cfg = relay_config(["--config", str(toml), *STREAM_KEY_ARGS], env=env)  # env over file
    assert (cfg.tls_cert, cfg.tls_key) == (str(pki.cert), str(pki.key))
    cfg = relay_config(["--config", str(toml), "--tls-key", "flag.pem", *STREAM_KEY_ARGS],
                       env=env)
    assert cfg.tls_key == "flag.pem"  # the flag over both
    with pytest.raises(ConfigError, match="^tls_cert:"):
        relay_config(["--upstream", "127.0.0.1:9"], env={"LOA_RELAY_TLS_KEY": str(pki.key)})
    spk = speaker_config(["--channel", ZONE, "--upstream", "127.0.0.1:9", "--http", "127.0.0.1:0",
                          "--mqtt-url", "mqtts://broker", "--mqtt-password-file", "pw",
                          *STREAM_KEY_ARGS],
                         env={"LOA_SPEAKER_MQTT_CA": str(pki.ca)})
    assert spk.mqtt is not None and spk.mqtt.ca == str(pki.ca)
    assert parse_mqtt_url(spk.mqtt.url).port == 8883  # the default port of mqtts://


@pytest.mark.parametrize(("args", "key_name"), [
    (["--tls-cert", "CERT"], "tls_key"),
    (["--tls-cert", "MISSING", "--tls-key", "KEY"], "tls_cert"),
    (["--mqtt-url", "mqtt://127.0.0.1:1", "--mqtt-ca", "CA"], "mqtt_ca"),
    (["--mqtt-url", "mqtts://127.0.0.1:1", "--mqtt-ca", "MISSING"], "mqtt_ca"),
])
async def test_bad_tls_settings_stop_the_streamer_with_status_2(
        tmp_path: Path, pki: Pki, redis_url: str, args: list[str], key_name: str) -> None:
    files = {"CERT": str(pki.cert), "KEY": str(pki.key), "CA": str(pki.ca),
             "MISSING": str(tmp_path / "missing.pem")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOA_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loa", "streamer", "--redis-url", redis_url,
        "--var-dir", str(tmp_path / "var"), "--http-host", "127.0.0.1", "--http-port", "0",
        "--media-host", "127.0.0.1", "--media-port", "0", "--ingest-port", "-1",
        *[files.get(a, a) for a in args], cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await stop_process(proc)
    assert proc.returncode == 2, err.decode()
    assert f"{key_name}:" in err.decode()
    assert b"Traceback" not in err and not out  # no half start: nothing printed
