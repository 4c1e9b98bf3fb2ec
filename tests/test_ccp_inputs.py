"""`prefect_egi.tasks.ccp.inputs`: an Execute's inputs checked against the process description.

Pure: no peers, no network (one test proves no socket is even tried)."""

from __future__ import annotations

import json
import pickle
import socket
from datetime import datetime, timezone
from pathlib import Path

import pytest

from prefect_egi.tasks.ccp.client import CCPError, ProcessDescription
from prefect_egi.tasks.ccp.inputs import CCPInputError, check_inputs, normalise

DATA = Path(__file__).parent / "data" / "ccp"


@pytest.fixture(scope="module")
def echo() -> ProcessDescription:
    """OGC's EchoProcess, `core/examples/json/ProcessDescription.json` of
    opengeospatial/ogcapi-processes (branch 1.0.0-maintenance), copied byte for byte."""
    return ProcessDescription.of(json.loads((DATA / "ogc-ProcessDescription.json").read_text()))


def echo_inputs(**changes):
    """Inputs EchoProcess takes: one right value for each of its inputs."""
    inputs = {
        "stringInput": "Value2",
        "measureInput": {"value": 3.5, "uom": "m"},  # its schema requires `value` (not `measurement`)
        "dateInput": "2024-05-01T12:00:00Z",
        "doubleInput": 10,
        "arrayInput": (1, 2, 3),  # a tuple: sent as a list
        "complexObjectInput": {"property1": "a", "property2": "https://example.org/x", "property5": True},
        "geometryInput": [{"type": "Point", "coordinates": [1, 2]}, "<gml:Point/>"],
        "boundingBoxInput": {"bbox": [1, 2, 3, 4]},
        "imagesInput": ["aGVsbG8=", {"value": "aGVsbG8=", "mediaType": "image/jp2"}],
        "featureCollectionInput": {"href": "https://example.org/features.json", "type": "application/geo+json"},
    }
    inputs.update(changes)
    return {name: value for name, value in inputs.items() if value is not ...}


def problems_of(description, inputs) -> list[str]:
    with pytest.raises(CCPInputError) as caught:
        check_inputs(description, inputs)
    assert caught.value.process == description.id
    return caught.value.problems


def named(problems: list[str], name: str) -> list[str]:
    return [p for p in problems if p.startswith(f"input {name!r}")]


# -- OGC's example description -----------------------------------------------------------------

def test_ogc_example_valid_inputs_pass_as_given(echo):
    """OGC's EchoProcess (ogcapi-processes 1.0.0-maintenance, core/examples/json/
    ProcessDescription.json): one right value for every input passes; the dict returned is
    the inputs as sent (the tuple a list)."""
    sent = check_inputs(echo, echo_inputs())
    assert type(sent) is dict
    assert list(sent) == list(echo_inputs())
    assert sent["arrayInput"] == [1, 2, 3]
    assert sent["measureInput"] == {"value": 3.5, "uom": "m"}
    json.dumps(sent)


def test_ogc_example_every_problem_at_once(echo):
    """OGC's EchoProcess (ogcapi-processes 1.0.0-maintenance, core/examples/json/
    ProcessDescription.json): ten wrong things give ONE error listing the ten."""
    wrong = echo_inputs(
        strngInput="Value1",  # unknown, close to stringInput
        stringInput="Value4",  # enum
        dateInput="yesterday",  # format date-time
        arrayInput=[1],  # minItems 2
        complexObjectInput={"property1": "a", "property5": "yes"},  # property5 boolean
        geometryInput="<gml:Point/>",  # minOccurs 2
        imagesInput=[3],  # a string expected
        measureInput={"measurement": 3.5, "uom": "m"},  # `value` required
        featureCollectionInput={"href": "file:///etc/passwd"},  # not http(s)
        boundingBoxInput=...,  # missing, required
    )
    problems = problems_of(echo, wrong)
    assert len(problems) == 10, problems
    assert named(problems, "strngInput") and "did you mean 'stringInput'" in named(problems, "strngInput")[0]
    assert named(problems, "stringInput") == ["input 'stringInput': 'Value4' is not one of 'Value1', 'Value2', 'Value3'"]
    assert "is not a valid date-time" in named(problems, "dateInput")[0]
    assert "needs at least 2 items" in named(problems, "arrayInput")[0]
    assert named(problems, "complexObjectInput") == [
        "input 'complexObjectInput'.property5: expected a boolean, got the string 'yes'"]
    assert "at least 2 needed (minOccurs 2" in named(problems, "geometryInput")[0]
    assert named(problems, "imagesInput") == ["input 'imagesInput'[0]: expected a string, got the integer 3"]
    assert "missing the required member 'value'" in named(problems, "measureInput")[0]
    assert "not an http(s) URL" in named(problems, "featureCollectionInput")[0]
    assert "required, no default" in named(problems, "boundingBoxInput")[0]
    message = str(CCPInputError("EchoProcess", problems))
    assert message.startswith("Invalid inputs for EchoProcess:\n- input ")
    assert message.count("\n- ") == 10


