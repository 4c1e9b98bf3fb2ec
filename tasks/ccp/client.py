"""An OGC API – Processes 1.x client for D4Science CCP (and any other such server), on httpx.

Why not owslib: `owslib.ogcapi.processes` (0.35/0.36) lists, describes and executes, but has
no job status, results, dismiss or job listing, and its transport is module-level `requests`
(no timeouts, no pool, its headers sent to any host). So the HTTP is ours, async, with the
project's one classification of faults (`prefect_egi.tasks.faults`) and retry rules
(`prefect_egi.tasks.http`): reads and dismissals are retried on transient faults; an
Execute only when the failure proves the server did not read it (no connection, 429/503).

What the client reads, as the standard (and the servers seen) write it:

- `GET /processes`: `processes[]` summaries, further pages by the `links` rel=`next`;
- `GET /processes/{id}`: `inputs`/`outputs` maps whose `schema` is JSON Schema — kept raw,
  as the server sent it, for validation by the caller;
- `POST /processes/{id}/execution` with `Prefer: respond-async`: `201` + `Location:
  …/jobs/{jobId}` (pygeoapi's body is then `null`), or a `statusInfo` body (with `jobID`)
  under 200/201 — both accepted, the job id taken from the body or else from `Location`;
- `GET /jobs/{id}`: `statusInfo` (`status` ∈ accepted/running/successful/failed/dismissed,
  `progress`, `message`, `created`, `started`, `finished`, `updated`);
- `GET /jobs/{id}/results`: a map output id → literal value, `qualifiedValue`
  (`{"value", "mediaType"…}`), link (`{"href", "type"}`) or an array of those;
- `DELETE /jobs/{id}`: dismiss; a 404 afterwards (or to a second dismiss) means "gone";
- `GET /jobs` with `processID`, `status`, `limit` and `links` rel=`next` paging.

Errors: an OGC exception document (RFC 7807 style `type`, `title`, `status`, `detail`, or
pygeoapi's `code`/`description`) becomes a `CCPError` naming what the server said; 401 is
`CCPTokenRejected` (a `CredentialsRejected`: the engine renews the token and tries again);
5xx/429/timeouts are `TransientServiceError`.

**Finding an Execute whose answer was lost.** WPS 1.0 could not; OGC API – Processes has a
job listing. Each Execute carries a *marker* (`prefect-egi-<uuid>`), chosen by the caller
before sending, in the `Idempotency-Key` request header (IETF httpapi draft
"The Idempotency-Key HTTP Header Field": a client key naming one attempt of a
non-idempotent POST). Why a header and not an input or a title:
- it does not touch the method's inputs: a CCP method or a strict JSON Schema would
  reject (or, worse, use) an unknown input, and nothing in the job's results changes;
- OGC API – Processes 1.0/1.2 has no client-chosen job title or tag in the Execute request
  (`subscriber` holds callback URLs, which servers call — pygeoapi POSTs to them);
- pygeoapi (0.21 and 0.24, read in its code) keeps NOTHING of the request in its job
  record — not the inputs, not a title, not a header: `/jobs` lists only `processID`,
  `jobID`, `status`, `message`, `progress`, the four times and an always-empty
  `parameters`. So no in-band marker would survive on pygeoapi either; a front (as
  D4Science's is, and the sandbox peer's) can keep the header and show it. CCP keeps each
  execution's request (`metadata/request.json`, its documentation says); whether it keeps
  this header, or lists anything of the request in `/jobs`, is NOT verified — until it is,
  on CCP the lookup ends as on plain pygeoapi (candidates, nothing adopted).
An Execute is sent again only when the failure proves it was not read (no connection, or
429/503 refused unread); if every attempt is refused so, `TransientServiceError` says no
job was created. Any other failure after sending is `ExecuteOutcomeUnknown`, with the marker.
`find_job(marker, …)` lists the jobs of the process created since the Execute was sent
and returns the one whose document names the marker (member `idempotencyKey`, or any
name in `MARKER_FIELDS`). Limits: on a server that shows no marker, nothing is adopted —
`LostExecute` lists the jobs created in the time window as candidates (a human, or a
later policy, decides; a guess could adopt someone else's job); a listing the server
pages is read to its end, and the filters are applied again here (pygeoapi's TinyDB
manager ignores `processID` and `status`); clocks are compared with a tolerance (`clock_skew`).

Tokens come from `token()`, fresh on every call (the UMA token of the VRE for CCP); they
are registered for redaction and never appear in errors. Credentials are sent only to
the service's own origin; a file referenced on another host is downloaded only when that
host is named in `download_hosts`, and then without credentials.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import uuid
import zipfile
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx
from prefect_egi.tasks.faults import (
    CredentialsRejected,
    TransientServiceError,
    describe,
    is_transient_status,
)
from prefect_egi.tasks.http import (
    OutcomeUnknown,
    RetryPolicy,
    TransientHTTPError,
    arequest_with_retries,
    certificate_error,
    is_certificate_failure,
    require_https,
)
from prefect_egi.tasks.redaction import register_secret
from prefect_egi.tasks.remote import JobState, JobStatus

#: CCP's API root, as its documentation's REST example names it (docs: 03_execution/06_rest_api)
DEFAULT_CCP_URL = "https://ccp.d4science.org"
#: the request header carrying the Execute's marker (see the module docstring)
MARKER_HEADER = "Idempotency-Key"
#: members of a job document that may hold the marker a server kept
MARKER_FIELDS = ("idempotencyKey", "marker")
#: D4Science's services read the VRE a call is for from this header
CONTEXT_HEADER = "X-D4Science-Context"
#: the statuses of OGC API – Processes 1.x (`statusCode.yaml`) in the engine's vocabulary
STATES = {
    "accepted": JobState.QUEUED,
    "running": JobState.RUNNING,
    "successful": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "dismissed": JobState.CANCELLED,
}
OUTPUT_ZIP = "output.zip"


# -- errors ----------------------------------------------------------------------------------

class CCPError(RuntimeError):
    """The server refused or failed a call. `status` is the HTTP status; `ogc_type`,
    `title` and `detail` what the server's exception document said (None when absent)."""

    def __init__(self, message: str, status: int | None = None, ogc_type: str | None = None,
                 title: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.status, self.ogc_type, self.title, self.detail = status, ogc_type, title, detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.status, self.ogc_type, self.title, self.detail))


