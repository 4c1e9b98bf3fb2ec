"""A WPS 1.0.0 client for D4Science DataMiner: WPS documents read as servers write them, our own HTTP.

Why not owslib's transport (see shared notes): it has no timeouts, no
connection reuse, sends the token to every output host, and its
`execute(...)` without `output=` is synchronous. httpx does the HTTP with timeouts,
one connection pool, and the gCube token attached only to requests for the
WPS service's own origin (scheme, host, port).

Why not all of owslib's reading: DescribeProcess answers are read here, from the
document (owslib files a complex input's default *format* as its default value, making
required file inputs optional; keeps one allowed range; gives -1 for an absent
maxOccurs; rewrites `true` as `True`), and so are the non-literal inputs of an Execute
(`_WireInput`) and bounding-box outputs. owslib still parses capabilities and execute
responses and assembles the Execute document.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import functools
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

WPS = "http://www.opengis.net/wps/1.0.0"
OWS = "http://www.opengis.net/ows/1.1"
XLINK = "http://www.w3.org/1999/xlink"
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
    """owslib/PyWPS spell types as `integer`, `xs:integer`, a schema URL or an OGC URN: keep
    the name. No DataType at all means a string (WPS 1.0, 10.3.1)."""
    text = (raw or "string").strip()
    return re.split(r"[#:]", text)[-1].lower() or "string"


# -- reading WPS documents: by element names, whatever their namespace ---------------------------
# Servers disagree on namespaces (CEDA's older documents use http://www.opengeospatial.net/ows),
# so, as owslib does, elements are matched by their local name.

def _local(node: Any) -> str:
    return node.tag.rsplit("}", 1)[-1] if isinstance(node.tag, str) else ""


def _child(node: Any, name: str) -> Any:
    return None if node is None else next((c for c in node if _local(c) == name), None)


def _children(node: Any, name: str) -> list[Any]:
    return [] if node is None else [c for c in node if _local(c) == name]


def _text_of(node: Any) -> str | None:
    """The element's text, stripped; None when there is no element or no text."""
    text = node.text.strip() if node is not None and node.text else ""
    return text or None


def _attribute(node: Any, name: str) -> str | None:
    """An attribute by its local name, with or without a namespace (`ows:reference`, `reference`)."""
    return next((v for k, v in node.attrib.items() if k.rsplit("}", 1)[-1] == name), None)


def _unique(values: Sequence[str | None]) -> tuple[str, ...]:
    """The values in order, each once (compared case-insensitively), the empty ones left out."""
    seen: dict[str, str] = {}
    for value in values:
        if value and value.lower() not in seen:
            seen[value.lower()] = value
    return tuple(seen.values())


# -- descriptions --------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcessSummary:
    identifier: str
    title: str
    abstract: str


RangeClosure = Literal["closed", "open", "open-closed", "closed-open"]


def _number_text(number: float) -> str:
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else repr(number)


@dataclass(frozen=True)
class ValueRange:
    """One `ows:Range` of a literal input's allowed values; a description may give several
    (and single values beside them): a value is allowed when any of them allows it."""

    minimum: float | None
    maximum: float | None
    closure: RangeClosure = "closed"
    spacing: float | None = None

    def contains(self, number: float) -> bool:
        low_open, high_open = self.closure in ("open", "open-closed"), self.closure in ("open", "closed-open")
        if self.minimum is not None and (number < self.minimum or (low_open and number == self.minimum)):
            return False
        if self.maximum is not None and (number > self.maximum or (high_open and number == self.maximum)):
            return False
        if self.spacing and self.minimum is not None:
            steps = (number - self.minimum) / self.spacing
            return abs(steps - round(steps)) <= 1e-9 * max(1.0, abs(steps))
        return True

    def __str__(self) -> str:
        low = "" if self.minimum is None else _number_text(self.minimum)
        high = "" if self.maximum is None else _number_text(self.maximum)
        text = f"{low}…{high}"
        if self.closure != "closed":
            text = ("(" if self.closure in ("open", "open-closed") else "[") + text + (
                ")" if self.closure in ("open", "closed-open") else "]")
        return text + (f" in steps of {_number_text(self.spacing)}" if self.spacing else "")


