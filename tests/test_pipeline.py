"""`egi-pipeline` end to end against the local peers: Check-in → DataMiner → DIRAC →
DataMiner → FedCloud → report; a retried run skips its finished stages; the algorithm
stages on CCP instead (pygeoapi behind the D4Science-like front), with no DataMiner block."""

from __future__ import annotations

import uuid

import pytest
from conftest import ACCESS, ACCESS_PROJECT, SERVERS

from prefect_egi.flows import GridJobs, Summary, WorkItems, egi_pipeline
from prefect_egi.tasks import DiracJob, FedCloud, Site

pytestmark = pytest.mark.prefect


@pytest.fixture
def blocks(prefect_db, checkin, dataminer, diracx, openstack) -> dict[str, str]:
    """The pipeline's blocks, saved under fresh names, pointing at the session's peers."""
    suffix = uuid.uuid4().hex[:8]
    credentials = checkin.credentials()
    credentials.save(f"checkin-{suffix}", overwrite=True)
    dataminer.block().save(f"dm-{suffix}", overwrite=True)
    diracx.block().save(f"dx-{suffix}", overwrite=True)
    sites = [Site(name=n, endpoint=s["auth_url"], projects={ACCESS: ACCESS_PROJECT} if n == "CESNET-MCC" else {})
             for n, s in openstack.info["sites"].items() if n in ("CESNET-MCC", "OLD-CLOUD", "IFCA-LCG2")]
    FedCloud(checkin=credentials, default_vo=ACCESS, sites=sites, site_config_dirs=[], timeout_seconds=5,
             ).save(f"fc-{suffix}", overwrite=True)
    return {"checkin_block": f"checkin-{suffix}", "dataminer_block": f"dm-{suffix}",
            "diracx_block": f"dx-{suffix}", "fedcloud_block": f"fc-{suffix}"}


@pytest.fixture
def ccp_blocks(prefect_db, checkin, ccp, diracx) -> dict[str, str]:
    """The blocks of a CCP-mode run without VMs: Check-in, CCP, DiracX — and a DataMiner block
    name that exists nowhere (a CCP-mode run must not load one)."""
    suffix = uuid.uuid4().hex[:8]
    checkin.credentials().save(f"checkin-{suffix}", overwrite=True)
    ccp.block().save(f"ccp-{suffix}", overwrite=True)
    diracx.block().save(f"dx-{suffix}", overwrite=True)
    return {"checkin_block": f"checkin-{suffix}", "ccp_block": f"ccp-{suffix}", "diracx_block": f"dx-{suffix}",
            "dataminer_block": f"no-dataminer-{suffix}", "algorithms": "ccp", "vms": False}


CCP_ITEMS = WorkItems(process="ccp-grid-splitter", inputs={"items": 3, "prefix": "ccp"})
CCP_SUMMARY = Summary(process="ccp-csv-summary")


def grid_jobs(group: str) -> GridJobs:
    return GridJobs(job=DiracJob(executable="echo", arguments="processing %s", job_group=group),
                    max_resubmissions=2)


def artifacts_of(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in found if a.key}


def test_the_pipeline_chains_every_service(blocks, checkin, dataminer, diracx, tmp_path, prefect_db):
    from conftest import database_bytes

    from prefect_egi.sandbox.dirac_pilot import BatchPilot

    group = f"pipe-{uuid.uuid4().hex[:6]}"
    seen: list[int] = []
    pilot = BatchPilot(diracx.pilot, group, tmp_path / "pilot",
                       fail_first=lambda j: seen.append(j) or j == min(seen)).start()  # the first job fails once
    try:
        state = egi_pipeline(work_items=WorkItems(inputs={"items": 4, "prefix": "cell"}), grid=grid_jobs(group),
                             destination=str(tmp_path / "out"), return_state=True, **blocks)
    finally:
        pilot.stop()
    assert state.is_completed(), state.message
    report = state.result()
    assert report.identity.username == "alice" and ACCESS in report.identity.vos
    assert report.work_items.items == ["cell-000", "cell-001", "cell-002", "cell-003"]
    assert (report.grid.submitted, report.grid.succeeded, report.grid.resubmitted) == (4, 4, 1)
    assert [(tmp_path / "out" / "grid" / str(j) / "std.out").read_text() for j in report.grid.jobs] == [
        f"processing cell-00{n}\n" for n in range(4)]  # what each grid job printed
    assert report.summary is not None and any(f.name == "summary.csv" and f.path for f in report.summary.files)
    assert len(report.vms.vms) == 2 * SERVERS and [f.site for f in report.vms.failures] == ["IFCA-LCG2"]

    shown = artifacts_of(state.state_details.flow_run_id)
    assert {"egi-pipeline", "vm-inventory", "vm-inventory-sites"} <= set(shown)
    text = shown["egi-pipeline"].data
    assert "| cell-003 |" in text and report.work_items.execution.status_location in text
    # the grid table says what each job printed (the first line of its std.out)
    for n, job_id in enumerate(report.grid.jobs):
        assert f"| cell-00{n} | {job_id} | `processing cell-00{n}` |" in text
    stored = database_bytes(prefect_db)
    for secret in (checkin_token(blocks), dataminer.token):
        assert secret.encode() not in stored