def test_ogc_example_openapi_exclusive_minimum_and_default(echo):
    """OGC's EchoProcess (ogcapi-processes 1.0.0-maintenance, core/examples/json/
    ProcessDescription.json): `doubleInput` is OpenAPI 3.0 style, `minimum: 0` with
    `exclusiveMinimum: true` (and `default: 5`). 0 is refused (it would pass as 2020-12 read
    the boolean as nothing), 10 and 0.001 pass, and leaving it out is fine (the default)."""
    assert normalise(echo.inputs["doubleInput"].schema)["exclusiveMinimum"] == 0
    assert "minimum" not in normalise(echo.inputs["doubleInput"].schema)
    assert echo.inputs["doubleInput"].schema["exclusiveMinimum"] is True  # the description untouched
    assert named(problems_of(echo, echo_inputs(doubleInput=0)), "doubleInput") == [
        "input 'doubleInput': 0 is less than or equal to the exclusive minimum of 0 (allowed: 0 < value ≤ 10)"]
    assert named(problems_of(echo, echo_inputs(doubleInput=10.5)), "doubleInput") == [
        "input 'doubleInput': 10.5 is greater than the maximum of 10 (allowed: 0 < value ≤ 10)"]
    check_inputs(echo, echo_inputs(doubleInput=0.001))
    assert "doubleInput" not in check_inputs(echo, echo_inputs(doubleInput=...))


def test_ogc_example_binary_alternatives_and_media_types(echo):
    """OGC's EchoProcess (ogcapi-processes 1.0.0-maintenance, core/examples/json/
    ProcessDescription.json): `imagesInput` is a `oneOf` of two strings that differ only in
    `contentMediaType` (`contentEncoding: binary`); read strictly, every string would match
    both and be refused. A string passes; a qualified value's mediaType must be one of the two."""
    check_inputs(echo, echo_inputs(imagesInput="aGVsbG8="))  # one value of an input taking 1..150
    check_inputs(echo, echo_inputs(imagesInput=[{"value": "aGVsbG8=", "mediaType": "image/tiff; application=geotiff"}]))
    problems = problems_of(echo, echo_inputs(imagesInput=[{"value": "aGVsbG8=", "mediaType": "image/png"}]))
    assert problems == ["input 'imagesInput'[0].mediaType: 'image/png' is not one of "
                        "'image/tiff; application=geotiff', 'image/jp2'"]
    problems = problems_of(echo, echo_inputs(imagesInput=["x"] * 151))
    assert problems == ["input 'imagesInput': 151 values given, at most 150 allowed (maxOccurs 150)"]


def test_ogc_example_remote_refs_skipped(echo):
    """OGC's EchoProcess (ogcapi-processes 1.0.0-maintenance, core/examples/json/
    ProcessDescription.json): `boundingBoxInput` is `$ref: ../../openapi/schemas/bbox.yaml`
    (relative, unresolvable), `geometryInput` and `featureCollectionInput` reference
    schemas.opengis.net and geojson.org: their values are not checked (no error), the other
    inputs still are."""
    sent = check_inputs(echo, echo_inputs(boundingBoxInput={"bbox": "not a box"},
                                          geometryInput=[12, None],
                                          featureCollectionInput={"type": "FeatureCollection"}))
    assert sent["boundingBoxInput"] == {"bbox": "not a box"}
    problems = problems_of(echo, echo_inputs(boundingBoxInput={"bbox": "not a box"}, stringInput="x"))
    assert [p.split(":")[0] for p in problems] == ["input 'stringInput'"]


