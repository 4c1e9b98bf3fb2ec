"""DIRAC tasks in real Prefect runs: a retried flow does not submit twice."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prefect import flow

from tasks.dirac import DiracJob, submit_jobs, wait_for_jobs
from tasks.remote import WatchPolicy

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
