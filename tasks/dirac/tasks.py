"""DIRAC tasks through DiracX: submit, wait, collect, resubmit, kill — or a whole batch.

    from prefect_egi.tasks import DiracJob, run_batch

    job = DiracJob(executable="analyse.sh", arguments="--input %s", parameters=["a", "b", "c"],
                   input_sandbox=["analyse.sh"], output_sandbox=["result.csv"])
    report = run_batch("diracx", job, max_resubmissions=2)     # three jobs, one per parameter

Submissions go in chunks of 20 JDLs (the server's limit) and are recorded in
the flow run's ledger first, so a retried run never submits the same batch twice.
Waiting is ONE `search` per poll cycle for all jobs, through the shared engine.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import BaseModel, Field

from prefect_egi.tasks.dirac.block import DiracX
from prefect_egi.tasks.dirac.client import engine_error
from prefect_egi.tasks.dirac.jdl import DiracJob
from prefect_egi.tasks.dirac.login import DeviceCode, device_login
from prefect_egi.tasks.dirac.outputs import JobOutput, collect_outputs
from prefect_egi.tasks.dirac.submission import MAX_JDLS_PER_CALL, SubmissionIncomplete, submit_exactly_once
from prefect_egi.tasks.job_ledger import JobLedger, Submission, submission_key
from prefect_egi.tasks.remote import JobState, JobStatus, WatchPolicy, watch
from prefect_egi.tasks.reporting import PrefectReporter, in_run, publish, run_logger
from prefect_egi.tasks.task_base import egi_task, retry_if_watch_may_recover

DiracXArg = DiracX | str


# -- submission (once per flow run) ----------------------------------------------------------------

Render = Callable[[Any], Awaitable[Sequence[str]]]  # the JDLs to send, made with the client at hand


async def _submit_jdls(block: DiracX, key: str, render: Render, concurrency: int,
                       label: str) -> tuple[list[int], list[str]]:
    """Render the JDLs (`render(api)`: e.g. upload sandboxes first), then send them in
    chunks of 20, exactly once (see `prefect_egi.tasks.dirac.submission`); returns the ids in the
    order of the JDLs, and the JDLs. Both steps share ONE client: each client GETs the
    server's discovery document and builds a TLS context when it is made (~30 ms).
    A retried flow run first asks the server what its earlier attempt created. Jobs
    created before a final failure are recorded (so a cancellation finds them) before
    the error is raised."""
    retried = _retried_run()
    earlier = [int(j) for s in await JobLedger.current().submissions() if s.service == "dirac" for j in s.job_ids]
    jdls: list[str] = []

    async def everything(api: Any) -> list[int]:
        jdls.extend(await render(api))
        ids, extra = await submit_exactly_once(api, jdls, concurrency=concurrency, reconcile_first=retried,
                                               exclude=earlier, classify=lambda exc: engine_error(exc, block.url))
        if extra:
            run_logger().warning("Submitting %d DIRAC job(s) took %d extra request(s) (faults absorbed)",
                                 len(jdls), extra)
        return ids

    try:
        return await block.client().call(everything), jdls
    except SubmissionIncomplete as incomplete:
        created = sorted(incomplete.created)
        await _record(block, f"{key}-incomplete", [incomplete.created[i] for i in created],
                      [jdls[i] for i in created], f"{label} (incomplete)")
        raise


def _retried_run() -> bool:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return bool(context and context.flow_run and context.flow_run.run_count > 1)


def batch_group(key: str) -> str:
    """The JobGroup of jobs submitted without one: names the flow run and the batch, so the
    batch can be found on the server (DIRAC's web portal groups jobs by it, too)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run = context.flow_run.id.hex[:8] if context and context.flow_run else uuid.uuid4().hex[:8]
    return f"prefect-{run}-{key.rsplit('-', 1)[-1][:8]}"


async def _record(block: DiracX, key: str, ids: Sequence[int], jdls: Sequence[str], label: str) -> None:
    """The ledger keeps the JDLs too: DiracX cannot give them back, and resubmission needs them."""
    await JobLedger.current().record(Submission.of(block, key=key, service="dirac", job_ids=[str(i) for i in ids],
                                                   label=label, extra={"jdls": list(jdls)}))


async def submit(block: DiracX, jobs: Sequence[DiracJob], key: str | None = None,
                 concurrency: int = 4) -> list[int]:
    """Render, upload sandboxes, submit in chunks of 20 — once per flow run. At most
    `concurrency` calls are in flight, fewer while the server only queues them."""
    # checked again even when already a DiracJob: a model_copy(update=…) (e.g. the pipeline's
    # parameters) is not validated, and nothing may be sent before every value is
    described = [j.model_dump(mode="json") if isinstance(j, DiracJob) else j for j in jobs]
    jobs = [DiracJob.model_validate(j) for j in described]
    key = key or submission_key("dirac", block.url, block.vo, block.group, [j.model_dump(mode="json") for j in jobs])
    found = await JobLedger.current().find(key)
    if found:
        run_logger().info("Resuming %d DIRAC job(s) this flow run already submitted", len(found.job_ids))
        return [int(j) for j in found.job_ids]

    async def render(api: Any) -> list[str]:
        from diracx.api.jobs import create_sandbox

        rendered: list[str] = []
        for job in jobs:
            uploaded = await create_sandbox(job.local_inputs(), client=api) if job.local_inputs() else None
            rendered += job.to_jdls(uploaded)
        return rendered

    group = batch_group(key)
    jobs = [j if j.job_group else j.model_copy(update={"job_group": group}) for j in jobs]
    label = jobs[0].job_name if jobs else ""
    ids, jdls = await _submit_jdls(block, key, render, concurrency, label)
    await _record(block, key, ids, jdls, label)
    run_logger().info("Submitted %d DIRAC job(s) in %d call(s)", len(ids), -(-len(ids) // MAX_JDLS_PER_CALL))
    return ids


async def resubmit(block: DiracX, failed: Sequence[int], attempt: int, concurrency: int = 4) -> dict[int, int]:
    """Submit failed jobs again as new jobs (Ganga's automatic resubmission), from the
    JDLs in this flow run's ledger; returns {old id: new id}. Once per attempt per run.

    Why not DiracX's `reschedule_jobs`: in 0.7 it leaves a Failed job Failed (it only
    bumps the minor status and counter), so the job would never run again."""
    ledger = JobLedger.current()
    failed = [int(j) for j in failed]
    key = submission_key("dirac-resubmit", block.url, block.vo, failed, attempt)
    found = await ledger.find(key)
    if found:
        return dict(zip(failed, (int(j) for j in found.job_ids)))
    jdl_of: dict[int, str] = {}
    for submission in await ledger.submissions():
        for job_id, jdl in zip(submission.job_ids, submission.extra.get("jdls", [])):
            jdl_of[int(job_id)] = jdl
    missing = [j for j in failed if j not in jdl_of]
    if missing:
        raise ValueError(f"job ids {missing}: not submitted by this flow run, so their JDL is unknown; "
                         "resubmit them from their job descriptions instead")
    jdls = [jdl_of[j] for j in failed]

    async def stored(api: Any) -> list[str]:
        return jdls

    new, _ = await _submit_jdls(block, key, stored, concurrency, f"resubmission {attempt}")
    await _record(block, key, new, jdls, f"resubmission {attempt}")
    run_logger().info("Resubmitted %d failed DIRAC job(s) (attempt %d)", len(new), attempt)
    return dict(zip(failed, new))


# -- tasks -------------------------------------------------------------------------------------------

@egi_task(name="dirac-submit")
async def submit_jobs(diracx: DiracXArg, jobs: Sequence[DiracJob]) -> list[int]:
    """Submit jobs — a parametric job expands to one job per parameter — never twice per flow run.

    Local input files are uploaded once as a sandbox; JDLs go in chunks of 20 (the server's
    limit); the ids are recorded in the flow run before anything waits, so a retried run
    resumes instead of submitting again, and an answer lost on the way is looked up on the
    server (every job carries a `JobGroup`) instead of sent twice.

    Args:
        diracx: a `DiracX` block or the name of a saved one.
        jobs: the job descriptions (`DiracJob`, or dicts of its fields).

    Returns:
        The DIRAC job ids, in the order of the jobs (and of their parameters).

    Raises:
        pydantic.ValidationError: a description is invalid (no executable, a `"` in an
            argument, a missing input file …), naming the field; nothing was sent.
        SubmissionIncomplete: some jobs could not be confirmed; those created are recorded.

    Example:
        ids = submit_jobs("diracx", [DiracJob(executable="echo", arguments="%s", parameters=[1, 2, 3])])
    """
    return await submit(DiracX.resolve(diracx), jobs)


@egi_task(name="dirac-wait", retries=3, retry_delay_seconds=[60, 300, 900],
          retry_condition_fn=retry_if_watch_may_recover)
async def wait_for_jobs(diracx: DiracXArg, job_ids: Sequence[int],
                        policy: WatchPolicy | None = None) -> dict[str, JobStatus]:
    """Wait until every job has ended, with ONE status request per cycle for the whole batch.

    A 401 marks the access token expired so diracx-client refreshes it; 5xx, resets and
    timeouts are absorbed with a backoff; the UI shows progress, an event per transition
    and a table of final states.

    Args:
        diracx: a `DiracX` block or the name of a saved one.
        job_ids: the jobs to wait for.
        policy: how to pace and how long to wait (a week at most by default).

    Returns:
        Each job's final `JobStatus` by job id (as a string); `detail` holds DIRAC's
        status, minor status, application status and site.

    Raises:
        WatchDeadlineExceeded: the deadline passed (the jobs keep running).
        WatchGaveUp: DiracX kept failing or refused the credentials.

    Example:
        final = wait_for_jobs("diracx", ids)
        failed = [j for j, s in final.items() if s.state is JobState.FAILED]
    """
    async with DiracX.resolve(diracx).job_adapter() as adapter:
        return await watch(adapter, [str(j) for j in job_ids], policy, PrefectReporter(adapter, "DIRAC jobs"))


@egi_task(name="dirac-fetch-outputs", retries=2, retry_delay_seconds=10)
async def fetch_job_outputs(diracx: DiracXArg, job_ids: Sequence[int],
                            destination: str = "dirac-outputs") -> list[JobOutput]:
    """Download and unpack every job's output sandbox into `<destination>/<job id>/`.

    Args:
        diracx: a `DiracX` block or the name of a saved one.
        job_ids: the jobs whose outputs to fetch.
        destination: the folder to unpack into.

    A job whose sandbox cannot be had — DiracX refuses it (e.g. `403 Invalid PFN`: uploaded
    by another identity), it cannot be unpacked, or DiracX kept failing — is reported on
    that job (`error`), and the others are fetched.

    Returns:
        One `JobOutput` per job: its folder and files, a note ("no output sandbox"), or the
        reason its sandbox could not be fetched (`error`).

    Raises:
        CredentialsRejected: DiracX refused the credentials.
        TransientServiceError: DiracX could not be reached at all (the task retries twice first).

    Example:
        for output in fetch_job_outputs("diracx", ids, destination="outputs"):
            print(output.job_id, output.files)
    """
    return await collect_outputs(DiracX.resolve(diracx).client(), job_ids, destination)


@egi_task(name="dirac-resubmit")
async def resubmit_jobs(diracx: DiracXArg, job_ids: Sequence[int], attempt: int = 1) -> dict[int, int]:
    """Submit failed jobs again as new jobs, from the JDLs this flow run recorded — once per attempt.

    Args:
        diracx: a `DiracX` block or the name of a saved one.
        job_ids: failed jobs this flow run (or this process, outside a run) submitted.
        attempt: the resubmission round (each round is submitted once per flow run).

    Returns:
        {old job id: new job id}.

    Raises:
        ValueError: a job was not submitted by this flow run, so its JDL is unknown.

    Example:
        replaced = resubmit_jobs("diracx", failed, attempt=1)
    """
    return await resubmit(DiracX.resolve(diracx), job_ids, attempt)


@egi_task(name="dirac-kill")
async def kill_jobs(diracx: DiracXArg, job_ids: Sequence[int]) -> dict[str, str]:
    """Kill jobs, then read back what the server says about each.

    Args:
        diracx: a `DiracX` block or the name of a saved one.
        job_ids: the jobs to kill.

    Returns:
        {job id: DIRAC status after the kill} — `Killed`, or the final status of a job
        that had already ended (a Done job stays Done).

    Raises:
        CredentialsRejected / TransientServiceError: DiracX refused the credentials, or did not answer.

    Example:
        kill_jobs("diracx", ids)
    """
    async with DiracX.resolve(diracx).job_adapter() as adapter:
        statuses = await adapter.cancel([str(j) for j in job_ids])
    return {job: status.detail.get("status", status.state.value) for job, status in statuses.items()}


async def _show_login(block: DiracX, code: DeviceCode) -> None:
    run_logger().warning(
        "DiracX login for VO %s: open %s and approve (user code %s) within %d s",
        block.vo, code.verification_uri_complete, code.user_code, code.expires_in)
    if in_run():
        from prefect.artifacts import acreate_link_artifact

        await publish(  # the link and the code are in the log line above too
            "login link", acreate_link_artifact, key="diracx-login", link=code.verification_uri_complete,
            link_text=f"Log in to DiracX ({block.vo}) — user code {code.user_code}",
            description=f"Open the link and approve the login at your identity provider within "
                        f"{code.expires_in} s. The flow continues by itself once you have.")


@egi_task(name="dirac-login", persist_result=False)
async def dirac_login(diracx: DiracXArg, deadline_seconds: float = 600.0) -> str:
    """Log in to DiracX with the device flow (what `dirac login` does), from a flow.

    The link and user code appear in the run's log and as a link artifact (key
    `diracx-login`); approve the login at your identity provider (EGI Check-in) and the
    credentials are written, mode 0600, where the block reads them.

    Args:
        diracx: the `DiracX` block (or its saved name) to log in for.
        deadline_seconds: how long to wait for the approval.

    Returns:
        The credentials file's path.

    Raises:
        DiracLoginFailed: the login was denied, expired or not approved in time.
        ValueError: the block has a refresh token already (it would not read the file).

    Example:
        await dirac_login("diracx")          # in an async flow; `dirac_login("diracx")` in a sync one
    """
    block = DiracX.resolve(diracx)
    path = await device_login(block.client(), deadline_seconds=deadline_seconds,
                              on_code=lambda code: _show_login(block, code), log=run_logger())
    return str(path)


# -- a whole batch ---------------------------------------------------------------------------------

class FailedJob(BaseModel):
    """A job that still failed after every resubmission."""

    job_id: int
    status: str
    minor_status: str = ""


class DiracBatchReport(BaseModel):
    """What happened to the batch: counts, the jobs that kept failing, the outputs."""

    submitted: int
    jobs: list[int] = Field(default_factory=list, description="The final job of each submitted one, in order.")
    resubmitted: int
    succeeded: int
    failed: list[FailedJob] = Field(default_factory=list)
    outputs: list[JobOutput] = Field(default_factory=list)
    destination: str

    def markdown(self) -> str:
        lines = ["# DIRAC batch", "",
                 f"{self.submitted} submitted, {self.resubmitted} resubmitted, {self.succeeded} succeeded, "
                 f"{len(self.failed)} failed.", "", f"Outputs under `{self.destination}`.", ""]
        if self.failed:
            lines += ["| failed job | status | minor status |", "|---|---|---|"]
            lines += [f"| {f.job_id} | {f.status} | {f.minor_status} |" for f in self.failed] + [""]
        unavailable = [o for o in self.outputs if o.error]
        if unavailable:
            lines += ["| job | output sandbox unavailable |", "|---|---|"]
            lines += [f"| {o.job_id} | {o.error} |" for o in unavailable] + [""]
        missing = [o for o in self.outputs if o.path is None and not o.error]
        if missing:
            lines += ["Jobs without an output sandbox: " + ", ".join(str(o.job_id) for o in missing)]
        return "\n".join(lines)


@egi_task(name="dirac-run-batch")
async def run_batch(diracx: DiracXArg, job: DiracJob, max_resubmissions: int = 2,
                    destination: str = "dirac-outputs", policy: WatchPolicy | None = None) -> DiracBatchReport:
    """A (parametric) batch end to end: submit, wait, resubmit failures, collect the outputs.

    DIRAC's counterpart of `run_algorithm`: each step is a task run of its own
    (`dirac-submit`, `dirac-wait`, `dirac-resubmit`, `dirac-fetch-outputs`), so a retried
    flow run resumes where it was and nothing is submitted twice. A job that keeps
    failing is reported with its status, a job whose output sandbox cannot be fetched
    with the reason; the others' outputs are kept.

    Args:
        diracx: a `DiracX` block or the name of a saved one.
        job: the job description; `parameters` makes one job per value (`%s`, `%n` in any
            attribute, as in DIRAC).
        max_resubmissions: how many times a failed job is submitted again.
        destination: the folder for the output sandboxes (`<destination>/<job id>/`).
        policy: how to pace and how long to wait (a week at most by default).

    Returns:
        A `DiracBatchReport` (counts, the final job of each submitted one, failures, outputs).

    Raises:
        pydantic.ValidationError: the job description is invalid (nothing was sent).
        SubmissionIncomplete / WatchDeadlineExceeded / WatchGaveUp: see `submit_jobs` and
            `wait_for_jobs`; jobs that failed are not errors, they are in the report.

    Example:
        report = run_batch("diracx", DiracJob(executable="echo", arguments="%s", parameters=["a", "b"]))
        print(report.markdown())
    """
    block = DiracX.resolve(diracx)
    current = [int(j) for j in await submit_jobs(block, [job])]
    final: dict[str, JobStatus] = dict(await wait_for_jobs(block, current, policy))
    resubmitted = 0
    for attempt in range(1, max_resubmissions + 1):
        failed = [int(j) for j in current if final[str(j)].state is JobState.FAILED]
        if not failed:
            break
        replaced = await resubmit_jobs(block, failed, attempt)
        resubmitted += len(replaced)
        current = [replaced.get(j, j) for j in current]
        final.update(await wait_for_jobs(block, list(replaced.values()), policy))
    done = [j for j in current if final[str(j)].state is JobState.SUCCEEDED]
    return DiracBatchReport(
        submitted=len(current), jobs=current, resubmitted=resubmitted, succeeded=len(done), destination=destination,
        failed=[FailedJob(job_id=j, status=str(final[str(j)].detail.get("status", final[str(j)].state.value)),
                          minor_status=str(final[str(j)].detail.get("minor_status") or ""))
                for j in current if final[str(j)].state is not JobState.SUCCEEDED],
        outputs=await fetch_job_outputs(block, done, destination) if done else [],
    )
