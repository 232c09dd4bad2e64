"""A throwaway PKI for a test: a CA, a server certificate it signs for ``127.0.0.1`` and
``localhost``, a client certificate, and a second CA that signed nothing of ours (what a client
trusting the wrong CA has). All PEM, keys unencrypted, in the test's tmp dir; made with
``cryptography``, valid from a day ago for a week, so the clock of the day never matters."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate clients trust
    cert: Path  # the server's certificate (127.0.0.1, localhost), signed by ``ca``
    key: Path
    client_cert: Path  # a client certificate signed by ``ca``, for brokers that ask for one
    client_key: Path
    other_ca: Path  # a CA that signed none of the above

    def client_context(self, ca: Path | None = None) -> ssl.SSLContext:
        """What a client trusting ``ca`` (default: ours) uses."""
        return ssl.create_default_context(cafile=str(ca or self.ca))


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _ca("Loa test CA")
    other_key, other = _ca("Someone else's CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(ca, ca_key, server_key, "loa-test-server", ExtendedKeyUsageOID.SERVER_AUTH,
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                     x509.DNSName("localhost")])
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue(ca, ca_key, client_key, "loa-test-client", ExtendedKeyUsageOID.CLIENT_AUTH,
                    [x509.DNSName("loa-test-client")])
    paths = {"ca": ca, "cert": server, "client_cert": client, "other_ca": other}
    out = {name: _write(directory / f"{name}.pem", _cert_pem(c)) for name, c in paths.items()}
    out["key"] = _write(directory / "key.pem", _key_pem(server_key))
    out["client_key"] = _write(directory / "client_key.pem", _key_pem(client_key))
    del other_key
    return Pki(**out)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (builder.not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7)))


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _validity(
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False))
    return key, builder.sign(key, hashes.SHA256())


def _issue(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
           key: ec.EllipticCurvePrivateKey, cn: str, usage: x509.ObjectIdentifier,
           names: list[x509.GeneralName]) -> x509.Certificate:
    builder = _validity(
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False))
    return builder.sign(ca_key, hashes.SHA256())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path
