"""``loa token``: issue a device's subscription token with the streamer's key.

    loa token --identity spk-kp1-01 --channel brvt.vung-tau.thang-tam.kp-1 [--lifetime-h 24]
        [--signing-key var/signing-key.pem] [--out FILE]

Writes the token in base64 to ``--out`` (0600, replaced atomically: a device reading it sees
the old or the new one) or to standard output. A relay is usually given ``--channel '*'``, or
its zone (every channel below it). Lifetimes and revocation: ``docs/operations.md``,
"Subscription tokens".
"""

from __future__ import annotations

import argparse
import base64
import sys
import time

from common.secretfile import write_private
from wire.auth import BadKey, SigningKey
from wire.token import issue

from .signing import default_key_path


def run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="loa token", description=__doc__.split("\n\n")[0])
    ap.add_argument("--identity", required=True, help="the device id it subscribes as")
    ap.add_argument("--channel", action="append", required=True,
                    help="a channel, a zone prefix or '*'; repeatable")
    ap.add_argument("--lifetime-h", type=float, default=24.0, help="hours it is valid")
    ap.add_argument("--signing-key", default=str(default_key_path("var")),
                    help="the streamer's key file (default var/signing-key.pem)")
    ap.add_argument("--out", help="write it here (0600) instead of standard output")
    a = ap.parse_args(argv)
    if not 0 < a.lifetime_h <= 24 * 30:
        print("loa token: --lifetime-h must be more than 0 and at most 720", file=sys.stderr)
        return 2
    try:
        with open(a.signing_key, "rb") as f:
            key = SigningKey.from_pem(f.read())
        token = issue(key, a.identity, a.channel, time.time(), a.lifetime_h * 3600)
    except (OSError, BadKey, ValueError) as e:
        print(f"loa token: {e}", file=sys.stderr)
        return 2
    text = base64.b64encode(token).decode() + "\n"
    if a.out:
        write_private(a.out, text)
    else:
        sys.stdout.write(text)
    return 0