@dataclass(frozen=True)
class InputSpec:
    identifier: str
    title: str
    abstract: str
    kind: Literal["literal", "complex", "bbox"]
    data_type: str  # literal type name, or "complex" / "bbox"
    min_occurs: int
    max_occurs: int | None  # None: unbounded
    allowed_values: tuple[str, ...] = ()
    allowed_ranges: tuple[ValueRange, ...] = ()
    #: a literal's default value, as the document writes it. Only literals have one: the
    #: `Default` of a complex or bounding-box input names a format or a CRS, not a value.
    default: str | None = None
    mime_types: tuple[str, ...] = ()  # complex: the formats it takes, its default first
    crs: tuple[str, ...] = ()  # bbox: the coordinate reference systems it takes, its default first

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
    crs: tuple[str, ...] = ()


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


def _occurs(node: Any, attribute: str, element: str) -> str | None:
    """`minOccurs="1"` (WPS 1.0), or `<MinimumOccurs>1</MinimumOccurs>` (older documents)."""
    value = node.get(attribute)
    return value.strip() if value is not None else _text_of(_child(node, element))


def _max_occurs(raw: str | None) -> int | None:
    """Absent: one (WPS 1.0's default); "unbounded" or a huge number (52°North writes
    2147483647): no limit."""
    if raw is None:
        return 1
    return None if raw == "unbounded" or int(raw) > 10**6 else int(raw)


def _value_range(node: Any) -> ValueRange | None:
    """An `ows:Range`; None when its bounds are no numbers (nothing the client can check)."""
    try:
        low, high, step = (_text_of(_child(node, name)) for name in ("MinimumValue", "MaximumValue", "Spacing"))
        closure = (_attribute(node, "rangeClosure") or "closed").strip()
        return ValueRange(float(low) if low else None, float(high) if high else None,
                          closure if closure in ("open", "open-closed", "closed-open") else "closed",  # type: ignore[arg-type]
                          float(step) if step else None)
    except ValueError:
        return None


def _literal_domain(literal: Any) -> tuple[str, tuple[str, ...], tuple[ValueRange, ...], str | None]:
    """(type, allowed values, allowed ranges, default) of a LiteralData/LiteralOutput, each as
    the document writes it (owslib turns `true` into True and drops ranges)."""
    type_node = _child(literal, "DataType")
    data_type = _data_type((_text_of(type_node) or _attribute(type_node, "reference")) if type_node is not None else None)
    allowed = _child(literal, "AllowedValues")
    values = tuple(v.text.strip() for v in _children(allowed, "Value") if v.text is not None)
    ranges = tuple(r for r in map(_value_range, _children(allowed, "Range")) if r is not None)
    return data_type, values, ranges, _text_of(_child(literal, "DefaultValue"))


def _formats(complex_: Any) -> tuple[str, ...]:
    """The MIME types of a ComplexData/ComplexOutput, its default first; also the older
    `defaultFormat` attribute and `SupportedComplexData` elements (CEDA)."""
    mimes = [complex_.get("defaultFormat")]
    for container in (_child(complex_, "Default"), _child(complex_, "Supported")):
        mimes += [_text_of(_child(f, "MimeType")) for f in _children(container, "Format")]
    mimes += [_text_of(_child(s, "Format")) for s in _children(complex_, "SupportedComplexData")]
    return _unique(mimes)


def _crss(bbox: Any) -> tuple[str, ...]:
    """The CRSs of a BoundingBoxData/BoundingBoxOutput, its default first."""
    return _unique([_text_of(c) for part in ("Default", "Supported") for c in _children(_child(bbox, part), "CRS")])


def _input_spec(node: Any) -> InputSpec:
    identifier = _text_of(_child(node, "Identifier")) or ""
    common = dict(identifier=identifier, title=_text_of(_child(node, "Title")) or identifier,
                  abstract=_text_of(_child(node, "Abstract")) or "",
                  min_occurs=int(_occurs(node, "minOccurs", "MinimumOccurs") or 1),
                  max_occurs=_max_occurs(_occurs(node, "maxOccurs", "MaximumOccurs")))
    if (complex_ := _child(node, "ComplexData")) is not None:
        return InputSpec(kind="complex", data_type="complex", mime_types=_formats(complex_), **common)
    if (bbox := _child(node, "BoundingBoxData")) is not None:
        return InputSpec(kind="bbox", data_type="bbox", crs=_crss(bbox), **common)
    data_type, values, ranges, default = _literal_domain(_child(node, "LiteralData"))
    return InputSpec(kind="literal", data_type=data_type, allowed_values=values, allowed_ranges=ranges,
                     default=default, **common)