def checkin_token(blocks) -> str:
    from prefect_egi.tasks import CheckinCredentials

    return CheckinCredentials.load(blocks["checkin_block"]).refresh_token.get_secret_value()


def test_a_retried_pipeline_run_skips_the_stages_it_finished(blocks, dataminer, diracx, tmp_path):
    """The summary's Execute fails once (HTTP 503; an Execute is never resent blindly), so the run
    fails after submitting the grid; its retry reuses the persisted stages: one work-items execution,
    one batch of grid jobs on the server, and the summary run again."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from prefect_egi.sandbox.dirac_pilot import BatchPilot

    group = f"retry-{uuid.uuid4().hex[:6]}"
    # the summary's Execute fails on the server (a 500: an answer, not a refusal by a front — a 503
    # would be sent again within the task); the flow's retry re-runs only that stage
    dataminer.control("fault", kind="post-execute", status=500, count=1, after=1)
    jobs_before = diracx.job_count()
    pilot = BatchPilot(diracx.pilot, group, tmp_path / "pilot").start()
    try:
        state = egi_pipeline.with_options(retries=1, retry_delay_seconds=0)(
            work_items=WorkItems(inputs={"items": 3}), grid=grid_jobs(group), vms=False,
            destination=str(tmp_path / "out"), return_state=True, **blocks)
    finally:
        pilot.stop()
    assert state.is_completed(), state.message
    report = state.result()
    assert report.summary is not None and report.grid.succeeded == 3
    assert dataminer.stats().get("post-execute") == 3  # work items once, summary twice (500, then again)
    assert diracx.job_count() == jobs_before + 3       # the grid was not submitted a second time

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[state.state_details.flow_run_id])))
    stages = {}
    for task_run in runs:
        if task_run.name.startswith("pipeline-"):
            stages.setdefault(task_run.name.rsplit("-", 1)[0], []).append(task_run.state.name)
    assert sorted(stages["pipeline-grid"]) == ["Cached", "Completed"]
    assert sorted(stages["pipeline-work-items"]) == ["Cached", "Completed"]
    assert sorted(stages["pipeline-summary"]) == ["Completed", "Failed"]


def test_missing_blocks_are_named_before_anything_runs(prefect_db, dataminer):
    state = egi_pipeline(dataminer_block="nope", ccp_block="nope-too", return_state=True)
    assert state.is_failed()
    assert "dataminer_block: there is no D4Science DataMiner block named 'nope'" in state.message
    assert "ccp_block" not in state.message  # the DataMiner mode needs no CCP block
    assert not dataminer.stats().get("post-execute")


def test_the_pipeline_parameters_render_as_a_form():
    schema = egi_pipeline.parameters.model_dump()
    properties = schema["properties"]
    assert {"work_items", "grid", "summary", "vms", "vo", "destination", "algorithms", "ccp_block"} <= set(
        properties)
    assert "The DataMiner algorithm or CCP method that lists the work items" in properties["work_items"][
        "description"]
    # a dropdown of the two services, DataMiner by default; the CCP block's name a plain text field
    assert properties["algorithms"]["enum"] == ["dataminer", "ccp"] and properties["algorithms"]["default"] == "dataminer"
    assert properties["algorithms"]["type"] == "string" and "D4Science CCP" in properties["algorithms"]["description"]
    assert properties["ccp_block"] == {"default": "ccp", "title": "ccp_block", "type": "string",
                                       "description": "Name of the D4Science CCP block (algorithms = ccp).",
                                       "position": properties["ccp_block"]["position"]}
    definitions = schema["definitions"]
    assert {"WorkItems", "GridJobs", "Summary", "DiracJob"} <= set(definitions)
    assert definitions["GridJobs"]["properties"]["max_resubmissions"]["maximum"] == 10
    assert Summary().process == "CSV_SUMMARY"


def test_the_results_table_leaves_out_a_job_whose_sandbox_was_not_fetched_whole(tmp_path):
    """A job whose output sandbox DiracX refused part-way (`JobOutput.error`, files of an
    earlier sandbox on disk) has no row: its byte count would be a partial one."""
    from prefect_egi.flows.pipeline import _results_table
    from prefect_egi.tasks import DiracBatchReport, JobOutput

    for job_id in (7, 8):
        (tmp_path / str(job_id)).mkdir()
        (tmp_path / str(job_id) / "std.out").write_text("12345")
    report = DiracBatchReport(submitted=2, jobs=[7, 8], resubmitted=0, succeeded=2, destination=str(tmp_path),
                              outputs=[JobOutput(job_id=7, path=str(tmp_path / "7"), files=["std.out"]),
                                       JobOutput(job_id=8, path=str(tmp_path / "8"), files=["std.out"],
                                                 error="DiracX refused it (HTTP 403: Invalid PFN)")])
    table = _results_table(["a", "b"], report, tmp_path / "table.csv").read_text().splitlines()
    assert table == ["item_index,job_id,output_bytes", "0,7,5"]


def test_the_pipeline_runs_its_algorithms_on_ccp(ccp_blocks, ccp, diracx, tmp_path):
    """Work items from the CSV the CCP method wrote into output.zip (the first CSV: no
    `work_items.output`), one DIRAC job each, the grid table sent to the summary method as a
    string value: its totals are those of the grid's jobs. No DataMiner block exists."""
    from pathlib import Path

    from prefect_egi.sandbox.dirac_pilot import BatchPilot
    from prefect_egi.tasks import CCPResult

    group = f"ccp-{uuid.uuid4().hex[:6]}"
    jobs_before = diracx.job_count()
    pilot = BatchPilot(diracx.pilot, group, tmp_path / "pilot").start()
    try:
        state = egi_pipeline(work_items=CCP_ITEMS, summary=CCP_SUMMARY, grid=grid_jobs(group),
                             destination=str(tmp_path / "out"), return_state=True, **ccp_blocks)
    finally:
        pilot.stop()
    assert state.is_completed(), state.message
    report = state.result()
    listed = report.work_items.execution
    assert isinstance(listed, CCPResult) and listed.process == "ccp-grid-splitter"
    assert "ccp_data/work_items.csv" in listed.unpacked
    assert report.work_items.items == ["ccp-000", "ccp-001", "ccp-002"]
    assert (report.grid.submitted, report.grid.succeeded) == (3, 3) and diracx.job_count() == jobs_before + 3

    summary = report.summary
    assert isinstance(summary, CCPResult) and summary.process == "ccp-csv-summary"
    output_bytes = sum(f.stat().st_size for o in report.grid.outputs for f in Path(o.path).rglob("*") if f.is_file())
    assert summary.values["rows"] == 3
    assert summary.values["totals"] == {"item_index": 0 + 1 + 2, "job_id": sum(report.grid.jobs),
                                        "output_bytes": output_bytes}
    written = Path(summary.folder) / "ccp_data" / "summary.csv"
    assert written.read_text().splitlines()[0] == "column,count,sum" and f"job_id,3,{sum(report.grid.jobs)}" in \
        written.read_text()
    assert ccp.stats().get("execute") == 2

    text = artifacts_of(state.state_details.flow_run_id)["egi-pipeline"].data
    assert f"| work items | 3 from CCP ccp-grid-splitter | <{listed.status_url}> |" in text
    assert (f"| summary | CCP ccp-csv-summary: 1 file(s), rows = `3`, totals = `{summary.values['totals']}` "
            f"| <{summary.status_url}> |") in text
    assert "`ccp_data/work_items.csv` → " in text and "| ccp-002 |" in text and "DataMiner" not in text


