"""``loa streamer``: the streamer's command line (the ``loa`` dispatcher is ``loa/cli.py``)."""

from __future__ import annotations

import argparse
import os


def run(argv: list[str]) -> int:
    from common.config import load
    from streamer import app

    p = argparse.ArgumentParser(prog="loa streamer", description="Run the Loa streamer.")
    p.add_argument("--config", help="TOML file (keys as below, with underscores)")
    p.add_argument("--media-host")
    p.add_argument("--media-port", type=int, help="UDP port for subscribers (default 5004)")
    p.add_argument("--http-host")
    p.add_argument("--http-port", type=int, help="HTTP port (default 8000; 0 = any)")
    p.add_argument("--public-host", help="host name written into URLs and SDP")
    p.add_argument("--zones", help="zone tree TOML (default: the Bà Rịa – Vũng Tàu sample)")
    p.add_argument("--ptime-ms", type=int, choices=(20, 40, 60))
    p.add_argument("--bitrate", type=int, help="Opus VBR target, bit/s (default 32000)")
    p.add_argument("--opus-application", choices=("audio", "voip", "lowdelay"))
    p.add_argument("--opus-complexity", type=int, help="0-10 (docs/BENCHMARKS.md)")
    p.add_argument("--opus-fec", help="in-band FEC: on or off")
    p.add_argument("--opus-loss-perc", type=int, help="loss FEC is sized for, percent")
    p.add_argument("--var-dir")
    p.add_argument("--redis-url", help="state store (default: $LOA_REDIS_URL)")
    p.add_argument("--admin-credentials", help="file for the first admin's password")
    p.add_argument("--mqtt-url", help="fleet broker (default: $LOA_MQTT_URL)")
    p.add_argument("--mqtt-user")
    p.add_argument("--mqtt-password-file")
    p.add_argument("--mqtt-broker-dir", help="keep this broker's passwd/acl in step")
    p.add_argument("--presence-stale-s", type=float,
                   help="a device not heard from over MQTT this long reads unknown (default "
                        "35: more than 3 of its telemetry periods)")
    p.add_argument("--ingest-host")
    p.add_argument("--ingest-port", type=int,
                   help="UDP port of the SRTP ingest (default 5006; 0 = any; -1 = off)")
    p.add_argument("--clip-max-s", type=float,
                   help="longest decoded duration of an uploaded clip (default 3600)")
    p.add_argument("--mixer-workers", type=int,
                   help="threads that encode, the playout thread included (default 0: one per "
                        "core)")
    p.add_argument("--lead-max-ms", type=float,
                   help="the most a frame's tick begins before its deadline (default 0: one "
                        "frame; docs/playout.md)")
    p.add_argument("--require-tokens", help="on (default) or off: subscribers need a token "
                   "this streamer signed (loa token); off lets anyone subscribe (a test bench "
                   "only)")
    p.add_argument("--token-lifetime-h", type=float,
                   help="lifetime of the tokens devices get over MQTT (default 24)")
    p.add_argument("--signing-key",
                   help="PEM file of the Ed25519 key that signs the media, created when missing "
                        "(default: <var-dir>/signing-key.pem; docs/operations.md)")
    p.add_argument("--next-signing-key",
                   help="PEM file of the key to sign with after the next rotation: announced "
                        "to the devices over MQTT beforehand (docs/operations.md)")
    p.add_argument("--tts-voice-file",
                   help="TOML file of a commercial HTTP voice: endpoint, credentials file, "
                        "voices per zone (default: espeak-ng only; docs/operations.md, Voices)")
    p.add_argument("--tts-lexicon",
                   help="TOML or JSON file of the province's bulletin terms (term -> spoken "
                        "form), on top of the built-in lexicon")
    p.add_argument("--tls-cert", help="serve HTTPS: PEM certificate chain (with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--mqtt-ca", help="mqtts://: PEM CA certificates (default: the system's)")
    p.add_argument("--mqtt-cert", help="mqtts://: PEM client certificate (with --mqtt-key)")
    p.add_argument("--mqtt-key", help="mqtts://: PEM private key of --mqtt-cert")
    p.add_argument("--inbound-decide-s", type=float,
                   help="a priority bulletin from above airs by itself after this long unless "
                        "an operator decided (default 600)")
    p.add_argument("--ha-lease-ms", type=int,
                   help="one of a pair of streamers on one Redis: the lease's time to live "
                        "(default 0: the only streamer; docs/operations.md, A standby streamer)")
    p.add_argument("--ha-id", help="this streamer's name in the lease (default host:pid)")
    p.add_argument("--ha-peer-url", help="where the other streamer reaches this one's HTTP, "
                   "to copy its clips (default: the URL it serves)")
    p.add_argument("--report-webhook-url", help="push each period's report to this URL "
                   "(docs/reports-upward.md; default: no push)")
    p.add_argument("--report-webhook-secret-file",
                   help="file holding the HMAC-SHA256 key that signs the pushes")
    p.add_argument("--report-period", choices=("daily", "weekly"),
                   help="what one pushed report covers (default daily: yesterday)")
    a = p.parse_args(argv)
    flags = {k: v for k, v in vars(a).items() if k != "config"}
    cfg = load(app.StreamerConfig, flags, env_prefix="LOA_STREAMER_", path=a.config,
               section="streamer", env=shared_env())
    return app.run(cfg)


def shared_env() -> dict[str, str]:
    """The environment, with the deployment-wide ``LOA_REDIS_URL`` / ``LOA_MQTT_URL`` standing
    in for the streamer's own keys when those are not set."""
    env = dict(os.environ)
    for key in ("REDIS_URL", "MQTT_URL"):
        if f"LOA_{key}" in env:
            env.setdefault(f"LOA_STREAMER_{key}", env[f"LOA_{key}"])
    return env
