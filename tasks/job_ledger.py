"""Where a flow run keeps the ids of the remote jobs it submitted.

Ids are written to Prefect — as flow-run inputs keyed by the flow run, one
record per submission — *before* any waiting starts, so that:

- a retried flow run finds its submission and resumes watching the same jobs
  instead of submitting again;
- hooks, which Prefect runs in another process, can find the jobs: a record names the
  saved block that submitted them (`JobServiceBlock.ledger_reference`), and the hook
  loads it again and asks its adapter (`JobServiceBlock.job_adapter`) to cancel or poll.

Flows made with `prefect_egi.flows.egi_flow` (every shipped flow) register two hooks,
because a cancellation and a crash mean different things:

- `on_cancellation=[cancel_remote_jobs]`: the scientist stopped the run, so every
  job it submitted is killed (DIRAC) or marked cancelled (DataMiner).
- `on_crashed=[keep_remote_jobs_on_crash]`: the flow process died (SIGKILL, OOM,
  a lost node) — an orchestration failure, not the scientist's. The grid jobs and
  WPS executions are still valid, so they are LEFT RUNNING; the hook logs which
  ones and how to go on: `prefect flow-run retry <flow run id>` schedules the SAME
  flow run again, and the retried run finds these ids under its own id and resumes
  watching them (0 submitted twice, 0 lost); or cancel them (see the log line).
  Prefect runs `on_crashed` when the runner / process worker sees the flow process
  exit abnormally. A worker killed together with its flow process runs no hook and
  leaves the run Running: mark it Crashed (a heartbeat-based "zombie" automation
  does so), then retry it the same way.

Why flow-run inputs and not Variables: Variables are global (they would need
the run id in their name and a clean-up) and cap values at 5,000 characters,
too small for a large DIRAC batch; flow-run inputs belong to the run and hold
any JSON. Records hold ids and block names only, never a secret.

Outside a flow run there is no run to retry: nothing is deduplicated, and the
ledger is a per-process memory (so a script can still resubmit what it sent).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from prefect_egi.tasks.block_base import JobServiceBlock
from prefect_egi.tasks.faults import TransientServiceError, classify

if TYPE_CHECKING:
    from prefect_egi.tasks.remote import JobStatus

logger = logging.getLogger("prefect_egi.remote")

RECORD_PREFIX = "egi-jobs-"
CANCEL_PREFIX = "egi-cancel-"
INTENT_PREFIX = "egi-intent-"  # "about to submit": left behind only when the outcome is unknown
#: tries of one ledger call when the Prefect server fails (5xx, connection lost): ~15 s in all
LEDGER_ATTEMPTS = 5


def _server_trouble(exc: BaseException) -> bool:
    """A failure of the Prefect server itself, worth trying again: a 5xx (at 50 concurrent
    flow runs its PostgreSQL connections time out and it answers 500) or a lost connection —
    what the engine calls transient for any service."""
    return classify(exc) is TransientServiceError


def _conflict(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 409


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

    @classmethod
    def of(cls, block: JobServiceBlock, *, key: str, service: str, job_ids: list[str], label: str = "",
           extra: dict[str, Any] | None = None) -> "Submission":
        """A record of jobs `block` submitted (its saved name, if any, lets the hooks reach them)."""
        block_type, block_name = block.ledger_reference()
        return cls(key=key, service=service, job_ids=list(job_ids), label=label, block_type=block_type,
                   block_name=block_name, extra=dict(extra or {}))

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
        self._intents: dict[str, Any] = {}

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

    async def _call(self, call: Callable[[Any], Awaitable[Any]], what: str) -> Any:
        """One call to the Prefect API, tried again while the server itself fails: losing a
        ledger write fails the run, and a retried run must then reconcile with the services."""
        from prefect.client.orchestration import get_client

        delay = 1.0
        for attempt in range(1, LEDGER_ATTEMPTS + 1):
            try:
                async with get_client() as client:
                    return await call(client)
            except Exception as exc:
                if attempt == LEDGER_ATTEMPTS or not _server_trouble(exc):
                    raise
                logger.warning("The Prefect API failed to %s (%s); trying again in %.0f s", what,
                               type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def _create(self, key: str, value: str) -> None:
        """Create a flow-run input — idempotently: a try whose answer was lost may have
        stored it already (409 on the next), which is fine when it holds the same value."""
        try:
            await self._call(lambda client: client.create_flow_run_input(self.flow_run_id, key, value),
                             f"record {key}")
        except Exception as exc:
            if not _conflict(exc):
                raise
            stored = await self._call(lambda client: client.read_flow_run_input(self.flow_run_id, key), f"read {key}")
            if json.loads(stored) != json.loads(value):
                raise

    async def _filter(self, prefix: str, limit: int = 1000) -> list[Any]:
        return await self._call(lambda client: client.filter_flow_run_input(
            self.flow_run_id, prefix, limit=limit, exclude_keys=set()), f"read {prefix}*")

    async def record(self, submission: Submission) -> None:
        """Persist a submission; call it right after the service accepted the jobs."""
        if self.flow_run_id is None:
            self._memory[submission.key] = submission
            return
        await self._create(RECORD_PREFIX + submission.key, submission.to_json())

    async def intend(self, key: str, note: Mapping[str, Any] | None = None) -> None:
        """Write down "about to submit `key`" before a submission that cannot be repeated
        safely: if the answer is lost (or the process dies), a retry finds this and does
        not submit blindly a second time. `settle` removes it once the outcome is known.
        `note` (JSON) is kept with it, for the retry: e.g. when the request was sent, to
        look the job up in the service's listing."""
        value = {"key": key, **note} if note else key
        if self.flow_run_id is None:
            self._intents[key] = value
            return
        await self._create(INTENT_PREFIX + key, json.dumps(value))

    async def intent(self, key: str) -> Any | None:
        """What an earlier attempt wrote down when it set out to submit `key` and never
        learned the outcome (the key itself, or `{"key": …, **note}`); None: no such attempt."""
        if self.flow_run_id is None:
            return self._intents.get(key)
        found = [item for item in await self._filter(INTENT_PREFIX + key, limit=1) if item.key == INTENT_PREFIX + key]
        return json.loads(found[0].value) if found else None

    async def intended(self, key: str) -> bool:
        """Whether an earlier attempt set out to submit `key` and never learned the outcome."""
        return await self.intent(key) is not None

    async def settle(self, key: str) -> None:
        """The outcome of submitting `key` is known (recorded, or refused): forget the intent."""
        if self.flow_run_id is None:
            self._intents.pop(key, None)
            return
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            try:
                await client.delete_flow_run_input(self.flow_run_id, INTENT_PREFIX + key)
            except Exception as exc:  # an intent left behind only makes a retry ask the user
                logger.warning("Could not clear the submission intent %s: %s", key, exc)

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
        await self._create(CANCEL_PREFIX + key, json.dumps(True))

    async def cancel_requested(self, key: str) -> bool:
        if self.flow_run_id is None:
            return key in self._cancelled
        return any(item.key == CANCEL_PREFIX + key for item in await self._filter(CANCEL_PREFIX + key, limit=1))


