"""`dirac-batch`: a parametric batch of DIRAC jobs, end to end.

    from prefect_egi.flows import dirac_batch
    from prefect_egi.tasks import DiracJob
    dirac_batch(DiracJob(executable="run.sh", arguments="%s", parameters=["a", "b"], input_sandbox=["run.sh"]))

Submit (chunks of 20, recorded before waiting) → wait (one status request per
cycle for the whole batch) → resubmit failures up to `max_resubmissions` times
→ download every output sandbox (the `run_batch` task) → a markdown summary.
Cancelling the run kills its jobs (the hook runs in the runner's process and reads
the run's ledger); a crash leaves them running, and `prefect flow-run retry <id>`
resumes watching them.
"""

from typing import Annotated

from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from prefect_egi.flows.base import egi_flow, load_block
from prefect_egi.tasks import DiracBatchReport, DiracJob, DiracX, WatchPolicy, run_batch
from prefect_egi.tasks.reporting import publish_sync


@egi_flow(name="dirac-batch")
def dirac_batch(
    job: DiracJob,
    diracx_block: str = "diracx",
    destination: str = "dirac-outputs",
    max_resubmissions: Annotated[int, Field(ge=0, le=10)] = 2,
    deadline_hours: Annotated[float, Field(gt=0)] = 48.0,
) -> DiracBatchReport:
    """Submit a (parametric) DIRAC job, wait, resubmit failures, collect outputs.

    Args:
        job: The job description; `parameters` makes one job per value (`%s`, `%(name)s` and `%n` in any
            attribute are replaced per job, as in DIRAC).
        diracx_block: Name of the DiracX block (server, VO, credentials) to use.
        destination: Folder for the output sandboxes, one sub-folder per job id.
        max_resubmissions: How many times a failed job is submitted again.
        deadline_hours: Give up waiting after this many hours (jobs keep running).
    """
    block = load_block(DiracX, diracx_block, "diracx_block")
    report = run_batch(block, job, max_resubmissions, destination, WatchPolicy(deadline=deadline_hours * 3600))
    publish_sync("batch summary", create_markdown_artifact, report.markdown(), key="dirac-batch",
                 description="DIRAC batch summary")
    return report
