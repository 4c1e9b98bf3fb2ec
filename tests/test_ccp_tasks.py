"""The CCP tasks against the real peer (pygeoapi behind a D4Science-like front accepting only
the VRE's UMA token, from the Check-in peer) and a real Prefect server: inputs checked before
anything is sent, results with `output.zip` unpacked, failures with the method's message,
401 → a new UMA token, a lost Execute found by its marker, a retried run resuming its job,
cancellation dismissing it. No timed asserts: every wait is on a condition."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from prefect import flow

from prefect_egi.tasks import (
    CCP,
    CCPInputError,
    CCPMethodFailed,
    WatchPolicy,
    cancel_submissions,
    collect_ccp_results,
    describe_ccp_method,
    execute_ccp_method,
    list_ccp_methods,
    run_ccp_method,
    wait_for_ccp_jobs,
)
from prefect_egi.tasks.remote import JobState

pytestmark = pytest.mark.prefect

QUICK = WatchPolicy(first_interval=0.2, max_interval=1.0, error_backoff=0.1, max_error_backoff=0.5)


def saved_block(ccp, **fields) -> str:
    name = f"ccp-{uuid.uuid4().hex[:8]}"
    ccp.block(**fields).save(name, overwrite=True)
    return name


def jobs_of(ccp, process: str) -> set[str]:
    """The ids of the jobs of `process` pygeoapi holds (what was really executed)."""

    async def listing() -> set[str]:
        async with ccp.client() as client:
            return {job.job_id for job in await client.jobs(process_id=process)}

    return asyncio.run(listing())


def test_lists_and_describes_methods_with_the_blocks_uma_token(prefect_db, ccp):
    block = ccp.block()
    assert {"ccp-write-files", "ccp-progress", "ccp-fail", "ccp-sleep"} <= {m.id for m in list_ccp_methods(block)}
    description = describe_ccp_method(block, "ccp-write-files")
    assert description.inputs["count"].schema == {"type": "integer", "minimum": 1, "maximum": 20}
    assert ccp.checkin.stats().get("grant urn:ietf:params:oauth:grant-type:uma-ticket", 0) >= 1


def test_a_method_end_to_end_gives_values_and_unpacks_output_zip(prefect_db, ccp, tmp_path):
    before = jobs_of(ccp, "ccp-write-files")
    result = run_ccp_method(ccp.block(), "ccp-write-files", {"count": 3, "prefix": "cells"},
                            destination=str(tmp_path), policy=QUICK)
    assert result.state == "succeeded" and result.values == {"files": ["cells_1.csv", "cells_2.csv", "cells_3.csv"],
                                                             "rows": 6}
    [archive] = result.files
    assert archive.name == "output.zip" and archive.error is None and Path(archive.path).is_file()
    folder = tmp_path / result.job_id
    assert sorted(result.unpacked) == ["ccp_data/cells_1.csv", "ccp_data/cells_2.csv", "ccp_data/cells_3.csv",
                                       "ccp_data/logs/method.log"]
    assert (folder / "ccp_data" / "cells_3.csv").read_text() == "3,0,0\n3,1,3\n3,2,6\n"
    assert "3 file(s)" not in result.markdown() and "4 file(s) unpacked from output.zip" in result.markdown()
    assert jobs_of(ccp, "ccp-write-files") - before == {result.job_id}  # executed once


def test_bad_inputs_are_refused_at_once_before_anything_is_sent(prefect_db, ccp):
    with pytest.raises(CCPInputError) as refused:
        execute_ccp_method(ccp.block(), "ccp-write-files", {"count": 0, "prefix": "a b", "cuont": 2})
    text = str(refused.value)
    assert "count" in text and "prefix" in text and "cuont" in text and len(refused.value.problems) == 3
    assert ccp.stats().get("execute", 0) == 0


def test_a_failed_method_raises_with_its_own_message(prefect_db, ccp, tmp_path):
    with pytest.raises(CCPMethodFailed, match="the sensor table is empty") as failed:
        run_ccp_method(ccp.block(), "ccp-fail", {"message": "the sensor table is empty"}, destination=str(tmp_path),
                       policy=QUICK)
    assert failed.value.state == "failed" and failed.value.job_id


def test_a_401_mid_wait_brings_a_new_uma_token_and_the_wait_goes_on(prefect_db, ccp):
    block = ccp.block()
    job_id = execute_ccp_method(block, "ccp-progress", {"steps": 3, "seconds": 0.3})
    grants = ccp.checkin.stats().get("grant urn:ietf:params:oauth:grant-type:uma-ticket", 0)
    ccp.control("fault", kind="status", status=401, count=1)
    final = wait_for_ccp_jobs(block, [job_id], QUICK)[job_id]
    assert final.state is JobState.SUCCEEDED
    assert ccp.checkin.stats().get("grant urn:ietf:params:oauth:grant-type:uma-ticket", 0) == grants + 1


def test_a_lost_execute_answer_is_found_by_its_marker_and_not_sent_again(prefect_db, ccp):
    """The gateway answers 504 after pygeoapi created the job: the task looks the job up by
    the marker the Execute carried and adopts it; nothing is executed twice."""
    before = jobs_of(ccp, "ccp-progress")
    ccp.control("fault", kind="execute", status=504, after_backend=True)

    @flow
    def one() -> str:
        return execute_ccp_method(ccp.block(), "ccp-progress", {"steps": 1, "seconds": 0})

    job_id = one()
    assert jobs_of(ccp, "ccp-progress") - before == {job_id}
    assert ccp.stats()["execute"] == 1


def test_a_lookup_that_failed_is_done_again_by_the_retry_before_any_resend(prefect_db, ccp):
    """The Execute's answer is lost AND the job listing is down: the attempt fails with the
    intent kept; the task's retry lists the jobs first, finds the job by its marker, adopts it."""
    before = jobs_of(ccp, "ccp-progress")
    ccp.control("fault", kind="execute", status=504, after_backend=True)
    ccp.control("fault", kind="jobs", status=503, count=4)

    @flow
    def one() -> str:
        return execute_ccp_method.with_options(retry_delay_seconds=0)(
            ccp.block(), "ccp-progress", {"steps": 1, "seconds": 0})

    job_id = one()
    assert jobs_of(ccp, "ccp-progress") - before == {job_id}
    assert ccp.stats()["execute"] == 1


