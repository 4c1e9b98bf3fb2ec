"""A WPS 1.0.0 client for D4Science DataMiner: owslib for the XML, our own HTTP.

Why not owslib's transport (see shared notes): it has no timeouts, no
connection reuse, sends the token to every output host, and its
`execute(...)` without `output=` is synchronous. Here owslib builds the
Execute document and parses every response; httpx does the HTTP with timeouts,
one connection pool, and the gCube token attached only to requests for the
WPS service's own origin (scheme, host, port).

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import math
import mimetypes
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from pydantic import SecretStr

from prefect_egi.tasks.faults import TRANSIENT_TRANSPORT, TransientServiceError, describe, is_transient_status
from prefect_egi.tasks.http import (
    OutcomeUnknown,
    RetryPolicy,
    TransientHTTPError,
    arequest_with_retries,
    is_certificate_failure,
)
from prefect_egi.tasks.redaction import register_secret
from prefect_egi.tasks.remote import JobState

OWS = "http://www.opengis.net/ows/1.1"
OGR = "http://ogr.maptools.org/"
D4SCIENCE = "http://www.d4science.org"
TOKEN_PARAMETER = "gcube-token"
#: the output in which DataMiner lists the files an algorithm wrote (a feature collection)
RESULT_FILES_OUTPUT = "non_deterministic_output"
TokenMode = Literal["header", "query", "basic"]

_STATES = {
    "ProcessAccepted": JobState.QUEUED,
    "ProcessStarted": JobState.RUNNING,
    "ProcessPaused": JobState.RUNNING,
    "ProcessSucceeded": JobState.SUCCEEDED,
    "ProcessFailed": JobState.FAILED,
    "Exception": JobState.FAILED,
}


class WPSError(Exception):
    """Base of every WPS error; messages are readable text, never raw XML or a token."""


class WPSAuthError(WPSError):
    """401/403: the gCube token is missing, wrong, expired or not allowed."""


class WPSServiceError(WPSError):
    """The server answered an OWS ExceptionReport (unknown process, bad input…)."""


class ExecuteOutcomeUnknown(WPSError):
    """An Execute failed after it may have reached the server: it may be running."""


class InputValidationError(WPSError, ValueError):
    """Inputs do not match DescribeProcess; lists every problem at once."""

    def __init__(self, process: str, problems: list[str]):
        self.process = process
        self.problems = list(problems)
        super().__init__(
            f"Invalid inputs for {short_name(process)}:\n" + "\n".join(f"- {p}" for p in self.problems)
        )

    def __reduce__(self):
        return (type(self), (self.process, self.problems))


def short_name(identifier: str) -> str:
    """`org.gcube….transducerers.CSV_SUMMARY` → `CSV_SUMMARY`."""
    return identifier.rsplit(".", 1)[-1]


def _data_type(raw: str | None) -> str:
    """owslib/PyWPS spell types as `integer`, `xs:integer` or a schema URL: keep the name."""
    text = (raw or "string").strip()
    return re.split(r"[#:]", text)[-1].lower() or "string"


# -- descriptions --------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcessSummary:
    identifier: str
    title: str
    abstract: str


@dataclass(frozen=True)
class InputSpec:
    identifier: str
    title: str
    abstract: str
    kind: Literal["literal", "complex", "bbox"]
    data_type: str  # literal type name, or "complex"
    min_occurs: int
    max_occurs: int | None  # None: unbounded
    allowed_values: tuple[str, ...] = ()
    allowed_range: tuple[float | None, float | None] | None = None
    default: str | None = None
    mime_types: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.min_occurs > 0 and self.default is None


@dataclass(frozen=True)
class OutputSpec:
    identifier: str
    title: str
    kind: Literal["literal", "complex", "bbox"]
    data_type: str
    mime_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProcessDescription:
    identifier: str
    title: str
    abstract: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    store_supported: bool
    status_supported: bool

    def input(self, name: str) -> InputSpec | None:
        return next((i for i in self.inputs if i.identifier == name), None)


def _ranges(xml: bytes) -> dict[str, tuple[float | None, float | None]]:
    """owslib drops `ows:Range` allowed values: read them from the document."""
    from lxml import etree

    found: dict[str, tuple[float | None, float | None]] = {}
    root = etree.fromstring(xml)
    for node in root.iter("Input", "{http://www.opengis.net/wps/1.0.0}Input"):
        ident = node.findtext(f"{{{OWS}}}Identifier")
        rng = node.find(f".//{{{OWS}}}Range")
        if ident and rng is not None:
            low, high = rng.findtext(f"{{{OWS}}}MinimumValue"), rng.findtext(f"{{{OWS}}}MaximumValue")
            found[ident] = (float(low) if low else None, float(high) if high else None)
    return found


def parse_description(identifier: str, xml: bytes) -> ProcessDescription:
    from owslib.wps import WebProcessingService

    wps = WebProcessingService("http://parse.invalid/wps", skip_caps=True)
    try:
        process = wps.describeprocess(identifier, xml=xml)
    except ValueError:
        raise WPSServiceError(f"unknown process {identifier!r}") from None
    ranges = _ranges(xml)
    inputs = []
    for item in process.dataInputs:
        complex_ = item.dataType == "ComplexData"
        bbox = item.dataType == "BoundingBoxData"
        max_occurs = item.maxOccurs
        inputs.append(InputSpec(
            identifier=item.identifier,
            title=item.title or item.identifier,
            abstract=getattr(item, "abstract", "") or "",
            kind="complex" if complex_ else "bbox" if bbox else "literal",
            data_type="complex" if complex_ else "bbox" if bbox else _data_type(item.dataType),
            min_occurs=int(item.minOccurs or 0),
            max_occurs=None if max_occurs in (None, "unbounded") or (isinstance(max_occurs, (int, float)) and max_occurs > 10**6) else int(max_occurs),
            allowed_values=tuple(str(v) for v in (item.allowedValues or []) if v != "AnyValue"),
            allowed_range=ranges.get(item.identifier),
            default=None if item.defaultValue in (None, "") else str(item.defaultValue),
            mime_types=tuple(v.mimeType for v in (item.supportedValues or []) if complex_ and v.mimeType),
        ))
    outputs = [
        OutputSpec(
            identifier=o.identifier, title=o.title or o.identifier,
            kind="complex" if o.dataType == "ComplexData" else "literal",
            data_type="complex" if o.dataType == "ComplexData" else _data_type(o.dataType),
            mime_types=tuple(v.mimeType for v in (getattr(o, "supportedValues", None) or []) if getattr(v, "mimeType", None)),
        )
        for o in process.processOutputs
    ]
    return ProcessDescription(
        identifier=process.identifier, title=process.title or process.identifier,
        abstract=getattr(process, "abstract", "") or "", inputs=tuple(inputs), outputs=tuple(outputs),
        store_supported=bool(process.storeSupported), status_supported=bool(process.statusSupported),
    )


# -- inputs: Python values → WPS inputs, validated before anything is sent ---------------------

@dataclass(frozen=True)
class LocalFile:
    """A local file to embed as complex data (the user may also pass a `Path`)."""

    path: Path
    mime_type: str | None = None


INTEGER_TYPES = ("integer", "int", "long", "short", "nonnegativeinteger", "positiveinteger")
NUMBER_TYPES = ("float", "double", "decimal")


def _number(name: str, value: Any, integer: bool) -> tuple[float | None, str | None]:
    """`value` as a finite number (whole when `integer`), or the problem with it."""
    expected = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None, f"{name}: expected {expected}, got {type(value).__name__}"
    try:
        number = float(value)
    except ValueError:
        return None, f"{name}: expected {expected}, got {value!r}"
    if not math.isfinite(number) or (integer and not number.is_integer()):
        return None, f"{name}: expected {'a finite number' if not integer else expected}, got {value!r}"
    return number, None


def _literal(spec: InputSpec, value: Any) -> tuple[str | None, str | None]:
    """(wire text, problem)."""
    name, kind = spec.identifier, spec.data_type
    numeric: float | None = None
    if kind in INTEGER_TYPES or kind in NUMBER_TYPES:
        numeric, problem = _number(name, value, integer=kind in INTEGER_TYPES)
        if problem or numeric is None:
            return None, problem
        if kind in INTEGER_TYPES:
            text = str(int(numeric))
        else:
            text = repr(numeric) if isinstance(value, float) else str(value)
    elif kind == "boolean":
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str) and value.lower() in ("true", "false"):
            text = value.lower()
        else:
            return None, f"{name}: expected true or false, got {value!r}"
    else:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            return None, f"{name}: expected text, got {type(value).__name__}"
        text, numeric = str(value), None
    if spec.allowed_values and text not in spec.allowed_values and not (
        numeric is not None and any(_same_number(numeric, a) for a in spec.allowed_values)
    ):
        return None, f"{name}: {text!r} is not one of {', '.join(spec.allowed_values)}"
    if spec.allowed_range and numeric is not None:
        low, high = spec.allowed_range
        if (low is not None and numeric < low) or (high is not None and numeric > high):
            return None, f"{name}: {text} is outside the allowed range {low:g}…{high:g}"
    return text, None


def _same_number(value: float, allowed: str) -> bool:
    try:
        return float(allowed) == value
    except ValueError:
        return False


def _complex(spec: InputSpec, value: Any, max_embed_bytes: int) -> tuple[Any, str | None]:
    from owslib.wps import ComplexDataInput

    mime = spec.mime_types[0] if spec.mime_types else None
    if isinstance(value, str) and urlsplit(value).scheme in ("http", "https"):
        return ComplexDataInput(value, mimeType=mime), None
    if isinstance(value, LocalFile):
        path, mime = value.path, value.mime_type or mime
    elif isinstance(value, Path) or (isinstance(value, str) and Path(value).expanduser().is_file()):
        path = Path(value).expanduser()
    else:
        return None, (f"{spec.identifier}: expected a URL (http/https) or a local file, got "
                      f"{value!r}" if isinstance(value, str) else f"{spec.identifier}: expected a URL or a file, got {type(value).__name__}")
    if not path.is_file():
        return None, f"{spec.identifier}: file {path} does not exist"
    size = path.stat().st_size
    if size > max_embed_bytes:
        return None, (f"{spec.identifier}: file {path} is {size} bytes, over the {max_embed_bytes}-byte limit for "
                      "embedding; upload it somewhere and pass its URL instead")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None, f"{spec.identifier}: file {path} is not UTF-8 text; pass binary data by URL"
    return ComplexDataInput(text, mimeType=mime or mimetypes.guess_type(path.name)[0]), None


def build_inputs(
    description: ProcessDescription, values: Mapping[str, Any], max_embed_bytes: int = 5 * 1024 * 1024
) -> list[tuple[str, Any]]:
    """Check `values` against the description and turn them into owslib inputs.

    One `InputValidationError` lists every problem: unknown or missing names,
    wrong types, values outside the allowed ones, too many occurrences.
    """
    problems: list[str] = []
    wire: list[tuple[str, Any]] = []
    known = ", ".join(i.identifier for i in description.inputs) or "none"
    for name in values:
        if description.input(name) is None:
            problems.append(f"{name}: unknown input (this process takes: {known})")
    for spec in description.inputs:
        if spec.identifier not in values or values[spec.identifier] is None:
            if spec.required:
                problems.append(f"{spec.identifier}: missing ({spec.data_type} input, required)")
            continue
        given = values[spec.identifier]
        items = list(given) if isinstance(given, (list, tuple)) else [given]
        if spec.max_occurs is not None and len(items) > spec.max_occurs:
            problems.append(f"{spec.identifier}: {len(items)} values given, at most {spec.max_occurs} allowed")
            continue
        if len(items) < spec.min_occurs:
            problems.append(f"{spec.identifier}: {len(items)} values given, at least {spec.min_occurs} needed")
            continue
        for item in items:
            if spec.kind == "complex":
                converted, problem = _complex(spec, item, max_embed_bytes)
            elif spec.kind == "bbox":
                converted, problem = None, f"{spec.identifier}: bounding-box inputs are not supported yet"
            else:
                converted, problem = _literal(spec, item)
            if problem:
                problems.append(problem)
            else:
                wire.append((spec.identifier, converted))
    if problems:
        raise InputValidationError(description.identifier, problems)
    return wire


# -- execution status and outputs ----------------------------------------------------------------

@dataclass(frozen=True)
class OutputValue:
    identifier: str
    data_type: str
    value: Any = None  # literal outputs, converted to Python
    reference: str | None = None  # href of a referenced output
    mime_type: str | None = None
    embedded: str | None = None  # embedded complex data, as text


@dataclass(frozen=True)
class ExecutionStatus:
    status_location: str
    state: JobState
    progress: float | None
    message: str
    outputs: tuple[OutputValue, ...] = ()


def _python_value(data_type: str, text: str | None) -> Any:
    if text is None:
        return None
    kind = _data_type(data_type)
    try:
        if kind in INTEGER_TYPES:
            return int(float(text))
        if kind in NUMBER_TYPES:
            return float(text)
        if kind == "boolean":
            return text.strip().lower() == "true"
    except ValueError:
        return text
    return text


def _cut_short(body: bytes) -> bool:
    """An empty answer, or the start of an XML document that does not parse: a status
    document read mid-write — not an HTML page or some other service's answer."""
    head = body.lstrip()[:200]
    return not head or head.startswith(b"<?xml") or b"ExecuteResponse" in head