# -- the sandbox peer's CCP methods ------------------------------------------------------------

@pytest.fixture(scope="module")
def write_files() -> ProcessDescription:
    """`ccp-write-files` as the sandbox's CCP peer describes it (deployments/sandbox/ccp_processes.py)."""
    from prefect_egi.sandbox.ccp_processes import PROCESSORS

    return ProcessDescription.of(PROCESSORS["ccp-write-files"].METADATA)


def test_sandbox_write_files(write_files):
    """The sandbox peer's `ccp-write-files` (deployments/sandbox/ccp_processes.py, its METADATA):
    count 1..20, prefix ^[A-Za-z0-9_-]+$ (optional)."""
    assert check_inputs(write_files, {"count": 3, "prefix": "t_1"}) == {"count": 3, "prefix": "t_1"}
    assert problems_of(write_files, {"count": 0}) == [
        "input 'count': 0 is less than the minimum of 1 (allowed: 1 ≤ value ≤ 20)"]
    assert problems_of(write_files, {"count": 21}) == [
        "input 'count': 21 is greater than the maximum of 20 (allowed: 1 ≤ value ≤ 20)"]
    assert problems_of(write_files, {"count": "3"}) == ["input 'count': expected an integer, got the string '3'"]
    assert problems_of(write_files, {"count": 2, "prefix": " t"}) == [
        "input 'prefix': ' t' does not match the pattern '^[A-Za-z0-9_-]+$'"]
    unknown = problems_of(write_files, {"count": 2, "cuont": 2})
    assert unknown == ["input 'cuont': unknown input; did you mean 'count'? "
                       "(this process takes: count, prefix, ccpimage)"]
    missing = problems_of(write_files, {"prefix": "t"})
    assert len(missing) == 1 and missing[0].startswith("input 'count': required, no default")
    assert "an integer" in missing[0] and "1 ≤ value ≤ 20" in missing[0]
    assert "ccpimage" not in str(problems_of(write_files, {}))  # optional (minOccurs 0)
    assert len(problems_of(write_files, {"cuont": 2, "prefix": " t"})) == 3  # all at once


# -- occurrences, links, qualified values, what is not JSON ---------------------------------------

def described(inputs: dict) -> ProcessDescription:
    """A description written here, in OGC API – Processes 1.0 form."""
    return ProcessDescription.of({"id": "made-here", "inputs": inputs})


@pytest.mark.parametrize("max_occurs", [3, "unbounded"])
def test_occurrences(max_occurs):
    """maxOccurs 3 / "unbounded": a list is several values, each checked, the count against
    minOccurs/maxOccurs; a single value is one occurrence."""
    d = described({"n": {"schema": {"type": "integer", "minimum": 0}, "minOccurs": 2, "maxOccurs": max_occurs}})
    assert check_inputs(d, {"n": (1, 2)}) == {"n": [1, 2]}
    assert problems_of(d, {"n": [1, -1, "x"]}) == [
        "input 'n'[1]: -1 is less than the minimum of 0 (allowed: value ≥ 0)",
        "input 'n'[2]: expected an integer, got the string 'x'"]
    assert problems_of(d, {"n": 1}) == ["input 'n': 1 value given, at least 2 needed (minOccurs 2; give a list)"]
    assert problems_of(d, {"n": [1]}) == ["input 'n': 1 value given, at least 2 needed (minOccurs 2)"]
    four = {"n": [1, 2, 3, 4]}
    if max_occurs == 3:
        assert problems_of(d, four) == ["input 'n': 4 values given, at most 3 allowed (maxOccurs 3)"]
    else:
        assert check_inputs(d, four) == four


