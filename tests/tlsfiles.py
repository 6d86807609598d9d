"""
Test-time PKI for the mutual-TLS tests: a private CA made with
``cryptography``'s x509 builder, a server certificate it signs for
``localhost`` and ``127.0.0.1``, and a client certificate, written as PEM
files (nothing is kept in the repository).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool = False,
    hosts: tuple[str, ...] = (),
    usage: tuple[x509.ObjectIdentifier, ...] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names), critical=False
        )
    if usage:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(list(usage)), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class TestPKI:
    """
    The paths of the PEM files :func:`make_pki` wrote.

    :ivar ca: the CA's certificate (what ``--upstream-ca`` names).
    :ivar other_ca: another CA's certificate, that signed nothing used here.
    :ivar server: the server's certificate and key, in one file.
    :ivar client: the client's certificate and key, in one file (what
        ``--upstream-client-cert`` names).
    :ivar rogue_client: a client certificate and key signed by
        :attr:`other_ca`'s key.
    :ivar client_cert_only: the client's certificate without its key.
    """

    ca: str
    other_ca: str
    server: str
    client: str
    rogue_client: str
    client_cert_only: str


def make_pki(directory: str) -> TestPKI:
    """
    Write a CA, a server certificate for ``localhost`` and ``127.0.0.1``
    and client certificates into ``directory`` (created if missing).
    """
    os.makedirs(directory, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue(
        "metagateway test CA", ca_key, _name("metagateway test CA"), ca_key, ca=True
    )
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _issue("another CA", other_key, _name("another CA"), other_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        "localhost",
        server_key,
        ca.subject,
        ca_key,
        hosts=("localhost", "127.0.0.1"),
        usage=(ExtendedKeyUsageOID.SERVER_AUTH,),
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue(
        "gateway",
        client_key,
        ca.subject,
        ca_key,
        usage=(ExtendedKeyUsageOID.CLIENT_AUTH,),
    )
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = _issue(
        "rogue",
        rogue_key,
        other.subject,
        other_key,
        usage=(ExtendedKeyUsageOID.CLIENT_AUTH,),
    )
    files = {
        "ca": _cert_pem(ca),
        "other_ca": _cert_pem(other),
        "server": _cert_pem(server) + _key_pem(server_key),
        "client": _cert_pem(client) + _key_pem(client_key),
        "rogue_client": _cert_pem(rogue) + _key_pem(rogue_key),
        "client_cert_only": _cert_pem(client),
    }
    paths = {}
    for name, data in files.items():
        path = os.path.join(directory, name + ".pem")
        with open(path, "wb") as f:
            f.write(data)
        paths[name] = path
    return TestPKI(**paths)
