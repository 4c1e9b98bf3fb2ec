"""Where a flow run keeps the ids of the remote jobs it submitted.

Ids are written to Prefect — as flow-run inputs keyed by the flow run, one
record per submission — *before* any waiting starts, so that:

- a retried flow run finds its submission and resumes watching the same jobs
  instead of submitting again;
- `on_cancellation` / `on_crashed` hooks, which Prefect runs in another process,
  can find the jobs and cancel them.

Why flow-run inputs and not Variables: Variables are global (they would need
the run id in their name and a clean-up) and cap values at 5,000 characters,
too small for a large DIRAC batch; flow-run inputs belong to the run and hold
any JSON. Records hold ids and block names only, never a secret.

Outside a flow run there is no run to retry: nothing is deduplicated, and the
ledger is a per-process memory (so a script can still resubmit what it sent).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any
from uuid import UUID

logger = logging.getLogger("prefect_egi.remote")

RECORD_PREFIX = "egi-jobs-"
CANCEL_PREFIX = "egi-cancel-"


def submission_key(service: str, *parts: Any) -> str:
    """A deterministic key for "the same submission": service + what was submitted."""
    digest = hashlib.sha256(json.dumps([service, *parts], sort_keys=True, default=str).encode()).hexdigest()
    return f"{service}-{digest[:24]}"


@dataclass
class Submission:
    """What was submitted where, enough for a hook in another process to cancel it."""

    key: str
    service: str
    job_ids: list[str]
    label: str = ""
    block_type: str | None = None  # block type slug, to rebuild the service client
    block_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | Any) -> "Submission":
        data = json.loads(text) if isinstance(text, str) else text
        return cls(**data)


class JobLedger:
    """The submissions of one flow run."""

    def __init__(self, flow_run_id: UUID | None):
        self.flow_run_id = flow_run_id
        self._memory: dict[str, Submission] = {}
        self._cancelled: set[str] = set()

    @classmethod
    def current(cls) -> "JobLedger":
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        run = context.flow_run if context else None
        return cls(run.id) if run else _PROCESS_LEDGER

    async def find(self, key: str) -> Submission | None:
        """The submission this flow run already made under `key` (never outside a run)."""
        if self.flow_run_id is None:
            return None
        found = await self._filter(RECORD_PREFIX + key)
        return next((Submission.from_json(item.value) for item in found if item.key == RECORD_PREFIX + key), None)

    async def _filter(self, prefix: str, limit: int = 1000) -> list[Any]:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return await client.filter_flow_run_input(self.flow_run_id, prefix, limit=limit, exclude_keys=set())

    async def record(self, submission: Submission) -> None:
        """Persist a submission; call it right after the service accepted the jobs."""
        if self.flow_run_id is None:
            self._memory[submission.key] = submission
            return
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            await client.create_flow_run_input(self.flow_run_id, RECORD_PREFIX + submission.key,
                                               submission.to_json())

    async def submissions(self) -> list[Submission]:
        if self.flow_run_id is None:
            return list(self._memory.values())
        return [Submission.from_json(item.value) for item in await self._filter(RECORD_PREFIX)]

    async def mark_cancel_requested(self, key: str) -> None:
        if self.flow_run_id is None:
            self._cancelled.add(key)
            return
        if await self.cancel_requested(key):
            return
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            await client.create_flow_run_input(self.flow_run_id, CANCEL_PREFIX + key, json.dumps(True))

    async def cancel_requested(self, key: str) -> bool:
        if self.flow_run_id is None:
            return key in self._cancelled
        return any(item.key == CANCEL_PREFIX + key for item in await self._filter(CANCEL_PREFIX + key, limit=1))


_PROCESS_LEDGER = JobLedger(None)


def cancel_remote_jobs(flow: Any, flow_run: Any, state: Any) -> None:
    """`on_cancellation` / `on_crashed` hook: cancel every remote job the run submitted.

    Prefect runs it in another process, so it reads the ledger from the API and
    rebuilds each service client from the saved block named in the record.
    """
    from prefect.utilities.asyncutils import run_coro_as_sync

    run_coro_as_sync(cancel_submissions(flow_run.id))


async def cancel_submissions(flow_run_id: UUID) -> dict[str, dict[str, str]]:
    """Cancel the jobs of every submission of a flow run; returns the states per job."""
    from prefect.blocks.core import Block

    ledger = JobLedger(flow_run_id)
    outcome: dict[str, dict[str, str]] = {}
    for submission in await ledger.submissions():
        await ledger.mark_cancel_requested(submission.key)
        if not (submission.block_type and submission.block_name):
            logger.warning("Cannot cancel %s jobs %s: they were submitted with an unsaved block",
                           submission.service, ", ".join(submission.job_ids))
            continue
        block_class = Block.get_block_class_from_key(submission.block_type)
        block = await block_class.aload(submission.block_name)
        statuses = await block.job_adapter().cancel(submission.job_ids)
        outcome[submission.key] = {job: status.state.value for job, status in statuses.items()}
        logger.info("Cancelled %d %s job(s) of flow run %s", len(statuses), submission.service, flow_run_id)
    return outcome
