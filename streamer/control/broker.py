"""Mosquitto for the control plane: per-device logins and a generated ACL.

:func:`write_password_file` and :func:`write_acl` turn a list of :class:`Account` into the
two files Mosquitto reads (and re-reads on SIGHUP, ``devices.py``); the registry stores only
:func:`hash_password` hashes. The private broker that ``loa up`` and the tests run is
``devstack/services.py``'s :class:`Mosquitto`, which writes the same files. Every device
may publish only under its own topics and read only its own commands, its config and its
zones' group commands (``docs/mqtt.md``). This module never writes, logs or passes on a
command line a plaintext password, and never writes a name into the ACL that could widen it
(ids are checked against the id patterns: no ``/``, ``+``, ``#``, whitespace or newline).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.secretfile import new_secret, write_private
from wire.ids import valid_device_id, valid_zone_id
from wire.messages import (
    DEVICE_TOPICS,
    KINDS,
    PREFIX,
    device_topic,
    zone_board_topic,
    zone_cmd_topics,
    zone_emergency_topics,
)
from wire.plan import CLIPS_TOPIC, plan_topic

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

AccountKind = Literal["speaker", "relay", "board", "service"]


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
            raise ValueError(f"{self.user}: kind {self.kind!r} is not a device kind or service")
        if not valid_device_id(self.user):
            raise ValueError(f"user {self.user!r} is not a valid device or service id")
        if self.zone is not None and not valid_zone_id(self.zone):
            raise ValueError(f"{self.user}: zone {self.zone!r} is not a zone id")
        if self.zone is not None and (self.kind == "service" or not (
                DEVICE_TOPICS[self.kind].zones or self.kind == "board")):
            raise ValueError(f"{self.user}: only speakers and boards have a zone")
        if not self.password_hash.startswith("$7$") or any(c in self.password_hash
                                                           for c in ":\n\r "):
            raise ValueError(f"{self.user}: password_hash is not a mosquitto $7$ hash")


def new_password() -> str:
    """A random device password (192 bits, URL-safe text)."""
    return new_secret(24)


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
        # store and forward: its leaf zone's plan, and clip files by hash (any clip: a
        # clip is no secret, and its topic cannot be known without a plan that names it)
        rules += [f"topic read {plan_topic(account.zone)}", f"topic read {CLIPS_TOPIC}"]
    if account.kind == "board" and account.zone:
        rules.append(f"topic read {zone_board_topic(account.zone)}")
    rules += [f"topic read {t}" for t in topics.fleet]
    return rules


@functools.lru_cache(maxsize=1 << 16)
def _acl_block(kind: AccountKind, user: str, zone: str | None) -> str:
    """One account's block, kept: the whole ACL is written again at every registration, and
    all but one of its blocks are the same as last time."""
    rules = acl_rules(Account(user, "$7$", kind, zone))
    return f"\nuser {user}\n" + "".join(f"{r}\n" for r in rules)


def write_acl(path: Path, accounts: Iterable[Account]) -> None:
    """One ``user`` block per account; no rule applies to anyone else (anonymous logins are
    refused by the broker config, and the ACL grants nothing outside a ``user`` block)."""
    blocks = ["# generated by loa (streamer/control/broker.py): do not edit\n"]
    blocks += [_acl_block(a.kind, a.user, a.zone) for a in _checked(accounts)]
    write_private(path, "".join(blocks))
