"""The DataMiner flow in real Prefect runs: artifacts, events, resume without
re-executing, cancellation hooks, and the token kept out of Prefect."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from prefect_egi.flows import dataminer_run
from prefect_egi.tasks import WatchPolicy, cancel_submissions, execute_process, wait_for_executions
from prefect_egi.tasks.job_ledger import JobLedger

pytestmark = pytest.mark.prefect


def saved_block(dataminer, **fields) -> str:
    name = f"dm-{uuid.uuid4().hex[:8]}"
    dataminer.block(**fields).save(name, overwrite=True)
    return name


def artifacts_of(flow_run_id) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def test_flow_end_to_end_with_artifacts_and_events(prefect_db, dataminer, tmp_path):
    from prefect.events.worker import EventsWorker

    table = tmp_path / "t.csv"
    table.write_text("x,y\n1,10\n2,20\n")
    name = saved_block(dataminer)
    state = dataminer_run(process="CSV_SUMMARY", inputs={"table": str(table)}, dataminer_block=name,
                                      destination=str(tmp_path / "out"), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.state == "succeeded" and len(result.files) == 4
    artifacts = artifacts_of(state.state_details.flow_run_id)
    kinds = {a.type: a for a in artifacts}
    assert kinds["progress"].data == 100.0
    markdown = kinds["markdown"].data
    assert markdown.startswith("# DataMiner CSV_SUMMARY: succeeded")
    assert "| Summary table | text/csv |" in markdown and "[summary.csv](" in markdown
    assert kinds["table"].type == "table" and '"state": "succeeded"' in kinds["table"].data
    assert dataminer.token not in str([a.data for a in artifacts])

    EventsWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        events = _events(client, "egi.dataminer.job.succeeded")
    assert any(e["resource"]["prefect.resource.id"].startswith("egi.dataminer.job.http://127.0.0.1") for e in events)
    assert any(r["prefect.resource.role"] == "flow-run" for e in events for r in e["related"])


def _events(client, name: str) -> list[dict]:
    import time

    deadline = time.monotonic() + 20
    while True:
        response = client._client.post("/events/filter", json={
            "filter": {"event": {"name": [name]}, "occurred": {"since": "2000-01-01T00:00:00Z"}}, "limit": 50})
        response.raise_for_status()
        events = response.json()["events"]
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def test_a_retried_flow_resumes_instead_of_executing_twice(prefect_db, dataminer):
    name = saved_block(dataminer)
    seen: list[str] = []

    @flow(retries=1, retry_delay_seconds=0)
    async def flaky(block_name: str) -> str:
        job = await execute_process(block_name, "SLOW_COUNTER", {"seconds": 1, "steps": 2})
        seen.append(job)
        if len(seen) == 1:
            raise RuntimeError("the worker hiccuped after submitting")
        final = await wait_for_executions(block_name, [job], WatchPolicy(first_interval=0.2))
        return final[job].state.value

    assert asyncio.run(flaky(name)) == "succeeded"
    assert len(seen) == 2 and seen[0] == seen[1]
    assert dataminer.stats()["post-execute"] == 1


def test_cancellation_hook_finds_and_marks_the_runs_executions(prefect_db, dataminer):
    name = saved_block(dataminer)
    captured = {}

    @flow
    async def submit_only(block_name: str) -> str:
        from prefect.context import FlowRunContext

        captured["run"] = FlowRunContext.get().flow_run.id
        return await execute_process(block_name, "SLOW_COUNTER", {"seconds": 1, "steps": 2})

    job = asyncio.run(submit_only(name))
    outcome = asyncio.run(cancel_submissions(captured["run"]))  # what the hook does, in this process
    assert list(outcome.values()) == [{job: "cancelled"}]
    ledger = JobLedger(captured["run"])
    (submission,) = asyncio.run(ledger.submissions())
    assert submission.job_ids == [job] and submission.block_name == name
    assert asyncio.run(ledger.cancel_requested(submission.key))


def test_missing_block_is_named(prefect_db):
    state = dataminer_run(process="FAST_ECHO", dataminer_block="nope", return_state=True)
    assert state.is_failed()
    assert "dataminer_block: there is no D4Science DataMiner block named 'nope'" in state.message


def test_token_in_query_mode_never_reaches_logs_or_the_database(prefect_db, dataminer, tmp_path, caplog, capfd):
    """Query mode puts the token in every URL; httpx logs every URL at INFO."""
    import logging

    from conftest import database_bytes
    from prefect.logging.handlers import APILogWorker

    name = saved_block(dataminer, token_mode="query")
    with caplog.at_level(logging.INFO, logger="httpx"):
        state = dataminer_run(process="FAST_ECHO", inputs={"text": "hello"}, dataminer_block=name,
                                          destination=str(tmp_path), return_state=True)
    assert state.is_completed(), state.message
    assert state.result().literals == {"result": "hello | tags= | scale=1"}
    APILogWorker.drain_all(timeout=10)
    captured = capfd.readouterr()
    assert "gcube-token=***" in caplog.text  # the URLs were logged, masked
    assert dataminer.token not in caplog.text + captured.out + captured.err
    assert dataminer.token.encode() not in database_bytes(prefect_db)


def test_a_wait_that_gave_up_on_an_unreachable_server_is_retried_and_finds_the_end(prefect_db, dataminer):
    """`dataminer-wait` retries when the server kept failing (WatchGaveUp, transient) — its
    retry condition reads the failed state of an async task (a coroutine there, unless read
    synchronously: the retry never fired before) — and never for a refused token."""
    name = saved_block(dataminer)
    quick = wait_for_executions.with_options(retry_delay_seconds=0)
    policy = WatchPolicy(first_interval=0.2, max_consecutive_errors=2, error_backoff=0.1)

    @flow
    async def wait_through_an_outage(block_name: str) -> str:
        job = await execute_process(block_name, "SLOW_COUNTER", {"seconds": 1, "steps": 2})
        dataminer.control("fault", kind="status", status=503, count=2)  # the first attempt gives up
        final = await quick(block_name, [job], policy)
        return final[job].state.value

    assert asyncio.run(wait_through_an_outage(name)) == "succeeded"

    @flow
    async def wait_with_a_refused_token(block_name: str) -> tuple[str, int]:
        job = await execute_process(block_name, "SLOW_COUNTER", {"seconds": 1, "steps": 2})
        dataminer.control("revoke", token=dataminer.token)
        state = await quick(block_name, [job], policy, return_state=True)
        async with get_client() as client:
            task_run = await client.read_task_run(state.state_details.task_run_id)
        return state.type.value, task_run.run_count

    assert asyncio.run(wait_with_a_refused_token(name)) == ("FAILED", 1)  # not retried: a new token is needed