def parse_status(xml: bytes, fallback_location: str = "") -> ExecutionStatus:
    from lxml import etree
    from owslib.wps import WPSExecution

    try:
        root = etree.fromstring(xml)
    except etree.XMLSyntaxError:
        raise WPSServiceError("the server's answer is not XML") from None
    execution = WPSExecution()
    if root.tag.endswith("ExceptionReport"):
        raise WPSServiceError(_exception_text(root))
    execution.parseResponse(root)
    state = _STATES.get(execution.status or "", JobState.UNKNOWN)
    if state is JobState.FAILED:
        message = "; ".join(e.text.strip() for e in execution.errors if e.text) or "the process failed"
    else:
        message = (execution.statusMessage or "").strip()
    outputs = []
    for out in execution.processOutputs:
        data = out.data[0] if out.data else None
        complex_ = out.dataType == "ComplexData" or out.reference or out.mimeType
        outputs.append(OutputValue(
            identifier=out.identifier,
            data_type="complex" if complex_ else _data_type(out.dataType),
            value=None if complex_ else _python_value(out.dataType or "string", data),
            reference=out.reference,
            mime_type=out.mimeType,
            embedded=_text(data) if complex_ and data is not None else None,
        ))
    progress = float(execution.percentCompleted) if execution.percentCompleted is not None else None
    return ExecutionStatus(execution.statusLocation or fallback_location, state, progress, message, tuple(outputs))