_PROCESS_LEDGER = JobLedger(None)


def cancel_remote_jobs(flow: Any, flow_run: Any, state: Any) -> None:
    """`on_cancellation` hook: cancel every remote job the run submitted.

    Prefect runs it in another process, so it reads the ledger from the API and
    rebuilds each service client from the saved block named in the record.
    """
    from prefect.utilities.asyncutils import run_coro_as_sync

    run_coro_as_sync(cancel_submissions(flow_run.id))


async def cancel_submissions(flow_run_id: UUID) -> dict[str, dict[str, str]]:
    """Cancel the jobs of every submission of a flow run; returns the states per job."""
    ledger = JobLedger(flow_run_id)
    outcome: dict[str, dict[str, str]] = {}
    for submission in await ledger.submissions():
        await ledger.mark_cancel_requested(submission.key)
        if not (submission.block_type and submission.block_name):
            logger.warning("Cannot cancel %s jobs %s: they were submitted with an unsaved block",
                           submission.service, ", ".join(submission.job_ids))
            continue
        statuses = await _ask(submission, "cancel")
        outcome[submission.key] = {job: status.state.value for job, status in statuses.items()}
        logger.info("Cancelled %d %s job(s) of flow run %s", len(statuses), submission.service, flow_run_id)
    return outcome


# -- crashes ---------------------------------------------------------------------------------------

CRASH_STATUS_TIMEOUT = 30.0  # seconds the crash hook may spend asking the services what still runs


def keep_remote_jobs_on_crash(flow: Any, flow_run: Any, state: Any) -> None:
    """`on_crashed` hook: leave every remote job the run submitted RUNNING, and say so.

    A crash (the flow process or its machine died) is not a cancellation: the jobs
    are still good work. The hook logs, on the flow run's log when it can, which
    jobs were left running and how to resume watching them (`prefect flow-run retry`)
    or stop them. It never cancels anything and never raises.
    """
    from prefect.utilities.asyncutils import run_coro_as_sync

    log = _hook_logger(flow, flow_run)
    run_id = getattr(flow_run, "id", None)
    try:
        report = run_coro_as_sync(crash_report(run_id, getattr(flow_run, "name", None),
                                               getattr(state, "message", None)))
    except Exception as exc:  # the API is down too: still say what to do
        report = (f"Flow run {run_id} crashed; its remote jobs were NOT cancelled and may still be running "
                  f"(the job ledger could not be read: {type(exc).__name__}: {exc}). "
                  + _next_steps(run_id))
    log.warning(report)


