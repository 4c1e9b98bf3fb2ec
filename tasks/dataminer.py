"""D4Science DataMiner: the `DataMiner` block, its engine adapter and tasks.

    from tasks.dataminer import DataMiner, run_algorithm

    dm = DataMiner()                                  # GCUBE_TOKEN from the environment
    result = run_algorithm(dm, "CSV_SUMMARY", {"table": "https://…/data.csv"}, destination="out")

Executions are asynchronous WPS 1.0 jobs, waited for by the shared engine
(`tasks.remote.watch`). Inputs are validated against DescribeProcess before
anything is submitted. Submissions are recorded in the flow run's ledger, so a
retried flow run resumes watching instead of running the algorithm twice.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from prefect import task
from pydantic import BaseModel, Field, SecretStr, field_validator

from tasks.block_base import EgiBlock
from tasks.http import require_https, tls_verify
from tasks.job_ledger import JobLedger, Submission, submission_key
from tasks.redaction import redact_errors, register_all
from tasks.remote import (
    JobState,
    JobStatus,
    PrefectReporter,
    RemoteJobAdapter,
    WatchPolicy,
    in_run,
    retry_if_watch_may_recover,
    run_logger,
    watch,
)
from tasks.wps import (
    ExecuteOutcomeUnknown,
    ExecutionStatus,
    ProcessDescription,
    ProcessSummary,
    ResultFile,
    WPSClient,
    WPSError,
    build_inputs,
    parse_result_files,
    short_name,
)

DEFAULT_DATAMINER_URL = "https://dataminer-prototypes.d4science.org/wps/WebProcessingService"
DATAMINER_PREFIX = "org.gcube.dataanalysis.wps.statisticalmanager.synchserver.mappedclasses.transducerers."

#: How executions are waited for unless a policy is given (the adapter's default):
#: never more status requests than owslib's `monitorExecution(sleepSecs=5)` would
#: send, placed where the reported progress says the end is. The first look comes
#: at 2 s: it either sees a short job done or sees enough progress to place the
#: others (`tests/benchmarks/sim_pacing.py` measures the choice over 2,000 model jobs).
DATAMINER_WAIT = WatchPolicy(first_interval=2.0, request_budget=5.0)


def process_id(name: str) -> str:
    """`CSV_SUMMARY` → the full DataMiner id; full ids pass through."""
    return name if "." in name else DATAMINER_PREFIX + name


class DataMiner(EgiBlock):
    """A D4Science DataMiner (WPS 1.0) endpoint and the gCube token to use it."""

    _block_type_name = "D4Science DataMiner"
    _block_type_slug = "egi-dataminer"
    _logo_url = "https://www.d4science.org/image/layout_set_logo?img_id=12630"  # type: ignore[assignment]
    _documentation_url = "https://dev.d4science.org/dataminer"  # type: ignore[assignment]

    url: str = Field(default=DEFAULT_DATAMINER_URL, description="WPS endpoint of the DataMiner.")
    gcube_token: SecretStr | None = Field(
        default=None, description="gCube token; empty: GCUBE_TOKEN from the environment (set in D4Science notebooks).")
    token_mode: Literal["header", "query", "basic"] = Field(
        default="header", description="How to send the token: gcube-token header, query parameter or basic auth.")
    verify_tls: bool = Field(default=True, description="Verify the server's TLS certificate.")
    ca_bundle: str | None = Field(default=None, description="CA bundle for the server (instead of the system one).")
    timeout_seconds: float = Field(default=30.0, gt=0, description="Timeout of each HTTP request.")


    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        return require_https(value, "url")

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        register_all([self.gcube_token])

    def token(self) -> SecretStr | None:
        if self.gcube_token is not None and self.gcube_token.get_secret_value():
            return self.gcube_token
        env = os.environ.get("GCUBE_TOKEN")
        return SecretStr(env) if env else None

    def client(self) -> WPSClient:
        return WPSClient(self.url, token=self.token(), token_mode=self.token_mode,
                         verify=tls_verify(self.verify_tls, self.ca_bundle, what=f"DataMiner {self.url}"),
                         timeout=self.timeout_seconds)

    def job_adapter(self) -> "DataMinerAdapter":
        return DataMinerAdapter(self.client())


class DataMinerAdapter(RemoteJobAdapter):
    """WPS executions for the engine. Job id = the public status location URL."""

    service = "dataminer"
    default_policy = DATAMINER_WAIT

    def __init__(self, client: WPSClient, concurrency: int = 8):
        self.client = client
        self._limit = asyncio.Semaphore(concurrency)
        self.last: dict[str, ExecutionStatus] = {}

    async def poll(self, job_ids: Sequence[str]) -> Mapping[str, JobStatus]:
        """WPS 1.0 has no bulk status: one GET per job, concurrently, on one connection pool."""

        async def one(job_id: str) -> tuple[str, JobStatus]:
            async with self._limit:
                status = await self.client.status(job_id)
            self.last[job_id] = status
            return job_id, JobStatus(job_id, status.state, status.progress, status.message)

        return dict(await asyncio.gather(*(one(j) for j in job_ids)))

    async def cancel(self, job_ids: Sequence[str]) -> Mapping[str, JobStatus]:
        """WPS 1.0 has no dismiss: record the request; the server may still finish the job."""
        return {j: JobStatus(j, JobState.CANCELLED, None,
                             "cancellation requested (WPS 1.0 cannot stop a running computation)") for j in job_ids}

    def job_label(self, job_id: str) -> str:
        query = parse_qs(urlsplit(job_id).query)
        return (query.get("id") or [Path(urlsplit(job_id).path).stem])[0]

    def job_link(self, job_id: str) -> str | None:
        return job_id


# -- results -------------------------------------------------------------------------------------

class OutputFile(BaseModel):
    """A file an execution produced, downloaded (or not, with the reason)."""

    name: str
    description: str = ""
    mime_type: str = ""
    url: str
    path: str | None = None
    size: int | None = None
    error: str | None = None


class DataMinerResult(BaseModel):
    """What an execution returned: literal values, files, and where it ran."""

    process: str
    status_location: str
    state: str
    message: str = ""
    literals: dict[str, Any] = Field(default_factory=dict)
    files: list[OutputFile] = Field(default_factory=list)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "output"


def _dataminer(block: DataMiner | str | None) -> DataMiner:
    """The block, the saved block of that name, or the default one (GCUBE_TOKEN, EGI's DataMiner)."""
    return DataMiner() if block is None else DataMiner.resolve(block)


# -- tasks ---------------------------------------------------------------------------------------

@task(name="dataminer-list-processes", retries=2, retry_delay_seconds=5)
@redact_errors
async def list_processes(dataminer: DataMiner | str | None = None) -> list[ProcessSummary]:
    """Every algorithm the DataMiner offers (id, title, abstract)."""
    client = _dataminer(dataminer).client()
    try:
        return await client.processes()
    finally:
        await client.aclose()


@task(name="dataminer-describe-process", retries=2, retry_delay_seconds=5)
@redact_errors
async def describe_process(dataminer: DataMiner | str | None, process: str) -> ProcessDescription:
    """Inputs (types, allowed values, occurrences, defaults) and outputs of an algorithm."""
    client = _dataminer(dataminer).client()
    try:
        return await client.describe(process_id(process))
    finally:
        await client.aclose()


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
    client = dataminer.client()
    try:
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
    finally:
        await client.aclose()
    job_id = client.public_url(status.status_location)
    await ledger.record(Submission(
        key=key, service="dataminer", job_ids=[job_id], label=short_name(identifier),
        block_type=DataMiner.get_block_type_slug(), block_name=getattr(dataminer, "_block_document_name", None)))
    await ledger.settle(key)
    run_logger().info("Submitted %s: %s", short_name(identifier), job_id)
    return job_id


def _fingerprint(inputs: Mapping[str, Any]) -> list[Any]:
    return sorted((k, [str(x) for x in v] if isinstance(v, (list, tuple)) else str(v)) for k, v in inputs.items())


@task(name="dataminer-execute")
@redact_errors
async def execute_process(dataminer: DataMiner | str | None, process: str, inputs: Mapping[str, Any]) -> str:
    """Submit an algorithm asynchronously (never twice in one flow run); returns the job id."""
    return await submit_execution(_dataminer(dataminer), process, inputs)


@task(name="dataminer-wait", retries=3, retry_delay_seconds=[60, 300, 900],
      retry_condition_fn=retry_if_watch_may_recover)
@redact_errors
async def wait_for_executions(dataminer: DataMiner | str | None, job_ids: Sequence[str],
                              policy: WatchPolicy | None = None) -> dict[str, JobStatus]:
    """Wait for executions with the shared engine (progress artifact, events, table)."""
    adapter = _dataminer(dataminer).job_adapter()
    try:
        return await watch(adapter, job_ids, policy, PrefectReporter(adapter, "DataMiner executions"))
    finally:
        await adapter.client.aclose()


async def collect_outputs(dataminer: DataMiner, job_id: str, destination: str | Path,
                          max_bytes: int = 500 * 1024 * 1024, timeout: float = 600.0,
                          process: str = "") -> DataMinerResult:
    """Literal outputs as values; referenced and DataMiner result files downloaded."""
    client = dataminer.client()
    try:
        status = await client.status(job_id)
        result = DataMinerResult(process=process, status_location=job_id, state=status.state.value,
                                 message=status.message)
        if status.state is not JobState.SUCCEEDED:
            return result
        folder = Path(destination).expanduser() / _safe_name(DataMinerAdapter(client).job_label(job_id))
        wanted: list[tuple[str, ResultFile]] = []
        for output in status.outputs:
            if output.reference:
                suffix = Path(urlsplit(output.reference).path).suffix
                wanted.append((output.identifier + suffix,
                               ResultFile(output.identifier, output.mime_type or "", output.reference)))
            elif output.embedded is not None and output.identifier == "non_deterministic_output":
                wanted += [(f"{i:02d}-{Path(urlsplit(f.url).path).name}", f)
                           for i, f in enumerate(parse_result_files(output.embedded), start=1)]
            elif output.embedded is not None:
                result.literals[output.identifier] = output.embedded
            else:
                result.literals[output.identifier] = output.value

        async def fetch(name: str, item: ResultFile) -> OutputFile:
            file = OutputFile(name=name, description=item.description, mime_type=item.mime_type,
                              url=client.public_url(item.url))
            try:
                path = await client.download(item.url, folder / _safe_name(name), max_bytes, timeout)
                file.path, file.size = str(path), path.stat().st_size
            except Exception as exc:  # one bad file must not lose the others
                file.error = client.scrub(str(exc)) or type(exc).__name__
            return file

        result.files = list(await asyncio.gather(*(fetch(n, f) for n, f in wanted)))
        return result
    finally:
        await client.aclose()


@task(name="dataminer-fetch-outputs", retries=2, retry_delay_seconds=5)
@redact_errors
async def fetch_outputs(dataminer: DataMiner | str | None, job_id: str, destination: str = "dataminer-outputs",
                        max_bytes: int = 500 * 1024 * 1024, timeout: float = 600.0,
                        process: str = "") -> DataMinerResult:
    """Download an execution's outputs into `destination/<execution id>/` and show them."""
    result = await collect_outputs(_dataminer(dataminer), job_id, destination, max_bytes, timeout,
                                   process=short_name(process_id(process)) if process else "")
    await _publish(result)
    return result


async def _publish(result: DataMinerResult) -> None:
    if not in_run():
        return
    from prefect.artifacts import acreate_markdown_artifact

    from tasks.artifacts import publish

    lines = [f"# DataMiner {result.process or 'execution'}: {result.state}", "",
             f"Status: <{result.status_location}>", ""]
    if result.message:
        lines += [f"> {result.message}", ""]
    if result.literals:
        lines += ["| output | value |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in result.literals.items()] + [""]
    if result.files:
        lines += ["| file | description | type | size | saved to |", "|---|---|---|---|---|"]
        for f in result.files:
            saved = f"`{f.path}`" if f.path else f"not downloaded: {f.error}"
            lines.append(f"| [{f.name}]({f.url}) | {f.description} | {f.mime_type} | {f.size or ''} | {saved} |")
    await publish("DataMiner outputs", acreate_markdown_artifact, "\n".join(lines), description="DataMiner outputs")


@task(name="dataminer-run")
@redact_errors
async def run_algorithm(dataminer: DataMiner | str | None, process: str, inputs: Mapping[str, Any],
                        destination: str = "dataminer-outputs", policy: WatchPolicy | None = None) -> DataMinerResult:
    """Validate, submit, wait, fetch: one algorithm end to end. A failed execution raises
    `DataMinerExecutionFailed` with the server's own message."""
    block = _dataminer(dataminer)
    job_id = await submit_execution(block, process, inputs)
    adapter = block.job_adapter()
    try:
        statuses = await watch(adapter, [job_id], policy,
                               PrefectReporter(adapter, f"DataMiner {short_name(process_id(process))}"))
    finally:
        await adapter.client.aclose()
    final = statuses[job_id]
    if final.state is not JobState.SUCCEEDED:
        raise DataMinerExecutionFailed(short_name(process_id(process)), final.message, job_id)
    result = await collect_outputs(block, job_id, destination, process=short_name(process_id(process)))
    await _publish(result)
    return result


class DataMinerExecutionFailed(Exception):
    """The algorithm ended in ProcessFailed; the message is the server's text."""

    def __init__(self, process: str, message: str, job_id: str):
        self.process, self.server_message, self.job_id = process, message, job_id
        super().__init__(f"DataMiner {process} failed: {message} ({job_id})")

    def __reduce__(self):
        return (type(self), (self.process, self.server_message, self.job_id))
