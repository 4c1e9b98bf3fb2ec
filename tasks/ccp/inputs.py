"""Checking an OGC API – Processes Execute's inputs against the process description.

Why here, before anything is sent: an Execute is not idempotent and a CCP method runs in a
container that takes minutes to start; a wrong input found by the server (or, worse, by the
method, half-way) costs a job, a queue slot and a confusing failure. The description the
server publishes (`GET /processes/{id}`) says what it takes, so the inputs are checked
against it first, and ONE `CCPInputError` lists every problem at once — unknown names
(with the closest known name), missing required inputs, occurrences, values against each
input's JSON Schema — each naming the input and saying what would be right.

Rules followed (OGC API – Processes 1.0/1.2, Part 1, "Execute"):

- an input whose minOccurs ≥ 1 must be given unless its schema has a `default` (the server
  applies it); an input with maxOccurs > 1 (or "unbounded") may be a list of values, each
  checked against the schema and the count against minOccurs/maxOccurs; with maxOccurs 1 a
  list is ONE value (the schema may be `type: array`);
- a link (`{"href", "type"?, "rel"?, "title"?, "hreflang"?}`) is accepted for any input (the
  server fetches it), without schema check, but only with an http(s) href;
- a qualified value (`{"value", "mediaType"?, "encoding"?, "schema"?}`) has its `value` checked;
- a bounding box (`{"bbox": [4 or 6 numbers], "crs"?}`) is an object like any other.

JSON Schema dialects. OGC 1.2 descriptions are JSON Schema 2020-12; 1.0 ones (and OGC's own
1.0 example) are written in OpenAPI 3.0's dialect: boolean `exclusiveMinimum` /
`exclusiveMaximum` beside `minimum`/`maximum`, `nullable: true`, `format: binary`/`byte`.
A COPY of each schema is normalised to 2020-12 and checked with `Draft202012Validator`,
asserting only the formats `date-time`, `date` and `uri` (unknown formats such as `double`
or `ogc-bbox` are annotations, not errors). `oneOf` alternatives that differ only in
annotations (`contentMediaType`, `contentEncoding`, …) are merged: no JSON validator can
tell them apart (OGC's example lists a GeoTIFF and a JPEG 2000 string so, and a strict
`oneOf` would refuse every image), the server tells them by the qualified value's
`mediaType` — which is checked against the alternatives' `contentMediaType`s.

No remote `$ref` is fetched: descriptions reference `https://schemas.opengis.net/…` or
relative files, and neither a test nor a user's flow should download schemas (no network,
no trust in what comes back). A `$ref` that cannot be resolved inside the schema itself
makes that input's value check be skipped — not an error: the server still checks it.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import re
import reprlib
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import PurePath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import referencing
import referencing.exceptions
from jsonschema.exceptions import SchemaError, UnknownType, ValidationError

from prefect_egi.tasks.ccp.client import CCPError, Parameter, ProcessDescription

#: members of an OGC link (`link.yaml`); a mapping with `href` and only these is a link
LINK_KEYS = frozenset({"href", "rel", "type", "hreflang", "title", "length"})
#: members of an OGC qualified input value (`qualifiedInputValue.yaml`, 1.0 and 1.2)
QUALIFIED_KEYS = frozenset({"value", "mediaType", "encoding", "schema"})
#: at most this many characters of a value are shown in a message
SHOWN = 200

_ANNOTATIONS = frozenset({"title", "description", "contentMediaType", "contentEncoding", "contentSchema",
                          "examples", "example", "$comment", "readOnly", "writeOnly", "deprecated"})


class CCPInputError(CCPError, ValueError):
    """The inputs do not match the process description; `problems` lists every one."""

    def __init__(self, process: str, problems: list[str]):
        self.process = process
        self.problems = list(problems)
        super().__init__(f"Invalid inputs for {process}:\n" + "\n".join(f"- {p}" for p in self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.process, self.problems))


# -- showing values ----------------------------------------------------------------------------

_repr = reprlib.Repr()
_repr.maxstring = SHOWN
_repr.maxother = SHOWN
_repr.maxlist = _repr.maxdict = _repr.maxtuple = _repr.maxset = 8
_repr.maxlevel = 3


def shown(value: Any) -> str:
    """A value as a message shows it: its repr, at most `SHOWN` characters of it."""
    if isinstance(value, str) and len(value) > SHOWN:
        return repr(value[:SHOWN]) + f"… ({len(value)} characters)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 600:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"  # repr would refuse or flood
    text = _repr.repr(value) if isinstance(value, (list, dict, tuple, set, frozenset)) else repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN] + "…"


def _listed(values: Any, quoted: bool = True, most: int = 20) -> str:
    """'a', 'b', 'c' — at most `most` of them, each shown short."""
    values = list(values)
    text = ", ".join(shown(v) if quoted else str(v)[:SHOWN] for v in values[:most])
    return text + (f", … ({len(values)} in all)" if len(values) > most else "")


def _what(value: Any) -> str:
    """'the string '3'', 'the integer 3', 'a list of 2 items'…"""
    if value is None:
        return "None (null)"
    if isinstance(value, bool):
        return f"the boolean {value}"
    if isinstance(value, int):
        return f"the integer {shown(value)}"
    if isinstance(value, float):
        return f"the number {shown(value)}"
    if isinstance(value, str):
        return f"the string {shown(value)}"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        keys = ", ".join(shown(k) for k in itertools.islice(value, 8)) + (", …" if len(value) > 8 else "")
        return f"an object with keys {keys}" if value else "an empty object"
    return f"a {type(value).__name__}"


_TYPES = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "a boolean",
          "array": "an array (a list)", "object": "an object (a dict)", "null": "null (None)"}


def _expected(types: Any) -> str:
    names = [types] if isinstance(types, str) else list(types or ())
    words = [_TYPES.get(str(t), repr(t)) for t in names]
    return " or ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " or " + words[-1]


def _range(schema: Mapping[str, Any]) -> str:
    """'allowed: 1 ≤ value ≤ 20' from a (normalised) schema's bounds, or ''."""
    low = ("<", schema["exclusiveMinimum"]) if _number(schema.get("exclusiveMinimum")) else (
        ("≤", schema["minimum"]) if _number(schema.get("minimum")) else None)
    high = ("<", schema["exclusiveMaximum"]) if _number(schema.get("exclusiveMaximum")) else (
        ("≤", schema["maximum"]) if _number(schema.get("maximum")) else None)
    if low and high:
        return f"allowed: {low[1]} {low[0]} value {high[0]} {high[1]}"
    if low:
        return f"allowed: value {'>' if low[0] == '<' else '≥'} {low[1]}"
    if high:
        return f"allowed: value {high[0]} {high[1]}"
    return ""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- JSON: what can be sent ----------------------------------------------------------------------