def test_a_csv_the_ccp_method_did_not_write_is_a_clear_error(ccp_blocks, ccp, diracx, tmp_path):
    """`work_items.output` names no CSV the method produced: the error names the parameter and
    lists what the method did produce; no grid job is submitted."""
    jobs_before = diracx.job_count()
    state = egi_pipeline(work_items=CCP_ITEMS.model_copy(update={"output": "items.csv"}), summary=None,
                         grid=grid_jobs("never"), destination=str(tmp_path / "out"), return_state=True,
                         **ccp_blocks)
    assert state.is_failed()
    assert ("work_items.output: CCP ccp-grid-splitter produced no CSV named 'items.csv'; "
            "its files: ['ccp_data/work_items.csv']; its value outputs (a list or CSV text): "
            "['items']") in state.message
    assert ccp.stats().get("execute") == 1 and diracx.job_count() == jobs_before


def test_a_dataminer_algorithm_name_in_ccp_mode_names_the_parameter_and_the_vres_methods(ccp_blocks, ccp, tmp_path):
    """`algorithms=ccp` with the DataMiner defaults (work_items.process = GRID_SPLITTER)."""
    state = egi_pipeline(summary=None, grid=grid_jobs("never"), destination=str(tmp_path / "out"),
                         return_state=True, **ccp_blocks)
    assert state.is_failed()
    assert (f"work_items.process: CCP has no method 'GRID_SPLITTER' in the VRE {ccp.context}; its methods: "
            "['ccp-csv-summary', 'ccp-fail', 'ccp-grid-splitter', ") in state.message
    assert not ccp.stats().get("execute")


