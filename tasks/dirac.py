"""DIRAC grid jobs through DiracX: the `DiracX` block, typed job descriptions,
bulk submission, the engine adapter and tasks.

    from tasks.dirac import DiracX, DiracJob, submit_jobs, wait_for_jobs

    dirac = DiracX(url="https://diracx.example.org", vo="biomed", group="biomed_user")
    job = DiracJob(executable="analyse.sh", arguments="--input %s", parameters=["a", "b", "c"],
                   input_sandbox=["analyse.sh"], output_sandbox=["result.csv"])
    ids = submit_jobs(dirac, [job])          # three jobs, one per parameter
    wait_for_jobs(dirac, ids)

Submissions go in chunks of 20 JDLs (the server's limit) and are recorded in
the flow run's ledger first, so a retried run never submits the same batch twice.
Waiting is ONE `search` per poll cycle for all jobs, through the shared engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import task
from pydantic import BaseModel, Field, PrivateAttr, SecretStr, field_validator, model_validator

from tasks.block_base import EgiBlock
from tasks.dirac_submission import MAX_JDLS_PER_CALL, SubmissionIncomplete, submit_exactly_once
from tasks.http import certificate_error, is_certificate_failure, require_https, tls_verify
from tasks.job_ledger import JobLedger, Submission, submission_key
from tasks.redaction import redact_errors, register_all
from tasks.remote import (
    CredentialsRejected,
    JobState,
    JobStatus,
    PrefectReporter,
    RemoteJobAdapter,
    TransientServiceError,
    WatchPolicy,
    retry_if_watch_may_recover,
    run_logger,
    watch,
)

MAX_PER_PAGE = 10_000  # DiracX caps search pages here

DIRAC_STATES = {
    "Received": JobState.QUEUED, "Checking": JobState.QUEUED, "Staging": JobState.QUEUED,
    "Waiting": JobState.QUEUED, "Matched": JobState.QUEUED, "Rescheduled": JobState.QUEUED,
    "Running": JobState.RUNNING, "Completing": JobState.RUNNING, "Stalled": JobState.RUNNING,
    "Completed": JobState.RUNNING, "Done": JobState.SUCCEEDED, "Failed": JobState.FAILED,
    "Killed": JobState.CANCELLED, "Deleted": JobState.CANCELLED,
}


# -- job descriptions ----------------------------------------------------------------------------

def _quote(field: str, value: str) -> str:
    if '"' in value or "\n" in value or "\r" in value:
        raise ValueError(f"{field}: {value!r} cannot be written into JDL (no double quotes or newlines)")
    return f'"{value}"'


def _jdl_list(field: str, values: Sequence[str]) -> str:
    return "{" + ", ".join(_quote(field, v) for v in values) + "}"


class DiracJob(BaseModel):
    """One job, or one per parameter (`parameters` + `%s` in `arguments`/`job_name`)."""

    executable: str = Field(description="Program or script to run (put a script in input_sandbox).")
    arguments: str = Field(default="", description="Command-line arguments; %s is replaced by the parameter.")
    input_sandbox: list[str] = Field(default_factory=list,
                                     description="Local files to upload, or existing SB:… / LFN: references.")
    output_sandbox: list[str] = Field(default_factory=lambda: ["std.out", "std.err"],
                                      description="Files to bring back.")
    stdout: str = "std.out"
    stderr: str = "std.err"
    job_name: str = Field(default="prefect-egi", description="Name; %s is replaced by the parameter.")
    job_group: str | None = None
    site: list[str] = Field(default_factory=list, description="Sites to run at (empty: any).")
    banned_sites: list[str] = Field(default_factory=list)
    cpu_time: int | None = Field(default=None, gt=0, description="CPU time in seconds.")
    tags: list[str] = Field(default_factory=list)
    platform: str | None = None
    parameters: list[str | int | float] = Field(default_factory=list, description="One job per parameter.")

    @field_validator("executable")
    @classmethod
    def _executable_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("executable: give the program or script to run")
        return value

    @model_validator(mode="after")
    def _checked(self) -> "DiracJob":
        for path in self.local_inputs():
            if not path.is_file():
                raise ValueError(f"input_sandbox: {path} does not exist (or is not a file)")
        for name in ("executable", "arguments", "stdout", "stderr", "job_name", "job_group", "platform"):
            value = getattr(self, name)
            if value:
                _quote(name, str(value))
        for name in ("output_sandbox", "site", "banned_sites", "tags"):
            _jdl_list(name, getattr(self, name))
        _jdl_list("parameters", [str(p) for p in self.parameters])
        return self

    def local_inputs(self) -> list[Path]:
        return [Path(p).expanduser() for p in self.input_sandbox if not p.startswith(("SB:", "LFN:"))]

    def to_jdls(self, uploaded: str | None = None) -> list[str]:
        """One JDL per parameter (or one). `uploaded` is the SB: reference of the local inputs."""
        references = [p for p in self.input_sandbox if p.startswith(("SB:", "LFN:"))]
        if uploaded:
            references.insert(0, uploaded)
        parameters: list[str | None] = [str(p) for p in self.parameters] or [None]
        return [self._jdl(p, references) for p in parameters]

    def _jdl(self, parameter: str | None, sandbox: list[str]) -> str:
        def fill(text: str) -> str:
            return text.replace("%s", parameter) if parameter is not None else text

        # (JDL attribute, field named in errors, value); empty values are left out
        attributes: list[tuple[str, str, Any]] = [
            ("Executable", "executable", self.executable),
            ("JobName", "job_name", fill(self.job_name)),
            ("StdOutput", "stdout", self.stdout),
            ("StdError", "stderr", self.stderr),
            ("OutputSandbox", "output_sandbox", self.output_sandbox),
            ("Arguments", "arguments", fill(self.arguments)),
            ("InputSandbox", "input_sandbox", sandbox),
            ("JobGroup", "job_group", self.job_group),
            ("Site", "site", self.site),
            ("BannedSites", "banned_sites", self.banned_sites),
            ("CPUTime", "cpu_time", self.cpu_time),
            ("Tags", "tags", self.tags),
            ("Platform", "platform", self.platform),
            ("Parameter", "parameters", parameter),
        ]
        lines = []
        for attribute, field, value in attributes:
            if value is None or value == "" or value == []:
                continue
            if isinstance(value, list):
                text = _jdl_list(field, value)
            elif isinstance(value, int):
                text = str(value)
            else:
                text = _quote(field, str(value))
            lines.append(f"{attribute} = {text};")
        return "\n".join(lines)


# -- the block -----------------------------------------------------------------------------------

class DiracX(EgiBlock):
    """A DiracX server and the credentials of one VO/group on it."""

    _block_type_name = "DiracX"
    _block_type_slug = "egi-diracx"
    _logo_url = "https://diracgrid.org/images/dirac-logo.png"  # type: ignore[assignment]
    _documentation_url = "https://diracx.diracgrid.org/"  # type: ignore[assignment]

    url: str = Field(description="DiracX server URL.")
    vo: str = Field(description="Virtual organisation.")
    group: str | None = Field(default=None, description="DIRAC group (the VO's default when empty).")
    credentials_path: str | None = Field(default=None, description="A DiracX credentials file (what `dirac login` writes).")
    refresh_token: SecretStr | None = Field(default=None, description="A DiracX refresh token, instead of a file.")
    verify_tls: bool = Field(default=True, description="Verify the server's TLS certificate.")
    ca_bundle: str | None = Field(default=None, description="CA bundle (file or directory) for the server.")
    timeout_seconds: float = Field(default=120.0, gt=0, description="Read timeout of each request to DiracX.")

    _private_credentials: Path | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        register_all([self.refresh_token])

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        return require_https(value, "url")

    def credentials_file(self) -> Path:
        """The credentials file the client uses; a refresh token becomes a private (0600) one."""
        if self.refresh_token is not None:
            if self._private_credentials is None:
                folder = Path(tempfile.mkdtemp(prefix="prefect-egi-diracx-"))
                path = folder / "credentials.json"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
                with os.fdopen(fd, "w") as handle:
                    json.dump({"access_token": "", "refresh_token": self.refresh_token.get_secret_value(),
                               "expires_on": 0}, handle)
                self._private_credentials = path
            return self._private_credentials
        path = self.credentials_target()
        if not path.is_file():
            raise ValueError(f"credentials_path: {path} does not exist; run `dirac login` or set refresh_token")
        return path

    def credentials_target(self) -> Path:
        """Where this block's credentials file is (or will be, after a device login)."""
        if self.refresh_token is not None:
            return self.credentials_file()
        return Path(self.credentials_path or os.environ.get(
            "DIRACX_CREDENTIALS_PATH", "~/.cache/diracx/credentials.json")).expanduser()

    def usable_credentials(self) -> Path:
        """The credentials file, refusing one whose token expired with nothing to renew it."""
        path = self.credentials_file()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ValueError(f"credentials_path: {path} is not a DiracX credentials file (JSON)") from None
        expires = float(data.get("expires_on") or 0)
        if not data.get("refresh_token") and expires <= datetime.now(timezone.utc).timestamp():
            when = datetime.fromtimestamp(expires, tz=timezone.utc).isoformat(timespec="seconds")
            raise ExpiredCredentials(
                f"credentials_path: the DiracX access token in {path} expired at {when} and there is no refresh "
                "token to renew it; run `dirac login` again (or set refresh_token on the block)")
        return path

    def expire_access_token(self) -> bool:
        """Mark the access token expired so the client refreshes it on its next request.

        For a 401 on a token the client still believes valid (revoked, server key
        rotated). False when there is no refresh token: nothing could renew it."""
        from diracx.core.models import TokenResponse
        from diracx.core.utils import read_credentials, write_credentials

        path = self.credentials_file()
        current = read_credentials(path)
        if not current.refresh_token:
            return False
        write_credentials(TokenResponse(access_token=current.access_token, expires_in=0, token_type="Bearer",
                                        refresh_token=current.refresh_token), location=path)
        return True

    def client(self) -> Any:
        """A new `AsyncDiracClient` with explicit preferences (no process-wide environment)."""
        from diracx.client.aio import AsyncDiracClient
        from diracx.core.preferences import DiracxPreferences

        preferences = DiracxPreferences(url=self.url, credentials_path=self.usable_credentials(),
                                        **({"ca_path": self.ca_bundle} if self.ca_bundle else {}))
        return AsyncDiracClient(diracx_preferences=preferences,
                                verify=tls_verify(self.verify_tls, what=f"DiracX {self.url}"),
                                connection_timeout=10, read_timeout=self.timeout_seconds)

    def job_adapter(self) -> "DiracAdapter":
        return DiracAdapter(self)


