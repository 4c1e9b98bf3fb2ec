"""FedCloud VM inventory against the OpenStack peer (Keystone federation + Nova + Glance),
with the real keystoneauth1 and novaclient: healthy, unmapped, old, failing and
hanging sites in one run; several endpoints of one site; regions; why a site refused."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from conftest import ACCESS, ACCESS_PROJECT, SERVERS

from prefect_egi.tasks import FedCloud, Site, list_servers, vm_inventory
from prefect_egi.tasks.fedcloud.client import SitePool, site_servers

#: a valid Check-in identity, a member of vo.access.egi.eu without the vm_operator role sites map
CAROL = {"sub": "c4r01c4r01c4r01c4r01c4r01c4r01c4@egi.eu", "name": "Carol Member", "email": "carol@example.org",
         "eduperson_entitlement": [f"urn:mace:egi.eu:group:{ACCESS}:role=member#aai.egi.eu"]}
NOTEBOOKS_MEMBER = "urn:mace:egi.eu:group:vo.notebooks.egi.eu:role=member#aai.egi.eu"


def sites(peer, configured: bool = True) -> list[Site]:
    """The peer's sites as a user would configure them (CESNET's project id known, the rest not)."""
    found = []
    for name, info in peer.info["sites"].items():
        projects = {ACCESS: ACCESS_PROJECT} if configured and name == "CESNET-MCC" else {}
        found.append(Site(name=name, endpoint=info["auth_url"], projects=projects))
    return found


def fedcloud(peer, checkin, user: str = "alice", **fields) -> FedCloud:
    fields.setdefault("timeout_seconds", 6)  # per request: a healthy site answers well within it on a busy machine
    return FedCloud(checkin=checkin.credentials(user), sites=sites(peer), site_config_dirs=[], **fields)


def test_inventory_over_every_kind_of_site(openstack, checkin):
    result = asyncio.run(vm_inventory.fn(fedcloud(openstack, checkin), vo=ACCESS))

    by_site = {s.site: s for s in result.sites}
    assert set(by_site) == {"CESNET-MCC", "IFCA-LCG2", "OLD-CLOUD", "BROKEN", "BLACKHOLE"}
    cesnet, old = by_site["CESNET-MCC"], by_site["OLD-CLOUD"]
    assert (cesnet.project, cesnet.microversion, len(cesnet.vms)) == (ACCESS_PROJECT, "2.79", SERVERS)
    assert old.project and old.microversion == "2.1" and len(old.vms) == SERVERS  # project found by name
    assert {vm.site for vm in result.vms} == {"CESNET-MCC", "OLD-CLOUD"} and len(result.vms) == 2 * SERVERS
    for answer in (cesnet, old):  # 2.79 embeds flavor names; 2.1 only ids, named from the site's listing
        assert all(vm.flavor.startswith(("m1.", "g1.")) for vm in answer.vms), [vm.flavor for vm in answer.vms]
        assert {vm.image for vm in answer.vms} - {"(volume)"} <= {
            "EGI Ubuntu 22.04 [Ubuntu/22.04/VirtualBox]", "EGI AlmaLinux 9 [AlmaLinux/9/KVM]",
            "EGI Docker [Ubuntu/22.04/VirtualBox]"}
    assert {vm.status for vm in cesnet.vms} >= {"ACTIVE", "SHUTOFF", "ERROR"}
    assert "(volume)" in {vm.image for vm in cesnet.vms}
    active = next(vm for vm in cesnet.vms if vm.status == "ACTIVE")
    assert active.addresses and active.created is not None and active.age.endswith("h")

    kinds = {f.site: f.kind for f in result.failures}
    # IFCA-LCG2's mapping has no rule for alice's entitlements: Keystone's 401, told for what it is
    assert kinds == {"IFCA-LCG2": "not-mapped", "BROKEN": "server-error", "BLACKHOLE": "timeout"}
    report = result.markdown()
    assert "10 VM(s) on 2 of 5 site(s)" in report and "| BLACKHOLE | 0 |" in report
    assert "the site's federation does not map this identity" in report


def test_filters_by_status_and_name(openstack, checkin):
    block = fedcloud(openstack, checkin)
    result = asyncio.run(vm_inventory.fn(block, vo=ACCESS, sites=["CESNET-MCC", "OLD-CLOUD"],
                                         status=["active"], name_pattern="vm-CESNET-*"))
    assert result.vms and {(vm.site, vm.status) for vm in result.vms} == {("CESNET-MCC", "ACTIVE")}
    assert [len(s.vms) for s in result.sites] == [len(result.vms), 0]


def test_bad_input_fails_before_any_site_is_asked(openstack, checkin):
    block = fedcloud(openstack, checkin)
    with pytest.raises(ValueError, match="sites: unknown site.*NOWHERE; configured: BLACKHOLE, BROKEN"):
        asyncio.run(vm_inventory.fn(block, vo=ACCESS, sites=["NOWHERE"]))
    with pytest.raises(ValueError, match="vo: name a VO"):
        asyncio.run(vm_inventory.fn(block))
    empty = FedCloud(checkin=checkin.credentials(), site_config_dirs=[])
    with pytest.raises(ValueError, match="sites: no FedCloud site is configured"):
        asyncio.run(vm_inventory.fn(empty, vo=ACCESS))
    assert not any(openstack.stats().values())  # nothing was sent anywhere


def test_a_user_without_the_vo_is_not_mapped_by_any_site(openstack, checkin):
    """Bob's valid token carries no VO: every site's federation refuses him (401, as Keystone
    does for an identity no rule maps), and the report says so rather than blaming expiry."""
    result = asyncio.run(vm_inventory.fn(fedcloud(openstack, checkin, "bob"), vo=ACCESS,
                                         sites=["CESNET-MCC", "OLD-CLOUD"]))
    assert {f.site: f.kind for f in result.failures} == {"CESNET-MCC": "not-mapped", "OLD-CLOUD": "not-mapped"}
    message = result.failures[0].message
    assert "does not map this identity" in message and "carries the VOs none; asked for VO vo.access.egi.eu" in message
    assert "expired" not in message


def test_a_valid_token_the_sites_mapping_refuses_is_told_from_an_expired_one(openstack, checkin):
    """Keystone answers both with the same 401; the Check-in token tells them apart. Carol is
    a member of the VO, without the vm_operator role the site maps."""
    checkin.process.control("user", name="carol", profile=CAROL)
    result = asyncio.run(vm_inventory.fn(fedcloud(openstack, checkin, "carol"), vo=ACCESS, sites=["CESNET-MCC"]))
    [failure] = result.failures
    assert failure.kind == "not-mapped" and failure.endpoint == openstack.info["sites"]["CESNET-MCC"]["auth_url"]
    assert failure.message.startswith("the site's federation does not map this identity")
    assert "carries the VOs vo.access.egi.eu; asked for VO vo.access.egi.eu (roles in it: role=member)" in failure.message
    assert "role=vm_operator" in failure.message
    # with the notebooks VO's member role, the site maps her (that VO's rule) but not to this project
    checkin.process.control("user", name="carol", profile=dict(
        CAROL, eduperson_entitlement=[*CAROL["eduperson_entitlement"], NOTEBOOKS_MEMBER]))
    result = asyncio.run(vm_inventory.fn(fedcloud(openstack, checkin, "carol"), vo=ACCESS, sites=["CESNET-MCC"]))
    [failure] = result.failures
    assert failure.kind == "not-mapped" and "accepted your Check-in identity but refused it the project of VO " \
        "vo.access.egi.eu" in failure.message and "vo.access.egi.eu, vo.notebooks.egi.eu" in failure.message
    assert openstack.stats()["CESNET-MCC"]["POST auth/tokens"] == 1

    site = next(s for s in sites(openstack) if s.name == "CESNET-MCC")
    expired = checkin.login(access_token_lifetime=-60)["access_token"]
    answer = site_servers(SitePool(lambda: expired, timeout=5), site, ACCESS)
    assert answer.failure.kind == "unauthorized" and "the site refused the Check-in token (HTTP 401): it expired at" \
        in answer.failure.message
    answer = site_servers(SitePool(lambda: "an-opaque-token", timeout=5), site, ACCESS)
    assert answer.failure.kind == "unauthorized"
    assert answer.failure.message == "the site refused the Check-in token (HTTP 401): expired, or not accepted here"
    for told in (failure.message, answer.failure.message):
        assert expired not in told


def test_the_check_in_token_is_rotated_in_the_live_session(openstack, checkin):
    tokens = [checkin.login()["access_token"]]
    pool = SitePool(lambda: tokens[-1], timeout=5)
    site = next(s for s in sites(openstack) if s.name == "CESNET-MCC")

    assert len(site_servers(pool, site, ACCESS).vms) == SERVERS
    assert len(site_servers(pool, site, ACCESS).vms) == SERVERS  # same token: the session is reused
    assert openstack.stats()["CESNET-MCC"]["POST federation"] == 1
    tokens.append(checkin.login()["access_token"])  # the provider refreshed
    assert len(site_servers(pool, site, ACCESS).vms) == SERVERS
    assert openstack.stats()["CESNET-MCC"]["POST federation"] == 2
    assert len(pool._endpoints) == 1


def test_sites_from_the_fedcloud_site_config_folder(openstack, checkin, tmp_path):
    import yaml

    info = openstack.info["sites"]["CESNET-MCC"]
    (tmp_path / "CESNET-MCC.yaml").write_text(yaml.safe_dump({
        "gocdb": "CESNET-MCC", "endpoint": info["url"] + "/v3",
        "vos": [{"name": ACCESS, "auth": {"project_id": ACCESS_PROJECT}}]}))
    block = FedCloud(checkin=checkin.credentials(), site_config_dirs=[str(tmp_path)], default_vo=ACCESS)
    result = asyncio.run(vm_inventory.fn(block))
    assert [s.site for s in result.sites] == ["CESNET-MCC"] and len(result.vms) == SERVERS


@pytest.mark.prefect
def test_inventory_flow_shows_a_table_and_a_site_summary(prefect_db, openstack, checkin):
    from conftest import database_bytes
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from prefect_egi.flows import fedcloud_vm_inventory

    block = fedcloud(openstack, checkin)
    name = f"fc-{uuid.uuid4().hex[:8]}"
    block.save(name, overwrite=True)
    state = fedcloud_vm_inventory(vo=ACCESS, fedcloud_block=name, return_state=True)
    assert state.is_completed(), state.message
    assert len(state.result().vms) == 2 * SERVERS

    async def artifacts() -> dict:
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["vm-inventory", "vm-inventory-sites"])))
        return {a.key: a for a in found if a.flow_run_id == state.state_details.flow_run_id}

    shown = asyncio.run(artifacts())
    assert shown["vm-inventory"].type == "table" and "vm-CESNET-MCC-1" in str(shown["vm-inventory"].data)
    assert "BLACKHOLE" in shown["vm-inventory-sites"].data and "timeout" in shown["vm-inventory-sites"].data
    refresh = block.checkin.refresh_token.get_secret_value()
    assert refresh.encode() not in database_bytes(prefect_db)
    missing = fedcloud_vm_inventory(vo=ACCESS, fedcloud_block="no-such-block", return_state=True)
    assert "fedcloud_block: there is no EGI FedCloud block named 'no-such-block'" in missing.message


def test_the_egi_documentation_snippet_shape_through_our_task(openstack, checkin):
    """EGI's snippet: OidcAccessToken(auth_url, "egi.eu", "openid", project_id, token) → Session →
    novaclient.servers.list() — the same four values, given inline to our task."""
    from prefect_egi.tasks import list_servers

    auth_url = openstack.info["sites"]["CESNET-MCC"]["auth_url"]
    block = FedCloud(checkin=checkin.credentials(), site_config_dirs=[], sites=[
        Site(name="CESNET-MCC", endpoint=auth_url, identity_provider="egi.eu", protocol="openid",
             projects={ACCESS: ACCESS_PROJECT})])
    answer = asyncio.run(list_servers.fn(block, "CESNET-MCC", ACCESS))
    assert answer.failure is None and answer.project == ACCESS_PROJECT and len(answer.vms) == SERVERS


def test_a_hanging_site_costs_its_timeout_not_more(openstack, checkin):
    import time

    block = fedcloud(openstack, checkin, timeout_seconds=2)
    started = time.monotonic()
    result = asyncio.run(vm_inventory.fn(block, vo=ACCESS, sites=["CESNET-MCC", "BLACKHOLE"]))
    elapsed = time.monotonic() - started
    assert len(result.vms) == SERVERS and [f.kind for f in result.failures] == ["timeout"]
    assert elapsed < 2 + 8, f"the hanging site held the inventory for {elapsed:.1f} s"


def test_the_token_is_refreshed_mid_inventory_without_a_failure(openstack, checkin):
    """Check-in tokens of 6 s over a listing slowed to several seconds: the provider refreshes,
    every federation (ours and keystoneauth's own) uses the fresh token, no site fails.
    (Each request takes 1.5 s, less than the 3 s refresh margin, as latency is less than
    the margin in real life. A listing is 8 requests since the site is federated once
    (federation, rescoping, version, two server pages, images, …), so it lasts at least 12 s
    however fast the machine: the token, due 3 s after it was issued, is refreshed on the
    way; a busy machine only makes the listing longer.)"""
    checkin.configure(access_token_lifetime=6)
    block = fedcloud(openstack, checkin, timeout_seconds=10)
    block.checkin.margin_seconds = 3
    openstack.control("fault", site="CESNET-MCC", status=0, delay=1.5, count=80)  # every request
    before = checkin.refresh_grants()
    result = asyncio.run(vm_inventory.fn(block, vo=ACCESS, sites=["CESNET-MCC"]))
    assert result.failures == [] and len(result.vms) == SERVERS
    assert checkin.refresh_grants() - before >= 2
    assert openstack.stats()["CESNET-MCC"]["POST federation"] >= 2
    # (each refresh makes the pool federate again, with the fresh token, as asserted; the Keystone
    # tokens themselves live Keystone's own hour, as on a real site)


def test_each_site_is_federated_once_per_inventory(openstack, checkin):
    """OLD-CLOUD's project is discovered (`GET auth/projects` with the unscoped token), then that
    same unscoped Keystone token is rescoped: one federation with the Check-in token, not two.
    Flavor ids (Nova 2.1) and image ids are named with one listing each, whatever the VMs."""
    block = fedcloud(openstack, checkin)
    for run in (1, 2):
        result = asyncio.run(vm_inventory.fn(block, vo=ACCESS, sites=["OLD-CLOUD", "CESNET-MCC"]))
        assert not result.failures and len(result.vms) == 2 * SERVERS
        old, cesnet = openstack.stats()["OLD-CLOUD"], openstack.stats()["CESNET-MCC"]
        # (the project is looked up again each inventory; the unscoped token and its rescoping are kept)
        assert (old["POST federation"], old["GET auth/projects"], old["POST auth/tokens"]) == (1, run, 1)
        assert cesnet["POST federation"] == 1 and "GET auth/projects" not in cesnet
        # per inventory: one flavor listing where flavors are ids (2.1), none where embedded (2.79),
        # and one image listing (Glance pages of 1000: the site's 43 images in one)
        assert (old["GET flavors/detail"], old["GET images"]) == (run, run)
        assert "GET flavors/detail" not in cesnet and cesnet["GET images"] == run
        assert "GET flavor" not in old and "GET flavor" not in cesnet  # never one per VM
    assert {vm.flavor for vm in result.vms if vm.site == "OLD-CLOUD"} <= {"m1.small", "m1.medium", "m1.large",
                                                                          "g1.xlarge-t4"}


def test_a_region_is_honoured(openstack, checkin):
    """CESNET-MCC's catalog has RegionOne (first) and WAW4-1; `region` (site-wide, or per VO as
    CREODIAS's `auth: {region: WAW4-1}`) picks that region's compute and image endpoints."""
    info = openstack.info["sites"]["CESNET-MCC"]
    assert info["regions"] == ["RegionOne", "WAW4-1"]
    per_vo = Site(name="CESNET-MCC", endpoint=info["auth_url"], projects={ACCESS: ACCESS_PROJECT},
                  regions={ACCESS: "WAW4-1"})
    block = FedCloud(checkin=checkin.credentials(), sites=[per_vo], site_config_dirs=[], timeout_seconds=6)
    answer = asyncio.run(list_servers.fn(block, "CESNET-MCC", ACCESS))
    assert answer.failure is None and answer.region == "WAW4-1" and len(answer.vms) == SERVERS
    assert all(vm.name.startswith("vm-CESNET-MCC-WAW4-1-") for vm in answer.vms)
    stats = openstack.stats()["CESNET-MCC"]
    assert stats["GET servers/detail [WAW4-1]"] >= 1 and "GET servers/detail" not in stats  # novaclient pages on
    assert stats["GET images [WAW4-1]"] == 1
    unknown = Site(name="CESNET-MCC", endpoint=info["auth_url"], projects={ACCESS: ACCESS_PROJECT}, region="WAW3-2")
    block = FedCloud(checkin=checkin.credentials(), sites=[unknown], site_config_dirs=[], timeout_seconds=6)
    answer = asyncio.run(list_servers.fn(block, "CESNET-MCC", ACCESS))
    assert answer.failure.kind == "error" and "check the region" in answer.failure.message


def test_a_site_with_two_endpoints_answers_for_both(openstack, checkin, tmp_path):
    """Two site files with one `gocdb`, as fedcloud.srce.hr.yaml and fedcloud.srce.hr-2.yaml are
    in fedcloud-catchall-operations (tests/data/fedcloud/catchall-sites-be0106b), here pointing at
    two of the peer's Keystones: both endpoints are asked, each its own federation and row."""
    import yaml

    for file, peer_site in (("fedcloud.srce.hr.yaml", "CESNET-MCC"), ("fedcloud.srce.hr-2.yaml", "OLD-CLOUD")):
        info = openstack.info["sites"][peer_site]
        vos = [{"name": ACCESS, "auth": {"project_id": info["projects"][ACCESS]["id"]}}]
        if peer_site == "OLD-CLOUD":
            vos.append({"name": "vo.cessda-eric.eu", "auth": {"project_id": "739845e89e554283bf52e09350d855db"}})
        (tmp_path / file).write_text(yaml.safe_dump({"gocdb": "fedcloud.srce.hr", "endpoint": info["url"] + "/v3/",
                                                     "vos": vos}))
    block = FedCloud(checkin=checkin.credentials(), site_config_dirs=[str(tmp_path)], default_vo=ACCESS,
                     timeout_seconds=6)
    result = asyncio.run(vm_inventory.fn(block, sites=["fedcloud.srce.hr"]))
    assert len(result.sites) == 2 and not result.failures and len(result.vms) == 2 * SERVERS
    labels = {result.label(answer) for answer in result.sites}
    ports = {openstack.info["sites"][n]["url"].rsplit(":", 1)[1] for n in ("CESNET-MCC", "OLD-CLOUD")}
    assert labels == {f"fedcloud.srce.hr@127.0.0.1:{port}" for port in ports}
    assert all(f"| {label} | {SERVERS} |" in result.markdown() for label in labels)
    assert {row["site"] for row in result.table()} == labels
    assert openstack.stats()["CESNET-MCC"]["POST federation"] == openstack.stats()["OLD-CLOUD"]["POST federation"] == 1

    with pytest.raises(ValueError, match=r"site: site fedcloud.srce.hr has 2 Keystone endpoints and 2 of them list VO "
                                         r"vo.access.egi.eu; name one as NAME@KEYSTONE-HOST"):
        asyncio.run(list_servers.fn(block, "fedcloud.srce.hr"))
    one = sorted(labels)[0]
    assert asyncio.run(list_servers.fn(block, one)).failure is None
    # the only endpoint listing the VO is picked by the name alone (it then finds no VMs of it, and says so)
    answer = asyncio.run(list_servers.fn(block, "fedcloud.srce.hr", "vo.cessda-eric.eu"))
    assert answer.endpoint == openstack.info["sites"]["OLD-CLOUD"]["auth_url"]
