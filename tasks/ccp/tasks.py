"""D4Science CCP tasks: list, describe, execute, wait, collect — or all at once.

    from prefect_egi.tasks import CCP, run_ccp_method

    result = run_ccp_method("ccp", "my-method", {"count": 3}, destination="out")
    result.values, result.files, result.unpacked

Jobs are asynchronous OGC API – Processes jobs, waited for by the shared engine
(`prefect_egi.tasks.remote.watch`). Inputs are checked against the method's JSON Schema
before anything is sent. Each Execute is recorded in the flow run's ledger and carries a
marker derived from the flow run and the submission, so a retried flow run resumes
watching its job, and an Execute whose answer was lost is looked up by that marker in
`GET /jobs` instead of being sent again: a method never runs twice for one flow run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from prefect_egi.tasks.ccp.block import CCP
from prefect_egi.tasks.ccp.client import (
    CCPClient,
    CCPError,
    ExecuteOutcomeUnknown,
    JobInfo,
    LostExecute,
    ProcessDescription,
    ProcessSummary,
    new_marker,
)
from prefect_egi.tasks.ccp.inputs import check_inputs
from prefect_egi.tasks.ccp.outputs import CCPMethodFailed, CCPResult, collect_results
from prefect_egi.tasks.faults import TransientServiceError
from prefect_egi.tasks.job_ledger import JobLedger, Submission, submission_key
from prefect_egi.tasks.remote import JobState, JobStatus, WatchPolicy, watch
from prefect_egi.tasks.reporting import PrefectReporter, in_run, publish, run_logger
from prefect_egi.tasks.task_base import egi_task, raised, retry_if_watch_may_recover

CCPArg = CCP | str | None


def _ccp(block: CCPArg) -> CCP:
    """The block, the saved block of that name, or the default one (a D4Science notebook's
    own VRE and token: `D4SCIENCE_CONTEXT`, `D4SCIENCE_TOKEN`)."""
    return CCP() if block is None else CCP.resolve(block)


@egi_task(name="ccp-list-methods", retries=2, retry_delay_seconds=5)
async def list_ccp_methods(ccp: CCPArg = None) -> list[ProcessSummary]:
    """Every method (OGC process) CCP offers in the VRE.

    Args:
        ccp: a `CCP` block, the name of a saved one, or None for a D4Science notebook's own VRE.

    Returns:
        One `ProcessSummary` (id, title, description, version) per method.

    Raises:
        CCPTokenRejected: CCP refused the token (not the UMA token of this VRE).
        NoTokenError / SourceUnavailable: no user token, or not a member of the VRE.

    Example:
        for method in list_ccp_methods("ccp"):
            print(method.id, method.title)
    """
    async with _ccp(ccp).client() as client:
        return await client.processes()


@egi_task(name="ccp-describe-method", retries=2, retry_delay_seconds=5)
async def describe_ccp_method(ccp: CCPArg, method: str) -> ProcessDescription:
    """A method's inputs and outputs, each with its JSON Schema as CCP sent it.

    Args:
        ccp: a `CCP` block, the name of a saved one, or None for the notebook's VRE.
        method: the method's (process's) id.

    Returns:
        The `ProcessDescription` (`.inputs`, `.outputs`: name → `Parameter` with `.schema`).

    Raises:
        CCPNoSuchProcess: CCP has no such method in this VRE.

    Example:
        [name for name, spec in describe_ccp_method("ccp", "my-method").inputs.items() if spec.required]
    """
    async with _ccp(ccp).client() as client:
        return await client.process(method)


def _fingerprint(inputs: Mapping[str, Any]) -> list[Any]:
    return sorted((name, repr(value)) for name, value in inputs.items())


def execution_marker(ledger: JobLedger, key: str) -> str:
    """The marker an Execute carries: the same for every attempt of one flow run's
    submission (so a retry can find what an earlier attempt created), random outside a run."""
    if ledger.flow_run_id is None:
        return new_marker()
    return "prefect-egi-" + hashlib.sha256(f"{ledger.flow_run_id}:{key}".encode()).hexdigest()[:32]


async def _adopt(ccp: CCP, ledger: JobLedger, key: str, job: JobInfo, method: str, how: str) -> str:
    await ledger.record(Submission.of(ccp, key=key, service="ccp", job_ids=[job.job_id], label=method))
    await ledger.settle(key)
    run_logger().info("CCP method %s: job %s (%s)", method, job.job_id, how)
    return job.job_id


async def _look_up(client: CCPClient, marker: str, method: str, since: datetime) -> JobInfo | None:
    """The job an Execute carrying `marker` created; None when the listing shows that no
    job of the method was created since (the Execute never reached the server)."""
    try:
        return await client.find_job(marker, method, since)
    except LostExecute as lost:
        if lost.candidates:
            raise  # the server keeps no marker and jobs were created meanwhile: do not guess
        return None


async def submit_job(ccp: CCP, method: str, inputs: Mapping[str, Any], key: str | None = None) -> str:
    """Check the inputs, then execute once per flow run; returns the job id.

    find (already submitted by this run) → look up a lost earlier Execute by its marker →
    check the inputs → write the intent → Execute → record → settle."""
    ledger = JobLedger.current()
    key = key or submission_key("ccp", ccp.url, ccp.vre(), method, _fingerprint(inputs))
    found = await ledger.find(key)
    if found:
        run_logger().info("Resuming CCP job %s (already submitted by this flow run)", found.job_ids[0])
        return found.job_ids[0]
    marker = execution_marker(ledger, key)
    async with ccp.client() as client:
        earlier = await ledger.intent(key)
        if earlier is not None:
            since = datetime.fromisoformat(earlier["sent_at"]) if isinstance(earlier, dict) else (
                datetime.now(timezone.utc))
            job = await _look_up(client, marker, method, since)
            if job is not None:
                return await _adopt(ccp, ledger, key, job, method, "created by an earlier attempt whose answer was "
                                    f"lost; found by its marker {marker}")
            run_logger().info("An earlier attempt's Execute of %s never reached CCP (no job carries its marker "
                              "%s): sending it now", method, marker)
            await ledger.settle(key)
        description = await client.process(method)
        wire = check_inputs(description, inputs)  # raises before anything is sent
        sent_at = datetime.now(timezone.utc)
        await ledger.intend(key, {"sent_at": sent_at.isoformat(), "marker": marker})
        try:
            submission = await client.execute(method, wire, marker=marker)
        except ExecuteOutcomeUnknown:
            job = await _look_up(client, marker, method, sent_at)
            if job is None:
                raise  # the intent stays: the next attempt looks again before sending
            return await _adopt(ccp, ledger, key, job, method, f"its answer was lost; found by its marker {marker}")
        except TransientServiceError:
            await ledger.settle(key)  # refused unread (or never sent): nothing started
            raise
        except CCPError:
            await ledger.settle(key)  # refused (4xx, 401): nothing started, a retry may send it
            raise
    await ledger.record(Submission.of(ccp, key=key, service="ccp", job_ids=[submission.job_id], label=method))
    await ledger.settle(key)
    run_logger().info("Submitted CCP method %s: job %s", method, submission.job_id)
    return submission.job_id


def _retry_if_not_sent_or_unknown(task: Any, task_run: Any, state: Any) -> bool:
    """Retry an Execute when CCP was unreachable or its answer was lost: the retry looks the
    job up by its marker before anything is sent again."""
    return isinstance(raised(state), (TransientServiceError, ExecuteOutcomeUnknown))


@egi_task(name="ccp-execute", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=_retry_if_not_sent_or_unknown)
async def execute_ccp_method(ccp: CCPArg, method: str, inputs: Mapping[str, Any]) -> str:
    """Check the inputs against the method's JSON Schema, then start it — never twice in one flow run.

    Args:
        ccp: a `CCP` block, the name of a saved one, or None for the notebook's VRE.
        method: the method's id.
        inputs: input name → value: JSON values as the method's schema wants them, a list
            for an input that may repeat, `{"href": "https://…"}` for a file CCP fetches,
            `{"value": …, "mediaType": …}` for a qualified value.

    Returns:
        The job's id.

    Raises:
        CCPInputError: the inputs do not match the method's schema — every problem at
            once, naming each input; nothing was sent.
        ExecuteOutcomeUnknown: the answer to Execute was lost and no job with its marker
            is listed (yet); a retry looks again before sending.
        LostExecute: CCP keeps no marker and jobs were created meanwhile: not resent.

    Example:
        job_id = execute_ccp_method("ccp", "my-method", {"count": 3})
    """
    return await submit_job(_ccp(ccp), method, inputs)


@egi_task(name="ccp-wait", retries=3, retry_delay_seconds=[60, 300, 900],
          retry_condition_fn=retry_if_watch_may_recover)
async def wait_for_ccp_jobs(ccp: CCPArg, job_ids: Sequence[str],
                            policy: WatchPolicy | None = None) -> dict[str, JobStatus]:
    """Wait until every job has ended, with the shared engine.

    Polls where the reported progress says the job ends — never more status requests than
    a loop polling every 5 s — absorbs 5xx, resets and timeouts, renews the UMA token
    after a 401, and shows a progress artifact, an event per transition and a table of
    final states in the UI. What the methods print to stdout/stderr goes into the run's
    log as they print it, where CCP links the jobs' logs. Cancelling the flow run
    dismisses the jobs.

    Args:
        ccp: a `CCP` block, the name of a saved one, or None for the notebook's VRE.
        job_ids: job ids from `execute_ccp_method`.
        policy: how to pace and how long to wait (`CCP_WAIT` by default: a week at most).

    Returns:
        Each job's final `JobStatus` (state, progress, the server's message).

    Raises:
        WatchDeadlineExceeded: the deadline passed (the jobs may still run).
        WatchGaveUp: CCP kept failing or refused every renewed token.

    Example:
        statuses = wait_for_ccp_jobs("ccp", [job_id])
    """
    log = run_logger()

    def printed(job_id: str, stream: str, line: str) -> None:
        (log.warning if stream == "stderr" else log.info)("ccp job %s %s: %s", job_id, stream, line)

    async with _ccp(ccp).job_adapter(on_log=printed) as adapter:
        return await watch(adapter, job_ids, policy, PrefectReporter(adapter, "CCP jobs"))


async def _show(result: CCPResult) -> None:
    if in_run():
        from prefect.artifacts import acreate_markdown_artifact

        await publish("CCP results", acreate_markdown_artifact, result.markdown(), description="CCP results")


@egi_task(name="ccp-collect-results", retries=2, retry_delay_seconds=5)
async def collect_ccp_results(ccp: CCPArg, job_id: str, destination: str = "ccp-outputs",
                              method: str = "") -> CCPResult:
    """A job's results: values, files downloaded into `destination/<job id>/`, `output.zip` unpacked.

    Args:
        ccp: a `CCP` block, the name of a saved one, or None for the notebook's VRE.
        job_id: the job's id.
        destination: the folder to download into.
        method: the method's name, for the report.

    Returns:
        A `CCPResult`: `values` (literal and qualified values), `files` (each downloaded,
        or the reason it was not), `unpacked` (what `output.zip` held), state and message.

    Raises:
        CCPError: the job or its results could not be read (a file that cannot be
            downloaded is not an error: its `error` says why).

    Example:
        result = collect_ccp_results("ccp", job_id, destination="outputs")
    """
    async with _ccp(ccp).client() as client:
        result = await collect_results(client, job_id, destination, method)
    await _show(result)
    return result


@egi_task(name="ccp-run")
async def run_ccp_method(ccp: CCPArg, method: str, inputs: Mapping[str, Any],
                         destination: str = "ccp-outputs", policy: WatchPolicy | None = None) -> CCPResult:
    """One CCP method end to end: check the inputs, execute, wait, collect the results.

    Each step is a task run of its own (`ccp-execute`, `ccp-wait`, `ccp-collect-results`),
    so the wait is retried when CCP was only unreachable and a retried flow run resumes
    watching the job it started.

    Args:
        ccp: a `CCP` block, the name of a saved one, or None for the notebook's VRE.
        method: the method's id.
        inputs: input name → value (see `execute_ccp_method`).
        destination: the folder for the results (`<destination>/<job id>/`).
        policy: how to pace and how long to wait (`CCP_WAIT` by default).

    Returns:
        The `CCPResult` of the job.

    Raises:
        CCPInputError: the inputs do not match the method's schema (nothing was sent).
        CCPMethodFailed: the method failed or was dismissed; the message is CCP's own.
        WatchDeadlineExceeded / WatchGaveUp: see `wait_for_ccp_jobs`.

    Example:
        result = run_ccp_method("ccp", "my-method", {"count": 3})
        result.values, result.unpacked
    """
    block = _ccp(ccp)
    job_id = await execute_ccp_method(block, method, inputs)
    final = (await wait_for_ccp_jobs(block, [job_id], policy))[job_id]
    if final.state is not JobState.SUCCEEDED:
        raise CCPMethodFailed(method, final.message, job_id, final.state.value, final.detail.get("stderr", ()))
    return await collect_ccp_results(block, job_id, destination, method)