class ExpiredCredentials(ValueError):
    """The DiracX token expired and cannot be refreshed."""


# -- the adapter ---------------------------------------------------------------------------------

def engine_error(exc: BaseException, url: str = "the server") -> BaseException:
    """azure-core and httpx2 (diracx-client's HTTP stack) errors → the engine's
    transient / credentials vocabulary."""
    import httpx2
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if is_certificate_failure(exc):  # not transient: retrying cannot make the certificate verify
        return certificate_error("DiracX", url)
    if isinstance(exc, httpx2.TransportError):  # e.g. the client's discovery while the server restarts
        return TransientServiceError(f"DiracX unreachable: {type(exc).__name__}")
    if isinstance(exc, RuntimeError) and ".well-known" in str(exc):
        # the client's discovery got a non-200 answer (a starting server says 503 for a moment)
        return TransientServiceError("DiracX discovery (/.well-known/openid-configuration) did not answer")
    if isinstance(exc, ClientAuthenticationError) or getattr(exc, "status_code", None) == 401:
        return CredentialsRejected(f"DiracX refused the credentials: {_detail(exc)}")
    if isinstance(exc, ServiceResponseError):  # sent, but the answer failed (e.g. a read timeout)
        return TransientServiceError(f"DiracX did not answer in full: {type(exc).__name__}")
    if isinstance(exc, ServiceRequestError):
        return TransientServiceError(f"DiracX unreachable: {type(exc).__name__}")
    if isinstance(exc, HttpResponseError) and (exc.status_code or 0) in (429, 500, 502, 503, 504):
        return TransientServiceError(f"DiracX answered HTTP {exc.status_code}")
    return exc