def test_a_retried_flow_run_resumes_its_job_instead_of_executing_again(prefect_db, ccp):
    name = saved_block(ccp)
    before = jobs_of(ccp, "ccp-progress")
    seen: list[str] = []

    @flow(retries=1, retry_delay_seconds=0)
    async def flaky(block_name: str) -> str:
        job_id = await execute_ccp_method(block_name, "ccp-progress", {"steps": 2, "seconds": 0.1})
        seen.append(job_id)
        if len(seen) == 1:
            raise RuntimeError("the flow failed after submitting")
        return job_id

    job_id = asyncio.run(flaky(name))
    assert seen == [job_id, job_id]
    assert jobs_of(ccp, "ccp-progress") - before == {job_id}


def test_cancelling_the_flow_run_dismisses_its_job(prefect_db, ccp):
    name = saved_block(ccp)

    @flow
    async def start(block_name: str) -> tuple[str, str]:
        from prefect.context import get_run_context

        job_id = await execute_ccp_method(block_name, "ccp-sleep", {"seconds": 600})
        return str(get_run_context().flow_run.id), job_id

    run_id, job_id = asyncio.run(start(name))
    outcome = asyncio.run(cancel_submissions(uuid.UUID(run_id)))
    [(key, statuses)] = outcome.items()
    assert statuses == {job_id: "cancelled"}
    assert ccp.stats().get("dismiss") == 1

    async def gone() -> JobState:
        async with CCP.load(name).job_adapter() as adapter:
            return (await adapter.poll([job_id]))[job_id].state

    assert asyncio.run(gone()) is JobState.FAILED  # a new adapter did not dismiss it: "gone", named


def test_collecting_a_failed_jobs_results_gives_its_state_and_message(prefect_db, ccp, tmp_path):
    block = ccp.block()
    job_id = execute_ccp_method(block, "ccp-fail", {"message": "no data"})
    wait_for_ccp_jobs(block, [job_id], QUICK)
    result = collect_ccp_results(block, job_id, str(tmp_path))
    assert result.state == "failed" and "no data" in result.message and result.files == []


def test_the_notebooks_own_vre_token_is_used_as_it_is(prefect_db, ccp, monkeypatch):
    """In a D4Science notebook the hub put the VRE's UMA token and context in the environment
    (EGI-Federation/egi-notebooks-hub, d4science authenticator's `pre_spawn_start`)."""
    monkeypatch.setenv("D4SCIENCE_TOKEN", ccp.rpt())
    monkeypatch.setenv("D4SCIENCE_CONTEXT", ccp.context)
    grants = ccp.checkin.stats().get("grant urn:ietf:params:oauth:grant-type:uma-ticket", 0)
    block = CCP(url=ccp.url, issuer=ccp.checkin.issuer)
    assert block.vre() == ccp.context
    assert "ccp-progress" in {m.id for m in list_ccp_methods(block)}
    assert ccp.checkin.stats().get("grant urn:ietf:params:oauth:grant-type:uma-ticket", 0) == grants


def test_a_block_without_a_vre_says_how_to_name_one(prefect_db):
    with pytest.raises(ValueError, match="D4SCIENCE_CONTEXT is not set"):
        CCP().vre()
    with pytest.raises(ValueError, match="context"):
        CCP(context="Blue-Cloud2026Lab")


def run_logs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]


def test_what_the_method_prints_reaches_the_runs_log_and_a_failure_names_its_stderr(prefect_db, ccp, tmp_path):
    """The peer links each job's stdout/stderr (OGC's recommended `[ogc-rel:log]` job links);
    the wait reads what they gained at each poll and logs every line once, in order."""
    from prefect.logging.handlers import APILogWorker

    @flow
    def printing() -> None:
        run_ccp_method(ccp.block(), "ccp-progress", {"steps": 3, "seconds": 0.2}, destination=str(tmp_path),
                       policy=QUICK)
        run_ccp_method(ccp.block(), "ccp-fail", {"message": "the sensor table is empty"},
                       destination=str(tmp_path), policy=QUICK)

    state = printing(return_state=True)
    assert state.is_failed()
    with pytest.raises(CCPMethodFailed) as failed:
        state.result()
    assert "last lines of its stderr" in str(failed.value)
    assert any("RuntimeError: the sensor table is empty" in line for line in failed.value.stderr)
    APILogWorker.drain_all(timeout=10)
    logs = run_logs(state.state_details.flow_run_id)
    printed = [line.split(" stdout: ", 1)[1] for line in logs if " stdout: step" in line]
    assert printed == ["step 1/3", "step 2/3", "step 3/3"]  # each line once, in order
    assert any(" stderr: RuntimeError: the sensor table is empty" in line for line in logs)
