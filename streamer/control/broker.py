"""Mosquitto for the control plane: per-device logins, a generated ACL, a private instance.

:func:`write_password_file` and :func:`write_acl` turn a list of :class:`Account` into the
two files Mosquitto reads (and re-reads on SIGHUP, :meth:`Mosquitto.reload`); the registry
stores only :func:`hash_password` hashes. :class:`Mosquitto` is the private broker that
``loa up`` and the tests run (``services.py``). Every device may publish only under its own
topics and read only its own commands, its config and its zones' group commands
(``docs/mqtt.md``). This module never writes, logs or passes on a command line a plaintext
password, and never writes a name into the ACL that could widen it (ids are checked against
the id patterns: no ``/``, ``+``, ``#``, whitespace or newline).
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import os
import secrets
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.secretfile import write_private
from streamer.control.messages import (
    DEVICE_TOPICS,
    KINDS,
    PREFIX,
    device_topic,
    valid_device_id,
    valid_zone_id,
    zone_cmd_topics,
    zone_emergency_topics,
)
from streamer.control.services import Service, ServiceError

STREAMER_USER = "streamer"
#: mosquitto_passwd's own default. Device and service passwords are random 192-bit secrets
#: (:func:`new_password`), so key stretching adds nothing against guessing, while every login
#: pays it on the broker, and a broker restart makes thousands of devices log in at once.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12  # as mosquitto_passwd
#: The broker disconnects a client that sends a bigger packet: a memory bound on the broker.
#: Receivers refuse anything over ``messages.MAX_PAYLOAD`` (64 KiB) themselves and count it,
#: so an oversized message between the two limits shows in a metric instead of vanishing.
MAX_PACKET_BYTES = 2 * 1024 * 1024

AccountKind = Literal["speaker", "relay", "service"]


@dataclass(frozen=True)
class Account:
    """One broker login. ``user`` is the device id for a speaker or relay; ``zone`` is a
    speaker's leaf zone (its ancestors are derived); a service (the streamer) may read and
    write everything under ``loa/v1/``."""

    user: str
    password_hash: str
    kind: AccountKind
    zone: str | None = None

    def check(self) -> None:
        if self.kind not in (*KINDS, "service"):
            raise ValueError(f"{self.user}: kind {self.kind!r} is not speaker, relay or service")
        if not valid_device_id(self.user):
            raise ValueError(f"user {self.user!r} is not a valid device or service id")
        if self.zone is not None and not valid_zone_id(self.zone):
            raise ValueError(f"{self.user}: zone {self.zone!r} is not a zone id")
        if self.zone is not None and (self.kind == "service"
                                      or not DEVICE_TOPICS[self.kind].zones):
            raise ValueError(f"{self.user}: only speakers listen to zone commands")
        if not self.password_hash.startswith("$7$") or any(c in self.password_hash
                                                           for c in ":\n\r "):
            raise ValueError(f"{self.user}: password_hash is not a mosquitto $7$ hash")


def new_password() -> str:
    """A random device password (192 bits, URL-safe text)."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS,
                  salt: bytes | None = None) -> str:
    """The part after ``user:`` of a Mosquitto 2.0 password line:
    ``$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>``.

    Computed here with :mod:`hashlib` rather than by running ``mosquitto_passwd``: the
    registry hashes on the streamer host, where Mosquitto may not be installed, one device
    at a time, and a plaintext must never reach a command line or a temporary file.
    """
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, password_hash: str) -> bool:
    """True if ``password`` matches a ``$7$`` hash (as the broker will decide)."""
    try:
        _, seven, iterations, salt, digest = password_hash.split("$")
        if seven != "7":
            return False
        mine = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt),
                                   int(iterations))
        return hmac.compare_digest(mine, base64.b64decode(digest))
    except (ValueError, TypeError):
        return False