def test_one_occurrence_list_is_one_value():
    """maxOccurs 1: a list is one value — refused by an integer schema, checked as a whole by
    an array schema (minItems, items)."""
    d = described({"n": {"schema": {"type": "integer"}},
                   "a": {"schema": {"type": "array", "items": {"type": "integer"}, "minItems": 2}, "minOccurs": 0}})
    assert problems_of(d, {"n": [1, 2]}) == [
        "input 'n': expected an integer, got a list of 2 items (this input takes one value: maxOccurs 1)"]
    assert check_inputs(d, {"n": 1, "a": [1, 2]}) == {"n": 1, "a": [1, 2]}
    assert problems_of(d, {"n": 1, "a": [1, "b"]}) == ["input 'a'[1]: expected an integer, got the string 'b'"]


def test_links():
    """A link is accepted for any input without schema check, if its href is http(s)."""
    d = described({"data": {"schema": {"type": "integer"}, "maxOccurs": "unbounded"}})
    link = {"href": "https://example.org/a.csv", "type": "text/csv", "rel": "related", "title": "a"}
    assert check_inputs(d, {"data": link}) == {"data": link}
    assert check_inputs(d, {"data": [link, {"href": "http://example.org/b"}, 3]})
    problems = problems_of(d, {"data": [{"href": "file:///etc/passwd"}, {"href": "/relative"}, {"href": 3}]})
    assert len(problems) == 3 and all("is not an http(s) URL" in p for p in problems)
    assert problems[0].startswith("input 'data'[0]: the link's href 'file:///etc/passwd'")


