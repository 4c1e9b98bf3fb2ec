"""TLS stays verified: a self-signed Check-in peer is refused by default and
accepted once its CA bundle is given."""

from __future__ import annotations

import datetime
import ipaddress
import ssl

import httpx
import pytest
from pydantic import SecretStr

from deployments.sandbox.peers import start_peer
from tasks.checkin import CheckinCredentials, CheckinError, OidcClient
from tasks.http import RetryPolicy, tls_verify


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "checkin-peer.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def tls_peer(certificate):
    peer = start_peer("checkin-tls", "checkin_peer.py", "--tls-cert", certificate[0], "--tls-key", certificate[1])
    yield peer
    peer.stop()


def test_self_signed_issuer_is_refused_by_default(tls_peer):
    issuer = tls_peer.info["issuer"]
    assert issuer.startswith("https://127.0.0.1:")
    with pytest.raises(CheckinError, match="TLS certificate did not verify; give the CA bundle"):
        OidcClient(issuer, retry=RetryPolicy(attempts=3, backoff=0.05)).discovery()
    assert tls_verify() is True  # no code path turns verification off by itself


def test_issuer_works_with_its_ca_bundle(tls_peer, certificate):
    issuer = tls_peer.info["issuer"]
    context = ssl.create_default_context(cafile=certificate[0])
    login = httpx.post(f"{tls_peer.url}/_peer/login", json={}, verify=context, timeout=10).json()
    egi = CheckinCredentials(issuer=issuer, client_id="prefect-egi", ca_bundle=certificate[0],
                             access_token=SecretStr(login["access_token"]), use_environment=False, token_files=[])
    identity = egi.identity()
    assert identity.vos_from == "userinfo" and identity.username == "alice"
