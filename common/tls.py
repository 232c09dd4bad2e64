"""TLS for every Loa process: the server context of the HTTP servers (streamer, relay, speaker)
and the client context of their MQTT connections (``mqtts://``).

Both read PEM files named in the configuration and turn every way of getting them wrong (one
of a pair set without the other, a missing or unreadable file, no certificate in it, a key that
does not match, an encrypted key) into a :class:`ConfigError` naming the key to fix, raised
before any socket opens. Nothing here ever prompts for a pass phrase or falls back to plain
text: a process asked for TLS either has it or does not start. TLS 1.2 is the oldest version
either side speaks.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from common.config import ConfigError

MIN_VERSION = ssl.TLSVersion.TLSv1_2


def check_pair(cert_field: str, cert: str | None, key_field: str, key: str | None) -> bool:
    """True if both a certificate and its key are set, False if neither; one without the
    other is a :class:`ConfigError` naming the missing one."""
    if bool(cert) != bool(key):
        missing, present = (key_field, cert_field) if cert else (cert_field, key_field)
        raise ConfigError(missing, f"required with {present} (set both or neither)")
    return bool(cert)


def server_context(cert: str, key: str, *, cert_field: str = "tls_cert",
                   key_field: str = "tls_key") -> ssl.SSLContext:
    """An HTTPS server's context: the certificate chain ``cert`` (the server's certificate
    first, then any intermediates) and its private ``key``, both PEM."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSION
    _load_chain(ctx, cert, key, cert_field, key_field)
    return ctx


def client_context(ca: str | None, cert: str | None = None, key: str | None = None, *,
                   ca_field: str, cert_field: str, key_field: str) -> ssl.SSLContext:
    """A client's context that verifies the server's certificate and host name against the
    CA certificates in ``ca`` (PEM; None: the system's), presenting ``cert``/``key`` when the
    server asks for a client certificate."""
    check_pair(cert_field, cert, key_field, key)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = MIN_VERSION
    if ca:
        _check_pem(ca, ca_field, "CERTIFICATE")
        try:
            ctx.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(ca_field, f"{ca}: {_reason(e)}") from None
    if cert and key:
        _load_chain(ctx, cert, key, cert_field, key_field)
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str, cert_field: str,
                key_field: str) -> None:
    _check_pem(cert, cert_field, "CERTIFICATE")
    _check_pem(key, key_field, "PRIVATE KEY")

    def no_pass_phrase() -> str:
        raise ConfigError(key_field, f"{key}: the key is encrypted; give an unencrypted key "
                                     "(readable by this process only)")

    try:
        ctx.load_cert_chain(cert, key, password=no_pass_phrase)
    except ssl.SSLError as e:
        raise ConfigError(key_field, f"{key}: not the private key of {cert} "
                                     f"({_reason(e)})") from None
    except OSError as e:
        raise ConfigError(cert_field, f"{cert}: {_reason(e)}") from None


def _check_pem(path: str, field: str, what: str) -> None:
    """``path`` is readable and holds a PEM block whose label ends in ``what``."""
    try:
        text = Path(path).read_text("ascii", errors="replace")
    except OSError as e:
        raise ConfigError(field, f"{path}: {e.strerror or e}") from None
    if not any(line.startswith("-----BEGIN ") and line.rstrip().endswith(f"{what}-----")
               for line in text.splitlines()):
        raise ConfigError(field, f"{path}: no PEM {what.lower()} in the file")


def _reason(e: OSError) -> str:
    return str(getattr(e, "reason", None) or e.strerror or e)
