"""CCP jobs for the engine: the adapter `watch` waits with.

OGC API – Processes has no bulk status request a client can trust to be filtered
(`GET /jobs` lists every job of the server on pygeoapi, whatever the filters), so each
job is polled with its own `GET /jobs/{id}`, concurrently, on one connection pool; the
engine's pacer keeps the number of those requests at or below a fixed loop's.

Cancelling is OGC's dismiss (`DELETE /jobs/{id}`). A job that answers 404 after this
adapter dismissed it is cancelled; a job that answers 404 otherwise was removed by the
server (expired, or dismissed by someone else) and ends failed, naming the job, so a
wait never spins until its deadline on a job that is gone. A 401 makes the engine call
`renew_credentials`: the VRE's UMA token is dropped and the next request gets a new one.

With `on_log`, each poll of a started job also reads what its stdout/stderr gained
(`LogFollower`, where the server links the logs), and a failed job's status carries the
last lines of its stderr (`detail["stderr"]`).

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from prefect_egi.tasks.ccp.client import CCPClient, CCPNoSuchJob, JobInfo
from prefect_egi.tasks.ccp.logs import LogFollower, LogSink
from prefect_egi.tasks.remote import JobState, JobStatus, RemoteJobAdapter, WatchPolicy

if TYPE_CHECKING:
    from prefect_egi.tasks.checkin.provider import TokenProvider

#: How CCP jobs are waited for unless a policy is given: the first look after 2 s (it
#: either sees a short method done or sees enough progress to place the end), then where
#: the reported progress places the end, never more status requests than a loop polling
#: every 5 s would send. 2 s, as DATAMINER_WAIT, not 1 s: a look at 1 s shows a single
#: coarse step, which places the end late (the second look must then wait for the budget),
#: and a job that starts before Execute answers (pygeoapi starts it first) can outrun that
#: estimate and cost a look more than the 5 s loop. `tests/benchmarks/bench_ccp.py`, 20
#: mixed jobs: 1 s → median latency 0.52 s up to 10 s, one job with 3 requests against the
#: loop's 2; 2 s → 0.40 s, no job above the loop.
CCP_WAIT = WatchPolicy(first_interval=2.0, request_budget=5.0)


class CCPAdapter(RemoteJobAdapter):
    """CCP (OGC API – Processes) jobs for the engine. Job id = the server's `jobID`."""

    service = "ccp"
    default_policy = CCP_WAIT

    def __init__(self, client: CCPClient, tokens: "TokenProvider | None" = None, concurrency: int = 8,
                 on_log: LogSink | None = None):
        self.client = client
        self.tokens = tokens
        self._limit = asyncio.Semaphore(concurrency)
        self.logs = LogFollower(client, on_log) if on_log else None
        self.dismissed: set[str] = set()
        self.last: dict[str, JobInfo] = {}

    async def _status(self, job_id: str) -> JobStatus:
        async with self._limit:
            try:
                info = await self.client.job(job_id)
            except CCPNoSuchJob:
                if job_id in self.dismissed:
                    return JobStatus(job_id, JobState.CANCELLED, None, "dismissed")
                return JobStatus(job_id, JobState.FAILED, None,
                                 f"job {job_id} is gone from {self.client.url} (404): the server removed it "
                                 "(expired, or dismissed by someone else)")
        self.last[job_id] = info
        status = info.as_job_status()
        if self.logs is not None:
            await self.logs.follow(info)
            if info.state is JobState.FAILED and self.logs.tail(job_id):
                status = replace(status, detail={**status.detail, "stderr": self.logs.tail(job_id)})
        return status

    async def poll(self, job_ids: Sequence[str]) -> Mapping[str, JobStatus]:
        """One `GET /jobs/{id}` per job, concurrently (at most `concurrency` at once)."""
        return dict(zip(job_ids, await asyncio.gather(*(self._status(j) for j in job_ids))))

    async def cancel(self, job_ids: Sequence[str]) -> Mapping[str, JobStatus]:
        """Dismiss each job (`DELETE /jobs/{id}`); a job already gone counts as dismissed."""

        async def one(job_id: str) -> JobStatus:
            async with self._limit:
                info = await self.client.dismiss(job_id)
            self.dismissed.add(job_id)
            if info is None or info.state is JobState.CANCELLED:
                return JobStatus(job_id, JobState.CANCELLED, None, info.message if info else "dismissed")
            return info.as_job_status()  # it ended before the dismissal reached it

        return dict(zip(job_ids, await asyncio.gather(*(one(j) for j in job_ids))))

    async def renew_credentials(self) -> bool:
        """After a 401: drop the VRE's UMA token so that the next call asks for a new one."""
        if self.tokens is None:
            return False
        self.tokens.invalidate()
        return True

    def job_link(self, job_id: str) -> str | None:
        return self.client.job_url(job_id)

    async def aclose(self) -> None:
        await self.client.aclose()
