"""DIRAC tasks in real Prefect runs: a retried flow does not submit twice."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prefect import flow

from prefect_egi.tasks import DiracJob, WatchPolicy, submit_jobs, wait_for_jobs

pytestmark = pytest.mark.prefect


def test_a_retried_flow_does_not_submit_the_batch_twice(prefect_db, diracx):
    name = f"dx-{uuid.uuid4().hex[:8]}"
    diracx.block().save(name, overwrite=True)
    before = diracx.job_count()
    attempts: list[list[int]] = []

    @flow(retries=1, retry_delay_seconds=0)
    async def batch(block_name: str) -> dict:
        ids = await submit_jobs(block_name, [DiracJob(executable="echo", arguments="%s", parameters=list(range(45)))])
        attempts.append(ids)
        if len(attempts) == 1:
            raise RuntimeError("lost the worker after submitting")
        diracx.pilot.run_in_background(ids, start_after=0.2, duration=0.5)
        final = await wait_for_jobs(block_name, ids, WatchPolicy(first_interval=0.3, max_interval=1))
        return {k: v.state.value for k, v in final.items()}

    result = asyncio.run(batch(name))
    assert len(attempts) == 2 and attempts[0] == attempts[1]
    assert diracx.job_count() == before + 45  # 45 jobs on the server, not 90
    assert set(result.values()) == {"succeeded"}


def test_batch_flow_resubmits_failures_collects_outputs_and_reports(prefect_db, diracx, tmp_path):
    from prefect_egi.flows import dirac_batch
    from prefect_egi.sandbox.dirac_pilot import BatchPilot

    name = f"dx-{uuid.uuid4().hex[:8]}"
    diracx.block().save(name, overwrite=True)
    group = f"batch-{uuid.uuid4().hex[:6]}"
    seen: list[int] = []

    def fail_first(job_id: int) -> bool:  # the batch's two lowest ids fail; their replacements succeed
        seen.append(job_id)
        return job_id in sorted(set(seen))[:2]

    pilot = BatchPilot(diracx.pilot, group, tmp_path / "pilot", fail_first=fail_first).start()
    try:
        job = DiracJob(executable="echo", arguments="%s", parameters=list(range(5)), job_group=group)
        state = dirac_batch(job, diracx_block=name, destination=str(tmp_path / "out"),
                                        return_state=True)
    finally:
        pilot.stop()
    assert state.is_completed(), state.message
    report = state.result()
    assert (report.submitted, report.resubmitted, report.succeeded, report.failed) == (5, 2, 5, [])
    assert [(tmp_path / "out" / str(o.job_id) / "std.out").read_text() for o in report.outputs] == [
        f"{n}\n" for n in range(5)]  # what each job printed: echo %s
    assert len(report.outputs) == 5
    # a constant number of task runs, whatever the batch size: not one per job, not one per poll
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[state.state_details.flow_run_id])))
    names = sorted(r.name.rsplit("-", 1)[0] for r in runs)
    assert names == ["dirac-fetch-outputs", "dirac-resubmit", "dirac-run-batch", "dirac-submit", "dirac-wait",
                     "dirac-wait"]


def test_batch_flow_reports_jobs_that_keep_failing(prefect_db, diracx, tmp_path):
    from prefect_egi.flows import dirac_batch
    from prefect_egi.sandbox.dirac_pilot import BatchPilot

    name = f"dx-{uuid.uuid4().hex[:8]}"
    diracx.block().save(name, overwrite=True)
    group = f"bad-{uuid.uuid4().hex[:6]}"
    pilot = BatchPilot(diracx.pilot, group, tmp_path / "pilot", fail_first=lambda job_id: True).start()
    try:
        job = DiracJob(executable="false", parameters=[1, 2], job_group=group)
        report = dirac_batch(job, diracx_block=name, destination=str(tmp_path / "out"),
                                         max_resubmissions=1)
    finally:
        pilot.stop()
    assert (report.submitted, report.resubmitted, report.succeeded) == (2, 2, 0)
    assert {(f.status, f.minor_status) for f in report.failed} == {("Failed", "Application Finished With Errors")}
    assert "| failed job | status | minor status |" in report.markdown()


def test_batch_against_a_pilot_process_that_fails_a_share_of_runs(prefect_db, diracx, tmp_path):
    """The stand-alone pilot (what the sandbox runs) fails 30 % of all runs: every job ends
    Done or reported Failed, the counts agree with the pilot's, and nothing is submitted twice."""
    import json

    from prefect_egi.flows import dirac_batch
    from prefect_egi.sandbox.peers import start_peer

    name = f"dx-{uuid.uuid4().hex[:8]}"
    diracx.block().save(name, overwrite=True)
    group = f"rate-{uuid.uuid4().hex[:6]}"
    stats = tmp_path / "pilot-stats.json"
    info = diracx.process.info
    pilot = start_peer("pilot", "dirac_pilot.py", "--url", diracx.url, "--credentials",
                       diracx.vos[diracx.vo]["pilot"], "--keystore", info["keystore"], "--job-db", info["job_db"],
                       "--registry", info["registry"], "--workdir", str(tmp_path / "pilot"), "--job-group", group,
                       "--duration", "0.2", "--failure-rate", "0.3", "--seed", "7", "--stats", str(stats))
    before = diracx.job_count()
    try:
        job = DiracJob(executable="echo", arguments="%s", parameters=list(range(20)), job_group=group)
        report = dirac_batch(job, diracx_block=name, destination=str(tmp_path / "out"),
                                         max_resubmissions=2)
    finally:
        pilot.stop()
    outcomes = json.loads(stats.read_text())  # written again as the pilot exits: the final counts
    assert report.submitted == 20 and report.succeeded + len(report.failed) == 20
    assert outcomes["Failed"] > 0 and report.resubmitted > 0  # the rate did bite
    assert outcomes["Done"] == report.succeeded
    assert outcomes["Failed"] == report.resubmitted + len(report.failed)
    assert diracx.job_count() == before + 20 + report.resubmitted  # one new job per resubmission, no more
    assert len(report.outputs) == report.succeeded