def _detail(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    try:
        return str(response.json().get("detail"))  # type: ignore[union-attr]
    except Exception:
        return type(exc).__name__


class DiracAdapter(RemoteJobAdapter):
    """DIRAC jobs for the engine: one paged `search` per poll for every job."""

    service = "dirac"

    #: a job absent from this many searches in a row is reported Failed ("Missing"),
    #: so it is resubmitted instead of waited for until the deadline: DiracX commits a
    #: submission after answering it, so ids can come back for jobs a failed commit
    #: never kept. Two absences are tolerated: a search can overtake that commit.
    MISSING_AFTER = 3

    def __init__(self, block: DiracX):
        self.block = block
        self.searches = 0  # round trips, for tests and benchmarks
        self.absent: dict[str, int] = {}  # job id → searches in a row that did not find it

    async def call(self, action: Any) -> Any:
        """Run `action(api)` with a fresh client; service errors in the engine's vocabulary."""
        try:
            async with self.block.client() as api:
                return await action(api)
        except Exception as exc:
            mapped = engine_error(exc, self.block.url)
            if mapped is exc:
                raise
            raise mapped from None

    async def renew_credentials(self) -> bool:
        return await asyncio.to_thread(self.block.expire_access_token)

    async def statuses(self, job_ids: Sequence[str | int]) -> dict[str, dict[str, Any]]:
        """Status rows of many jobs, walking pages beyond the server's cap."""
        ids = [int(j) for j in job_ids]
        per_page = max(1, min(len(ids), MAX_PER_PAGE))

        async def search(api: Any) -> dict[str, dict[str, Any]]:
            from azure.core.exceptions import HttpResponseError

            rows: dict[str, dict[str, Any]] = {}
            page = 1
            while True:
                self.searches += 1
                try:
                    found = await api.jobs.search(
                        parameters=["JobID", "Status", "MinorStatus", "ApplicationStatus", "Site"],
                        search=[{"parameter": "JobID", "operator": "in", "values": ids}],
                        page=page, per_page=per_page)
                except HttpResponseError as error:
                    if error.status_code == 416 and page > 1:  # past the last page: the rows are all in
                        return rows
                    raise
                rows.update({str(r["JobID"]): r for r in found})
                if len(found) < per_page or len(rows) >= len(ids):
                    return rows
                page += 1

        return await self.call(search)

    async def poll(self, job_ids: Sequence[str]) -> Mapping[str, JobStatus]:
        rows = await self.statuses(job_ids)
        answer = {job: self._status(job, row) for job, row in rows.items()}
        for job in map(str, job_ids):
            if job in rows:
                self.absent.pop(job, None)
                continue
            self.absent[job] = self.absent.get(job, 0) + 1
            if self.absent[job] >= self.MISSING_AFTER:
                answer[job] = JobStatus(job, JobState.FAILED, None,
                                        f"Missing: the DiracX server has no job {job} (its submission was not kept, "
                                        "or the job was removed)", {"status": "Missing", "minor_status": "not on the server"})
        return answer

    @staticmethod
    def _status(job: str, row: Mapping[str, Any]) -> JobStatus:
        status = str(row.get("Status", ""))
        return JobStatus(job, DIRAC_STATES.get(status, JobState.UNKNOWN), None,
                         f"{status}: {row.get('MinorStatus', '')}".strip(": "),
                         {"status": status, "minor_status": row.get("MinorStatus"),
                          "application_status": row.get("ApplicationStatus"), "site": row.get("Site")})

    async def cancel(self, job_ids: Sequence[str]) -> Mapping[str, JobStatus]:
        """Kill, then read back what the server says: an invalid transition is
        reported under "success" with the old status, so only the re-read counts."""
        when = datetime.now(timezone.utc).isoformat()
        body = {str(j): {when: {"Status": "Killed", "MinorStatus": "Marked for termination",
                                "Source": "prefect-egi"}} for j in job_ids}
        await self.call(lambda api: api.jobs.set_job_statuses(body))
        return await self.poll(job_ids)

    def job_label(self, job_id: str) -> str:
        return f"job {job_id}"


# -- submission ------------------------------------------------------------------------------------

Render = Callable[[Any], Awaitable[Sequence[str]]]  # the JDLs to send, made with the client at hand


async def _submit_jdls(block: DiracX, key: str, render: Render, concurrency: int,
                       label: str) -> tuple[list[int], list[str]]:
    """Render the JDLs (`render(api)`: e.g. upload sandboxes first), then send them in
    chunks of 20, exactly once (see `tasks.dirac_submission`); returns the ids in the
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
        return await block.job_adapter().call(everything), jdls
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
    await JobLedger.current().record(Submission(
        key=key, service="dirac", job_ids=[str(i) for i in ids], label=label,
        block_type=DiracX.get_block_type_slug(), block_name=getattr(block, "_block_document_name", None),
        extra={"jdls": list(jdls)}))


async def submit(block: DiracX, jobs: Sequence[DiracJob], key: str | None = None,
                 concurrency: int = 4) -> list[int]:
    """Render, upload sandboxes, submit in chunks of 20 — once per flow run. At most
    `concurrency` calls are in flight, fewer while the server only queues them."""
    jobs = [j if isinstance(j, DiracJob) else DiracJob.model_validate(j) for j in jobs]
    key = key or submission_key("dirac", block.url, block.vo, block.group,
                                [j.model_dump(mode="json") for j in jobs])
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


class JobOutput(BaseModel):
    """Where one job's output sandbox went (or why there is none)."""

    job_id: int
    path: str | None = None
    files: list[str] = Field(default_factory=list)
    note: str = ""


async def collect(block: DiracX, job_ids: Sequence[int], destination: str | Path,
                  concurrency: int = 4) -> list[JobOutput]:
    """Download and unpack each job's output sandbox into `<destination>/<job id>/`.
    A job without an output sandbox is reported, not fatal."""
    from diracx.api.jobs import download_sandbox

    root = Path(destination).expanduser()
    limit = asyncio.Semaphore(concurrency)

    async def one(api: Any, job_id: int) -> JobOutput:
        async with limit:
            sandboxes = await api.jobs.get_job_sandboxes(int(job_id))
            pfns = list(sandboxes.get("Output") or [])
            if not pfns:
                return JobOutput(job_id=job_id, note="no output sandbox")
            folder = root / str(job_id)
            folder.mkdir(parents=True, exist_ok=True)
            for pfn in pfns:
                await download_sandbox(pfn, folder, client=api)
            files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            return JobOutput(job_id=job_id, path=str(folder), files=files)

    async def everything(api: Any) -> list[JobOutput]:
        return list(await asyncio.gather(*(one(api, j) for j in job_ids)))

    return await block.job_adapter().call(everything)


@task(name="dirac-submit")
@redact_errors
async def submit_jobs(diracx: DiracX | str, jobs: Sequence[DiracJob]) -> list[int]:
    """Submit jobs (parametric ones expand to one job per parameter); never twice per flow run."""
    return await submit(DiracX.resolve(diracx), jobs)


@task(name="dirac-wait", retries=3, retry_delay_seconds=[60, 300, 900], retry_condition_fn=retry_if_watch_may_recover)
@redact_errors
async def wait_for_jobs(diracx: DiracX | str, job_ids: Sequence[int],
                        policy: WatchPolicy | None = None) -> dict[str, JobStatus]:
    """Wait for every job with ONE status request per cycle (progress, events, table in the UI)."""
    adapter = DiracX.resolve(diracx).job_adapter()
    return await watch(adapter, [str(j) for j in job_ids], policy, PrefectReporter(adapter, "DIRAC jobs"))


@task(name="dirac-fetch-outputs", retries=2, retry_delay_seconds=10)
@redact_errors
async def fetch_job_outputs(diracx: DiracX | str, job_ids: Sequence[int],
                            destination: str = "dirac-outputs") -> list[JobOutput]:
    """Download every job's output sandbox into `<destination>/<job id>/`."""
    return await collect(DiracX.resolve(diracx), job_ids, destination)


@task(name="dirac-resubmit")
@redact_errors
async def resubmit_jobs(diracx: DiracX | str, job_ids: Sequence[int], attempt: int = 1) -> dict[int, int]:
    """Submit failed jobs again as new jobs; returns {old id: new id}."""
    return await resubmit(DiracX.resolve(diracx), job_ids, attempt)


@task(name="dirac-kill")
@redact_errors
async def kill_jobs(diracx: DiracX | str, job_ids: Sequence[int]) -> dict[str, str]:
    """Kill jobs; returns each job's status as the server reports it afterwards."""
    statuses = await DiracX.resolve(diracx).job_adapter().cancel([str(j) for j in job_ids])
    return {job: status.detail.get("status", status.state.value) for job, status in statuses.items()}