def _text(data: Any) -> str:
    return data.decode() if isinstance(data, bytes) else str(data)


def _exception_text(root: Any) -> str:
    texts = [t.strip() for t in root.itertext() if t.strip()]
    codes = [e.get("exceptionCode") for e in root.iter(f"{{{OWS}}}Exception") if e.get("exceptionCode")]
    locators = [e.get("locator") for e in root.iter(f"{{{OWS}}}Exception") if e.get("locator")]
    text = "; ".join(texts) or "no text"
    prefix = ", ".join(filter(None, codes + [f"locator {loc}" for loc in locators]))
    return f"{prefix}: {text}" if prefix else text


@dataclass(frozen=True)
class ResultFile:
    """One entry of DataMiner's `non_deterministic_output` (`RESULT_FILES_OUTPUT`)."""

    description: str
    mime_type: str
    url: str


def parse_result_files(embedded: str) -> list[ResultFile]:
    """(description, mime type, URL) of each `ogr:Result` in the feature collection."""
    from lxml import etree

    try:
        root = etree.fromstring(embedded.encode())
    except etree.XMLSyntaxError:
        return []
    files = []
    for result in root.iter(f"{{{OGR}}}Result"):
        url = (result.findtext(f"{{{D4SCIENCE}}}Data") or "").strip()
        if url:
            files.append(ResultFile(
                description=(result.findtext(f"{{{D4SCIENCE}}}Description") or "").strip(),
                mime_type=(result.findtext(f"{{{D4SCIENCE}}}MimeType") or "").strip(),
                url=url,
            ))
    return files


