"""The speaker's configuration: :class:`SpeakerConfig` and its command line.

Lowest precedence first: defaults, ``--config FILE.toml`` (same keys with underscores, at the
top or in ``[speaker]``), environment ``LOA_SPEAKER_<KEY>`` (``LOA_SPEAKER_UPSTREAM``
comma-separated), command-line flags (``common/config.py``). Everything is checked here, before
any socket opens; a bad value raises a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.config import Addr, ConfigError, check_range, load
from common.tls import check_pair
from device.mqtt_config import DeviceMqttKeys
from device.trust import StreamTrustKeys, TokenKeys
from wire import subscribe
from wire.ids import valid_zone_id


@dataclass
class SpeakerConfig(DeviceMqttKeys, StreamTrustKeys, TokenKeys):
    channel: str = ""
    upstream: list[Addr] = field(default_factory=list)
    id: str = ""
    bind: Addr = ("0.0.0.0", 0)
    delay_ms: int = 300
    wav: str | None = None
    log: str | None = None
    volume: float = 100.0
    mute: bool = False
    http: Addr | None = None
    failover_s: float = subscribe.FAILOVER_S
    silence_ms: int = round(subscribe.SILENCE_S * 1000)
    zone: str = ""
    var_dir: str = "var"
    cache_dir: str = ""
    emergency_volume: float = 100.0
    offline_after_s: float = 10.0
    emergency_repeat_s: float | None = None
    #: store and forward: disk for the zone's stored clips, MiB (0: none, no offline plays)
    store_mb: int = 64
    #: ask the upstream again for lost packets (RESEND kind 2, ``docs/operations.md``, "Loss
    #: recovery"): bytes only where packets are lost
    retransmit: bool = True
    #: ``http`` over TLS: PEM certificate chain and its key, both or neither
    tls_cert: str | None = None
    tls_key: str | None = None
    #: a clock this far off and this fast or slow (tests and demos: ``clock.py``)
    clock_offset_ms: float = 0.0
    clock_drift_ppm: float = 0.0

    def __post_init__(self) -> None:
        if not self.channel:
            raise ConfigError("channel", "required")
        if not self.upstream:
            raise ConfigError("upstream", "at least one host:port required")
        self.id = self.id or socket.gethostname()
        check_range("delay_ms", self.delay_ms, 0, 10_000)
        check_range("volume", self.volume, 0, 100)
        check_range("failover_s", self.failover_s, 0.2, 3600)
        check_range("silence_ms", self.silence_ms, 60, 60_000)
        check_range("emergency_volume", self.emergency_volume, 0, 100)
        check_range("offline_after_s", self.offline_after_s, 0.2, 3600)
        check_range("clock_offset_ms", self.clock_offset_ms, -86_400_000, 86_400_000)
        check_range("clock_drift_ppm", self.clock_drift_ppm, -1000, 1000)
        check_range("store_mb", self.store_mb, 0, 100_000)
        if self.emergency_repeat_s is not None:
            check_range("emergency_repeat_s", self.emergency_repeat_s, 1, 86_400)
        # one directory per speaker id: several simulated speakers may share a var dir
        self.cache_dir = self.cache_dir or str(Path(self.var_dir) / "cache" / self.id)
        self.mqtt  # noqa: B018 (building the settings checks them)
        if self.zone and not valid_zone_id(self.zone):
            raise ConfigError("zone", f"{self.zone!r} is not a dotted zone id")
        if self.mqtt is not None:
            # a channel is named after its leaf zone
            self.zone = self.zone or (self.channel if valid_zone_id(self.channel) else "")
        if check_pair("tls_cert", self.tls_cert, "tls_key", self.tls_key) and not self.http:
            raise ConfigError("tls_cert", "only with http (there is nothing else to serve)")
        self.keyring  # noqa: B018 (the pinned streamer keys and the keys file, checked)
        self.token_source()  # the token file is readable


def _arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loa speaker", description="Software IP speaker.")
    p.add_argument("--config", help="TOML file with the same keys (underscores)")
    p.add_argument("--id", help="speaker identity (default: host name)")
    p.add_argument("--channel", help="channel to play")
    p.add_argument("--upstream", action="append", metavar="HOST:PORT",
                   help="relay or streamer; repeat for failover, in order of preference")
    p.add_argument("--bind", metavar="HOST:PORT", help="local UDP address (default 0.0.0.0:0)")
    p.add_argument("--delay-ms", type=int, help="playout delay after capture time (default 300)")
    p.add_argument("--wav", metavar="PATH", help="write the output to this WAV file")
    p.add_argument("--log", metavar="PATH", help="proof-of-play log (JSON lines)")
    p.add_argument("--volume", type=float, help="0-100 %%, dB law: 100 = 0 dB, 0.5 dB per %%")
    p.add_argument("--mute", action="store_true", default=None,
                   help="start muted (keeps receiving and logging, plays silence)")
    p.add_argument("--http", metavar="HOST:PORT", help="serve /healthz, /readyz and /metrics here")
    p.add_argument("--failover-s", type=float,
                   help="move to the next upstream when a handshake step is unanswered this "
                        "long (default 0.5)")
    p.add_argument("--silence-ms", type=int,
                   help="move to the next upstream when it sends nothing for this long "
                        "(default 300: 15 frames; the stream never pauses)")
    p.add_argument("--mqtt-url", metavar="URL",
                   help="join the control plane: mqtt://host:port (or mqtts://)")
    p.add_argument("--mqtt-user", help="MQTT user name (default: the speaker id)")
    p.add_argument("--mqtt-password-file", metavar="PATH",
                   help="file whose first line is the MQTT password")
    p.add_argument("--mqtt-keepalive-s", type=int,
                   help="MQTT keepalive; the broker says offline after 1.5x (default 30)")
    p.add_argument("--telemetry-s", type=float, help="telemetry period (default 10)")
    p.add_argument("--zone", help="leaf zone id for group commands (default: the channel)")
    p.add_argument("--var-dir", help="where the speaker keeps state (default ./var)")
    p.add_argument("--cache-dir", metavar="PATH",
                   help="emergency audio and states (default VAR_DIR/cache/ID)")
    p.add_argument("--emergency-volume", type=float,
                   help="volume of emergencies until an emergency state says otherwise "
                        "(default 100)")
    p.add_argument("--offline-after-s", type=float,
                   help="no packet for this long means no stream: replay a cached emergency "
                        "(default 10)")
    p.add_argument("--emergency-repeat-s", type=float,
                   help="replay cadence used instead of each emergency's repeat_s (tests, "
                        "demos; default: the emergency's own)")
    p.add_argument("--store-mb", type=int,
                   help="disk for stored scheduled clips, played when the stream is lost "
                        "(default 64; 0: store nothing)")
    p.add_argument("--retransmit", help="on (default) or off: ask the upstream again for "
                   "lost packets (docs/operations.md, \"Loss recovery\")")
    p.add_argument("--stream-key", action="append", dest="stream_keys", metavar="BASE64",
                   help="the streamer's public key (repeat during a key rotation); only media "
                        "it signed plays")
    p.add_argument("--verify-media", help="on (default) or off: off plays unsigned media "
                   "(a test bench only)")
    p.add_argument("--token-file", metavar="PATH",
                   help="this speaker's subscription token (base64, as `loa token` writes it); "
                        "read again when it changes")
    p.add_argument("--keys-file", metavar="PATH",
                   help="keep the stream key set the streamer pushes over MQTT here (0600), "
                        "and trust it again at start")
    p.add_argument("--tls-cert", metavar="PATH",
                   help="serve --http over TLS: PEM certificate chain (with --tls-key)")
    p.add_argument("--tls-key", metavar="PATH", help="PEM private key of --tls-cert")
    p.add_argument("--mqtt-ca", metavar="PATH",
                   help="mqtts://: PEM CA certificates (default: the system's)")
    p.add_argument("--mqtt-cert", metavar="PATH",
                   help="mqtts://: PEM client certificate (with --mqtt-key)")
    p.add_argument("--mqtt-key", metavar="PATH", help="mqtts://: PEM private key of --mqtt-cert")
    p.add_argument("--clock-offset-ms", type=float,
                   help="run on a clock this far off the system's (tests and demos: the "
                        "speaker plays on the streamer's time whatever its own clock says)")
    p.add_argument("--clock-drift-ppm", type=float,
                   help="and this many parts per million fast (negative: slow)")
    return p


def load_config(argv: Sequence[str] | None = None,
                env: Mapping[str, str] | None = None) -> SpeakerConfig:
    args = vars(_arg_parser().parse_args(argv))
    return load(SpeakerConfig, args, env_prefix="LOA_SPEAKER_", path=args.pop("config"), env=env,
                section="speaker")

