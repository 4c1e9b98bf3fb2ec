"""The OpenStack peer answers the real keystoneauth1 + novaclient as a FedCloud site
does (so the client code is tested against the protocol, not against itself), and as a
real Keystone 30 answered EGI-style federation (tests/data/fedcloud/keystone-30-federation.json,
recorded by tests/data/fedcloud/record_keystone.py)."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from conftest import ACCESS, ACCESS_PROJECT, SERVERS
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey
from keystoneauth1 import exceptions as ks_exceptions
from keystoneauth1 import plugin, session
from keystoneauth1.identity import v3
from novaclient import api_versions
from novaclient import client as nova_client
from novaclient import exceptions as nova_exceptions

from prefect_egi.sandbox.openstack_peer import Jwks
from prefect_egi.sandbox.peers import start_peer

CERTS = "GET /auth/realms/egi/protocol/openid-connect/certs"
RECORDED = json.loads((Path(__file__).parent / "data" / "fedcloud" / "keystone-30-federation.json").read_text())
FEDERATION = "/OS-FEDERATION/identity_providers/egi.eu/protocols/openid/auth"
#: a valid Check-in identity, a member of the VO — without the vm_operator role sites map
CAROL = {"sub": "c4r01c4r01c4r01c4r01c4r01c4r01c4@egi.eu", "name": "Carol Member", "email": "carol@example.org",
         "eduperson_entitlement": [f"urn:mace:egi.eu:group:{ACCESS}:role=member#aai.egi.eu"]}


def recorded(title_start: str) -> dict:
    return next(e for e in RECORDED["exchanges"] if e["title"].startswith(title_start))


def carol_token(checkin) -> str:
    checkin.process.control("user", name="carol", profile=CAROL)
    return checkin.login(user="carol")["access_token"]


def site(peer, name: str) -> dict:
    return peer.info["sites"][name]


def connect(peer, name: str, access_token: str, project_id: str | None = None, **options):
    """What the client code does: federate with the Check-in token, rescope, call Nova."""
    auth = v3.OidcAccessToken(auth_url=site(peer, name)["auth_url"], identity_provider="egi.eu",
                              protocol="openid", access_token=access_token, project_id=project_id)
    return auth, session.Session(auth=auth, **options)


def list_projects(sess: session.Session) -> list[dict]:
    """`GET {auth_url}/auth/projects` with the session's token."""
    return sess.get("/auth/projects", endpoint_filter={"interface": plugin.AUTH_INTERFACE}).json()["projects"]


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_announcement(openstack):
    sites = openstack.info["sites"]
    cesnet = sites["CESNET-MCC"]
    assert cesnet["auth_url"] == cesnet["url"] + "/v3" and cesnet["mode"] == "healthy"
    assert cesnet["projects"][ACCESS] == {"id": ACCESS_PROJECT, "name": "egi-access"}
    assert cesnet["projects"]["vo.notebooks.egi.eu"]["name"] == "vo.notebooks.egi.eu"  # default name = the VO
    assert cesnet["max_microversion"] == "2.79" and sites["OLD-CLOUD"]["max_microversion"] == "2.1"
    assert (sites["BROKEN"]["mode"], sites["BLACKHOLE"]["mode"]) == ("error", "hang")
    assert len({s["url"] for s in sites.values()} | {openstack.url}) == len(sites) + 1


