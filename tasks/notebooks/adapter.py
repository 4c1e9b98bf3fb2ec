"""A Notebooks server start or stop as a remote job, for the engine's `watch` loop.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prefect_egi.tasks.notebooks.client import HubClient, HubServer, HubUser
from prefect_egi.tasks.remote import JobState, JobStatus, RemoteJobAdapter


class HubServerAdapter(RemoteJobAdapter):
    """A server start or stop as a remote job: "ready" (or gone) is success.

    A start that ends with the server neither ready nor starting failed: its reason is read
    from the hub's progress stream ("Spawn failed: …"), so the error says why.
    Job ids are `user/server` (server empty for the default one)."""

    service = "notebooks"

    def __init__(self, client: HubClient, target: str):
        if target not in ("ready", "stopped"):
            raise ValueError("target must be 'ready' or 'stopped'")
        self.client, self.target = client, target

    async def poll(self, job_ids: Sequence[str]) -> Mapping[str, JobStatus]:
        answers: dict[str, JobStatus] = {}
        users: dict[str, HubUser] = {}
        for job_id in job_ids:
            user, _, server = job_id.partition("/")
            if user not in users:
                users[user] = await self.client.user(user)
            status = self._status(job_id, users[user].servers.get(server))
            if status.state is JobState.FAILED:
                status = await self._with_spawn_failure(status, user, server)
            answers[job_id] = status
        return answers

    def _status(self, job_id: str, server: HubServer | None) -> JobStatus:
        if self.target == "stopped":
            if server is None or (not server.ready and server.pending is None):
                return JobStatus(job_id, JobState.SUCCEEDED, 100.0, "stopped")
            return JobStatus(job_id, JobState.RUNNING, None, f"stopping ({server.pending or 'still up'})")
        if server is None:
            return JobStatus(job_id, JobState.FAILED, None, "the server is gone (its start failed or it was stopped)")
        if server.ready:
            return JobStatus(job_id, JobState.SUCCEEDED, 100.0, f"ready at {server.url or '?'}")
        if server.pending:
            return JobStatus(job_id, JobState.RUNNING, None, f"pending: {server.pending}")
        return JobStatus(job_id, JobState.FAILED, None, "not running and not starting")

    async def _with_spawn_failure(self, status: JobStatus, user: str, server: str) -> JobStatus:
        """The failed start's status, carrying the hub's own reason when it recorded one."""
        reason = await self.client.spawn_failure(user, server)
        if reason is None:
            return status
        return JobStatus(status.job_id, JobState.FAILED, None, f"its start failed: {reason}")

    async def cancel(self, job_ids: Sequence[str]) -> Mapping[str, JobStatus]:
        for job_id in job_ids:
            user, _, server = job_id.partition("/")
            await self.client.stop(user, server)
        return {j: JobStatus(j, JobState.CANCELLED, None, "stop requested") for j in job_ids}

    def job_label(self, job_id: str) -> str:
        user, _, server = job_id.partition("/")
        return f"{user}'s {'server ' + server if server else 'default server'}"