def _not_json(value: Any) -> str:
    if isinstance(value, PurePath):
        return (f"a pathlib.{type(value).__name__} ({shown(str(value))}) is not accepted: the server cannot read "
                f"this machine's files — upload the file and give a link {{'href': 'https://…'}}, "
                f"or send its contents")
    if isinstance(value, (datetime, date, time)):
        return f"a {type(value).__name__} is not JSON: send its ISO 8601 text ({shown(value.isoformat())})"
    if isinstance(value, (set, frozenset)):
        return f"a {type(value).__name__} is not JSON: send a list"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes are not JSON: send text, or base64 text (base64.b64encode(data).decode())"
    if isinstance(value, Decimal):
        return "a Decimal is not JSON: send a float or an int"
    return f"a {type(value).__module__}.{type(value).__qualname__} is not JSON-serialisable"


def _to_json(value: Any, where: str, problems: list[str]) -> Any:
    """The value as it will be sent (tuples as lists, mappings as dicts); what is not JSON is
    a problem (`where` names the place)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4000:
        try:
            str(value)
        except ValueError:  # Python's int → text limit (sys.get_int_max_str_digits): json.dumps refuses too
            problems.append(f"{where}: {shown(value)} is too long to be written as JSON text")
            return value
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        problems.append(f"{where}: {value} is not a JSON number")
        return value
    if isinstance(value, (list, tuple)):
        return [_to_json(item, f"{where}[{n}]", problems) for n, item in enumerate(value)]
    if isinstance(value, Mapping):
        converted = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(f"{where}: the key {shown(key)} is not a string (JSON object keys are)")
                continue
            converted[key] = _to_json(item, where + _step(key), problems)
        return converted
    problems.append(f"{where}: {_not_json(value)}")
    return value


def _step(part: Any) -> str:
    if isinstance(part, int):
        return f"[{part}]"
    return f".{part}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", str(part)) else f"[{shown(part)}]"


# -- OpenAPI 3.0 → JSON Schema 2020-12 -------------------------------------------------------------

_ONE = ("not", "if", "then", "else", "contains", "propertyNames", "additionalItems", "unevaluatedItems",
        "unevaluatedProperties", "additionalProperties", "items", "contentSchema")
_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def normalise(schema: Any) -> Any:
    """A copy of `schema` in JSON Schema 2020-12 (see the module docstring)."""
    return _normalise(copy.deepcopy(schema))


def _normalise(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return schema
    schema.pop("$schema", None)  # checked as 2020-12 whatever it says
    if isinstance(schema.get("items"), list):  # draft 4–7 tuple form
        schema["prefixItems"] = schema.pop("items")
        if "additionalItems" in schema:
            schema["items"] = schema.pop("additionalItems")
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(schema.get(exclusive), bool):  # OpenAPI 3.0 / draft 4
            if schema.pop(exclusive) and bound in schema:
                schema[exclusive] = schema.pop(bound)
    if "contentSchema" in schema and not isinstance(schema["contentSchema"], (dict, bool)):
        # OGC's example names an XSD's URL here; 2020-12 wants a schema (and crawls it as one)
        schema["x-contentSchema"] = schema.pop("contentSchema")
    fmt = schema.get("format")
    if fmt == "binary":
        del schema["format"]
        schema.setdefault("contentMediaType", "application/octet-stream")
    elif fmt == "byte":
        del schema["format"]
        schema.setdefault("contentEncoding", "base64")
    for key in _ONE:
        if key in schema:
            schema[key] = _normalise(schema[key])
    for key in _LISTS:
        if isinstance(schema.get(key), list):
            schema[key] = [_normalise(item) for item in schema[key]]
    for key in _MAPS:
        if isinstance(schema.get(key), dict):
            schema[key] = {name: _normalise(item) for name, item in schema[key].items()}
    if isinstance(schema.get("oneOf"), list):
        schema["oneOf"] = _distinct(schema["oneOf"])
    if schema.pop("nullable", False) is True:
        schema = _nullable(schema)
    return schema


def _distinct(alternatives: list[Any]) -> list[Any]:
    """`oneOf` alternatives without those equal to an earlier one but for annotations."""
    kept: list[Any] = []
    seen: list[Any] = []
    for alternative in alternatives:
        bare = {k: v for k, v in alternative.items() if k not in _ANNOTATIONS} if isinstance(
            alternative, dict) else alternative
        if bare not in seen:
            seen.append(bare)
            kept.append(alternative)
    return kept


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "type" in schema:
        types = [schema["type"]] if isinstance(schema["type"], str) else list(schema["type"])
        schema["type"] = types + ["null"] if "null" not in types else types
        if isinstance(schema.get("enum"), list) and None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
        return schema
    if isinstance(schema.get("enum"), list):
        schema["enum"] = [*schema["enum"], None]
    if any(key in schema for key in ("allOf", "anyOf", "oneOf", "$ref", "not", "const")):
        return {"anyOf": [{"type": "null"}, schema]}
    return schema


# -- the validator ----------------------------------------------------------------------------

def _refuse(uri: str) -> referencing.Resource:
    raise LookupError(f"{uri}: remote schemas are not fetched")


#: no `$ref` outside a schema is resolved (the JSON Schema meta-schemas are bundled)
REGISTRY: referencing.Registry = referencing.Registry(retrieve=_refuse)

_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s]*")
FORMATS = jsonschema.FormatChecker(
    [name for name in ("date-time", "date", "uri") if name in jsonschema.FormatChecker.checkers])
if "uri" not in FORMATS.checkers:  # jsonschema checks `uri` only with rfc3987 installed
    @FORMATS.checks("uri")
    def _is_uri(value: object) -> bool:
        return not isinstance(value, str) or _URI.fullmatch(value) is not None

_HINTS = {"date-time": " (RFC 3339, e.g. '2024-05-01T12:00:00Z')", "date": " (e.g. '2024-05-01')",
          "uri": " (an absolute URI, e.g. 'https://…')"}


class _Skip(Exception):
    """The schema cannot be checked here (a `$ref` outside it, or not a valid schema)."""


def _errors(schema: Mapping[str, Any], value: Any) -> list[ValidationError]:
    try:
        validator = jsonschema.Draft202012Validator(schema, registry=REGISTRY, format_checker=FORMATS)
        return sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    except referencing.exceptions.Unresolvable as exc:
        raise _Skip(str(exc)) from None
    except (SchemaError, UnknownType, re.error, TypeError, AttributeError) as exc:  # a broken schema
        raise _Skip(str(exc)) from None


def _message(error: ValidationError) -> str:
    keyword, expected, value = error.validator, error.validator_value, error.instance
    sub = error.schema if isinstance(error.schema, Mapping) else {}
    if keyword == "type":
        return f"expected {_expected(expected)}, got {_what(value)}"
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        words = {"minimum": "less than the minimum of", "maximum": "greater than the maximum of",
                 "exclusiveMinimum": "less than or equal to the exclusive minimum of",
                 "exclusiveMaximum": "greater than or equal to the exclusive maximum of"}[keyword]
        allowed = _range(sub)
        return f"{shown(value)} is {words} {expected}" + (f" ({allowed})" if allowed else "")
    if keyword == "enum":
        return f"{shown(value)} is not one of {_listed(expected)}"
    if keyword == "const":
        return f"{shown(value)} is not {shown(expected)} (the only value allowed)"
    if keyword == "pattern":
        return f"{shown(value)} does not match the pattern {shown(expected)}"
    if keyword == "format":
        return f"{shown(value)} is not a valid {expected}{_HINTS.get(str(expected), '')}"
    if keyword == "required":
        missing = [name for name in expected if isinstance(value, dict) and name not in value]
        return f"missing the required member{'s' if len(missing) > 1 else ''} " + ", ".join(map(shown, missing))
    if keyword in ("minLength", "maxLength"):
        bound = "at least" if keyword == "minLength" else "at most"
        return f"{shown(value)} has {len(value)} characters, {bound} {expected} expected ({keyword})"
    if keyword in ("minItems", "maxItems"):
        bound = "needs at least" if keyword == "minItems" else "takes at most"
        return f"{_what(value)}: the list {bound} {expected} item{'s' if expected != 1 else ''} ({keyword} {expected})"
    if keyword in ("minProperties", "maxProperties"):
        bound = "at least" if keyword == "minProperties" else "at most"
        return f"{_what(value)}, {bound} {expected} members expected ({keyword})"
    if keyword == "multipleOf":
        return f"{shown(value)} is not a multiple of {expected}"
    if keyword in ("additionalProperties", "unevaluatedProperties"):
        known = sorted(sub.get("properties") or ())
        extra = [k for k in value if k not in known] if isinstance(value, dict) else []
        return (f"unexpected member{'s' if len(extra) > 1 else ''} {_listed(extra)}"
                + (f" (allowed: {_listed(known, quoted=False)})" if known else ""))
    if keyword == "uniqueItems":
        return f"{_what(value)} has repeated items (they must be unique)"
    if keyword in ("anyOf", "oneOf"):
        return _alternatives(error)
    if keyword == "not":
        return f"{shown(value)} is a value the schema excludes"
    return f"{shown(value)} does not satisfy the schema's {keyword!r} ({shown(expected)})"


def _alternatives(error: ValidationError) -> str:
    value = error.instance
    if error.validator == "oneOf" and not error.context:
        return f"{shown(value)} matches more than one of the alternatives (oneOf), it must match exactly one"
    direct = [e for e in error.context if not e.relative_path]
    if direct and all(e.validator == "type" for e in direct) and len(direct) == len(error.validator_value):
        types: list[str] = []
        for e in direct:
            named = [e.validator_value] if isinstance(e.validator_value, str) else list(e.validator_value)
            types.extend(t for t in named if t not in types)
        return f"expected {_expected(types)}, got {_what(value)}"
    # the nearest alternative: one whose type the value has, failing on something else
    mistyped = {e.relative_schema_path[0] for e in error.context
                if e.validator == "type" and not e.relative_path and e.relative_schema_path}
    typed = [e for e in error.context if e.relative_schema_path and e.relative_schema_path[0] not in mistyped]
    best = jsonschema.exceptions.best_match(typed or error.context)
    if best is None:
        return f"{shown(value)} matches none of the alternatives ({error.validator})"
    at = _path(best.relative_path)
    return f"matches none of the alternatives ({error.validator}); nearest: {at + ': ' if at else ''}{_message(best)}"


def _path(parts: Any) -> str:
    return "".join(_step(part) for part in parts)


def _media_types(schema: Mapping[str, Any]) -> list[str] | None:
    """The `contentMediaType`s a schema's alternatives accept, or None if any accepts any."""
    alternatives = schema.get("oneOf") or schema.get("anyOf") or [schema]
    types = [a.get("contentMediaType") if isinstance(a, Mapping) else None for a in alternatives]
    return [str(t) for t in types] if types and all(types) else None