# -- the client ----------------------------------------------------------------------------------

@dataclass
class WPSClient:
    """One WPS endpoint, one connection pool, the token only for its own origin."""

    url: str
    token: SecretStr | None = None
    token_mode: TokenMode = "header"
    username: str = "prefect-egi"
    verify: Any = True
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    _http: httpx.AsyncClient | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        register_secret(self.token)
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url: {self.url!r} is not an http(s) URL of a WPS service")
        self._origin = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))

    # -- plumbing
    def same_origin(self, url: str) -> bool:
        parts = urlsplit(url)
        return (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)) == self._origin

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None or self._http.is_closed:
            self._http = httpx.AsyncClient(verify=self.verify, timeout=self.timeout, follow_redirects=False,
                                           limits=httpx.Limits(max_connections=16, max_keepalive_connections=8))
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> "WPSClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @staticmethod
    def public_url(url: str) -> str:
        """The URL without a gcube-token parameter (for messages, ids and logs)."""
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != TOKEN_PARAMETER]
        return urlunsplit(parts._replace(query=urlencode(query)))

    def _authorize(self, url: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The URL and request arguments carrying the token — only for our own origin."""
        if self.token is None or not self.same_origin(url):
            return url, kwargs
        value = self.token.get_secret_value()
        merged = dict(kwargs)
        if self.token_mode == "header":
            merged["headers"] = {**(kwargs.get("headers") or {}), "gcube-token": value}
        elif self.token_mode == "basic":
            merged["auth"] = (self.username, value)
        else:  # query: appended to the URL itself (httpx's params= would replace its query)
            params = {**dict(parse_qsl(urlsplit(url).query, keep_blank_values=True)),
                      **(merged.pop("params", None) or {}), TOKEN_PARAMETER: value}
            url = urlunsplit(urlsplit(url)._replace(query=urlencode(params)))
        return url, merged

    def _check(self, response: httpx.Response, what: str) -> httpx.Response:
        if response.status_code in (401, 403):
            raise WPSAuthError(
                f"{what}: the service refused the gCube token (HTTP {response.status_code}); check that the token "
                "is valid for this VRE (D4Science account → token) and set on the DataMiner block"
            )
        if response.status_code == 404:
            raise WPSServiceError(f"{what}: {self.public_url(str(response.request.url))} was not found (HTTP 404)")
        if response.status_code >= 400:
            text = _exception_text_of(response.content) or response.text[:200]
            raise WPSServiceError(f"{what}: HTTP {response.status_code}: {text}")
        return response

    async def _get(self, url: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            target, arguments = self._authorize(url, kwargs)
            response = await arequest_with_retries(self.http, "GET", target, policy=self.retry, what=what,
                                                   **arguments)
        except TransientHTTPError as exc:
            raise WPSError(self.scrub(str(exc))) from None
        return self._check(response, what)

    def scrub(self, text: str) -> str:
        """`text` without this client's token (for error messages)."""
        if self.token is not None:
            text = text.replace(self.token.get_secret_value(), "***")
        return text

    # -- operations
    async def processes(self) -> list[ProcessSummary]:
        from owslib.wps import WebProcessingService

        response = await self._get(self.url, "GetCapabilities",
                                   params={"service": "WPS", "request": "GetCapabilities", "version": "1.0.0"})
        wps = WebProcessingService(self.url, skip_caps=True)
        wps.getcapabilities(xml=response.content)
        return [ProcessSummary(p.identifier, p.title or "", getattr(p, "abstract", "") or "") for p in wps.processes]

    async def describe(self, identifier: str) -> ProcessDescription:
        response = await self._get(self.url, f"DescribeProcess {short_name(identifier)}", params={
            "service": "WPS", "request": "DescribeProcess", "version": "1.0.0", "identifier": identifier})
        return parse_description(identifier, response.content)

    async def execute(self, description: ProcessDescription, inputs: Sequence[tuple[str, Any]]) -> ExecutionStatus:
        """Submit asynchronously (storeExecuteResponse + status). An Execute is not
        idempotent and WPS 1.0 cannot be asked what it started, so it is sent again only
        after a failure proving it never arrived (no connection; 503/429 from a front);
        any other failure is reported, never retried blindly."""
        from lxml import etree
        from owslib.wps import ASYNC, WPSExecution

        outputs = [(o.identifier, o.kind == "complex" and o.identifier != RESULT_FILES_OUTPUT, None)
                   for o in description.outputs]
        request = WPSExecution().buildRequest(description.identifier, list(inputs), output=outputs, mode=ASYNC)
        body = etree.tostring(request, xml_declaration=True, encoding="utf-8")
        what = f"Execute {short_name(description.identifier)}"
        target, arguments = self._authorize(self.url, {"headers": {"Content-Type": "text/xml"}})
        try:
            response = await arequest_with_retries(self.http, "POST", target, policy=self.retry, what=what,
                                                   idempotent=False, content=body, **arguments)
        except OutcomeUnknown as exc:
            raise ExecuteOutcomeUnknown(self.scrub(f"{exc}: the server may or may not have started the computation")) from None
        except TransientHTTPError as exc:
            raise WPSError(self.scrub(str(exc))) from None
        self._check(response, what)
        status = parse_status(response.content)
        if not status.status_location:
            raise WPSServiceError(f"{what}: the server did not run it asynchronously (no statusLocation)")
        return status

    async def status(self, status_location: str) -> ExecutionStatus:
        """One status request. Transport errors and 5xx propagate as httpx errors for the
        wait loop to classify; 401 → `httpx.HTTPStatusError` too (the loop renews)."""
        target, arguments = self._authorize(status_location, {})
        response = await self.http.get(target, **arguments)
        if response.status_code == 401 or is_transient_status(response.status_code):
            response.raise_for_status()  # the wait loop renews (401) or backs off
        self._check(response, "status")
        try:
            return parse_status(response.content, status_location)
        except WPSServiceError:
            if _cut_short(response.content):
                # WPS servers rewrite the status document in place (PyWPS truncates the file,
                # then writes it): a read in between gets it empty or cut short — try again.
                raise TransientServiceError(f"the status document at {self.public_url(status_location)} "
                                            "was incomplete (being rewritten?)") from None
            raise

    async def download(self, url: str, destination: Path, max_bytes: int, timeout: float) -> Path:
        """Stream `url` into `destination` (a file path), within a size and a time limit."""
        import asyncio

        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(destination.name + ".part")
        total = 0

        async def once() -> None:
            nonlocal total
            total = 0
            target, arguments = self._authorize(url, {})
            async with self.http.stream("GET", target, **arguments) as response:
                if is_transient_status(response.status_code):
                    raise httpx.HTTPStatusError(f"HTTP {response.status_code}", request=response.request,
                                                response=response)
                self._check(response, f"download {self.public_url(url)}")
                with partial.open("wb") as out:
                    async for chunk in response.aiter_bytes():
                        total += len(chunk)
                        if total > max_bytes:
                            raise WPSError(f"download {self.public_url(url)}: larger than the {max_bytes}-byte limit")
                        out.write(chunk)

        async def stream() -> None:
            """A GET is safe to repeat: transient failures are retried (from the start), within the time limit."""
            for attempt in range(self.retry.attempts):
                if attempt:
                    await asyncio.sleep(self.retry.delay(attempt - 1))
                try:
                    return await once()
                except (*TRANSIENT_TRANSPORT, httpx.HTTPStatusError) as exc:
                    if is_certificate_failure(exc) or attempt == self.retry.attempts - 1:
                        raise WPSError(f"download {self.public_url(url)} failed {attempt + 1} time(s); last "
                                       f"failure: {describe(exc)}") from None

        try:
            await asyncio.wait_for(stream(), timeout)
        except asyncio.TimeoutError:
            partial.unlink(missing_ok=True)
            raise WPSError(f"download {self.public_url(url)}: took longer than {timeout:.0f} s") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(destination)
        return destination


def _exception_text_of(content: bytes) -> str:
    from lxml import etree

    try:
        root = etree.fromstring(content)
    except etree.XMLSyntaxError:
        return ""
    return _exception_text(root) if root.tag.endswith("ExceptionReport") else ""