def _hook_logger(flow: Any, flow_run: Any) -> Any:
    """The flow run's logger (its lines reach the run's logs in the UI), else ours."""
    if flow_run is not None:
        try:
            from prefect.logging.loggers import flow_run_logger

            return flow_run_logger(flow_run, flow)
        except Exception:
            pass
    return logger


async def crash_report(flow_run_id: UUID | None, run_name: str | None = None, reason: str | None = None) -> str:
    """What a crash left running, per submission, and what to do about it."""
    who = f"Flow run {run_name!r} ({flow_run_id})" if run_name else f"Flow run {flow_run_id}"
    because = f" ({reason.strip()})" if reason and reason.strip() else ""
    if flow_run_id is None:
        return f"{who} crashed{because}; it ran outside Prefect's API, so no remote job is recorded."
    ledger = JobLedger(flow_run_id)
    submissions = await ledger.submissions()
    recorded = {s.key for s in submissions}
    # an intent without its record: the run died (or lost the answer) while submitting
    unsure = [item.key[len(INTENT_PREFIX):] for item in await ledger._filter(INTENT_PREFIX)
              if item.key[len(INTENT_PREFIX):] not in recorded]
    if not submissions and not unsure:
        return f"{who} crashed{because} before submitting any remote job: nothing is left running. " + \
            _next_steps(flow_run_id, jobs=False)
    lines = [f"{who} crashed{because}. A crash is not a cancellation: its remote jobs were NOT cancelled."]
    lines += [f"- submission {key}: it was being sent when the run died, and whether the service started it "
              "is unknown; the retried run will not send it blindly (look for it on the service)" for key in unsure]
    total = 0
    for submission in submissions:
        still, finished = await _still_active(submission)
        total += len(still)
        where = f" (block {submission.block_type}/{submission.block_name})" if submission.block_name else ""
        label = f" {submission.label!r}" if submission.label else ""
        if finished is None:
            lines.append(f"- {submission.service}{label}{where}: {len(still)} job(s) left as they were "
                         f"(their status could not be read): {describe_ids(still)}")
            continue
        lines.append(f"- {submission.service}{label}{where}: {len(still)} job(s) LEFT RUNNING: {describe_ids(still)}"
                     + (f"; {len(finished)} had already ended: {describe_ids(finished)}" if finished else ""))
    lines.append(_next_steps(flow_run_id, jobs=total > 0))
    return "\n".join(lines)


async def _ask(submission: Submission, action: str) -> dict[str, JobStatus]:
    """`cancel` or `poll` the submission's jobs through the adapter of the block that submitted them."""
    assert submission.block_type and submission.block_name
    block = await JobServiceBlock.from_ledger(submission.block_type, submission.block_name)
    async with block.job_adapter() as adapter:
        return dict(await getattr(adapter, action)(submission.job_ids))


async def _still_active(submission: Submission) -> tuple[list[str], list[str] | None]:
    """(job ids still queued/running or unknown, job ids already ended); None for the second
    when the service could not be asked (then every id is in the first)."""
    if not (submission.block_type and submission.block_name):
        return list(submission.job_ids), None
    try:
        statuses = await asyncio.wait_for(_ask(submission, "poll"), CRASH_STATUS_TIMEOUT)
    except Exception as exc:
        logger.info("Could not read the status of %s jobs of %s: %s", submission.service, submission.key,
                    type(exc).__name__)
        return list(submission.job_ids), None
    ended = [j for j in submission.job_ids if j in statuses and statuses[j].state.terminal]
    return [j for j in submission.job_ids if j not in set(ended)], ended


def _next_steps(flow_run_id: UUID | None, jobs: bool = True) -> str:
    retry = f"prefect flow-run retry {flow_run_id}"
    if not jobs:
        return f"To run it again: `{retry}`."
    return (f"To resume watching these same jobs (nothing is submitted again): `{retry}` — the retried run "
            f"finds them in this run's job ledger. To stop them instead: retry, then "
            f"`prefect flow-run cancel {flow_run_id}` (cancelling kills them), or without Prefect running it: "
            f"`python -c \"import asyncio, uuid; from prefect_egi.tasks.job_ledger import cancel_submissions; "
            f"asyncio.run(cancel_submissions(uuid.UUID('{flow_run_id}')))\"`.")


def describe_ids(job_ids: list[str], limit: int = 40) -> str:
    """Job ids, consecutive integers folded into ranges (101-130); long lists cut after `limit` items."""
    if not job_ids:
        return "none"
    items: list[str] = []
    numeric = all(j.isdigit() for j in job_ids)
    if numeric:
        values = sorted({int(j) for j in job_ids})
        start = prev = values[0]
        for value in values[1:] + [None]:  # type: ignore[list-item]
            if value is not None and value == prev + 1:
                prev = value
                continue
            items.append(str(start) if start == prev else f"{start}-{prev}")
            if value is not None:
                start = prev = value
    else:
        items = list(job_ids)
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} … and {len(items) - limit} more (all in the run's job ledger)"