def _essence(media_type: str) -> str:
    return media_type.split(";", 1)[0].strip().lower()


# -- checking ----------------------------------------------------------------------------------

def check_inputs(description: ProcessDescription, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs to send for `description`'s process (a plain dict: values as given, tuples
    as lists), or `CCPInputError` listing every problem (see the module docstring)."""
    if not isinstance(inputs, Mapping):
        raise CCPInputError(description.id, [f"inputs must be a mapping of input name → value "
                                             f"(got {type(inputs).__name__})"])
    problems: list[str] = []
    known = list(description.inputs)
    takes = ", ".join(known) or "no inputs"
    for name in inputs:
        if not isinstance(name, str):
            problems.append(f"input {shown(name)}: input names are strings (this process takes: {takes})")
        elif name not in description.inputs:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(f"input {shown(name)}: unknown input; {hint}(this process takes: {takes})")
    checked: dict[str, Any] = {}
    for name, parameter in description.inputs.items():
        where = f"input {name!r}"
        if name not in inputs:
            if parameter.required and not (isinstance(parameter.schema, Mapping) and "default" in parameter.schema):
                problems.append(f"{where}: required, no default — give {_summary(parameter)}")
            continue
        before = len(problems)
        value = checked[name] = _to_json(inputs[name], where, problems)
        if len(problems) == before:  # what cannot be sent is not checked further
            problems.extend(_check(parameter, value, where))
    if problems:
        raise CCPInputError(description.id, problems)
    return {name: checked[name] for name in inputs if name in checked}


def _summary(parameter: Parameter) -> str:
    schema = normalise(parameter.schema) if isinstance(parameter.schema, Mapping) else {}
    parts = []
    if isinstance(schema, Mapping):
        if "type" in schema:
            parts.append(_expected(schema["type"]))
        if isinstance(schema.get("enum"), list):
            parts.append("one of " + _listed(schema["enum"]))
        if _range(schema):
            parts.append(_range(schema))
    what = ", ".join(parts) or "a value"
    if parameter.min_occurs > 1:
        most = f"to {parameter.max_occurs}" if parameter.max_occurs else "or more"
        what += f" ({parameter.min_occurs} {most} values, as a list)"
    return what


def _occurrences(parameter: Parameter, value: Any) -> list[Any] | None:
    """The values given, when `value` is a list of occurrences; None when it is one value."""
    if parameter.max_occurs == 1 or not isinstance(value, list):
        return None
    types = parameter.schema.get("type") if isinstance(parameter.schema, Mapping) else None
    if (types == "array" or (isinstance(types, list) and "array" in types)) and not all(
            isinstance(item, list) for item in value):
        return None  # the schema's own array, given once
    return value


def _check(parameter: Parameter, value: Any, where: str) -> list[str]:
    schema = normalise(parameter.schema) if isinstance(parameter.schema, Mapping) else {}
    items = _occurrences(parameter, value)
    problems: list[str] = []
    if items is not None:
        count = len(items)
        if count < parameter.min_occurs:
            problems.append(f"{where}: {count} value{'s' if count != 1 else ''} given, at least "
                            f"{parameter.min_occurs} needed (minOccurs {parameter.min_occurs})")
        elif parameter.max_occurs is not None and count > parameter.max_occurs:
            problems.append(f"{where}: {count} values given, at most {parameter.max_occurs} allowed "
                            f"(maxOccurs {parameter.max_occurs})")
        for n, item in enumerate(items):
            problems.extend(_check_one(parameter, schema, item, f"{where}[{n}]"))
        return problems
    if parameter.min_occurs > 1:
        problems.append(f"{where}: 1 value given, at least {parameter.min_occurs} needed "
                        f"(minOccurs {parameter.min_occurs}; give a list)")
    found = _check_one(parameter, schema, value, where)
    if found and parameter.max_occurs == 1 and isinstance(value, list):
        found = [problem + " (this input takes one value: maxOccurs 1)" if problem.startswith(f"{where}: expected")
                 else problem for problem in found]
    return problems + found


def _check_one(parameter: Parameter, schema: Mapping[str, Any], value: Any, where: str) -> list[str]:
    if isinstance(value, dict) and "href" in value and set(value) <= LINK_KEYS:
        href = value["href"]
        parts = urlsplit(href) if isinstance(href, str) else None
        if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            return [f"{where}: the link's href {shown(href)} is not an http(s) URL — the server fetches "
                    f"it: upload the file and link its https:// URL"]
        return []
    if isinstance(value, dict) and "value" in value and set(value) <= QUALIFIED_KEYS:
        return _check_qualified(parameter.schema, schema, value, where)
    return _check_schema(schema, value, where)


def _check_qualified(raw: Mapping[str, Any], schema: Mapping[str, Any], value: dict[str, Any],
                     where: str) -> list[str]:
    problems = []
    for member in ("mediaType", "encoding"):
        if member in value and not isinstance(value[member], str):
            problems.append(f"{where}.{member}: expected a string, got {_what(value[member])}")
    media_type = value.get("mediaType")
    accepted = _media_types(raw) if isinstance(raw, Mapping) else None
    if isinstance(media_type, str) and accepted and _essence(media_type) not in map(_essence, accepted):
        problems.append(f"{where}.mediaType: {shown(media_type)} is not one of "
                        f"{', '.join(shown(t) for t in accepted)}")
    inner = _check_schema(schema, value["value"], f"{where}.value")
    if inner and not _check_schema(schema, value, where):
        inner = []  # the schema's own object that has a `value` member
    return problems + inner


def _check_schema(schema: Mapping[str, Any], value: Any, where: str) -> list[str]:
    try:
        errors = _errors(schema, value)
    except _Skip:
        return []
    return [f"{where}{_path(error.absolute_path)}: {_message(error)}" for error in errors]
