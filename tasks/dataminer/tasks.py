"""D4Science DataMiner tasks: list, describe, execute, wait, fetch — or all at once.

    from prefect_egi.tasks import DataMiner, run_algorithm

    result = run_algorithm("dataminer", "CSV_SUMMARY", {"table": "https://…/data.csv"}, destination="out")
    result.literals, result.files

Executions are asynchronous WPS 1.0 jobs, waited for by the shared engine
(`prefect_egi.tasks.remote.watch`). Inputs are validated against DescribeProcess before
anything is submitted. Submissions are recorded in the flow run's ledger, so a
retried flow run resumes watching instead of running the algorithm twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect_egi.tasks.dataminer.adapter import process_id
from prefect_egi.tasks.dataminer.block import DataMiner
from prefect_egi.tasks.dataminer.client import (
    ExecuteOutcomeUnknown,
    ProcessDescription,
    ProcessSummary,
    WPSError,
    build_inputs,
    short_name,
)
from prefect_egi.tasks.dataminer.outputs import DataMinerExecutionFailed, DataMinerResult, collect_outputs
from prefect_egi.tasks.job_ledger import JobLedger, Submission, submission_key
from prefect_egi.tasks.remote import JobState, JobStatus, WatchPolicy, watch
from prefect_egi.tasks.reporting import PrefectReporter, in_run, publish, run_logger
from prefect_egi.tasks.task_base import egi_task, retry_if_watch_may_recover

DataMinerArg = DataMiner | str | None


def _dataminer(block: DataMinerArg) -> DataMiner:
    """The block, the saved block of that name, or the default one (GCUBE_TOKEN, EGI's DataMiner)."""
    return DataMiner() if block is None else DataMiner.resolve(block)


@egi_task(name="dataminer-list-processes", retries=2, retry_delay_seconds=5)
async def list_processes(dataminer: DataMinerArg = None) -> list[ProcessSummary]:
    """Every algorithm the DataMiner offers.

    Args:
        dataminer: a `DataMiner` block, the name of a saved one, or None for the default
            (EGI's DataMiner, `GCUBE_TOKEN` from the environment).

    Returns:
        One `ProcessSummary` (identifier, title, abstract) per algorithm.

    Raises:
        WPSAuthError: the server refused the gCube token.
        WPSError: the server could not be reached (after retries) or answered an error.

    Example:
        for process in list_processes("dataminer"):
            print(process.identifier, process.title)
    """
    async with _dataminer(dataminer).client() as client:
        return await client.processes()


@egi_task(name="dataminer-describe-process", retries=2, retry_delay_seconds=5)
async def describe_process(dataminer: DataMinerArg, process: str) -> ProcessDescription:
    """An algorithm's inputs (types, allowed values, occurrences, defaults) and outputs.

    Args:
        dataminer: a `DataMiner` block, the name of a saved one, or None for the default.
        process: the algorithm, by short name (`CSV_SUMMARY`) or full DataMiner id.

    Returns:
        The `ProcessDescription` (`.inputs`, `.outputs`).

    Raises:
        WPSServiceError: the server does not know the process.

    Example:
        description = describe_process("dataminer", "CSV_SUMMARY")
        [spec.identifier for spec in description.inputs if spec.required]
    """
    async with _dataminer(dataminer).client() as client:
        return await client.describe(process_id(process))


def _fingerprint(inputs: Mapping[str, Any]) -> list[Any]:
    return sorted((k, [str(x) for x in v] if isinstance(v, (list, tuple)) else str(v)) for k, v in inputs.items())


async def submit_execution(dataminer: DataMiner, process: str, inputs: Mapping[str, Any],
                           key: str | None = None) -> str:
    """Validate, then submit once per flow run; returns the job id (status location)."""
    identifier = process_id(process)
    ledger = JobLedger.current()
    key = key or submission_key("dataminer", dataminer.url, identifier, _fingerprint(inputs))
    found = await ledger.find(key)
    if found:
        run_logger().info("Resuming DataMiner execution %s (already submitted by this flow run)", found.job_ids[0])
        return found.job_ids[0]
    if await ledger.intended(key):
        raise ExecuteOutcomeUnknown(
            f"An earlier attempt of this flow run sent Execute for {short_name(identifier)} and never learned "
            "whether the server started it (WPS 1.0 cannot be asked). It is not sent again, so that it cannot "
            "run twice: look for its results on DataMiner, or start a new flow run to run it anew.")
    async with dataminer.client() as client:
        description = await client.describe(identifier)
        wire = build_inputs(description, inputs)  # raises before anything is submitted
        await ledger.intend(key)
        try:
            status = await client.execute(description, wire)
        except ExecuteOutcomeUnknown:
            raise  # the intent stays: a retry must not send it blindly
        except WPSError:
            await ledger.settle(key)  # refused: nothing started, a retry may send it
            raise
        job_id = client.public_url(status.status_location)
    await ledger.record(Submission.of(dataminer, key=key, service="dataminer", job_ids=[job_id],
                                      label=short_name(identifier)))
    await ledger.settle(key)
    run_logger().info("Submitted %s: %s", short_name(identifier), job_id)
    return job_id


@egi_task(name="dataminer-execute")
async def execute_process(dataminer: DataMinerArg, process: str, inputs: Mapping[str, Any]) -> str:
    """Validate the inputs, then start the algorithm asynchronously — never twice in one flow run.

    Args:
        dataminer: a `DataMiner` block, the name of a saved one, or None for the default.
        process: the algorithm, by short name or full id.
        inputs: input name → value: `str`, `int`, `float`, `bool`, a list (a repeated input);
            for a file input an http(s) URL, a `Reference` (fetched by the server: GET, or
            POST with a body such as a WFS GetFeature) or a local file path (embedded up to
            5 MB); for a bounding box a `BoundingBox` or `"minx,miny,maxx,maxy[,crs]"`.

    Returns:
        The execution's id: its public status location URL.

    Raises:
        InputValidationError: the inputs do not match the description — every problem at
            once, naming each input; nothing was sent.
        ExecuteOutcomeUnknown: the answer to Execute was lost; it is not sent again blindly.

    Example:
        job_id = execute_process("dataminer", "FAST_ECHO", {"text": "hi"})
    """
    return await submit_execution(_dataminer(dataminer), process, inputs)


@egi_task(name="dataminer-wait", retries=3, retry_delay_seconds=[60, 300, 900],
          retry_condition_fn=retry_if_watch_may_recover)
async def wait_for_executions(dataminer: DataMinerArg, job_ids: Sequence[str],
                              policy: WatchPolicy | None = None) -> dict[str, JobStatus]:
    """Wait until every execution has ended, with the shared engine.

    Polls where the reported progress says the job ends — never more often than owslib's
    `monitorExecution(sleepSecs=5)` — absorbs 5xx, resets and timeouts, and shows a
    progress artifact, an event per transition and a table of final states in the UI.

    Args:
        dataminer: a `DataMiner` block, the name of a saved one, or None for the default.
        job_ids: execution ids (status locations) from `execute_process`.
        policy: how to pace and how long to wait (`DATAMINER_WAIT` by default: a week at most).

    Returns:
        Each execution's final `JobStatus` (state, progress, the server's message).

    Raises:
        WatchDeadlineExceeded: the deadline passed (the executions may still run).
        WatchGaveUp: the server kept failing or refused the token (retried later when
            it was only unreachable).

    Example:
        statuses = wait_for_executions("dataminer", [job_id])
    """
    async with _dataminer(dataminer).job_adapter() as adapter:
        return await watch(adapter, job_ids, policy, PrefectReporter(adapter, "DataMiner executions"))


async def _show(result: DataMinerResult) -> None:
    if in_run():
        from prefect.artifacts import acreate_markdown_artifact

        await publish("DataMiner outputs", acreate_markdown_artifact, result.markdown(),
                      description="DataMiner outputs")


@egi_task(name="dataminer-fetch-outputs", retries=2, retry_delay_seconds=5)
async def fetch_outputs(dataminer: DataMinerArg, job_id: str, destination: str = "dataminer-outputs",
                        max_bytes: int = 500 * 1024 * 1024, timeout: float = 600.0,
                        process: str = "") -> DataMinerResult:
    """Download an execution's outputs into `destination/<execution id>/` and show them in the UI.

    Args:
        dataminer: a `DataMiner` block, the name of a saved one, or None for the default.
        job_id: the execution's id (status location).
        destination: the folder to download into.
        max_bytes / timeout: limits of each download (a larger or slower file is reported,
            not fatal for the others).
        process: the algorithm's name, for the report.

    Returns:
        A `DataMinerResult`: `literals` (values; a `BoundingBox` for a bounding-box output;
        the values DataMiner lists in its result block, by description, as text), `files`
        (name, type, local path or the reason it was not downloaded; a declared output that
        DataMiner lists again in its result block once), the final state and message.

    Raises:
        WPSAuthError / WPSError: the status document could not be read (a file that
            cannot be downloaded is not an error: its `error` says why).

    Example:
        result = fetch_outputs("dataminer", job_id, destination="outputs")
    """
    async with _dataminer(dataminer).client() as client:
        result = await collect_outputs(client, job_id, destination, max_bytes, timeout,
                                       process=short_name(process_id(process)) if process else "")
    await _show(result)
    return result


@egi_task(name="dataminer-run")
async def run_algorithm(dataminer: DataMinerArg, process: str, inputs: Mapping[str, Any],
                        destination: str = "dataminer-outputs", policy: WatchPolicy | None = None) -> DataMinerResult:
    """One algorithm end to end: validate, execute, wait, download.

    Each step is a task run of its own (`dataminer-execute`, `dataminer-wait`,
    `dataminer-fetch-outputs`), so the wait is retried when the server was only
    unreachable and a retried flow run resumes watching the execution it started.

    Args:
        dataminer: a `DataMiner` block, the name of a saved one, or None for the default.
        process: the algorithm, by short name or full id.
        inputs: input name → value (see `execute_process`).
        destination: the folder for the outputs (`<destination>/<execution id>/`).
        policy: how to pace and how long to wait (`DATAMINER_WAIT` by default).

    Returns:
        The `DataMinerResult` of the execution.

    Raises:
        InputValidationError: the inputs do not match the description (nothing was sent).
        DataMinerExecutionFailed: the algorithm failed; the message is the server's own.
        WatchDeadlineExceeded / WatchGaveUp: see `wait_for_executions`.

    Example:
        result = run_algorithm("dataminer", "CSV_SUMMARY", {"table": "https://…/data.csv"})
        result.literals, [f.path for f in result.files]
    """
    block = _dataminer(dataminer)
    job_id = await execute_process(block, process, inputs)
    final = (await wait_for_executions(block, [job_id], policy))[job_id]
    if final.state is not JobState.SUCCEEDED:
        raise DataMinerExecutionFailed(short_name(process_id(process)), final.message, job_id)
    return await fetch_outputs(block, job_id, destination, process=process)
