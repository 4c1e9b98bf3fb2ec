"""`dataminer-run`: run one D4Science DataMiner algorithm and bring its outputs back.

    from flows.dataminer import dataminer_run
    dataminer_run(process="CSV_SUMMARY", inputs={"table": "https://…/data.csv"})

Submit → wait (live progress in the UI) → download. Transient failures are
retried where they happen (lookups, the wait, downloads — never the Execute
itself); a retried flow run resumes watching the execution it already started;
cancelling the run marks the execution cancelled (WPS 1.0 cannot stop it); a
crash leaves it running, and `prefect flow-run retry <id>` resumes watching it.
"""


from dataclasses import replace
from typing import Annotated, Any

from prefect import flow
from pydantic import Field

from flows._blocks import load_named
from flows._sync import run
from tasks.dataminer import (
    DATAMINER_WAIT,
    DataMiner,
    DataMinerExecutionFailed,
    DataMinerResult,
    execute_process,
    fetch_outputs,
    wait_for_executions,
)
from tasks.job_ledger import cancel_remote_jobs, keep_remote_jobs_on_crash
from tasks.redaction import redact_errors
from tasks.remote import JobState


@flow(
    name="dataminer-run",
    description="Run a D4Science DataMiner algorithm, wait for it, download its outputs.",
    on_cancellation=[cancel_remote_jobs],
    on_crashed=[keep_remote_jobs_on_crash],
)
@redact_errors
def dataminer_run(
    process: str,
    inputs: dict[str, Any] = {},  # noqa: B006 - Prefect copies parameters; shown as {} in the UI form
    dataminer_block: str = "dataminer",
    destination: str = "dataminer-outputs",
    deadline_hours: Annotated[float, Field(gt=0)] = 24.0,
) -> DataMinerResult:
    """Run a D4Science DataMiner algorithm, wait for it, download its outputs.

    Args:
        process: The algorithm: its short name (CSV_SUMMARY) or its full DataMiner id.
        inputs: Input name → value. Lists repeat an input; http(s) URLs and local
            file paths feed file inputs.
        dataminer_block: Name of the D4Science DataMiner block to use.
        destination: Folder for the downloaded outputs.
        deadline_hours: Give up waiting after this many hours (the job may go on).
    """
    block = load_named(DataMiner, dataminer_block, "dataminer_block")
    job_id = run(execute_process(block, process, inputs))
    policy = replace(DATAMINER_WAIT, deadline=deadline_hours * 3600)
    final = run(wait_for_executions(block, [job_id], policy))[job_id]
    if final.state is not JobState.SUCCEEDED:
        raise DataMinerExecutionFailed(process, final.message, job_id)
    return run(fetch_outputs(block, job_id, destination, process=process))