def _output_spec(node: Any) -> OutputSpec:
    identifier = _text_of(_child(node, "Identifier")) or ""
    title = _text_of(_child(node, "Title")) or identifier
    if (complex_ := _child(node, "ComplexOutput")) is not None:
        return OutputSpec(identifier, title, "complex", "complex", mime_types=_formats(complex_))
    if (bbox := _child(node, "BoundingBoxOutput")) is not None:
        return OutputSpec(identifier, title, "bbox", "bbox", crs=_crss(bbox))
    literal = _child(node, "LiteralOutput")
    return OutputSpec(identifier, title, "literal", _literal_domain(literal)[0] if literal is not None else "string")


def _flag(node: Any, name: str) -> bool:
    return (node.get(name) or "").strip().lower() == "true"


def parse_description(identifier: str, xml: bytes) -> ProcessDescription:
    """The process `identifier` of a DescribeProcess answer, read from the document itself:
    every allowed range, defaults as written, occurrences by WPS 1.0's defaults."""
    from lxml import etree

    try:
        root = etree.fromstring(xml)
    except etree.XMLSyntaxError:
        raise WPSServiceError(f"DescribeProcess {short_name(identifier)}: the answer is not XML") from None
    if _local(root) == "ExceptionReport":
        raise WPSServiceError(_exception_text(root))
    process = next((p for p in root.iter() if _local(p) == "ProcessDescription"
                    and _text_of(_child(p, "Identifier")) == identifier), None)
    if process is None:
        raise WPSServiceError(f"unknown process {identifier!r}")
    try:
        inputs = tuple(_input_spec(n) for n in _children(_child(process, "DataInputs"), "Input"))
    except ValueError as exc:  # minOccurs/maxOccurs that are no numbers
        raise WPSServiceError(f"DescribeProcess {short_name(identifier)}: unreadable occurrences ({exc})") from None
    return ProcessDescription(
        identifier=identifier, title=_text_of(_child(process, "Title")) or identifier,
        abstract=_text_of(_child(process, "Abstract")) or "", inputs=inputs,
        outputs=tuple(_output_spec(n) for n in _children(_child(process, "ProcessOutputs"), "Output")),
        store_supported=_flag(process, "storeSupported"), status_supported=_flag(process, "statusSupported"),
    )


# -- inputs: Python values → WPS inputs, validated before anything is sent ---------------------

@dataclass(frozen=True)
class LocalFile:
    """A local file to embed as complex data (the user may also pass a `Path`)."""

    path: Path
    mime_type: str | None = None


@dataclass(frozen=True)
class Reference:
    """A complex input the server fetches itself: a URL (GET), or a request it sends with a
    body (`method="POST"`), as a WFS GetFeature; `mime_type` says what the answer is
    (default: the input's default format). A plain http(s) URL string is a GET reference."""

    url: str
    body: str | None = None
    method: Literal["GET", "POST"] | None = None  # default: POST when there is a body, else GET
    mime_type: str | None = None


@dataclass(frozen=True)
class BoundingBox:
    """A bounding box (WPS BoundingBoxData): its lower and upper corners, in the axis order
    of its CRS (EPSG:4326 is latitude first), and the CRS (default: the input's default).
    The text `"minx,miny,maxx,maxy[,crs]"` (WPS 1.0's KVP form) works as an input too."""

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    crs: str | None = None

    def __post_init__(self) -> None:  # corners given as lists become tuples (hashable, comparable)
        for corner in ("lower", "upper"):
            value = getattr(self, corner)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, corner, tuple(value))

    def __str__(self) -> str:
        corners = ", ".join(" ".join(_number_text(float(c)) for c in corner) for corner in (self.lower, self.upper))
        return corners + (f" ({self.crs})" if self.crs else "")


INTEGER_TYPES = ("integer", "int", "long", "short", "nonnegativeinteger", "positiveinteger")
NUMBER_TYPES = ("float", "double", "decimal")
BOX_FORMS = "BoundingBox(lower, upper, crs) or 'minx,miny,maxx,maxy[,crs]'"


def _wps(name: str) -> str:
    return f"{{{WPS}}}{name}"


