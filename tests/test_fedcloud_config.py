"""FedCloud site descriptions as EGI keeps them, and the normalised VM row.

The documents are real, copied unchanged from public sources (tests/data/fedcloud/README.md
and tests/data/site-config/README.md name each one's repository, path and commit)."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from prefect_egi.tasks import FedCloud, Site
from prefect_egi.tasks.fedcloud.client import (
    SitePool,
    load_site_configs,
    normalise,
    project_matches,
    site_from_config,
    site_servers,
)

DATA = Path(__file__).parent / "data" / "site-config"
FEDCLOUD = Path(__file__).parent / "data" / "fedcloud"
CATCHALL = FEDCLOUD / "catchall-sites-be0106b"
SAMPLES = FEDCLOUD / "openstack-api-samples"


def test_site_files_in_the_catchall_format_are_read():
    """tests/data/site-config: IFCA-LCG2.yaml (catch-all be0106b, `/v3/` with a trailing slash),
    SCAI.yaml (catch-all 95cf473, an endpoint without /v3), CESGA.yaml (catch-all f5502ef, whose
    bioisi entry misspells `project_id`)."""
    sites = {s.name: s for s in load_site_configs([DATA, "/nonexistent/folder"])}
    assert set(sites) == {"IFCA-LCG2", "CESGA", "SCAI"}
    ifca = sites["IFCA-LCG2"]
    assert ifca.endpoint == "https://api.cloud.ifca.es:5000/v3"
    assert ifca.identity_provider == "egi.eu" and ifca.protocol == "openid"
    assert ifca.projects["vo.access.egi.eu"] == "999f045cb1ff4684a15ebb338af69460"
    assert ifca.projects["eosc-synergy.eu"] == "3b9754ad8c6046b4aec43ec21abe7d8c" and len(ifca.projects) == 13
    assert sites["SCAI"].endpoint == "https://cloud.scai.fraunhofer.de:5000/v3"  # /v3 added, as keystoneauth does
    cesga = sites["CESGA"]
    assert cesga.endpoint == "https://fedcloud-osservices.egi.cesga.es:5000/v3"
    assert cesga.projects["vo.access.egi.eu"] == "3a8e9d966e644405bf19b536adf7743d"
    assert "bioisi" not in cesga.projects  # `project_ida`: no project id, discovered later by name


def test_every_endpoint_of_the_catchall_sites_is_listed():
    """The 25 site files of fedcloud-catchall-operations at be0106b: fedcloud.srce.hr.yaml and
    fedcloud.srce.hr-2.yaml share `gocdb: fedcloud.srce.hr` with other endpoints and projects.
    Keyed by name, one of them was dropped (24 of 25)."""
    block = FedCloud(site_config_dirs=[str(CATCHALL)])
    sites = block.all_sites()
    assert len(sites) == len(list(CATCHALL.glob("*.yaml"))) == 25
    srce = [s for s in sites if s.name == "fedcloud.srce.hr"]
    assert {s.endpoint for s in srce} == {"https://cloud.cro-ngi.hr:5000/v3", "https://faust.srce.hr:5000/v3"}
    assert {s.label for s in srce} == {"fedcloud.srce.hr@cloud.cro-ngi.hr", "fedcloud.srce.hr@faust.srce.hr"}
    by_host = {s.host: s for s in srce}
    assert by_host["faust.srce.hr"].projects["ops"] == "45d0f030ddca401e8b1a713360505ac7"
    assert by_host["cloud.cro-ngi.hr"].projects["ops"] == "c99c8b38569546008104fbaa12fe3aa9"
    # both endpoints get their own federation in the pool (it keys by endpoint, not by name)
    assert len({s.key for s in srce}) == 2
    # an inline site replaces the file's entry for the same endpoint, not the site's other endpoint
    faust = by_host["faust.srce.hr"]
    inline = Site(name=faust.name, endpoint=faust.endpoint, projects={"vo.access.egi.eu": "my-project"})
    merged = [s for s in FedCloud(site_config_dirs=[str(CATCHALL)], sites=[inline]).all_sites()
              if s.name == "fedcloud.srce.hr"]
    assert len(merged) == 2 and inline in merged


def test_one_endpoint_of_a_site_with_several_is_named_by_its_host():
    """How a user picks one endpoint (catch-all be0106b's two fedcloud.srce.hr files): the name
    alone means every endpoint of the site (an inventory asks both); `NAME@KEYSTONE-HOST` or the
    Keystone URL names one; for one site's VMs, the VO picks the endpoint when only one lists it."""
    block = FedCloud(site_config_dirs=[str(CATCHALL)])
    assert {s.host for s in block.choose(["fedcloud.srce.hr"])} == {"cloud.cro-ngi.hr", "faust.srce.hr"}
    assert [s.host for s in block.choose(["fedcloud.srce.hr@faust.srce.hr"])] == ["faust.srce.hr"]
    assert [s.host for s in block.choose(["https://cloud.cro-ngi.hr:5000/v3/"])] == ["cloud.cro-ngi.hr"]
    assert [s.host for s in block.choose(["fedcloud.srce.hr"], vo="vo.cessda-eric.eu", single=True)] == ["faust.srce.hr"]
    with pytest.raises(ValueError, match=r"site: site fedcloud.srce.hr has 2 Keystone endpoints and 2 of them list "
                                         r"VO ops; name one as NAME@KEYSTONE-HOST: fedcloud.srce.hr@cloud.cro-ngi.hr, "
                                         r"fedcloud.srce.hr@faust.srce.hr"):
        block.choose(["fedcloud.srce.hr"], vo="ops", single=True, field="site")
    with pytest.raises(ValueError, match=r"configured: .*CESNET-MCCG2, .*fedcloud.srce.hr@cloud.cro-ngi.hr, "
                                         r"fedcloud.srce.hr@faust.srce.hr"):
        block.choose(["NOWHERE"])
    # names stay enough where they are unambiguous
    assert [s.name for s in block.choose(["IFCA-LCG2", "BIFI"])] == ["IFCA-LCG2", "BIFI"]


def test_a_region_given_per_vo_and_an_application_credential_site():
    """CREODIAS.yaml (catch-all be0106b): `auth: v3applicationcredential` and VOs with only
    `auth: {region: WAW4-1}`. The region is kept per VO; the site is that site's failure,
    saying why, before anything is sent (the token source is not even asked)."""
    creodias = next(s for s in load_site_configs([CATCHALL]) if s.name == "CREODIAS")
    assert creodias.regions == {"ops": "WAW4-1", "vo.eosc-data-commons.eu": "WAW4-1"} and creodias.projects == {}
    assert creodias.region_for("ops") == "WAW4-1" and creodias.auth_type == "v3applicationcredential"

    def no_token() -> str:
        raise AssertionError("a token was asked for a site that cannot take it")

    answer = site_servers(SitePool(no_token), creodias, "ops")
    assert answer.failure and answer.failure.kind == "unsupported-auth" and answer.region == "WAW4-1"
    assert "v3applicationcredential" in answer.failure.message and "nothing was sent" in answer.failure.message


def test_a_region_given_for_the_whole_site():
    """INFN-CLOUD-CNAF.yaml at catch-all f3d0ce7: a top-level `region: sdds` (the schema's
    "OpenStack region to use if not the default one")."""
    cnaf = site_from_config(__import__("yaml").safe_load((FEDCLOUD / "INFN-CLOUD-CNAF.f3d0ce7.yaml").read_text()))
    assert cnaf.region == "sdds" and cnaf.region_for("ops") == "sdds" and cnaf.auth_type == "v3oidcaccesstoken"


def test_a_vo_listed_twice_keeps_its_first_entry_and_warns(caplog):
    """IISAS-FedCloud-cloud.yaml at catch-all e17d6fb ("add missing Synergy VOs"): covid19.eosc-synergy.eu
    and eosc-synergy.eu are listed twice with different projects. fedcloudclient's
    find_endpoint_and_project_id returns the first match; so do we, and say so."""
    path = FEDCLOUD / "IISAS-FedCloud-cloud.e17d6fb.yaml"
    with caplog.at_level(logging.WARNING, logger="prefect_egi.fedcloud"):
        site = site_from_config(__import__("yaml").safe_load(path.read_text()), str(path))
    assert site.projects["covid19.eosc-synergy.eu"] == "a22bbffb007745b2934bf308b0a4d186"
    assert site.projects["eosc-synergy.eu"] == "51f736d36ce34b9ebdf196cfcabd24ee"
    warned = [r.getMessage() for r in caplog.records]
    assert any("eosc-synergy.eu is listed more than once" in m and "d09a0c28397f4b41ad4bd62e7d63b51e" in m
               and "IISAS-FedCloud-cloud.e17d6fb.yaml" in m for m in warned), warned


def test_a_broken_site_file_names_itself(tmp_path):
    (tmp_path / "BROKEN.yaml").write_text("endpoint: https://x.example:5000/v3\n")
    with pytest.raises(ValueError, match=r"BROKEN.yaml: not a FedCloud site description .*gocdb"):
        load_site_configs([tmp_path])
    (tmp_path / "BROKEN.yaml").write_text("gocdb: [unclosed\n")
    with pytest.raises(ValueError, match="BROKEN.yaml: not valid YAML"):
        load_site_configs([tmp_path])


def test_plain_http_keystone_is_refused_outside_localhost():
    with pytest.raises(ValueError, match="endpoint must be an https://"):
        Site(name="X", endpoint="http://keystone.example.org:5000/v3")
    assert site_from_config({"gocdb": "L", "endpoint": "http://127.0.0.1:5000"}).endpoint == "http://127.0.0.1:5000/v3"


@pytest.mark.parametrize(("name", "matches"), [
    ("vo.access.egi.eu", True), ("VO:vo.access.egi.eu", True), ("vo.access.egi.eu-prod", True),
    ("other.vo", False), ("vo.access.egi.eu.evil", False), ("my-vo.access.egi.eu", False),
])
def test_projects_are_matched_to_a_vo_by_name(name, matches):
    assert project_matches({"id": "p", "name": name}, "vo.access.egi.eu") is matches


def test_a_nova_server_becomes_one_row_whatever_the_microversion():
    now = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
    embedded = {"id": "1", "name": "worker-1", "status": "ACTIVE", "created": "2026-11-24T09:00:00Z",
                "flavor": {"original_name": "m1.large", "vcpus": 4, "ram": 8192},
                "image": {"id": "img-1", "links": []},
                "addresses": {"private": [{"addr": "10.0.0.5", "version": 4, "OS-EXT-IPS:type": "fixed"},
                                          {"addr": "193.146.75.10", "version": 4, "OS-EXT-IPS:type": "floating"}]}}
    row = normalise("IFCA", "proj", embedded, now)
    assert (row.flavor, row.image, row.addresses, row.age) == ("m1.large", "img-1", ["10.0.0.5", "193.146.75.10"], "2d 03h")
    old = dict(embedded, flavor={"id": "f-42", "links": []}, image="", created=(now - timedelta(minutes=90)).isoformat())
    row = normalise("IFCA", "proj", old, now)
    assert (row.flavor, row.image, row.age) == ("f-42", "(volume)", "1h 30m")


def test_flavor_and_image_names_from_the_sites_listings():
    """Nova's own API samples (openstack/nova doc/api_samples: servers-details-resp.json at 8750c4e,
    a 2.1 server with flavor {"id": "1"}; flavors/flavors-detail-resp.json at 7e39f17) and Glance's
    (openstack/glance api-ref images-list-response.json at c028c2d): one listing of each names them."""
    from prefect_egi.tasks.fedcloud.client import flavor_names, image_names

    server = json.loads((SAMPLES / "nova-servers-details-v2.1.json").read_text())["servers"][0]
    flavors = flavor_names(json.loads((SAMPLES / "nova-flavors-detail.json").read_text())["flavors"])
    images = image_names(json.loads((SAMPLES / "glance-images-list.json").read_text()))
    assert flavors["1"] == "m1.tiny" and len(flavors) == 6
    assert images == {"1bea47ed-f6a9-463b-b423-14b9cca9ad27": "cirros-0.3.2-x86_64-disk",
                      "781b3762-9469-4cec-b58d-3349e5de4e9c": "F17-x86_64-cfntools"}
    row = normalise("SITE", "6f70656e737461636b20342065766572", server, flavors=flavors, images=images)
    assert row.flavor == "m1.tiny" and row.addresses == ["192.168.1.30"]
    assert row.image == "70a599e0-31e7-49b7-b260-868f441e862b"  # not in this project's listing: the id stays
    listed = dict(server, image={"id": "781b3762-9469-4cec-b58d-3349e5de4e9c", "links": []})
    assert normalise("SITE", "p", listed, flavors=flavors, images=images).image == "F17-x86_64-cfntools"


def test_selecting_sites_without_a_block():
    """The rule lives in one place (`select_sites`); the block and both tasks use it."""
    from prefect_egi.tasks.fedcloud.client import select_sites

    a = Site(name="A", endpoint="https://a.example/v3", projects={"vo": "1"})
    b1 = Site(name="B", endpoint="https://b1.example:5000/v3", projects={"vo": "2"})
    b2 = Site(name="B", endpoint="https://b2.example:8443/v3")
    assert b2.label == "B@b2.example:8443" and b1.label == "B@b1.example"
    assert select_sites([a, b1, b2], ["B", "B@b1.example"]) == [b1, b2]
    assert select_sites([a, b1, b2], ["B"], vo="vo", single=True) == [b1]
    assert select_sites([a, b1, b2], ["B@b2.example"]) == [b2]  # the host alone, where it is enough
    with pytest.raises(ValueError, match="sites: no FedCloud site is configured"):
        select_sites([], None)