def _checked(accounts: Iterable[Account]) -> list[Account]:
    out: list[Account] = []
    seen: set[str] = set()
    for a in accounts:
        a.check()
        if a.user in seen:  # a speaker and a relay with one id would share a login
            raise ValueError(f"user {a.user!r} appears twice")
        seen.add(a.user)
        out.append(a)
    return out


def write_password_file(path: Path, accounts: Iterable[Account]) -> None:
    """``user:$7$…`` lines, mode 0600."""
    lines = [f"{a.user}:{a.password_hash}\n" for a in _checked(accounts)]
    write_private(path, "".join(lines))


def acl_rules(account: Account) -> list[str]:
    """The ``topic`` lines of one account (after its ``user`` line)."""
    if account.kind == "service":
        return [f"topic readwrite {PREFIX}/#"]
    topics = DEVICE_TOPICS[account.kind]
    rules = [f"topic write {device_topic(account.kind, account.user, leaf)}"
             for leaf in topics.publishes]
    rules += [f"topic read {device_topic(account.kind, account.user, leaf)}"
              for leaf in topics.reads]
    if account.zone and topics.zones:
        rules += [f"topic read {t}" for t in zone_cmd_topics(account.zone)]
        rules += [f"topic read {t}" for t in zone_emergency_topics(account.zone)]
    return rules


def write_acl(path: Path, accounts: Iterable[Account]) -> None:
    """One ``user`` block per account; no rule applies to anyone else (anonymous logins are
    refused by the broker config, and the ACL grants nothing outside a ``user`` block)."""
    blocks = ["# generated by loa (streamer/control/broker.py): do not edit\n"]
    for a in _checked(accounts):
        blocks.append(f"\nuser {a.user}\n" + "".join(f"{r}\n" for r in acl_rules(a)))
    write_private(path, "".join(blocks))


class Mosquitto(Service):
    """A private ``mosquitto`` with logins and ACL from :meth:`set_accounts`, retained
    messages persisted under ``directory``."""

    binary = "mosquitto"

    def __init__(self, directory: Path, port: int = 0, host: str = "127.0.0.1",
                 max_packet_bytes: int = MAX_PACKET_BYTES) -> None:
        super().__init__(directory, port, host)
        self.max_packet_bytes = max_packet_bytes

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def password_path(self) -> Path:
        return self.directory / "passwd"

    @property
    def acl_path(self) -> Path:
        return self.directory / "acl"

    def argv(self, conf: Path) -> list[str]:
        return [self.binary, "-c", str(conf)]

    def config(self) -> str:
        d = self.directory
        lines = [
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {self.password_path}",
            f"acl_file {self.acl_path}",
            f"listener {self.port} {self.host}",
            "persistence true",
            # the streamer signals the broker to re-read logins and ACL (devices.py)
            f"pid_file {d}/mosquitto.pid",
            f"persistence_location {d}/",
            "autosave_interval 60",
            f"max_packet_size {self.max_packet_bytes}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if os.geteuid() == 0:  # as root it would switch to user "mosquitto", who cannot
            lines.append(f"user {getpass.getuser()}")  # read or write our directory
        return "\n".join(lines) + "\n"

    def set_accounts(self, accounts: Iterable[Account]) -> None:
        """Write the password file and the ACL; a running broker re-reads both."""
        accounts = list(accounts)
        self.directory.mkdir(parents=True, exist_ok=True)
        write_password_file(self.password_path, accounts)
        write_acl(self.acl_path, accounts)
        if self.proc is not None and self.proc.poll() is None:
            self.reload()

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in (self.password_path, self.acl_path):
            if not path.exists():  # nobody may log in until set_accounts says who
                write_private(path, "")
        super().start()

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads the password file and the ACL (existing sessions stay
        connected; new permissions apply to their next publish and subscribe)."""
        if self.proc is None or self.proc.poll() is not None:
            raise ServiceError("mosquitto is not running")
        self.proc.send_signal(signal.SIGHUP)
