"""The Prefect UI, end to end: a real `prefect server start`, the `egi-process` work pool,
blocks saved against the local peers, `prefect deploy` from the repository's prefect.yaml,
a real worker running the `pipeline` deployment against the local peers — then headless Chromium (Debian's
`chromium`, over the DevTools protocol) checks that the run's logs and artifacts render, in
the UI Prefect links to (`/runs/flow-run/<id>`) and in the default one (`/v2/`).

Screenshots (and each page's DOM) stay under the test's tmp path and are copied to
`test-output/ui/` for CI. Skipped only when no Chromium is installed (`apt-get install -y chromium`).
"""

from __future__ import annotations

import pytest
from conftest import ACCESS, ACCESS_PROJECT, REPO, database_bytes
from prefect_stack import check_ui, deployed_run, find_chromium, tagged_processes

pytestmark = pytest.mark.prefect

CHROMIUM = find_chromium()
SCREENSHOTS = REPO / "test-output" / "ui"

DEPLOYMENT = "pipeline"
# the report (markdown), the VM table, and the engine's live progress of each wait
ARTIFACTS = ["egi-pipeline", "vm-inventory", "type:progress"]


def fedcloud_block(openstack, checkin):
    """The `fedcloud` block the deployment names: the peer's sites inline (CESNET's project id
    known, the rest found by name or failing), Alice's Check-in refresh token."""
    from prefect_egi.tasks import FedCloud, Site

    sites = [Site(name=name, endpoint=info["auth_url"],
                  projects={ACCESS: ACCESS_PROJECT} if name == "CESNET-MCC" else {})
             for name, info in openstack.info["sites"].items()]
    # per request: healthy sites answer well within 6 s on a busy machine; BLACKHOLE costs it once
    return FedCloud(default_vo=ACCESS, sites=sites, site_config_dirs=[], timeout_seconds=6,
                    checkin=checkin.credentials("alice"))


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (Debian: apt-get install -y chromium; "
                                             "or set CHROMIUM=/path/to/chromium)")
@pytest.mark.timeout(420)
def test_the_deployed_pipeline_shows_its_logs_and_artifacts_in_the_ui(tmp_path, openstack, checkin, dataminer,
                                                                      diracx):
    import uuid

    from prefect_egi.sandbox.dirac_pilot import BatchPilot

    credentials = checkin.credentials("alice")
    blocks = {"egi-checkin": credentials, "dataminer": dataminer.block(), "diracx": diracx.block(),
              "fedcloud": fedcloud_block(openstack, checkin)}
    secrets = [credentials.refresh_token.get_secret_value().encode(), dataminer.token.encode()]
    group = f"ui-{uuid.uuid4().hex[:6]}"
    parameters = {"work_items": {"inputs": {"items": 3, "prefix": "ui"}},
                  "grid": {"job": {"executable": "echo", "arguments": "processing %s", "job_group": group}},
                  "destination": str(tmp_path / "outputs")}
    leftovers: list[int] = []
    pilot = BatchPilot(diracx.pilot, group, tmp_path / "pilot").start()  # runs the grid jobs
    try:
        with deployed_run(tmp_path / "stack", deployment=DEPLOYMENT, blocks=blocks, parameters=parameters,
                          artifact_keys=ARTIFACTS, leftovers=leftovers, timeout=240) as run:
            assert run.state == "COMPLETED", f"{run.flow_run['state']}\n{run.log_text}"
            runs = run.stack.flow_runs_of(run.deployment["id"])
            assert [r["id"] for r in runs] == [run.flow_run["id"]]
            assert "dirac jobs done: 3 succeeded" in run.log_text

            ui = check_ui(run, tmp_path / "ui", artifact_keys=ARTIFACTS, chromium=CHROMIUM,
                          artifact_expect={"egi-pipeline": ["EGI pipeline", "ui-002", "3/3 DIRAC jobs done"],
                                           "vm-inventory": ["vm-CESNET-MCC-1", "vm-OLD-CLOUD-5"]},
                          log_expect=["Watching 3 dirac job(s)", "FedCloud site BLACKHOLE: timeout",
                                      "Finished in state Completed()"])
            stored = database_bytes(run.stack.database)
            stack_id, timings = run.stack.stack_id, run.stack.timings
    finally:
        pilot.stop()
    published = ui.publish(SCREENSHOTS, DEPLOYMENT, flow_run=run.flow_run["id"], stack_seconds=timings,
                           killed_outside_process_groups=leftovers)

    assert not ui.failures, "\n".join(ui.failures) + f"\nscreenshots: {SCREENSHOTS}"
    assert ui.pages and all(p.screenshot.stat().st_size > 10_000 for p in ui.pages)
    assert len(published) == len(ui.pages) + 1
    assert not ui.foreign_responses, f"the UI reached beyond 127.0.0.1: {ui.foreign_responses}"
    # secrets went into blocks (encrypted at rest), never into a page or the database in clear
    for secret in secrets:
        assert secret not in stored
        assert not [p.name for p in ui.pages if secret in p.dom.read_bytes()]
    # every process of the stack (server, worker, flow runs, Chromium) is gone
    assert not tagged_processes(stack_id)
