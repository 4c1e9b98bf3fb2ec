"""`dirac-batch`: a parametric batch of DIRAC jobs, end to end.

    from flows.dirac import dirac_batch
    from tasks.dirac import DiracJob
    dirac_batch(DiracJob(executable="run.sh", arguments="%s", parameters=["a", "b"], input_sandbox=["run.sh"]))

Submit (chunks of 20, recorded before waiting) → wait (one status request per
cycle for the whole batch) → resubmit failures up to `max_resubmissions` times
→ download every output sandbox → a markdown summary. Cancelling the run kills
its jobs (the hook runs in the runner's process and reads the run's ledger); a
crash leaves them running, and `prefect flow-run retry <id>` resumes watching them.
"""

from typing import Annotated

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from flows._blocks import load_named
from flows._sync import run
from tasks.artifacts import publish_sync
from tasks.dirac import DiracJob, DiracX, JobOutput, fetch_job_outputs, resubmit_jobs, submit_jobs, wait_for_jobs
from tasks.job_ledger import cancel_remote_jobs, keep_remote_jobs_on_crash
from tasks.redaction import redact_errors
from tasks.remote import JobState, JobStatus, WatchPolicy


class FailedJob(BaseModel):
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
        missing = [o for o in self.outputs if o.path is None]
        if missing:
            lines += ["Jobs without an output sandbox: " + ", ".join(str(o.job_id) for o in missing)]
        return "\n".join(lines)


async def run_batch(block: DiracX, job: DiracJob, policy: WatchPolicy, max_resubmissions: int,
                    destination: str) -> DiracBatchReport:
    """Submit, wait, resubmit failures up to `max_resubmissions` times, fetch outputs — as
    task runs of the calling flow (also the pipeline's grid stage)."""
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


@flow(name="dirac-batch", on_cancellation=[cancel_remote_jobs], on_crashed=[keep_remote_jobs_on_crash])
@redact_errors
def dirac_batch(
    job: DiracJob,
    diracx_block: str = "diracx",
    destination: str = "dirac-outputs",
    max_resubmissions: Annotated[int, Field(ge=0, le=10)] = 2,
    deadline_hours: Annotated[float, Field(gt=0)] = 48.0,
) -> DiracBatchReport:
    """Submit a (parametric) DIRAC job, wait, resubmit failures, collect outputs.

    Args:
        job: The job description; `parameters` makes one job per value (`%s` in arguments).
        diracx_block: Name of the DiracX block (server, VO, credentials) to use.
        destination: Folder for the output sandboxes, one sub-folder per job id.
        max_resubmissions: How many times a failed job is submitted again.
        deadline_hours: Give up waiting after this many hours (jobs keep running).
    """
    block = load_named(DiracX, diracx_block, "diracx_block")
    report = run(run_batch(block, job, WatchPolicy(deadline=deadline_hours * 3600), max_resubmissions, destination))
    publish_sync("batch summary", create_markdown_artifact, report.markdown(), key="dirac-batch",
                 description="DIRAC batch summary")
    return report