class _WireInput:
    """A prepared WPS input element (complex data, a reference, a bounding box) for owslib's
    Execute builder, which appends `getXml()` of every non-literal input. Built here, not by
    owslib: its ComplexDataInput sends any text that parses with a URL scheme (`id:1,…`) as a
    reference, and it knows neither a reference's method and body nor boxes beyond 2D."""

    def __init__(self, element: Any):
        self.element = element

    def getXml(self) -> Any:  # noqa: N802 (owslib's name)
        from copy import deepcopy

        return deepcopy(self.element)


@functools.cache
def _wire_type() -> type:
    """`_WireInput` as owslib's IComplexDataInput (imported on first use, as owslib is)."""
    from owslib.wps import IComplexDataInput

    return type("WireInput", (_WireInput, IComplexDataInput), {})


def _as_wire(element: Any) -> Any:
    return _wire_type()(element)


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
    problem = _not_allowed(spec, text, numeric)
    return (None, problem) if problem else (text, None)


def _not_allowed(spec: InputSpec, text: str, numeric: float | None) -> str | None:
    """Why `text` is none of the allowed values nor in any allowed range (None: it is allowed).
    Ranges are checked for numbers only: the client never refuses what it cannot judge."""
    values, ranges = spec.allowed_values, spec.allowed_ranges
    if not values and not ranges:
        return None
    if text in values or (numeric is not None and any(_same_number(numeric, v) for v in values)):
        return None
    if numeric is not None and any(r.contains(numeric) for r in ranges):
        return None
    if numeric is None and not values:
        return None
    bands = ", ".join(map(str, ranges))
    if not ranges:
        return f"{spec.identifier}: {text!r} is not one of {', '.join(values)}"
    if not values:
        return f"{spec.identifier}: {text} is outside the allowed range{'s' if len(ranges) > 1 else ''} {bands}"
    return f"{spec.identifier}: {text!r} is not one of {', '.join(values)}, nor within {bands}"


def _same_number(value: float, allowed: str) -> bool:
    try:
        return float(allowed) == value
    except ValueError:
        return False


def _format(spec: InputSpec, given: str | None) -> tuple[str | None, str | None]:
    """(the MIME type to send, problem): the one given, if the input takes it, else its default."""
    if given is None:
        return (spec.mime_types[0] if spec.mime_types else None), None
    if spec.mime_types and given.lower() not in {m.lower() for m in spec.mime_types}:
        return None, (f"{spec.identifier}: format {given!r} is not accepted "
                      f"(this input takes {', '.join(spec.mime_types)})")
    return given, None