class CCPTokenRejected(CCPError, CredentialsRejected):
    """HTTP 401: the token is missing, expired, or not the UMA token of this VRE. Renew it."""


class CCPNoSuchJob(CCPError):
    """The server knows no such job (404): never created, dismissed, or expired."""


class CCPJobFailed(CCPError):
    """The job failed; `detail` is the job's own message."""


class CCPNoSuchProcess(CCPError):
    """The server knows no such process (404)."""


class ExecuteOutcomeUnknown(CCPError):
    """The Execute may have reached the server, but its answer was lost. `marker` finds the
    job (`CCPClient.find_job`) if one was created; do not send the Execute again blindly."""

    def __init__(self, message: str, marker: str = "", sent_at: datetime | None = None):
        super().__init__(message)
        self.marker, self.sent_at = marker, sent_at

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.marker, self.sent_at))


class LostExecute(CCPError):
    """No job names the marker. `candidates` are the jobs of that process created in the
    window (on a server that keeps no marker, one of them may be it — not adopted)."""

    def __init__(self, message: str, candidates: Sequence["JobInfo"] = ()):
        super().__init__(message)
        self.candidates = list(candidates)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.candidates))


class UnsafeArchive(CCPError, ValueError):
    """An archive member would land outside the destination (absolute path, `..`, a link)."""


class ForeignDownload(CCPError, ValueError):
    """A result references a file on another host than the service's, not named as allowed."""


# -- documents ---------------------------------------------------------------------------------