def test_qualified_values_and_bbox():
    """A qualified value has its `value` checked; a bounding box against OGC's bbox schema
    (an object with `bbox`) is checked as any object."""
    bbox_schema = {"type": "object", "required": ["bbox"], "properties": {
        "bbox": {"type": "array", "oneOf": [{"minItems": 4, "maxItems": 4}, {"minItems": 6, "maxItems": 6}],
                 "items": {"type": "number"}},
        "crs": {"type": "string", "format": "uri"}}}
    d = described({"n": {"schema": {"type": "integer", "maximum": 5}}, "box": {"schema": bbox_schema, "minOccurs": 0}})
    assert check_inputs(d, {"n": {"value": 4, "mediaType": "application/json"}})
    assert problems_of(d, {"n": {"value": 6, "mediaType": "application/json"}}) == [
        "input 'n'.value: 6 is greater than the maximum of 5 (allowed: value ≤ 5)"]
    box = {"bbox": [1, 2, 3, 4], "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}
    assert check_inputs(d, {"n": 1, "box": box})["box"] == box
    problems = problems_of(d, {"n": 1, "box": {"bbox": [1, 2, "x", 4]}})
    assert problems == ["input 'box'.bbox[2]: expected a number, got the string 'x'"]
    assert len(problems_of(d, {"n": 1, "box": {"bbox": [1, 2, 3]}})) == 1


def test_openapi_nullable_and_byte():
    """OpenAPI 3.0's `nullable: true` allows None; `format: byte` is base64 text (not an error)."""
    d = described({"s": {"schema": {"type": "string", "nullable": True, "format": "byte"}},
                   "t": {"schema": {"type": "string"}, "minOccurs": 0}})
    assert check_inputs(d, {"s": None}) == {"s": None}
    assert check_inputs(d, {"s": "aGVsbG8="})
    assert problems_of(d, {"s": None, "t": None}) == ["input 't': expected a string, got None (null)"]


def test_path_and_values_not_json_refused():
    """A pathlib.Path is refused with what to do instead; a datetime, a set, a NaN, bytes:
    each a problem naming the input and the type."""
    d = described({name: {"schema": {}, "minOccurs": 0} for name in ("p", "when", "s", "nan", "b", "deep")})
    problems = problems_of(d, {"p": Path("/tmp/x.csv"), "when": datetime(2024, 5, 1, tzinfo=timezone.utc),
                               "s": {1, 2}, "nan": float("nan"), "b": b"x", "deep": {"k": [Path("y")]}})
    assert len(problems) == 6
    assert named(problems, "p")[0].startswith("input 'p': a pathlib.PosixPath ('/tmp/x.csv') is not accepted")
    assert "link" in named(problems, "p")[0]
    assert "a datetime is not JSON" in named(problems, "when")[0] and "2024-05-01T00:00:00+00:00" in named(problems, "when")[0]
    assert "a set is not JSON" in named(problems, "s")[0]
    assert "not a JSON number" in named(problems, "nan")[0]
    assert "bytes are not JSON" in named(problems, "b")[0]
    assert named(problems, "deep")[0].startswith("input 'deep'.k[0]: a pathlib.PosixPath")
    typed = described({"p": {"schema": {"type": "string"}}})
    assert len(problems_of(typed, {"p": Path("x")})) == 1  # not also "expected a string"


def test_remote_ref_skipped_without_network(monkeypatch):
    """A `$ref` to a remote schema is not fetched: the input's check is skipped, no socket
    is even tried (connect and name lookup recorded and refused)."""
    tried = []

    def refuse(*args, **kwargs):
        tried.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    d = described({
        "geometry": {"schema": {"$ref": "https://schemas.opengis.net/ogcapi/features/part1/1.0/openapi/schemas/"
                                        "geometryGeoJSON.yaml"}},
        "local": {"schema": {"$defs": {"n": {"type": "integer"}}, "$ref": "#/$defs/n"}, "minOccurs": 0}})
    assert check_inputs(d, {"geometry": "anything"}) == {"geometry": "anything"}
    assert problems_of(d, {"geometry": 1, "local": "x"}) == ["input 'local': expected an integer, got the string 'x'"]
    assert tried == []


def test_long_value_truncated_in_message():
    """No message shows more than ~200 characters of a value."""
    d = described({"mode": {"schema": {"type": "string", "enum": ["a", "b"]}}})
    problems = problems_of(d, {"mode": "z" * 10_000})
    assert len(problems) == 1 and len(problems[0]) < 320
    assert "(10000 characters)" in problems[0]
    assert problems_of(d, {"mode": "fast"}) == ["input 'mode': 'fast' is not one of 'a', 'b'"]
    long_list = problems_of(d, {"mode": list(range(10_000))})
    assert len(long_list[0]) < 320
    huge = problems_of(d, {"mode": 10 ** 5000})  # repr() and json.dumps() of it raise
    assert huge == ["input 'mode': an integer of about 5000 digits is too long to be written as JSON text"]
    many = described({"mode": {"schema": {"enum": [f"mode-{n}" for n in range(1000)]}}})
    problems = problems_of(many, {"mode": "fast"})
    assert len(problems[0]) < 400 and problems[0].endswith(", … (1000 in all)")


def test_error_pickles_and_is_a_ccp_value_error():
    """The error crosses process boundaries (Prefect results, workers) intact."""
    error = CCPInputError("ccp-write-files", ["input 'count': 0 is less than the minimum of 1"])
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, CCPInputError) and isinstance(again, CCPError) and isinstance(again, ValueError)
    assert (again.process, again.problems, str(again)) == (error.process, error.problems, str(error))
    assert str(again) == "Invalid inputs for ccp-write-files:\n- input 'count': 0 is less than the minimum of 1"


def test_alternatives_say_the_nearest():
    """anyOf/oneOf: a wrong type lists the types expected; otherwise the problem of the
    alternative whose type the value has is shown."""
    d = described({"a": {"schema": {"oneOf": [{"type": "string"}, {"type": "object"}]}, "minOccurs": 0},
                   "b": {"schema": {"anyOf": [{"type": "integer", "minimum": 3},
                                              {"type": "string", "maxLength": 2}]}, "minOccurs": 0}})
    assert problems_of(d, {"a": 3}) == ["input 'a': expected a string or an object (a dict), got the integer 3"]
    assert problems_of(d, {"b": 1}) == ["input 'b': matches none of the alternatives (anyOf); nearest: "
                                        "1 is less than the minimum of 3 (allowed: value ≥ 3)"]
    assert problems_of(d, {"b": 2.5}) == ["input 'b': matches none of the alternatives (anyOf); nearest: "
                                          "expected an integer, got the number 2.5"]