def test_a_ccp_mode_run_names_a_missing_ccp_block_and_no_dataminer_block(prefect_db, ccp, dataminer):
    state = egi_pipeline(algorithms="ccp", ccp_block="nope", dataminer_block="nope-too", return_state=True)
    assert state.is_failed()
    assert "ccp_block: there is no D4Science CCP block named 'nope'" in state.message
    assert "dataminer_block" not in state.message
    assert not ccp.stats().get("execute") and not dataminer.stats().get("post-execute")


def test_work_items_from_a_ccp_value_output_a_list_or_csv_text():
    from prefect_egi.flows.pipeline import _items_from
    from prefect_egi.tasks import CCPResult

    result = CCPResult(process="m", job_id="j", status_url="http://ccp/jobs/j", state="succeeded",
                       values={"names": ["a", "b"], "rows": [{"item": "x"}, {"item": "y"}],
                               "table": "item,start\nc,0\nd,1\n", "count": 2})
    assert _items_from(result, "names", "item") == ["a", "b"]
    assert _items_from(result, "rows", "item") == ["x", "y"]
    assert _items_from(result, "table", "item") == ["c", "d"]
    with pytest.raises(ValueError, match="the value output 'count' of CCP m is a int, neither a list nor CSV"):
        _items_from(result, "count", "item")
    with pytest.raises(ValueError, match=r"work_items.column: table has no column 'cell'; it has \['item', 'start'\]"):
        _items_from(result, "table", "cell")
    with pytest.raises(ValueError, match=r"produced no CSV; its files: \[\]; its value outputs .*\['names', 'rows', "
                                         r"'table'\]"):
        _items_from(result, None, "item")


def test_the_ccp_summary_method_takes_the_table_as_text_and_a_table_without_rows(prefect_db, ccp, tmp_path):
    """The peer's ccp-csv-summary on its own: a CSV string in, summary.csv in output.zip and the
    totals out; a header without rows (no grid job finished) sums to zero rather than failing."""
    from prefect_egi.tasks import WatchPolicy, run_ccp_method

    quick = WatchPolicy(first_interval=0.2, max_interval=1.0)
    result = run_ccp_method(ccp.block(), "ccp-csv-summary", {"table": "a,b,name\n1,2.5,x\n3,4,y\n"},
                            destination=str(tmp_path), policy=quick)
    assert result.values == {"rows": 2, "totals": {"a": 4, "b": 6.5}}
    assert result.unpacked == ["ccp_data/summary.csv"]
    assert (tmp_path / result.job_id / "ccp_data" / "summary.csv").read_text() == "column,count,sum\na,2,4\nb,2,6.5\n"
    empty = run_ccp_method(ccp.block(), "ccp-csv-summary", {"table": "item_index,job_id,output_bytes\n"},
                           destination=str(tmp_path), policy=quick)
    assert empty.values == {"rows": 0, "totals": {"item_index": 0, "job_id": 0, "output_bytes": 0}}
