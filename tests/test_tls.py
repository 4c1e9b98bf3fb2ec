"""TLS stays verified: a self-signed Check-in peer is refused by default and
accepted once its CA bundle is given."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import ACCESS, ACCESS_PROJECT, REPO
from pydantic import SecretStr

from prefect_egi.sandbox.peers import start_peer
from prefect_egi.tasks import (
    CheckinCredentials,
    CheckinError,
    DataMiner,
    DiracX,
    FedCloud,
    NotebooksHub,
    OidcClient,
    Site,
    hub_version,
    list_ccp_methods,
    list_processes,
    vm_inventory,
)
from prefect_egi.tasks.http import RetryPolicy, tls_verify

CERTIFICATE = "(?i)certificate"


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


# -- every other client, behind a TLS front with the same self-signed certificate --------------

@pytest.fixture
def tls_front(certificate):
    """`front(url)`: the same URL served over https by a TLS-terminating proxy (self-signed)."""
    from prefect_egi.sandbox.fault_proxy import FaultProxy

    proxies = []

    def front(url: str) -> str:
        parts = urlsplit(url)
        proxy = FaultProxy(f"http://{parts.netloc}", tls_cert=certificate[0], tls_key=certificate[1]).start()
        proxies.append(proxy)
        return proxy.url + parts.path

    yield front
    for proxy in proxies:
        proxy.stop()


def _refused_then_accepted(make_block, call, certificate, refusal: str):
    """The default block is refused naming the certificate; with the CA bundle the call works."""
    default = make_block()
    with pytest.raises(Exception, match=refusal):
        asyncio.run(call(default))
    return asyncio.run(call(make_block(ca_bundle=certificate[0])))


def test_dataminer_over_tls(dataminer, tls_front, certificate):
    url = tls_front(dataminer.wps_url)
    processes = _refused_then_accepted(lambda **tls: DataMiner(url=url, gcube_token=SecretStr(dataminer.token), **tls),
                                       lambda block: list_processes.fn(block), certificate, CERTIFICATE)
    assert processes


def test_ccp_over_tls(ccp, tls_front, certificate):
    """CCP behind a TLS front (the IAM, the Check-in peer, stays where it is): refused by
    default naming the certificate; with the CA bundle, the methods are listed."""
    url = tls_front(ccp.url)
    methods = _refused_then_accepted(lambda **tls: ccp.block(url=url, **tls),
                                     lambda block: list_ccp_methods.fn(block), certificate, CERTIFICATE)
    assert "ccp-progress" in {m.id for m in methods}


def test_diracx_over_tls(diracx, tls_front, certificate):
    url = tls_front(diracx.url)

    async def whoami(block):
        return await block.client().call(lambda api: api.auth.userinfo())

    def block(**tls):
        return DiracX(url=url, vo=diracx.vo, group=diracx.group, credentials_path=diracx.credentials, **tls)

    info = _refused_then_accepted(block, whoami, certificate, CERTIFICATE)
    assert info.vo == diracx.vo


def test_notebooks_hub_over_tls(notebooks, checkin, tls_front, certificate):
    url = tls_front(notebooks.info["api_url"])
    version = _refused_then_accepted(
        lambda **tls: NotebooksHub(url=url, checkin=checkin.credentials(), **tls),
        lambda block: hub_version.fn(block), certificate, CERTIFICATE)
    assert version


def test_fedcloud_site_over_tls(openstack, checkin, tls_front, certificate):
    site = openstack.info["sites"]["CESNET-MCC"]
    endpoint = tls_front(site["auth_url"])

    def block(**tls):
        return FedCloud(checkin=checkin.credentials(), site_config_dirs=[], timeout_seconds=5,
                        sites=[Site(name="CESNET-MCC", endpoint=endpoint, projects={ACCESS: ACCESS_PROJECT})], **tls)

    refused = asyncio.run(vm_inventory.fn(block(), vo=ACCESS))
    failure = refused.sites[0].failure
    assert failure and failure.kind == "tls" and re.search(CERTIFICATE, failure.message), failure
    accepted = asyncio.run(vm_inventory.fn(block(ca_bundle=certificate[0]), vo=ACCESS))
    assert accepted.sites[0].failure is None and accepted.vms


def test_turning_verification_off_is_never_silent(caplog):
    with caplog.at_level(logging.WARNING, logger="prefect_egi.tls"):
        assert tls_verify(False, what="DataMiner https://example.org/wps") is False
    assert "TLS certificate verification is OFF for DataMiner https://example.org/wps" in caplog.text


def test_no_code_path_turns_verification_off_by_itself():
    """Verification off only ever comes from a user's `verify_tls=False`: the package has no literal."""
    package = [p for d in ("tasks", "flows") for p in (REPO / d).rglob("*.py")]
    offenders = [f"{p}: {pattern}" for p in package for pattern in ("verify=False", "CERT_NONE", "check_hostname = False",
                                                                     "verify_ssl=False", "insecure=True")
                 if pattern in p.read_text()]
    assert not offenders