def _reference(spec: InputSpec, reference: Reference) -> tuple[Any, str | None]:
    """A `wps:Reference`: the URL, the method, and for a POST its `wps:Body` — an XML body as
    XML (as USGS' clients send a WFS GetFeature), any other body as text."""
    from lxml import etree

    name = spec.identifier
    parts = urlsplit(reference.url) if isinstance(reference.url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        shown = WPSClient.public_url(reference.url) if isinstance(reference.url, str) else reference.url
        return None, f"{name}: reference {shown!r} is not an http(s) URL"
    method = (reference.method or ("POST" if reference.body is not None else "GET")).upper()
    if method not in ("GET", "POST"):
        return None, f"{name}: method {reference.method!r}: WPS 1.0 servers fetch references with GET or POST"
    if method == "GET" and reference.body is not None:
        return None, f"{name}: a body is sent with method='POST' only (method='GET' given)"
    if method == "POST" and reference.body is None:
        return None, f"{name}: method='POST' needs the body to send (body=…)"
    mime, problem = _format(spec, reference.mime_type)
    if problem:
        return None, problem
    element = etree.Element(_wps("Reference"), nsmap={"wps": WPS, "xlink": XLINK})
    element.set(f"{{{XLINK}}}href", reference.url)
    if method == "POST":
        element.set("method", "POST")
    if mime:
        element.set("mimeType", mime)
    if reference.body is not None:
        body = etree.SubElement(element, _wps("Body"))
        if not isinstance(reference.body, str):
            return None, f"{name}: the body must be text (XML or any other), got {type(reference.body).__name__}"
        if reference.body.lstrip().startswith("<"):
            try:
                body.append(etree.fromstring(reference.body.strip().encode()))
            except etree.XMLSyntaxError:
                return None, f"{name}: the body looks like XML but is not well-formed"
        else:
            body.text = reference.body
    return _as_wire(element), None


def _embedded(text: str, mime: str | None) -> Any:
    """`wps:Data/wps:ComplexData` holding `text`."""
    from lxml import etree

    data = etree.Element(_wps("Data"), nsmap={"wps": WPS})
    complex_ = etree.SubElement(data, _wps("ComplexData"))
    if mime:
        complex_.set("mimeType", mime)
    complex_.text = text
    return _as_wire(data)


def _complex(spec: InputSpec, value: Any, max_embed_bytes: int) -> tuple[Any, str | None]:
    if isinstance(value, Reference):
        return _reference(spec, value)
    if isinstance(value, str) and urlsplit(value).scheme in ("http", "https"):
        return _reference(spec, Reference(value))
    if isinstance(value, LocalFile):
        path = value.path
        mime, problem = _format(spec, value.mime_type)
        if problem:
            return None, problem
    elif isinstance(value, Path) or (isinstance(value, str) and Path(value).expanduser().is_file()):
        path, mime = Path(value).expanduser(), _format(spec, None)[0]
    else:
        return None, (f"{spec.identifier}: expected a URL (http/https), a Reference or a local file, got "
                      f"{value!r}" if isinstance(value, str) else
                      f"{spec.identifier}: expected a URL, a Reference or a file, got {type(value).__name__}")
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
    return _embedded(text, mime or mimetypes.guess_type(path.name)[0]), None


def _same_crs(a: str, b: str) -> bool:
    """`EPSG:4326`, `epsg:4326`, `urn:ogc:def:crs:EPSG::4326` and the opengis.net URL are one CRS."""
    from owslib.crs import Crs

    def key(text: str) -> tuple[str, str]:
        crs = Crs(text.strip())
        return (crs.authority.upper(), str(crs.code).upper()) if crs.authority else ("", text.strip().lower())

    return key(a) == key(b)


def _box_of(name: str, value: Any) -> tuple[BoundingBox | None, str | None]:
    if isinstance(value, BoundingBox):
        return value, None
    if not isinstance(value, str):
        return None, f"{name}: expected a {BOX_FORMS}, got {type(value).__name__}"
    parts = [p.strip() for p in value.split(",")]
    crs = parts.pop() if len(parts) % 2 and parts and not _is_number(parts[-1]) else None
    if len(parts) < 4 or len(parts) % 2 or not all(map(_is_number, parts)):
        return None, f"{name}: expected 'minx,miny,maxx,maxy[,crs]', got {value!r}"
    half = len(parts) // 2
    return BoundingBox(tuple(map(float, parts[:half])), tuple(map(float, parts[half:])), crs), None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _bounding_box(spec: InputSpec, value: Any) -> tuple[Any, str | None]:
    """`wps:Data/wps:BoundingBoxData` (crs, dimensions, corners), in a CRS the input offers,
    spelled as the server spells it."""
    from lxml import etree

    name = spec.identifier
    box, problem = _box_of(name, value)
    if box is None:
        return None, problem
    try:
        lower, upper = [float(c) for c in box.lower], [float(c) for c in box.upper]
    except (TypeError, ValueError):
        return None, f"{name}: coordinates must be finite numbers"
    if not all(map(math.isfinite, lower + upper)):
        return None, f"{name}: coordinates must be finite numbers"
    if len(lower) != len(upper):
        return None, f"{name}: the lower corner has {len(lower)} coordinates and the upper {len(upper)}"
    if len(lower) < 2:
        return None, f"{name}: a corner needs 2 coordinates at least"
    crs = box.crs or (spec.crs[0] if spec.crs else None)
    if box.crs and spec.crs:
        crs = next((offered for offered in spec.crs if _same_crs(offered, box.crs)), None)
        if crs is None:
            return None, f"{name}: CRS {box.crs!r} is not offered (this input takes {', '.join(spec.crs)})"
    data = etree.Element(_wps("Data"), nsmap={"wps": WPS, "ows": OWS})
    element = etree.SubElement(data, _wps("BoundingBoxData"), dimensions=str(len(lower)))
    if crs:
        element.set("crs", crs)
    for corner, coordinates in (("LowerCorner", lower), ("UpperCorner", upper)):
        etree.SubElement(element, f"{{{OWS}}}{corner}").text = " ".join(map(repr, coordinates))
    return _as_wire(data), None


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
            hint = f" (one box is {BOX_FORMS})" if spec.kind == "bbox" else ""
            problems.append(f"{spec.identifier}: {len(items)} values given, at most {spec.max_occurs} allowed{hint}")
            continue
        if len(items) < spec.min_occurs:
            problems.append(f"{spec.identifier}: {len(items)} values given, at least {spec.min_occurs} needed")
            continue
        for item in items:
            if spec.kind == "complex":
                converted, problem = _complex(spec, item, max_embed_bytes)
            elif spec.kind == "bbox":
                converted, problem = _bounding_box(spec, item)
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
    value: Any = None  # literal outputs, converted to Python; a BoundingBox for a bounding box
    reference: str | None = None  # href of a referenced output
    mime_type: str | None = None
    embedded: str | None = None  # embedded complex data, as text
    title: str = ""


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


def _box_in(output: Any) -> Any:
    data = _child(output, "Data")
    return None if data is None else next(
        (b for b in data if _local(b) in ("BoundingBoxData", "BoundingBox", "WGS84BoundingBox")), None)


def _boxes(root: Any) -> dict[str, BoundingBox]:
    """Bounding-box outputs by identifier (owslib reads none): `wps:BoundingBoxData` (PyWPS,
    52°North) or `ows:BoundingBox`/`ows:WGS84BoundingBox` in the output's `wps:Data`."""
    found = {}
    for outputs in (n for n in root.iter() if _local(n) == "ProcessOutputs"):
        for output in _children(outputs, "Output"):
            box = _box_in(output)
            if box is None:
                continue
            try:
                lower, upper = (tuple(float(c) for c in (_text_of(_child(box, name)) or "").split())
                                for name in ("LowerCorner", "UpperCorner"))
            except ValueError:
                continue  # corners the client cannot read: the output keeps no value rather than a guess
            crs = box.get("crs") or ("urn:ogc:def:crs:OGC:2:84" if _local(box) == "WGS84BoundingBox" else None)
            found[_text_of(_child(output, "Identifier")) or ""] = BoundingBox(lower, upper, crs)
    return found


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
    boxes = _boxes(root)
    outputs = []
    for out in execution.processOutputs:
        title = getattr(out, "title", None) or ""
        if out.identifier in boxes:
            outputs.append(OutputValue(out.identifier, "bbox", value=boxes[out.identifier], title=title))
            continue
        data = out.data[0] if out.data else None
        complex_ = out.dataType == "ComplexData" or out.reference or out.mimeType
        outputs.append(OutputValue(
            identifier=out.identifier,
            data_type="complex" if complex_ else _data_type(out.dataType),
            value=None if complex_ else _python_value(out.dataType or "string", data),
            reference=out.reference,
            mime_type=out.mimeType,
            embedded=_as_text(data) if complex_ and data is not None else None,
            title=title,
        ))
    progress = float(execution.percentCompleted) if execution.percentCompleted is not None else None
    return ExecutionStatus(execution.statusLocation or fallback_location, state, progress, message, tuple(outputs))


def _as_text(data: Any) -> str:
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
    """A file an execution produced: a referenced output, or a file of DataMiner's result block."""

    description: str
    mime_type: str
    url: str


@dataclass(frozen=True)
class ResultEntry:
    """One `ogr:Result` of DataMiner's result block (`RESULT_FILES_OUTPUT`). gCube's
    template writes a file's storage URL into `d4science:Data` — and for a value the
    algorithm computed, the value itself (mime type text/plain)."""

    fid: str
    description: str
    mime_type: str
    data: str

    @property
    def is_file(self) -> bool:
        """The data is a URL (`scheme://host…`), not a value."""
        parts = urlsplit(self.data)
        return bool(parts.scheme and parts.netloc)


def parse_result_block(embedded: str) -> list[ResultEntry]:
    """The entries of the result block's feature collection, in the document's order."""
    from lxml import etree

    try:
        root = etree.fromstring(embedded.encode())
    except etree.XMLSyntaxError:
        return []
    return [ResultEntry(fid=result.get("fid") or "",
                        description=(result.findtext(f"{{{D4SCIENCE}}}Description") or "").strip(),
                        mime_type=(result.findtext(f"{{{D4SCIENCE}}}MimeType") or "").strip(),
                        data=(result.findtext(f"{{{D4SCIENCE}}}Data") or "").strip())
            for result in root.iter(f"{{{OGR}}}Result")]


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
