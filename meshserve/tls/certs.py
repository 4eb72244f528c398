"""The mesh CA: one private certificate authority that signs every mesh service's certificate.

``meshserve certs init DIR`` writes ``ca.crt`` and ``ca.key``; ``meshserve certs issue
DIR NAME`` writes ``NAME.crt`` and ``NAME.key`` signed by that CA, valid both as a
server and as a client (mesh services are both), for the host names and addresses
given (loopback by default); ``meshserve certs rotate DIR [NAME ...]`` issues them again
(a new key, the same CA and hosts). Keys are ECDSA P-256 and are written readable by
their owner only.

Every file is written whole under a temporary name, then renamed over the old one, so a
running service that reads them again (see :class:`meshserve.tls.MeshTls`) sees the old
file or the new one, never a part; the key goes first, then its certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
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


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` at once: written to a temporary file beside it, synced, then renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a process that died writing it
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()), 0o600)


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
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
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
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_path, key_path, not_after)


def _hosts(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names and IP addresses a certificate is for, in the order it lists them."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(name.value) for name in san if isinstance(name, x509.DNSName | x509.IPAddress))


def issued_names(directory: Path) -> list[str]:
    """The names of the service certificates in ``directory`` (every ``NAME.crt`` but the CA's)."""
    return sorted(p.stem for p in directory.glob("*.crt") if p.stem != CA_NAME)


def rotate(directory: Path, names: tuple[str, ...] = (), *, days: int = CERT_DAYS) -> list[Issued]:
    """Issue ``names`` (all the folder's certificates when empty) again: new keys, the same CA and hosts.

    Each certificate must have been signed by the CA in ``directory``; a name without a
    certificate there, or one from another CA, is refused before anything is written.
    """
    ca_cert, _ = _load_ca(directory)
    chosen = names or tuple(issued_names(directory))
    if not chosen:
        raise FailedPrecondition(f"no certificates in {directory} to rotate (issue them with `meshserve certs issue`)")
    hosts: dict[str, tuple[str, ...]] = {}
    for name in chosen:
        path = directory / f"{_check_name(name)}.crt"
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except OSError:
            raise FailedPrecondition(f"no certificate {path} to rotate (see `meshserve certs issue`)") from None
        except ValueError as e:
            raise FailedPrecondition(f"{path} is not a PEM certificate: {e}") from None
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise FailedPrecondition(f"{path} was not issued by the mesh CA in {directory}: not rotated") from None
        hosts[name] = _hosts(cert) or DEFAULT_HOSTS
    return [issue(directory, name, hosts[name], days=days) for name in chosen]


def describe(path: Path) -> dict[str, str]:
    """Subject, issuer, validity and names of the certificate at ``path`` (for `meshserve certs list`)."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return {
        "name": path.stem,
        "subject": str(cn[0].value) if cn else cert.subject.rfc4514_string(),
        "expires": cert.not_valid_after_utc.strftime("%Y-%m-%d"),
        "serial": f"{cert.serial_number:x}",
        "hosts": ", ".join(_hosts(cert)) or "-",
    }
