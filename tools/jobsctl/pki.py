"""A small certificate authority for the local stack and the tests.

Everything uses ECDSA P-256: it is what AWS IoT accepts for device certificates, it is
cheap for an ESP32 to handshake with, and bookworm's mbedTLS 2.28 verifies it.
Keys and certificates are PEM files so that mosquitto, moto and the device read them
unchanged. Note that mbedTLS 2.28 matches DNS names only, so server certificates carry
the DNS name ``localhost`` next to the IP address.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import JobsctlError

_VALIDITY = dt.timedelta(days=3650)


@dataclass(frozen=True)
class Credentials:
    """Paths of one certificate and its private key (PEM)."""

    cert: Path
    key: Path

    def as_dict(self) -> dict[str, str]:
        return {"cert_file": str(self.cert), "key_file": str(self.key)}


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o600 if private else 0o644)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class CertificateAuthority:
    """A CA kept as ``ca.pem``/``ca.key`` in a folder; created on first use."""

    def __init__(self, folder: Path, name: str = "jobsctl local CA") -> None:
        self.folder = Path(folder)
        self.cert_path = self.folder / "ca.pem"
        self.key_path = self.folder / "ca.key"
        if self.cert_path.exists() and self.key_path.exists():
            self._load()
        else:
            self._create(name)

    def _load(self) -> None:
        try:
            self.cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
        except (ValueError, OSError) as exc:
            raise JobsctlError(f"cannot read the CA in {self.folder}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise JobsctlError(f"the CA key in {self.folder} is not an EC key")
        self.key = key

    def _create(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        _write(self.key_path, _key_pem(self.key), private=True)
        _write(self.cert_path, self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        common_name: str,
        folder: Path,
        *,
        server: bool = False,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        stem: str = "",
    ) -> Credentials:
        """Issue a key and a certificate for ``common_name`` into ``folder``.

        A client certificate (the default) names the thing in its CN, which the broker uses
        as the MQTT username. A server certificate carries the given DNS and IP SANs.
        """
        stem = stem or ("server" if server else "device")
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        folder = Path(folder)
        creds = Credentials(folder / f"{stem}.pem", folder / f"{stem}.key")
        _write(creds.key, _key_pem(key), private=True)
        _write(creds.cert, cert.public_bytes(serialization.Encoding.PEM))
        return creds

    def issue_server(self, folder: Path, host: str = "localhost") -> Credentials:
        """A loopback server certificate: DNS SAN ``localhost`` and IP SAN 127.0.0.1."""
        return self.issue(
            host,
            folder,
            server=True,
            dns_names=(host,) if host == "localhost" else (host, "localhost"),
            ip_addresses=("127.0.0.1",),
        )


def certificate_id(cert_pem: bytes) -> str:
    """AWS IoT's certificate id: the hex SHA-256 of the DER certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.fingerprint(hashes.SHA256()).hex()
