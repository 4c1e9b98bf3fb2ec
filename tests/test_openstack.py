"""FedCloud VM inventory against the OpenStack peer (Keystone federation + Nova),
with the real keystoneauth1 and novaclient: healthy, VO-less, old, failing and
hanging sites in one run."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from conftest import ACCESS, ACCESS_PROJECT, SERVERS

from prefect_egi.tasks import FedCloud, Site, vm_inventory
from prefect_egi.tasks.fedcloud.client import SitePool, site_servers


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
    embedded = {vm.flavor for vm in cesnet.vms}
    assert all(not f.isdigit() and f for f in embedded)  # 2.79: flavor names embedded
    assert {vm.status for vm in cesnet.vms} >= {"ACTIVE", "SHUTOFF", "ERROR"}
    assert "(volume)" in {vm.image for vm in cesnet.vms}
    active = next(vm for vm in cesnet.vms if vm.status == "ACTIVE")
    assert active.addresses and active.created is not None and active.age.endswith("h")

    kinds = {f.site: f.kind for f in result.failures}
    assert kinds == {"IFCA-LCG2": "vo-not-supported", "BROKEN": "server-error", "BLACKHOLE": "timeout"}
    report = result.markdown()
    assert "10 VM(s) on 2 of 5 site(s)" in report and "| BLACKHOLE | 0 |" in report
    assert "no project for VO vo.access.egi.eu" in report


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


def test_a_user_without_the_vo_is_refused_or_finds_no_project(openstack, checkin):
    result = asyncio.run(vm_inventory.fn(fedcloud(openstack, checkin, "bob"), vo=ACCESS,
                                         sites=["CESNET-MCC", "OLD-CLOUD"]))
    kinds = {f.site: f.kind for f in result.failures}
    assert kinds == {"CESNET-MCC": "unauthorized", "OLD-CLOUD": "vo-not-supported"}
    assert "refused the Check-in token (HTTP 401)" in result.failures[0].message


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
    assert len(pool._sessions) == 1


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
    (Each request takes 0.5 s, less than the 3 s refresh margin, as latency is less than
    the margin in real life; the margin leaves room for a busy machine's delays too. The
    listing's ~20 requests, all slowed, then take over 10 s: a refresh every 2-3 s.)"""
    checkin.configure(access_token_lifetime=6)
    block = fedcloud(openstack, checkin, timeout_seconds=10)
    block.checkin.margin_seconds = 3
    openstack.control("fault", site="CESNET-MCC", status=0, delay=0.5, count=80)  # every request
    before = checkin.refresh_grants()
    result = asyncio.run(vm_inventory.fn(block, vo=ACCESS, sites=["CESNET-MCC"]))
    assert result.failures == [] and len(result.vms) == SERVERS
    assert checkin.refresh_grants() - before >= 2
    assert openstack.stats()["CESNET-MCC"]["POST federation"] >= 2
    # (the peer ends Keystone tokens with the Check-in token, so a request slowed past it may get
    # a 401 that keystoneauth answers by federating again — with the fresh token, as asserted)
