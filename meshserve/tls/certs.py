"""The mesh CA: one private certificate authority that signs every mesh service's certificate.

``meshserve certs init DIR`` writes ``ca.crt`` and ``ca.key``; ``meshserve certs issue
DIR NAME`` writes ``NAME.crt`` and ``NAME.key`` signed by that CA, valid both as a
server and as a client (mesh services are both), for the host names and addresses
given (loopback by default). Keys are ECDSA P-256 and are written readable by their
owner only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshserve.errors import AlreadyExists, FailedPrecondition, InvalidArgument

CA_NAME = "ca"
CA_DAYS = 3650
CERT_DAYS = 365
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
ORGANIZATION = "meshserve"


@dataclass(frozen=True)
class Issued:
    """Where a certificate and its key were written."""

    cert: Path
    key: Path
    not_after: datetime.datetime


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _check_name(name: str) -> str:
    if not name or name == CA_NAME or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise InvalidArgument(f"certificate name {name!r}: use letters, digits, '-', '_' or '.', and not {CA_NAME!r}")
    return name


def init_ca(directory: Path, *, force: bool = False) -> Issued:
    """Create the mesh CA in ``directory``; refuses to replace an existing one unless ``force``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{CA_NAME}.crt", directory / f"{CA_NAME}.key"
    if cert_path.exists() and not force:
        raise AlreadyExists(f"{cert_path} exists: a new CA would invalidate every certificate it signed "
                            "(pass --force to replace it anyway)")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = now + datetime.timedelta(days=CA_DAYS)
    name = _name("meshserve mesh CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_path, key_path, not_after)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / f"{CA_NAME}.crt", directory / f"{CA_NAME}.key"
    if not cert_path.exists() or not key_path.exists():
        raise FailedPrecondition(f"no mesh CA in {directory}: run `meshserve certs init {directory}` first")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FailedPrecondition(f"{key_path} is not an ECDSA key made by `meshserve certs init`")
    return cert, key


def _subject_alt_names(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not host or " " in host:
                raise InvalidArgument(f"host {host!r} is neither an IP address nor a DNS name") from None
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue(directory: Path, name: str, hosts: tuple[str, ...] = DEFAULT_HOSTS, *, days: int = CERT_DAYS) -> Issued:
    """Issue ``NAME.crt``/``NAME.key`` in ``directory``, signed by the CA there, for ``hosts``."""
    _check_name(name)
    if days < 1:
        raise InvalidArgument(f"a certificate must be valid for at least a day, not {days}")
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(_subject_alt_names(hosts), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_path, key_path, not_after)


def describe(path: Path) -> dict[str, str]:
    """Subject, issuer, validity and names of the certificate at ``path`` (for `meshserve certs list`)."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
            str(v) for v in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        hosts = []
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return {
        "name": path.stem,
        "subject": str(cn[0].value) if cn else cert.subject.rfc4514_string(),
        "expires": cert.not_valid_after_utc.strftime("%Y-%m-%d"),
        "hosts": ", ".join(hosts) or "-",
    }
