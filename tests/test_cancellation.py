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

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelling

from tasks.job_ledger import JobLedger

pytestmark = pytest.mark.prefect

SERVE = """
from flows.dataminer import dataminer_run
dataminer_run.serve(name="{name}", limit=1, pause_on_shutdown=False)
"""


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_cancel_from_the_api_runs_the_hook_in_another_process(prefect_db, dataminer, tmp_path):
    from prefect.settings import PREFECT_API_URL

    block_name = f"dm-cancel-{uuid.uuid4().hex[:6]}"
    dataminer.block().save(block_name, overwrite=True)
    name = f"cancel-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    server = subprocess.Popen([sys.executable, "-c", SERVE.format(name=name)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            deployment = wait_for(lambda: _deployment(client, f"dataminer-run/{name}"), 60, "the served deployment")
            run = client.create_flow_run_from_deployment(deployment.id, parameters={
                "process": "SLOW_COUNTER", "inputs": {"seconds": 60, "steps": 30}, "dataminer_block": block_name,
                "destination": str(tmp_path)})
            ledger = JobLedger(run.id)
            wait_for(lambda: asyncio.run(ledger.submissions()), 60, "the execution to be recorded")
            client.set_flow_run_state(run.id, Cancelling(), force=True)
            final = wait_for(lambda: _final(client, run.id), 60, "the run to end")
            (submission,) = asyncio.run(ledger.submissions())
            marked = wait_for(lambda: asyncio.run(ledger.cancel_requested(submission.key)), 30, "the hook")
        assert final == StateType.CANCELLED
        assert marked and submission.block_name == block_name
        assert dataminer.stats()["post-execute"] == 1
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()


def _deployment(client, name: str):
    try:
        return client.read_deployment_by_name(name)
    except Exception:
        return None


def _final(client, run_id):
    state = client.read_flow_run(run_id).state
    return state.type if state and state.is_final() else None