def test_batch_flow_reports_an_unreadable_output_sandbox_and_keeps_the_rest(prefect_db, diracx, tmp_path):
    """One job's output sandbox is uploaded by another identity (bob of vo.second.eu, as a
    pilot running under the wrong credentials would): DiracX refuses it to the job's owner
    with 403 "Invalid PFN" (the real server). The `dirac-batch` flow completes; that job's
    outputs are reported unavailable with DiracX's reason, every other job's are fetched.
    Before, the fetch task failed (after its retries) and the flow with it: no report at all."""
    from diracx.api.jobs import create_sandbox

    from prefect_egi.flows import dirac_batch
    from prefect_egi.sandbox.dirac_pilot import BatchPilot, Pilot

    name = f"dx-{uuid.uuid4().hex[:8]}"
    diracx.block().save(name, overwrite=True)
    group = f"foreign-{uuid.uuid4().hex[:6]}"
    bob = Pilot(diracx.url, diracx.vos["vo.second.eu"]["pilot"])
    foreign: list[int] = []

    class WrongIdentityForOneJob(BatchPilot):
        async def attach_outputs(self, ids, api=None):
            victim = [j for j in ids if not foreign and j == min(ids)]
            foreign.extend(victim)
            await super().attach_outputs([j for j in ids if j not in victim], api)
            for job_id in victim:
                (self.workdir / "bob.txt").parent.mkdir(parents=True, exist_ok=True)
                (self.workdir / "bob.txt").write_text("bob's\n")
                async with bob.client() as bob_api:
                    pfn = await create_sandbox([self.workdir / "bob.txt"], client=bob_api)
                    await bob_api.jobs.assign_sandbox_to_job(job_id, f'"{pfn}"')

    pilot = WrongIdentityForOneJob(diracx.pilot, group, tmp_path / "pilot").start()
    try:
        job = DiracJob(executable="echo", arguments="%s", parameters=list(range(4)), job_group=group)
        state = dirac_batch(job, diracx_block=name, destination=str(tmp_path / "out"), return_state=True)
    finally:
        pilot.stop()
    assert state.is_completed(), state.message
    report = state.result()
    assert (report.submitted, report.succeeded, report.failed) == (4, 4, [])
    (victim,) = foreign
    by_job = {o.job_id: o for o in report.outputs}
    assert by_job[victim].error.startswith("DiracX refused it (HTTP 403: Invalid PFN")
    assert by_job[victim].path is None
    others = [j for j in report.jobs if j != victim]
    assert all(sorted(by_job[j].files) == ["std.err", "std.out"] and by_job[j].error is None for j in others)
    assert f"| {victim} | DiracX refused it (HTTP 403: Invalid PFN" in report.markdown()
