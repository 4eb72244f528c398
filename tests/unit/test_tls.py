"""The mesh CA and the TLS identity: what `meshserve certs` writes and how services load it."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshserve import tls
from meshserve.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from meshserve.tls import certs


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_issued_certificate_is_signed_by_the_ca_for_servers_and_clients(tmp_path: Path) -> None:
    ca = certs.init_ca(tmp_path)
    made = certs.issue(tmp_path, "router", ("router.mesh.internal", "127.0.0.1"))
    leaf, root = _cert(made.cert), _cert(ca.cert)
    leaf.verify_directly_issued_by(root)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["router.mesh.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)


def test_private_keys_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    ca = certs.init_ca(tmp_path)
    made = certs.issue(tmp_path, "runtime")
    for key in (ca.key, made.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_an_existing_ca_is_not_replaced_unless_forced(tmp_path: Path) -> None:
    first = certs.init_ca(tmp_path).cert.read_bytes()
    with pytest.raises(AlreadyExists, match="--force"):
        certs.init_ca(tmp_path)
    assert certs.init_ca(tmp_path, force=True).cert.read_bytes() != first


def test_issue_needs_a_ca(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="meshserve certs init"):
        certs.issue(tmp_path, "router")


@pytest.mark.parametrize("name", ["", "ca", "../router", "a b", ".hidden"])
def test_bad_certificate_names_are_refused(tmp_path: Path, name: str) -> None:
    certs.init_ca(tmp_path)
    with pytest.raises(InvalidArgument):
        certs.issue(tmp_path, name)


def test_a_certificate_never_outlives_its_ca(tmp_path: Path) -> None:
    ca = certs.init_ca(tmp_path)
    made = certs.issue(tmp_path, "etcd", days=100_000)
    assert made.not_after <= ca.not_after


def test_describe_lists_names_and_hosts(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    made = certs.issue(tmp_path, "audit", ("audit.internal",))
    row = certs.describe(made.cert)
    assert (row["name"], row["subject"], row["hosts"]) == ("audit", "audit", "audit.internal")


def test_identity_needs_all_three_files(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    made = certs.issue(tmp_path, "router")
    assert tls.from_paths(None, None, None) is None
    with pytest.raises(FailedPrecondition, match="all three"):
        tls.from_paths(tmp_path / "ca.crt", made.cert, None)
    with pytest.raises(FailedPrecondition, match="cannot read TLS file"):
        tls.from_paths(tmp_path / "ca.crt", made.cert, tmp_path / "missing.key")
    mesh_tls = tls.from_paths(tmp_path / "ca.crt", made.cert, made.key)
    assert mesh_tls is not None and mesh_tls.identity.cert == made.cert.read_bytes()


def test_a_key_that_does_not_belong_to_the_certificate_is_refused(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    router, runtime = certs.issue(tmp_path, "router"), certs.issue(tmp_path, "runtime")
    with pytest.raises(FailedPrecondition, match="does not belong to the certificate"):
        tls.from_paths(tmp_path / "ca.crt", router.cert, runtime.key)
    (tmp_path / "half.crt").write_bytes(router.cert.read_bytes()[:200])
    with pytest.raises(FailedPrecondition, match="holds no PEM certificate"):
        tls.from_paths(tmp_path / "ca.crt", tmp_path / "half.crt", router.key)


def test_the_command_line_identity_comes_from_the_environment(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    made = certs.issue(tmp_path, "operator")
    assert tls.MeshTls.from_env({}) is None
    env = {"MESHSERVE_TLS_CA": str(tmp_path / "ca.crt"), "MESHSERVE_TLS_CERT": str(made.cert),
           "MESHSERVE_TLS_KEY": str(made.key)}
    found = tls.MeshTls.from_env(env)
    assert found is not None and found.files == (tmp_path / "ca.crt", made.cert, made.key)
    with pytest.raises(FailedPrecondition, match="all three"):
        tls.MeshTls.from_env({"MESHSERVE_TLS_CA": str(tmp_path / "ca.crt")})


def test_without_an_identity_everything_is_plain_text() -> None:
    assert tls.nats_options("nats://127.0.0.1:4222", None) == {}
    with pytest.raises(FailedPrecondition, match="no mesh certificate"):
        tls.nats_options("tls://127.0.0.1:4222", None)
    with pytest.raises(FailedPrecondition, match="no mesh certificate"):
        tls.required(None)


def test_with_an_identity_servers_require_client_certificates(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    made = certs.issue(tmp_path, "runtime")
    mesh_tls = tls.from_paths(tmp_path / "ca.crt", made.cert, made.key)
    assert mesh_tls is not None
    context = mesh_tls.server_context(require_client_cert=True)
    assert context.verify_mode.name == "CERT_REQUIRED"
    assert "tls" in tls.nats_options("tls://127.0.0.1:4222", mesh_tls)
    assert mesh_tls.server_credentials(require_client_cert=True) is not None


def test_rotate_issues_new_keys_under_the_same_ca_for_the_same_hosts(tmp_path: Path) -> None:
    ca = certs.init_ca(tmp_path)
    before = {name: certs.issue(tmp_path, name, hosts) for name, hosts in
              (("router", ("router.mesh.internal", "10.0.0.5")), ("runtime", certs.DEFAULT_HOSTS))}
    old = {name: (made.cert.read_bytes(), made.key.read_bytes()) for name, made in before.items()}
    rotated = certs.rotate(tmp_path)
    assert [made.cert.stem for made in rotated] == ["router", "runtime"]
    for name, made in before.items():
        assert (made.cert.read_bytes(), made.key.read_bytes()) != old[name]
        assert _cert(made.cert).serial_number != x509.load_pem_x509_certificate(old[name][0]).serial_number
        _cert(made.cert).verify_directly_issued_by(_cert(ca.cert))
        assert stat.S_IMODE(made.key.stat().st_mode) == 0o600
    assert certs.describe(before["router"].cert)["hosts"] == "router.mesh.internal, 10.0.0.5"
    assert not list(tmp_path.glob(".*.tmp"))  # written aside, then renamed
    only = certs.rotate(tmp_path, ("runtime",))
    assert [made.cert.stem for made in only] == ["runtime"]


def test_rotate_refuses_what_it_cannot_reissue(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    with pytest.raises(FailedPrecondition, match="no certificates"):
        certs.rotate(tmp_path)
    certs.issue(tmp_path, "router")
    with pytest.raises(FailedPrecondition, match="no certificate"):
        certs.rotate(tmp_path, ("audit",))
    other = tmp_path / "other"
    certs.init_ca(other)
    (tmp_path / "stranger.crt").write_bytes(certs.issue(other, "stranger").cert.read_bytes())
    before = (tmp_path / "router.crt").read_bytes()
    with pytest.raises(FailedPrecondition, match="not issued by the mesh CA"):
        certs.rotate(tmp_path)
    assert (tmp_path / "router.crt").read_bytes() == before  # nothing written
