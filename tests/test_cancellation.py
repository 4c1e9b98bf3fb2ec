"""Cancelling a running DataMiner flow from the Prefect API: the runner kills the
flow process and runs `on_cancellation` in its own process, which finds the
execution in the flow run's ledger and marks it cancelled."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelling

from prefect_egi.tasks.job_ledger import JobLedger

pytestmark = [pytest.mark.prefect, pytest.mark.timeout(600)]  # room for the waits below on a busy machine

SERVE = """
from prefect_egi.flows.{module} import {flow}
{flow}.serve(name="{name}", limit=1, pause_on_shutdown=False)
"""


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def cancel_while_running(module: str, flow: str, parameters: dict, cwd, service: str | None = None,
                         cli: bool = False):
    """Serve `prefect_egi.flows.<module>:<flow>`, start a run, cancel it through the API once its remote
    work (of `service`, else its only work) is recorded; returns (final state type, the run's
    ledger, that submission). `cli`: cancel with `prefect flow-run cancel`, as a user would."""
    name = f"cancel-{uuid.uuid4().hex[:6]}"
    server = serve(module, flow, name, cwd)
    try:
        with get_client(sync_client=True) as client:
            flow_name = flow.replace("_", "-")
            deployment = wait_for(lambda: _deployment(client, f"{flow_name}/{name}"), 60, "the served deployment")
            run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
            ledger = JobLedger(run.id)
            def recorded():
                found = asyncio.run(ledger.submissions())
                return [s for s in found if service in (None, s.service)]

            (submission,) = wait_for(recorded, 180, "the remote work to be recorded")
            if cli:
                from prefect.settings import PREFECT_API_URL

                done = subprocess.run([str(Path(sys.executable).with_name("prefect")), "flow-run", "cancel",
                                       str(run.id)], capture_output=True, text=True, timeout=120,
                                      env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()})
                assert done.returncode == 0, done.stdout + done.stderr
            else:
                client.set_flow_run_state(run.id, Cancelling(), force=True)
            final = wait_for(lambda: _final(client, run.id), 180, "the run to end")
        return final, ledger, submission
    finally:
        stop(server)


def test_cancel_from_the_api_runs_the_hook_in_another_process(prefect_db, dataminer, tmp_path):
    block_name = f"dm-cancel-{uuid.uuid4().hex[:6]}"
    dataminer.block().save(block_name, overwrite=True)
    final, ledger, submission = cancel_while_running("dataminer", "dataminer_run", {
        "process": "SLOW_COUNTER", "inputs": {"seconds": 60, "steps": 30}, "dataminer_block": block_name,
        "destination": str(tmp_path)}, tmp_path)
    marked = wait_for(lambda: asyncio.run(ledger.cancel_requested(submission.key)), 30, "the hook")
    assert final == StateType.CANCELLED
    assert marked and submission.block_name == block_name
    assert dataminer.stats()["post-execute"] == 1


def serve(module: str, flow: str, name: str, cwd) -> subprocess.Popen:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    return subprocess.Popen([sys.executable, "-c", SERVE.format(module=module, flow=flow, name=name)], env=env,
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()


def test_cancel_from_the_api_kills_the_dirac_jobs(prefect_db, diracx, tmp_path):
    block_name = f"dx-cancel-{uuid.uuid4().hex[:6]}"
    diracx.block().save(block_name, overwrite=True)
    final, _, submission = cancel_while_running("dirac", "dirac_batch", {
        "job": {"executable": "sleep", "arguments": "%s", "parameters": [600, 601, 602]},
        "diracx_block": block_name, "destination": str(tmp_path)}, tmp_path)
    adapter = diracx.block().job_adapter()
    statuses = wait_for(lambda: _all_killed(adapter, submission.job_ids), 30, "the jobs to be killed")
    assert final == StateType.CANCELLED
    assert set(statuses.values()) == {"Killed"} and len(statuses) == 3


def _all_killed(adapter, job_ids):
    rows = asyncio.run(adapter.statuses(job_ids))
    statuses = {j: r["Status"] for j, r in rows.items()}
    return statuses if set(statuses.values()) == {"Killed"} else None


def _deployment(client, name: str):
    try:
        return client.read_deployment_by_name(name)
    except Exception:
        return None


def _final(client, run_id):
    state = client.read_flow_run(run_id).state
    return state.type if state and state.is_final() else None


def test_cancelling_the_pipeline_from_the_cli_kills_its_grid_jobs(prefect_db, checkin, dataminer, diracx, tmp_path):
    """The whole pipeline, served in another process and cancelled with `prefect flow-run cancel`
    while its DIRAC jobs wait (no pilot runs them): the hook finds them in the ledger and kills
    them, and marks the run's DataMiner execution cancelled."""
    suffix = uuid.uuid4().hex[:6]
    checkin.credentials().save(f"ck-{suffix}", overwrite=True)
    dataminer.block().save(f"dm-{suffix}", overwrite=True)
    diracx.block().save(f"dx-{suffix}", overwrite=True)
    final, ledger, submission = cancel_while_running("pipeline", "egi_pipeline", {
        "work_items": {"inputs": {"items": 3}}, "vms": False, "checkin_block": f"ck-{suffix}",
        "dataminer_block": f"dm-{suffix}", "diracx_block": f"dx-{suffix}", "destination": str(tmp_path)},
        tmp_path, service="dirac", cli=True)
    adapter = diracx.block().job_adapter()
    statuses = wait_for(lambda: _all_killed(adapter, submission.job_ids), 30, "the jobs to be killed")
    assert final == StateType.CANCELLED
    assert len(statuses) == 3
    (execution,) = [s for s in asyncio.run(ledger.submissions()) if s.service == "dataminer"]
    assert wait_for(lambda: asyncio.run(ledger.cancel_requested(execution.key)), 30, "the WPS execution marked")


def test_cancel_from_the_api_dismisses_the_ccp_job(prefect_db, ccp, tmp_path):
    """`ccp-run` served in another process, cancelled while its method runs: the hook, in
    yet another process, loads the saved CCP block from the ledger and dismisses the job
    (`DELETE /jobs/{id}`); the method sees the dismissal and stops."""
    from prefect_egi.tasks.ccp.client import CCPNoSuchJob

    block_name = f"ccp-cancel-{uuid.uuid4().hex[:6]}"
    ccp.block().save(block_name, overwrite=True)
    final, _, submission = cancel_while_running("ccp", "ccp_run", {
        "method": "ccp-sleep", "inputs": {"seconds": 600}, "ccp_block": block_name,
        "destination": str(tmp_path)}, tmp_path)
    (job_id,) = submission.job_ids

    async def dismissed() -> bool:
        async with ccp.client() as client:
            try:
                await client.job(job_id)
            except CCPNoSuchJob:
                stopped = await client.read_log(client.job_url(job_id) + "/logs/stdout.log")
                return "dismissed: stopping" in stopped.text
        return False

    assert final == StateType.CANCELLED
    assert wait_for(lambda: asyncio.run(dismissed()), 60, "the job to be dismissed and the method to stop")
    assert ccp.stats()["execute"] == 1 and ccp.stats()["dismiss"] >= 1