def test_list_servers_without_microversion(openstack, checkin):
    auth, sess = connect(openstack, "CESNET-MCC", checkin.login()["access_token"], ACCESS_PROJECT)
    servers = nova_client.Client(2, session=sess).servers.list()
    assert [s.name for s in servers] == [f"vm-CESNET-MCC-{n}" for n in range(SERVERS, 0, -1)]  # newest first
    assert {"ACTIVE", "SHUTOFF", "ERROR"} <= {s.status for s in servers}
    assert all(set(s.flavor) == {"id", "links"} for s in servers)
    assert len({s.flavor["id"] for s in servers}) > 2 and len({s.image["id"] for s in servers if s.image}) > 1
    booted_from_volume = [s for s in servers if s.image == ""]
    assert len(booted_from_volume) == 1 and getattr(booted_from_volume[0], "os-extended-volumes:volumes_attached")
    active = next(s for s in servers if s.status == "ACTIVE")
    assert {a["OS-EXT-IPS:type"] for net in active.addresses.values() for a in net} == {"fixed", "floating"}
    assert getattr(active, "OS-EXT-STS:vm_state") == "active" and active.tenant_id == ACCESS_PROJECT
    for server in servers:
        created = datetime.strptime(server.created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        assert created < datetime.now(timezone.utc)
    assert openstack.stats()["CESNET-MCC"] == {"POST federation": 1, "POST auth/tokens": 1, "GET servers/detail": 1}
    assert auth.get_access(sess).project_id == ACCESS_PROJECT


def test_latest_microversion_embeds_flavors(openstack, checkin):
    _, sess = connect(openstack, "CESNET-MCC", checkin.login()["access_token"], ACCESS_PROJECT)
    version = api_versions.discover_version(nova_client.Client(2, session=sess), api_versions.APIVersion("2.latest"))
    assert version.get_string() == "2.79"
    nova = nova_client.Client(version.get_string(), session=sess)
    servers = nova.servers.list()
    flavor = servers[0].flavor
    assert set(flavor) == {"vcpus", "ram", "disk", "ephemeral", "swap", "original_name", "extra_specs"}
    assert {s.flavor["original_name"] for s in servers} >= {"m1.small", "m1.medium"}
    assert servers[0].locked is False and servers[0].tags == []
    assert nova.servers.get(servers[0].id).name == servers[0].name
    stats = openstack.stats()["CESNET-MCC"]
    assert stats["GET compute version"] == 1 and stats["GET servers/detail"] == 1
    # the version headers are echoed
    response = sess.get(site(openstack, "CESNET-MCC")["url"] + "/compute/v2.1/servers",
                        headers={"OpenStack-API-Version": "compute 2.60"})
    assert response.headers["OpenStack-API-Version"] == "compute 2.60"
    assert response.headers["X-OpenStack-Nova-API-Version"] == "2.60"


def test_old_site_and_unsupported_microversions(openstack, checkin):
    token = checkin.login()["access_token"]
    old_project = site(openstack, "OLD-CLOUD")["projects"][ACCESS]["id"]
    _, old = connect(openstack, "OLD-CLOUD", token, old_project)
    version = api_versions.discover_version(nova_client.Client(2, session=old), api_versions.APIVersion("2.latest"))
    assert version.get_string() == "2.1"
    nova = nova_client.Client("2.1", session=old)
    servers = nova.servers.list()
    assert all(set(s.flavor) == {"id", "links"} for s in servers)
    flavor = nova.flavors.get(servers[0].flavor["id"])  # what a client needs to name an old site's flavors
    assert flavor.name.startswith(("m1.", "g1.")) and flavor.vcpus >= 1
    assert {f.id for f in nova.flavors.list()} >= {s.flavor["id"] for s in servers}
    with pytest.raises(nova_exceptions.NotAcceptable):
        nova_client.Client("2.47", session=old).servers.list()
    _, sess = connect(openstack, "CESNET-MCC", token, ACCESS_PROJECT)
    with pytest.raises(nova_exceptions.NotAcceptable):
        nova_client.Client("2.90", session=sess).servers.list()
    assert openstack.stats()["CESNET-MCC"]["406"] == 1


def test_projects_of_the_user(openstack, checkin):
    alice = checkin.login()["access_token"]
    auth, sess = connect(openstack, "CESNET-MCC", alice)  # unscoped
    access = auth.get_access(sess)
    # the mapping's user name is {0} = HTTP_OIDC_SUB, in the identity provider's domain
    assert access.project_id is None and access.username == claims_of(alice)["sub"]
    assert access.is_federated and access.user_domain_name == "egi.eu" and len(access.user_domain_id) == 32
    projects = {p["name"]: p for p in list_projects(sess)}
    assert set(projects) == {"egi-access", "vo.notebooks.egi.eu"} and projects["egi-access"]["id"] == ACCESS_PROJECT
    assert projects["egi-access"]["enabled"] and projects["egi-access"]["domain_id"] == "default"
    # a scoped session reaches the same list through the catalog's identity endpoint
    scoped_auth, scoped = connect(openstack, "CESNET-MCC", alice, ACCESS_PROJECT)
    listed = scoped.get("/auth/projects", endpoint_filter={"service_type": "identity", "interface": "public"}).json()
    assert {p["id"] for p in listed["projects"]} == {p["id"] for p in projects.values()}
    compute = scoped_auth.get_access(scoped).service_catalog.url_for(service_type="compute", interface="public")
    assert compute == site(openstack, "CESNET-MCC")["url"] + "/compute/v2.1"
    # a site whose mapping has no rule for alice's entitlements: Keystone maps nobody, 401
    _, other = connect(openstack, "IFCA-LCG2", alice)
    with pytest.raises(ks_exceptions.Unauthorized):
        other.get_token()
    assert openstack.stats()["IFCA-LCG2"] == {"POST federation": 1, "401": 1}


def test_user_without_vos(openstack, checkin):
    bob = checkin.login(user="bob")["access_token"]
    for project in (None, ACCESS_PROJECT):
        _, sess = connect(openstack, "CESNET-MCC", bob, project)
        with pytest.raises(ks_exceptions.Unauthorized):
            sess.get_token()
    assert openstack.stats()["CESNET-MCC"] == {"POST federation": 2, "401": 2}


def test_mapping_rules_are_role_specific_and_refuse_like_keystone(openstack, checkin, http):
    """Sites map a VO's entitlement with a role (`role=vm_operator` here, as vo-mappings.yaml
    lists for vo.access.egi.eu; `role=member` for the notebooks VO on CESNET-MCC), not any
    entitlement naming the VO. A valid token no rule maps gets what Keystone 30 answered to
    the same case in the recording: 401, its generic body, `WWW-Authenticate: Keystone uri=…`."""
    url = site(openstack, "CESNET-MCC")["auth_url"] + FEDERATION
    refused = http.post(url, headers={"Authorization": "Bearer " + carol_token(checkin)})
    real = recorded("federation: a valid token whose entitlements match no rule")["response"]
    assert refused.status_code == real["status"] == 401
    assert refused.json() == real["body"]
    assert refused.headers["WWW-Authenticate"] == f'Keystone uri="{site(openstack, "CESNET-MCC")["auth_url"]}"'
    assert real["headers"]["WWW-Authenticate"].startswith('Keystone uri="')
    assert "X-Subject-Token" not in refused.headers
    info = site(openstack, "CESNET-MCC")["rules"]
    assert info[ACCESS] == [f"urn:mace:egi.eu:group:{ACCESS}:role=vm_operator#aai.egi.eu"]
    assert info["vo.notebooks.egi.eu"] == ["urn:mace:egi.eu:group:vo.notebooks.egi.eu:role=member#aai.egi.eu"]


def test_federated_tokens_have_the_shape_keystone_30_gives(openstack, checkin, http):
    """The unscoped and the rescoped token bodies carry what Keystone 30 sent in the recording
    (same keys, methods, the member role with its implied reader, the IdP's domain), and the
    rescoped token keeps the unscoped one's expiry."""
    base = site(openstack, "CESNET-MCC")["auth_url"]
    unscoped = http.post(base + FEDERATION, headers={"Authorization": "Bearer " + checkin.login()["access_token"]})
    real = recorded("federation: a token whose entitlement the mapping maps")["response"]
    assert unscoped.status_code == real["status"] == 201
    body, real_body = unscoped.json()["token"], real["body"]["token"]
    assert set(body) == set(real_body) and set(body["user"]) == set(real_body["user"])
    assert body["methods"] == real_body["methods"] == ["openid"]
    assert set(body["user"]["OS-FEDERATION"]) == set(real_body["user"]["OS-FEDERATION"])
    scope = {"auth": {"identity": {"methods": ["token"], "token": {"id": unscoped.headers["X-Subject-Token"]}},
                      "scope": {"project": {"id": ACCESS_PROJECT}}}}
    scoped = http.post(base + "/auth/tokens", json=scope, headers={"X-Auth-Token": unscoped.headers["X-Subject-Token"]})
    real = recorded("rescoping the unscoped token")["response"]
    assert scoped.status_code == real["status"] == 201
    body, real_body = scoped.json()["token"], real["body"]["token"]
    assert set(body) == set(real_body) and body["methods"] == real_body["methods"] == ["openid", "token"]
    assert {r["name"] for r in body["roles"]} == {r["name"] for r in real_body["roles"]} == {"member", "reader"}
    assert body["expires_at"] == unscoped.json()["token"]["expires_at"]  # as Keystone: rescoping does not extend
    assert real_body["expires_at"] == recorded("federation: a token whose")["response"]["body"]["token"]["expires_at"]


def forged(issuer: str, kid: str) -> str:
    """A well-formed RS256 access token signed by a key that is not the issuer's."""
    key = RSAKey.generate_key(2048, parameters={"kid": kid})
    now = int(time.time())
    return jwt.encode({"alg": "RS256", "kid": kid}, {"iss": issuer, "sub": "mallory", "exp": now + 600, "iat": now}, key)


def test_bad_tokens_are_unauthorized(openstack, checkin, http):
    kid = http.get(f"{checkin.issuer}/protocol/openid-connect/certs").json()["keys"][0]["kid"]
    for token in ["garbage", checkin.login(access_token_lifetime=-60)["access_token"], forged(checkin.issuer, kid)]:
        _, sess = connect(openstack, "CESNET-MCC", token, ACCESS_PROJECT)
        with pytest.raises(ks_exceptions.Unauthorized):
            nova_client.Client(2, session=sess).servers.list()
    # an unknown kid refetches the JWKS (key rotation), but not on every request
    rotated = forged(checkin.issuer, "rotated?")  # made once: a key takes a while to generate on a busy machine
    time.sleep(1.1)
    before = checkin.stats().get(CERTS, 0)
    for _ in range(2):
        _, sess = connect(openstack, "CESNET-MCC", rotated)
        with pytest.raises(ks_exceptions.Unauthorized):
            sess.get_token()
    assert checkin.stats().get(CERTS, 0) == before + 1
    # Keystone's 401, and another identity provider
    federation = site(openstack, "CESNET-MCC")["auth_url"] + "/OS-FEDERATION/identity_providers/egi.eu/protocols/openid/auth"
    response = http.post(federation, headers={"Authorization": "Bearer " + checkin.login()["access_token"] + "x"})
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Keystone uri=")
    assert response.json() == {"error": {"code": 401, "message": "The request you have made requires authentication.",
                                         "title": "Unauthorized"}}
    auth = v3.OidcAccessToken(auth_url=site(openstack, "CESNET-MCC")["auth_url"], identity_provider="other.idp",
                              protocol="openid", access_token=checkin.login()["access_token"])
    with pytest.raises(ks_exceptions.NotFound):
        session.Session(auth=auth).get_token()
    assert openstack.stats()["CESNET-MCC"]["401"] == 6


def test_validation_rules():
    """What mod_auth_openidc checks, in-process with our own key: signature, `iss`, `exp`."""
    issuer, key = "https://aai.example/auth/realms/egi", RSAKey.generate_key(2048, parameters={"kid": "k1"})
    jwks = Jwks(issuer)
    jwks.keys, jwks.fetched_at = KeySet([key]), time.monotonic()
    now = int(time.time())

    def sign(**claims) -> str:
        return jwt.encode({"alg": "RS256", "kid": "k1"}, {"iss": issuer, "sub": "s", "exp": now + 60, **claims}, key)

    assert jwks.verify(sign())["sub"] == "s"
    assert jwks.verify(sign(iss="https://evil.example")) is None
    assert jwks.verify(sign(exp=now - 1)) is None
    assert jwks.verify(jwt.encode({"alg": "HS256"}, {"iss": issuer, "exp": now + 60}, OctKey.import_key("s" * 32))) is None


def test_keystone_tokens_live_by_keystones_expiry(openstack, checkin, checkin_process, http):
    """A Keystone token lives Keystone's `[token] expiration` (3600 s by default: the recording's
    expires_at - issued_at), not the Check-in token's lifetime; past it, 401."""
    from prefect_egi.tasks import parse_token

    real = recorded("federation: a token whose")["response"]["body"]["token"]
    lifetime = datetime.fromisoformat(real["expires_at"]) - datetime.fromisoformat(real["issued_at"])
    assert lifetime.total_seconds() == RECORDED["keystone_token_expiration_seconds"] == 3600
    access = checkin.login(access_token_lifetime=5)["access_token"]
    auth, sess = connect(openstack, "CESNET-MCC", access, ACCESS_PROJECT)
    scoped = sess.get_token()
    ends = auth.get_access(sess).expires
    assert abs((ends - auth.get_access(sess).issued).total_seconds() - 3600) < 2
    compute = site(openstack, "CESNET-MCC")["url"] + "/compute/v2.1/servers/detail"
    time.sleep(max(0.0, parse_token(access).seconds_left()) + 0.2)  # past the access token's exp
    assert http.get(compute, headers={"X-Auth-Token": scoped}).status_code == 200  # Keystone's token lives on
    assert http.get(compute, headers={"X-Auth-Token": "nonsense"}).status_code == 401

    short = start_peer("openstack-expiry", "openstack_peer.py", "--issuer", checkin_process.info["issuer"],
                       "--site", f"SHORT:healthy:{ACCESS}", "--token-expiration", "3")
    try:
        auth = v3.OidcAccessToken(auth_url=short.info["sites"]["SHORT"]["auth_url"], identity_provider="egi.eu",
                                  protocol="openid", access_token=checkin.login()["access_token"],
                                  project_id=short.info["sites"]["SHORT"]["projects"][ACCESS]["id"])
        sess = session.Session(auth=auth)
        scoped = sess.get_token()
        access_info = auth.get_access(sess)
        assert abs((access_info.expires - access_info.issued).total_seconds() - 3) < 1.5
        compute = short.info["sites"]["SHORT"]["url"] + "/compute/v2.1/servers/detail"
        assert http.get(compute, headers={"X-Auth-Token": scoped}).status_code == 200
        time.sleep(max(0.0, (access_info.expires - datetime.now(timezone.utc)).total_seconds()) + 0.2)
        response = http.get(compute, headers={"X-Auth-Token": scoped})
        assert response.status_code == 401 and "WWW-Authenticate" in response.headers
    finally:
        short.stop()


def test_token_rotation_in_a_long_lived_session(openstack, checkin):
    auth, sess = connect(openstack, "CESNET-MCC", checkin.login()["access_token"], ACCESS_PROJECT)
    nova = nova_client.Client(2, session=sess)
    nova.servers.list()
    nova.servers.list()
    assert openstack.stats()["CESNET-MCC"]["POST federation"] == 1  # the Keystone token is reused
    auth.access_token = checkin.login()["access_token"]
    auth.invalidate()
    assert len(nova.servers.list()) == SERVERS
    stats = openstack.stats()["CESNET-MCC"]
    assert (stats["POST federation"], stats["POST auth/tokens"], stats["GET servers/detail"]) == (2, 2, 3)


def test_paging(openstack, checkin):
    _, sess = connect(openstack, "CESNET-MCC", checkin.login()["access_token"], ACCESS_PROJECT)
    nova = nova_client.Client(2, session=sess)
    everything = [s.id for s in nova.servers.list()]
    first = nova.servers.list(limit=2)
    assert [s.id for s in first] == everything[:2]
    assert [s.id for s in nova.servers.list(limit=2, marker=first[-1].id)] == everything[2:4]
    assert [s.id for s in nova.servers.list(limit=-1)] == everything  # novaclient follows markers until empty
    # Nova's next link, followed by hand
    url, ids = site(openstack, "CESNET-MCC")["url"] + "/compute/v2.1/servers/detail?limit=2", []
    while url:
        body = sess.get(url).json()
        ids += [s["id"] for s in body["servers"]]
        url = next((link["href"] for link in body.get("servers_links", []) if link["rel"] == "next"), None)
    assert ids == everything
    with pytest.raises(nova_exceptions.BadRequest):
        nova.servers.list(marker="no-such-server")
    assert [s.status for s in nova.servers.list(search_opts={"status": "ERROR"})] == ["ERROR"]


def test_error_site(openstack, checkin, http):
    _, sess = connect(openstack, "BROKEN", checkin.login()["access_token"], "any")
    with pytest.raises(ks_exceptions.HttpError) as failure:
        nova_client.Client(2, session=sess).servers.list()
    assert failure.value.http_status == 503
    response = http.get(site(openstack, "BROKEN")["auth_url"])
    assert response.status_code == 503 and response.json()["error"]["code"] == 503
    assert openstack.stats()["BROKEN"]["503"] == 2


def test_hang_site_times_out_without_blocking_others(openstack, checkin):
    token = checkin.login()["access_token"]
    outcome: list[BaseException] = []

    def hang() -> None:
        _, sess = connect(openstack, "BLACKHOLE", token, "any", timeout=10)
        try:
            nova_client.Client(2, session=sess).servers.list()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=hang)
    thread.start()
    _, healthy = connect(openstack, "CESNET-MCC", token, ACCESS_PROJECT)
    assert len(nova_client.Client(2, session=healthy).servers.list()) == SERVERS
    assert thread.is_alive(), "the healthy listing waited for the black hole"  # it holds up nobody else
    thread.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], ks_exceptions.ConnectTimeout)
    assert 9.9 < time.monotonic() - started < 40  # its timeout, then given up (not retried for long)
    assert openstack.stats()["BLACKHOLE"] == {"POST federation": 1}


