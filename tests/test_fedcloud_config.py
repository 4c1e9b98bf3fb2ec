"""FedCloud site descriptions as EGI keeps them, and the normalised VM row."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from prefect_egi.tasks import Site
from prefect_egi.tasks.fedcloud.client import load_site_configs, normalise, project_matches, site_from_config

DATA = Path(__file__).parent / "data" / "site-config"


def test_site_files_in_the_catchall_format_are_read():
    sites = {s.name: s for s in load_site_configs([DATA, "/nonexistent/folder"])}
    assert set(sites) == {"IFCA-LCG2", "CESGA"}
    ifca = sites["IFCA-LCG2"]
    assert ifca.endpoint == "https://api.cloud.ifca.es:5000/v3"
    assert ifca.identity_provider == "egi.eu" and ifca.protocol == "openid"
    assert ifca.projects == {"vo.access.egi.eu": "999f045cb1ff4684a15ebb338af69460",
                             "eosc-synergy.eu": "7a3a4cfc4c8e4f0c9a7d5e7f5b1c2d3e"}
    cesga = sites["CESGA"]
    assert cesga.endpoint.endswith(":5000/v3")  # /v3 added, as keystoneauth does
    assert cesga.projects == {"vo.notebooks.egi.eu": "3a8e9d966e644405bf19b536adf7743d"}  # no project id: discovered later


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
