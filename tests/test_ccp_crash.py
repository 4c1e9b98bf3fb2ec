"""Crash and resume of `ccp-run`, on the whole system: a real Prefect server, the project's
`prefect.yaml` deployment `ccp`, a process worker, the CCP peer (pygeoapi behind the
D4Science-like front) and the Check-in peer issuing the VRE's UMA tokens.

The flow-run process is SIGKILLed while it waits for its CCP job. The worker reports the run
Crashed and runs the `on_crashed` hook, which leaves the job running (a crash is not a
cancellation) and says how to resume. `prefect flow-run retry <id>` runs the SAME flow run
again: it finds the job in its ledger and resumes watching it. Counted on the peer: one
Execute, one job of the method — the method never ran twice."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest
from prefect_stack import start_server, wait_until
from test_crash_resume import POOL, WORKER_ENV, all_logs, flow_process, flow_processes, parent_of, state

pytestmark = [pytest.mark.system, pytest.mark.prefect]


def waiting_for_ccp(stack, run_id: str, attempt: int) -> bool:
    """The run's `attempt`-th run is Running and inside its `ccp-wait` task."""
    run = stack.api("GET", f"/flow_runs/{run_id}")
    if run["state"]["type"] != "RUNNING" or run["run_count"] != attempt:
        return False
    tasks = stack.api("POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}})
    return any(t["name"].startswith("ccp-wait") and (t.get("state") or {}).get("type") == "RUNNING"
               and t["flow_run_run_count"] == attempt for t in tasks)


def jobs_of(ccp, process: str) -> set[str]:
    async def listing() -> set[str]:
        async with ccp.client() as client:
            return {job.job_id for job in await client.jobs(process_id=process)}

    return asyncio.run(listing())


@pytest.mark.timeout(900)
def test_sigkill_mid_wait_then_retry_resumes_the_same_ccp_job(ccp, tmp_path):
    before = jobs_of(ccp, "ccp-progress")
    stack = start_server(tmp_path / "stack")
    try:
        stack.create_work_pool(POOL)
        worker = stack.start_worker(POOL, wait=False, **WORKER_ENV)
        block_name = f"ccp-crash-{uuid.uuid4().hex[:6]}"
        stack.save_blocks({block_name: ccp.block()})
        deployment = stack.deploy("ccp")
        stack.wait_for_worker(worker, POOL)

        run_id = stack.run_deployment(deployment["id"], {
            "method": "ccp-progress", "inputs": {"steps": 30, "seconds": 1}, "ccp_block": block_name,
            "destination": str(tmp_path / "out")})["id"]
        wait_until(lambda: waiting_for_ccp(stack, run_id, 1), 150, "the run to wait for its CCP job", interval=0.5,
                   on_timeout=lambda: f"{state(stack, run_id)}\n" + "\n".join(all_logs(stack, run_id)))
        (job_id,) = jobs_of(ccp, "ccp-progress") - before

        pid = flow_process(stack, run_id)
        assert parent_of(pid) == worker.process.pid, "the flow-run process is the worker's child"
        os.kill(pid, signal.SIGKILL)
        crashed = stack.wait_for_flow_run(run_id, timeout=90)["state"]
        assert crashed["type"] == "CRASHED" and "-9" in (crashed["message"] or ""), crashed
        hook = wait_until(lambda: [m for m in all_logs(stack, run_id) if "LEFT RUNNING" in m], 90,
                          "the crash hook's report", interval=0.5,
                          on_timeout=lambda: "\n".join(all_logs(stack, run_id)))[0]
        assert job_id in hook and f"prefect flow-run retry {run_id}" in hook, hook

        said = stack.cli("flow-run", "retry", run_id)
        assert "scheduled for retry" in said, said
        run = stack.wait_for_flow_run(run_id, timeout=300)
        logs = all_logs(stack, run_id)
        assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n" + "\n".join(logs)
        assert run["run_count"] == 2  # the same flow run, run once more
        assert sum(f"Resuming CCP job {job_id}" in line for line in logs) == 1, logs
        assert jobs_of(ccp, "ccp-progress") - before == {job_id}, "the method ran once"
        assert ccp.stats()["execute"] == 1
        [report] = [a for a in stack.artifacts(run_id) if a.get("type") == "markdown"]
        assert report["data"].startswith("# CCP ccp-progress: succeeded") and job_id in report["data"]
        wait_until(lambda: not flow_processes(stack), 120, "the flow-run processes to exit", interval=0.5,
                   on_timeout=lambda: str(flow_processes(stack)))
    finally:
        leftovers = stack.stop()
    assert not leftovers, f"processes left behind: {leftovers}"