def _links(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    links = document.get("links") if isinstance(document, Mapping) else None
    return [link for link in links or () if isinstance(link, Mapping) and link.get("href")]


def next_link(document: Mapping[str, Any], base: str) -> str | None:
    """The absolute URL of the `rel=next` link of a page, if any."""
    link = next((link for link in _links(document) if link.get("rel") == "next"), None)
    return urljoin(base, str(link["href"])) if link else None


def _time(value: Any) -> datetime | None:
    """An RFC 3339 time as servers write it (`Z`, offsets, or pygeoapi's naive ISO times: UTC)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class ProcessSummary:
    """One entry of `GET /processes`."""

    id: str
    title: str = ""
    description: str = ""
    version: str = ""
    job_control_options: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> "ProcessSummary":
        if not isinstance(body, Mapping) or not body.get("id"):
            raise CCPError("a process summary without an `id`")
        return cls(str(body["id"]), str(body.get("title") or ""), str(body.get("description") or ""),
                   str(body.get("version") or ""), tuple(body.get("jobControlOptions") or ()), dict(body))

    @property
    def runs_async(self) -> bool:
        """Whether the process offers asynchronous execution (no list: the server did not say)."""
        return not self.job_control_options or "async-execute" in self.job_control_options


@dataclass(frozen=True)
class Parameter:
    """An input or output of a process description: its JSON Schema as the server sent it."""

    name: str
    title: str = ""
    description: str = ""
    schema: Mapping[str, Any] = field(default_factory=dict)
    min_occurs: int = 1
    max_occurs: int | None = 1  # None: unbounded

    @classmethod
    def of(cls, name: str, body: Mapping[str, Any]) -> "Parameter":
        raw_max = body.get("maxOccurs", 1)
        return cls(name, str(body.get("title") or ""), str(body.get("description") or ""),
                   dict(body.get("schema") or {}), int(body.get("minOccurs", 1)),
                   None if raw_max == "unbounded" else int(raw_max))

    @property
    def required(self) -> bool:
        return self.min_occurs > 0


@dataclass(frozen=True)
class ProcessDescription(ProcessSummary):
    inputs: Mapping[str, Parameter] = field(default_factory=dict)
    outputs: Mapping[str, Parameter] = field(default_factory=dict)

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> "ProcessDescription":
        summary = ProcessSummary.of(body)
        return cls(summary.id, summary.title, summary.description, summary.version, summary.job_control_options,
                   summary.raw, _parameters(body.get("inputs")), _parameters(body.get("outputs")))


def _parameters(raw: Any) -> dict[str, Parameter]:
    """Inputs/outputs as a map (1.0 and later) or as a list with `id`s (drafts before 1.0)."""
    if isinstance(raw, Mapping):
        return {str(name): Parameter.of(str(name), body or {}) for name, body in raw.items()}
    if isinstance(raw, list):
        return {str(body["id"]): Parameter.of(str(body["id"]), body) for body in raw
                if isinstance(body, Mapping) and body.get("id")}
    return {}


@dataclass(frozen=True)
class JobInfo:
    """A `statusInfo` document."""

    job_id: str
    status: str  # as the server wrote it
    process_id: str | None = None
    progress: float | None = None
    message: str = ""
    created: datetime | None = None
    started: datetime | None = None
    finished: datetime | None = None
    updated: datetime | None = None
    marker: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def state(self) -> JobState:
        return STATES.get(self.status, JobState.UNKNOWN)

    def as_job_status(self) -> JobStatus:
        """The engine's view (`watch` and the adapter): state, progress, message, and the
        server's own status and times as detail."""
        detail = {"status": self.status, **{name: moment.isoformat() for name, moment in (
            ("created", self.created), ("started", self.started), ("finished", self.finished),
            ("updated", self.updated)) if moment is not None}}
        return JobStatus(self.job_id, self.state, self.progress, self.message, detail)

    @classmethod
    def of(cls, body: Any, job_id: str | None = None) -> "JobInfo":
        if not isinstance(body, Mapping):
            raise CCPError("the job status is not a JSON object (statusInfo)")
        found = body.get("jobID", body.get("id", job_id))
        if not found:
            raise CCPError("a job status without a `jobID`")
        status = str(body.get("status") or "")
        if not status:
            raise CCPError(f"the status of job {found} has no `status`")
        progress = body.get("progress")
        marker = next((str(body[name]) for name in MARKER_FIELDS if body.get(name)), None)
        return cls(str(found), status.lower(), body.get("processID"),
                   float(progress) if isinstance(progress, (int, float)) and not isinstance(progress, bool) else None,
                   str(body.get("message") or ""), _time(body.get("created")), _time(body.get("started")),
                   _time(body.get("finished")), _time(body.get("updated")), marker, dict(body))


@dataclass(frozen=True)
class Reference:
    """A result given by reference: where the file is, and what it is."""

    output: str
    href: str
    media_type: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class Results:
    """What `GET /jobs/{id}/results` gave: literal (or qualified) values inline, files by reference."""

    values: Mapping[str, Any] = field(default_factory=dict)
    media_types: Mapping[str, str] = field(default_factory=dict)  # of qualified values
    references: Sequence[Reference] = ()

    @classmethod
    def of(cls, body: Any) -> "Results":
        """A results document: `{output: value | qualifiedValue | link | [..]}`; also the drafts'
        `{"outputs": [{"id", "value" | "href"}]}` and pygeoapi's answer to `response=document`
        (`{"outputs": [<the results map>]}`)."""
        if not isinstance(body, Mapping):
            return cls({"result": body})  # a raw single result (e.g. a number or a list)
        wrapped = body.get("outputs")
        if isinstance(wrapped, list) and set(body) <= {"outputs", "links"}:
            if all(isinstance(o, Mapping) and "id" in o for o in wrapped):  # the drafts' list of outputs
                body = {str(o["id"]): o for o in wrapped}
            elif len(wrapped) == 1 and isinstance(wrapped[0], Mapping):  # pygeoapi's `document`: the map, in a list
                body = wrapped[0]
        values: dict[str, Any] = {}
        media: dict[str, str] = {}
        references: list[Reference] = []
        for name, item in body.items():
            if name == "links":
                continue
            for one in (item if isinstance(item, list) else [item]):
                if isinstance(one, Mapping) and "href" in one and "value" not in one:
                    references.append(Reference(str(name), str(one["href"]), one.get("type"), one.get("title")))
                    continue
                if isinstance(one, Mapping) and "value" in one:  # qualifiedValue (or the draft's {"id", "value"})
                    value = one["value"]
                    form = one.get("format") if isinstance(one.get("format"), Mapping) else {}
                    kind = one.get("mediaType") or form.get("mediaType")
                    if kind:
                        media[str(name)] = str(kind)
                else:
                    value = one
                if isinstance(item, list):
                    values.setdefault(str(name), []).append(value)
                else:
                    values[str(name)] = value
        return cls(values, media, tuple(references))


@dataclass(frozen=True)
class Submission:
    """What an Execute gave: the job's id and status URL, and the marker it carried."""

    job_id: str
    status_url: str
    marker: str
    sent_at: datetime
    info: JobInfo | None = None  # the statusInfo, when the server answered with one


def ogc_exception(response: httpx.Response) -> tuple[str | None, str | None, str | None]:
    """`(type, title, detail)` of an exception document (RFC 7807 / OGC `exception.yaml`, or
    pygeoapi's `code`/`description`); Nones when the body is not one."""
    try:
        body = response.json()
    except ValueError:
        return None, None, None
    if not isinstance(body, Mapping):
        return None, None, None
    kind = body.get("type") or body.get("code")
    title = body.get("title")
    detail = body.get("detail") or body.get("description")
    return (str(kind) if kind else None, str(title) if title else None, str(detail) if detail else None)


def new_marker() -> str:
    return f"prefect-egi-{uuid.uuid4().hex}"


def _check_identifier(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string (got {value!r})")
    if any(ch in value for ch in "/?#") or value in (".", ".."):
        raise ValueError(f"{what} {value!r} cannot be part of a URL path: it contains '/', '?' or '#'")
    return value


class CCPClient:
    """Calls an OGC API – Processes server with a bearer from `token()`, fresh on every call.

    `url` is the API's root (`…/processes` and `…/jobs` are under it); `context` (a VRE,
    e.g. `/d4science.research-infrastructures.eu/D4OS/Blue-Cloud2026Lab`) is sent as
    `X-D4Science-Context`. Use it as `async with CCPClient(...) as client:`."""

    def __init__(self, url: str, token: Callable[[], Awaitable[str]] | None = None, *, context: str | None = None,
                 verify: Any = True, timeout: float = 60.0, retry: RetryPolicy | None = None,
                 download_hosts: Iterable[str] = (), clock_skew: float = 300.0):
        self.url = require_https(url, "the CCP URL")
        self.token = token
        self.context = context
        self.retry = retry or RetryPolicy()
        self.clock_skew = timedelta(seconds=clock_skew)
        origin = urlsplit(self.url)
        self._origin = (origin.scheme, origin.hostname, origin.port)
        self.download_hosts = frozenset(h.lower() for h in download_hosts)
        self.http = httpx.AsyncClient(verify=verify, timeout=timeout, follow_redirects=False)

    async def __aenter__(self) -> "CCPClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- transport ---------------------------------------------------------------------------
    def _own(self, url: str) -> bool:
        parts = urlsplit(url)
        return (parts.scheme, parts.hostname, parts.port) == self._origin

    async def _headers(self, url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", **(extra or {})}
        if self._own(url):  # credentials never leave the service's origin
            if self.token is not None:
                token = await self.token()
                register_secret(token)
                headers["Authorization"] = f"Bearer {token}"
            if self.context:
                headers[CONTEXT_HEADER] = self.context
        return headers

    async def _send(self, method: str, url: str, what: str, *, idempotent: bool = True,
                    headers: Mapping[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        try:
            return await arequest_with_retries(self.http, method, url, policy=self.retry, what=what,
                                               idempotent=idempotent, headers=await self._headers(url, headers),
                                               **kwargs)
        except TransientHTTPError as exc:
            raise TransientServiceError(str(exc)) from None
        except httpx.TransportError as exc:  # not transient (e.g. an unsupported protocol)
            if is_certificate_failure(exc):
                raise certificate_error(what, url) from None
            raise CCPError(f"{what} ({url}): {describe(exc)}") from None

    def _judge(self, response: httpx.Response, what: str, *, missing: type[CCPError] = CCPError) -> httpx.Response:
        """The response if it succeeded; otherwise the error it stands for."""
        status = response.status_code
        if status < 400:
            return response
        kind, title, detail = ogc_exception(response)
        said = "; ".join(part for part in (kind, title, detail) if part) or response.reason_phrase or "no reason given"
        if status == 401:
            raise CCPTokenRejected(f"{what}: the server refused the token (HTTP 401: {said}). CCP accepts only the "
                                   "UMA token of the VRE (audience = the VRE context): renew it and try again.",
                                   status, kind, title, detail)
        if is_transient_status(status):
            raise TransientServiceError(f"{what}: HTTP {status} ({said})")
        if status == 403:
            raise CCPError(f"{what}: refused (HTTP 403: {said}) — the token's VRE may not allow this call",
                           status, kind, title, detail)
        error = missing if status == 404 else CCPError
        raise error(f"{what}: HTTP {status}: {said}", status, kind, title, detail)

    @staticmethod
    def _json(response: httpx.Response, what: str) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise CCPError(f"{what}: the answer is not JSON ({response.headers.get('content-type', 'no type')})",
                           response.status_code) from None

    async def _get(self, url: str, what: str, *, missing: type[CCPError] = CCPError,
                   params: Mapping[str, Any] | None = None) -> Any:
        response = self._judge(await self._send("GET", url, what, params=params), what, missing=missing)
        return self._json(response, what)

    # -- processes ---------------------------------------------------------------------------
    async def processes(self) -> list[ProcessSummary]:
        """Every process the server offers, page after page (`links` rel=next)."""
        found: list[ProcessSummary] = []
        url: str | None = f"{self.url}/processes"
        seen: set[str] = set()
        while url and url not in seen:
            seen.add(url)
            page = await self._get(url, "list processes")
            items = page.get("processes") if isinstance(page, Mapping) else None
            if not isinstance(items, list):
                raise CCPError("list processes: the answer has no `processes` list")
            found += [ProcessSummary.of(item) for item in items]
            url = next_link(page, url)
        return found

    async def process(self, process_id: str) -> ProcessDescription:
        _check_identifier(process_id, "the process id")
        body = await self._get(f"{self.url}/processes/{quote(process_id, safe='')}", f"describe {process_id}",
                               missing=CCPNoSuchProcess)
        return ProcessDescription.of(body)

    # -- execution ---------------------------------------------------------------------------
    async def execute(self, process_id: str, inputs: Mapping[str, Any], *, outputs: Mapping[str, Any] | None = None,
                      response: str = "document", marker: str | None = None) -> Submission:
        """Ask for an asynchronous execution; returns at once with the job's id.

        The inputs are checked for shape here (names, JSON); their values against the
        process's JSON Schema by the caller, before. Raises `ExecuteOutcomeUnknown` (with
        the marker) when the request may have reached the server but no answer came."""
        _check_identifier(process_id, "the process id")
        if not isinstance(inputs, Mapping):
            raise ValueError(f"inputs must be a mapping of input name → value (got {type(inputs).__name__})")
        bad = [repr(name) for name in inputs if not isinstance(name, str) or not name]
        if bad:
            raise ValueError(f"input names must be non-empty strings: {', '.join(bad)}")
        body: dict[str, Any] = {"inputs": dict(inputs), "response": response}
        if outputs is not None:
            body["outputs"] = dict(outputs)
        try:
            payload = json.dumps(body)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the inputs of {process_id} are not JSON: {exc}") from None
        marker = marker or new_marker()
        url = f"{self.url}/processes/{quote(process_id, safe='')}/execution"
        what = f"execute {process_id}"
        sent_at = datetime.now(timezone.utc)
        try:
            answer = await self._send("POST", url, what, idempotent=False, content=payload,
                                      headers={"Content-Type": "application/json", "Prefer": "respond-async",
                                               MARKER_HEADER: marker})
        except OutcomeUnknown as exc:
            raise ExecuteOutcomeUnknown(f"{what}: {exc} — the job may exist; look it up with its marker "
                                        f"{marker} (find_job) before sending it again", marker, sent_at) from None
        except TransientServiceError as exc:  # every attempt refused unread (429/503) or never sent
            raise TransientServiceError(f"{exc}; no job was created — safe to send it again") from None
        try:
            self._judge(answer, what, missing=CCPNoSuchProcess)
        except TransientServiceError as exc:  # a 5xx from the server after reading it: it may have started a job
            raise ExecuteOutcomeUnknown(f"{exc} — the job may exist; look it up with its marker {marker} "
                                        "(find_job) before sending it again", marker, sent_at) from None
        return self._submission(answer, what, marker, sent_at)

    def _submission(self, answer: httpx.Response, what: str, marker: str, sent_at: datetime) -> Submission:
        body = self._json(answer, what)
        location = answer.headers.get("location")
        info: JobInfo | None = None
        if isinstance(body, Mapping) and body.get("jobID"):
            info = JobInfo.of(body)
        job_id = info.job_id if info else None
        if job_id is None and location:
            path = PurePosixPath(urlsplit(location).path)
            job_id = path.name if path.parent.name == "jobs" else None
        if not job_id:
            if answer.status_code == 200 and not location:
                raise CCPError(f"{what}: the server ran it synchronously (HTTP 200 without a job): it does not "
                               "offer asynchronous execution for this process", 200)
            raise CCPError(f"{what}: HTTP {answer.status_code} names no job (no `Location`, no `jobID`)",
                           answer.status_code)
        status_url = urljoin(self.url + "/", location) if location else self.job_url(job_id)
        return Submission(job_id, status_url, marker, sent_at, info)

    def job_url(self, job_id: str) -> str:
        return f"{self.url}/jobs/{quote(_check_identifier(job_id, 'the job id'), safe='')}"

    async def job(self, job_id: str) -> JobInfo:
        return JobInfo.of(await self._get(self.job_url(job_id), f"status of job {job_id}", missing=CCPNoSuchJob),
                          job_id)

    async def results(self, job_id: str) -> Results:
        """The results of a successful job. For a job that failed, `CCPJobFailed` with the job's
        own message (servers answer the results request with less: pygeoapi says "job failed")."""
        try:
            return Results.of(await self._get(self.job_url(job_id) + "/results", f"results of job {job_id}",
                                              missing=CCPNoSuchJob))
        except CCPError as refused:
            if refused.status not in (400, 404, 500) or isinstance(refused, CCPTokenRejected):
                raise
            try:
                job = await self.job(job_id)
            except CCPError:
                raise refused from None
            if job.state is JobState.FAILED:
                raise CCPJobFailed(f"job {job_id} failed: {job.message or 'no message given'}", refused.status,
                                   refused.ogc_type, refused.title, job.message or refused.detail) from None
            raise

    async def dismiss(self, job_id: str) -> JobInfo | None:
        """Dismiss (cancel) a job. Returns the server's statusInfo, or None when the job is
        gone already (404: dismissed before, or never there)."""
        url = self.job_url(job_id)
        try:
            response = self._judge(await self._send("DELETE", url, f"dismiss job {job_id}"), f"dismiss job {job_id}",
                                   missing=CCPNoSuchJob)
        except CCPNoSuchJob:
            return None
        body = self._json(response, f"dismiss job {job_id}")
        return JobInfo.of(body, job_id) if isinstance(body, Mapping) and body.get("status") else None

    # -- the job listing ---------------------------------------------------------------------
    async def iter_jobs(self, *, process_id: str | None = None, status: Sequence[str] = (),
                        limit: int = 100) -> AsyncIterator[JobInfo]:
        """Jobs as `GET /jobs` lists them, page after page. The filters are sent and also
        applied here: servers that ignore them (pygeoapi before 0.22) still list everything."""
        wanted = {s.lower() for s in status}
        params: list[tuple[str, Any]] = [("limit", int(limit))]
        if process_id:
            params.append(("processID", process_id))
        params += [("status", s) for s in sorted(wanted)]
        url: str | None = f"{self.url}/jobs"
        query: Any = params
        seen: set[str] = set()
        while url and url not in seen:
            seen.add(url)
            response = self._judge(await self._send("GET", url, "list jobs", params=query), "list jobs")
            page = self._json(response, "list jobs")
            items = page.get("jobs") if isinstance(page, Mapping) else None
            if not isinstance(items, list):
                raise CCPError("list jobs: the answer has no `jobs` list")
            for item in items:
                job = JobInfo.of(item)
                if (process_id and job.process_id not in (None, process_id)) or (wanted and job.status not in wanted):
                    continue
                yield job
            url, query = next_link(page, str(response.url)), None

    async def jobs(self, **filters: Any) -> list[JobInfo]:
        return [job async for job in self.iter_jobs(**filters)]

    async def find_job(self, marker: str, process_id: str, since: datetime) -> JobInfo:
        """The job an Execute carrying `marker` (sent at `since`) created.

        Raises `LostExecute` when no listed job names the marker; its `candidates` are
        the jobs of the process created in the window, which a server that keeps no
        marker cannot tell apart — none of them is adopted."""
        earliest = since - self.clock_skew
        candidates = []
        async for job in self.iter_jobs(process_id=process_id):
            if job.marker == marker:
                return job
            if job.marker is None and (job.created is None or job.created >= earliest):
                candidates.append(job)
        raise LostExecute(f"no job of {process_id} names the marker {marker}; "
                          + (f"{len(candidates)} job(s) of it created since {earliest.isoformat(timespec='seconds')} "
                             "name no marker (the server keeps none): not adopted, check them yourself"
                             if candidates else "none was created since the Execute was sent: it did not reach "
                             "the server"), candidates)

    # -- files --------------------------------------------------------------------------------
    def _allowed(self, url: str) -> str:
        """`url` if a result file may be fetched from it, else `ForeignDownload`."""
        host = (urlsplit(url).hostname or "").lower()
        if not self._own(url) and host not in self.download_hosts:
            raise ForeignDownload(f"the result file {url} is on {host or 'an unnamed host'}, not on the service's "
                                  "host: not downloaded. Name that host in download_hosts to allow it (the "
                                  "token is never sent there).")
        return require_https(url, "a result file's URL")

    async def download(self, href: str, destination: Path | str, *, max_redirects: int = 5) -> Path:
        """Save the file a result references into `destination` (a folder), under its own name.

        From the service's origin with the credentials; from a host in `download_hosts`
        without them; any other host is refused (a result could name any URL), and so is a
        redirect to one. Written to a temporary file first: no partial file is left."""
        url = self._allowed(urljoin(self.url + "/", href))
        folder = Path(destination)
        folder.mkdir(parents=True, exist_ok=True)
        name = PurePosixPath(urlsplit(url).path).name
        name = "result" if name in ("", ".", "..") else name
        target = folder / name
        what = f"download {name}"
        handle, partial = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
        try:
            with os.fdopen(handle, "wb") as out:
                for _ in range(max_redirects + 1):
                    async with self.http.stream("GET", url, headers=await self._headers(url)) as response:
                        if response.is_redirect and response.headers.get("location"):
                            url = self._allowed(urljoin(url, response.headers["location"]))
                            continue
                        if response.status_code >= 300:
                            await response.aread()
                            self._judge(response, what)
                            raise CCPError(f"{what}: HTTP {response.status_code}", response.status_code)
                        async for chunk in response.aiter_bytes():
                            out.write(chunk)
                        break
                else:
                    raise CCPError(f"{what}: more than {max_redirects} redirects")
            os.replace(partial, target)
        except httpx.TransportError as exc:
            raise TransientServiceError(f"{what}: {describe(exc)}") from None
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return target


def unpack_zip(archive: Path | str, destination: Path | str, *, max_bytes: int = 20 * 2**30) -> list[Path]:
    """Unpack a method's `output.zip` into `destination`; returns the files written.

    Every member is checked before anything is written: no absolute path, no drive, no
    `..`, no symbolic link, nothing outside `destination`, at most `max_bytes` in all."""
    folder = Path(destination).resolve()
    with zipfile.ZipFile(archive) as zipped:
        members = zipped.infolist()
        total = 0
        plan: list[tuple[zipfile.ZipInfo, Path]] = []
        for member in members:
            name = member.filename.replace("\\", "/")
            parts = PurePosixPath(name).parts
            mode = member.external_attr >> 16
            if name.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
                raise UnsafeArchive(f"{archive}: member {member.filename!r} would land outside {folder} "
                                    "(absolute path or '..'): nothing unpacked")
            if stat.S_ISLNK(mode):
                raise UnsafeArchive(f"{archive}: member {member.filename!r} is a symbolic link: nothing unpacked")
            target = (folder / Path(*parts)).resolve() if parts else folder
            if target != folder and folder not in target.parents:
                raise UnsafeArchive(f"{archive}: member {member.filename!r} would land outside {folder}: "
                                    "nothing unpacked")
            total += member.file_size
            if total > max_bytes:
                raise UnsafeArchive(f"{archive}: more than {max_bytes} bytes once unpacked: nothing unpacked")
            plan.append((member, target))
        written = []
        for member, target in plan:
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(member) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
            written.append(target)
    return written
