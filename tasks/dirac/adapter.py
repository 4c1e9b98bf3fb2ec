"""DIRAC jobs for the engine: one paged `search` per poll cycle for every job of a batch.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from DIRACCommon.WorkloadManagementSystem.Client import JobStatus as dirac_status

from prefect_egi.tasks.dirac.client import DiracxClient
from prefect_egi.tasks.remote import JobState, JobStatus, RemoteJobAdapter

MAX_PER_PAGE = 10_000  # DiracX caps search pages here

#: how each of DIRAC's final statuses ended, in the engine's terms (DIRAC says WHICH are final)
DIRAC_ENDINGS = {
    dirac_status.DONE: JobState.SUCCEEDED,
    dirac_status.COMPLETED: JobState.SUCCEEDED,  # the payload succeeded; DIRAC still runs its pending requests
    dirac_status.FAILED: JobState.FAILED,
    dirac_status.KILLED: JobState.CANCELLED,
    dirac_status.DELETED: JobState.CANCELLED,
}
#: DIRAC's statuses once the payload has started (the earlier ones are queued)
PAYLOAD_STARTED = {dirac_status.RUNNING, dirac_status.STALLED, dirac_status.COMPLETING}


def _dirac_states() -> dict[str, JobState]:
    """Every DIRAC job status, final exactly when DIRAC says so (`JOB_FINAL_STATES`, and
    `JOB_REALLY_FINAL_STATES` for Deleted). A final status this table does not know ended,
    but not as a success: FAILED (so it is reported, and resubmitted if asked)."""
    final = set(dirac_status.JOB_FINAL_STATES) | set(dirac_status.JOB_REALLY_FINAL_STATES)
    return {status: (DIRAC_ENDINGS.get(status, JobState.FAILED) if status in final
                     else JobState.RUNNING if status in PAYLOAD_STARTED else JobState.QUEUED)
            for status in dirac_status.JOB_STATES}


DIRAC_STATES = _dirac_states()


class DiracAdapter(RemoteJobAdapter):
    """DIRAC jobs for the engine: one paged `search` per poll for every job."""

    service = "dirac"

    #: a job absent from this many searches in a row is reported Failed ("Missing"),
    #: so it is resubmitted instead of waited for until the deadline: DiracX commits a
    #: submission after answering it, so ids can come back for jobs a failed commit
    #: never kept. Two absences are tolerated: a search can overtake that commit.
    MISSING_AFTER = 3

    def __init__(self, client: DiracxClient):
        self.client = client
        self.searches = 0  # round trips, for tests and benchmarks
        self.absent: dict[str, int] = {}  # job id → searches in a row that did not find it

    async def renew_credentials(self) -> bool:
        return await asyncio.to_thread(self.client.expire_access_token)

    async def statuses(self, job_ids: Sequence[str | int]) -> dict[str, dict[str, Any]]:
        """Status rows of many jobs, walking pages beyond the server's cap."""
        ids = [int(j) for j in job_ids]
        per_page = max(1, min(len(ids), MAX_PER_PAGE))

        async def search(api: Any) -> dict[str, dict[str, Any]]:
            from azure.core.exceptions import HttpResponseError

            rows: dict[str, dict[str, Any]] = {}
            page = 1
            while True:
                self.searches += 1
                try:
                    found = await api.jobs.search(
                        parameters=["JobID", "Status", "MinorStatus", "ApplicationStatus", "Site"],
                        search=[{"parameter": "JobID", "operator": "in", "values": ids}],
                        page=page, per_page=per_page)
                except HttpResponseError as error:
                    if error.status_code == 416 and page > 1:  # past the last page: the rows are all in
                        return rows
                    raise
                rows.update({str(r["JobID"]): r for r in found})
                if len(found) < per_page or len(rows) >= len(ids):
                    return rows
                page += 1

        return await self.client.call(search)

    async def poll(self, job_ids: Sequence[str]) -> Mapping[str, JobStatus]:
        rows = await self.statuses(job_ids)
        answer = {job: self._status(job, row) for job, row in rows.items()}
        for job in map(str, job_ids):
            if job in rows:
                self.absent.pop(job, None)
                continue
            self.absent[job] = self.absent.get(job, 0) + 1
            if self.absent[job] >= self.MISSING_AFTER:
                answer[job] = JobStatus(job, JobState.FAILED, None,
                                        f"Missing: the DiracX server has no job {job} (its submission was not kept, "
                                        "or the job was removed)", {"status": "Missing", "minor_status": "not on the server"})
        return answer

    @staticmethod
    def _status(job: str, row: Mapping[str, Any]) -> JobStatus:
        status = str(row.get("Status", ""))
        return JobStatus(job, DIRAC_STATES.get(status, JobState.UNKNOWN), None,
                         f"{status}: {row.get('MinorStatus', '')}".strip(": "),
                         {"status": status, "minor_status": row.get("MinorStatus"),
                          "application_status": row.get("ApplicationStatus"), "site": row.get("Site")})

    async def cancel(self, job_ids: Sequence[str]) -> Mapping[str, JobStatus]:
        """Kill, then read back what the server says: an invalid transition is
        reported under "success" with the old status, so only the re-read counts."""
        when = datetime.now(timezone.utc).isoformat()
        body = {str(j): {when: {"Status": "Killed", "MinorStatus": "Marked for termination",
                                "Source": "prefect-egi"}} for j in job_ids}
        await self.client.call(lambda api: api.jobs.set_job_statuses(body))
        return await self.poll(job_ids)

    def job_label(self, job_id: str) -> str:
        return f"job {job_id}"