def test_fault_injection(openstack, checkin):
    token = checkin.login()["access_token"]
    openstack.control("fault", site="CESNET-MCC", status=503, count=1)
    _, sess = connect(openstack, "CESNET-MCC", token, ACCESS_PROJECT)
    with pytest.raises(ks_exceptions.ServiceUnavailable):
        sess.get_token()
    assert sess.get_token()  # only `count` requests fail
    openstack.control("fault", site="CESNET-MCC", status=0, delay=0.5, count=1)
    started = time.monotonic()
    assert len(nova_client.Client(2, session=sess).servers.list()) == SERVERS
    assert time.monotonic() - started >= 0.5
    openstack.control("mode", site="CESNET-MCC", mode="error")
    with pytest.raises(nova_exceptions.ClientException) as failure:  # Nova's own calls raise novaclient's errors
        nova_client.Client(2, session=sess).servers.list()
    assert failure.value.code == 503
    openstack.control("reset")
    assert openstack.stats()["CESNET-MCC"] == {}
    assert nova_client.Client(2, session=sess).servers.list()


def test_sigterm_releases_hung_connections(checkin_process):
    peer = start_peer("openstack-sigterm", "openstack_peer.py", "--issuer", checkin_process.info["issuer"],
                      "--site", "HOLE:hang")
    host, port = httpx.URL(peer.info["sites"]["HOLE"]["url"]).host, httpx.URL(peer.info["sites"]["HOLE"]["url"]).port
    with socket.create_connection((host, port), timeout=5) as hung:
        hung.sendall(b"GET /v3 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        peer.stop(timeout=5)
        assert peer.process.returncode == 0  # ended by SIGTERM within the 5 s before stop() SIGKILLs
        assert hung.recv(100) == b""  # closed, never answered
