"""WPS 1.0 documents written by real servers (USGS, CEDA, PyWPS/Emu; see
tests/data/dataminer/README.md), read and answered as those servers mean them.

No peer here: each test parses a captured DescribeProcess and checks what the client
makes of it, and of the inputs it would send (nothing is sent)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from prefect_egi.tasks import InputValidationError
from prefect_egi.tasks.dataminer.client import ProcessDescription, build_inputs, parse_description

DATA = Path(__file__).parent / "data" / "dataminer"
WPS = "http://www.opengis.net/wps/1.0.0"
OWS = "http://www.opengis.net/ows/1.1"
XLINK = "http://www.w3.org/1999/xlink"
USGS_PROCESS = "gov.usgs.cida.gdp.wps.algorithm.FeatureWeightedGridStatisticsAlgorithm"


def describe(document: str, identifier: str) -> ProcessDescription:
    return parse_description(identifier, (DATA / document).read_bytes())


def usgs_inputs(**overrides):
    """Every required input of the USGS process but its feature collection (the request of
    wps_USGSExecuteRequest1.xml)."""
    return {"DATASET_URI": "dods://cida.usgs.gov/qa/thredds/dodsC/derivatives/derivative-days_above_threshold.pr.ncml",
            "DATASET_ID": "ensemble_b1_pr-days_above_threshold", "FEATURE_ATTRIBUTE_NAME": "the_geom",
            "STATISTICS": "MEAN", "GROUP_BY": "STATISTIC", **overrides}


def execute_document(description: ProcessDescription, values: dict) -> etree._Element:
    """The Execute request the client would POST for `values`."""
    from owslib.wps import ASYNC, WPSExecution

    return WPSExecution().buildRequest(description.identifier, build_inputs(description, values), output=[],
                                       mode=ASYNC)


def wire_input(document: etree._Element, identifier: str) -> etree._Element:
    for node in document.iter(f"{{{WPS}}}Input"):
        if node.findtext(f"{{{OWS}}}Identifier") == identifier:
            return node
    raise AssertionError(f"no input {identifier} in the request")


def test_required_file_and_bounding_box_inputs_are_required():
    """wps_USGSDescribeProcess.xml, wps_EmuDescribeProcess_all.xml, wps_bbox_DescribeProcess.xml:
    owslib files a ComplexData input's default *format* (and a bounding box's default CRS)
    as its default value; that made required inputs look optional and their default the
    text `<owslib.wps.ComplexData object at 0x…>`."""
    usgs = describe("wps_USGSDescribeProcess.xml", USGS_PROCESS)
    features = usgs.input("FEATURE_COLLECTION")
    assert (features.kind, features.min_occurs, features.default, features.required) == ("complex", 1, None, True)
    assert features.mime_types == ("text/xml",)  # the default format once, not nine times
    emu = {p: describe("wps_EmuDescribeProcess_all.xml", p) for p in ("wordcounter", "poly_centroid", "inout")}
    assert emu["wordcounter"].input("text").required and emu["poly_centroid"].input("polygon").required
    assert not emu["inout"].input("text").required and not emu["inout"].input("dataset").required  # minOccurs=0
    assert all(i.default is None for p in emu.values() for i in p.inputs if i.kind == "complex")
    box = describe("wps_bbox_DescribeProcess.xml", "bbox").input("bbox")
    assert (box.kind, box.default, box.required, box.crs) == ("bbox", None, True, ("EPSG:4326", "EPSG:3035"))

    with pytest.raises(InputValidationError) as caught:
        build_inputs(usgs, usgs_inputs())
    assert caught.value.problems == ["FEATURE_COLLECTION: missing (complex input, required)"]


def test_literal_defaults_are_the_documents_own_text():
    """wps_USGSDescribeProcess.xml writes boolean defaults `true`/`false` (owslib turned
    them into Python's True/False); wps_EmuDescribeProcess_all.xml a datetime default."""
    usgs = describe("wps_USGSDescribeProcess.xml", USGS_PROCESS)
    assert usgs.input("REQUIRE_FULL_COVERAGE").default == "true"
    assert usgs.input("SUMMARIZE_TIMESTEP").default == "false"
    assert usgs.input("DELIMITER").default == "COMMA"
    inout = describe("wps_EmuDescribeProcess_all.xml", "inout")
    assert inout.input("datetime").default == "2016-09-02 12:00:00+00:00"
    assert inout.input("float").default == "3.14" and inout.input("int").default == "7"
    assert inout.input("int").allowed_values == ("1", "2", "3", "5", "7", "11")


def test_a_description_without_max_occurs_allows_one_value():
    """wps_CEDADescribeProcess.xml (older CEDA style) has no maxOccurs: WPS 1.0 means one
    (owslib's -1 refused every value), and no DataType: a string."""
    double_it = describe("wps_CEDADescribeProcess.xml", "DoubleIt")
    number = double_it.input("NumberToDouble")
    assert (number.min_occurs, number.max_occurs, number.data_type, number.required) == (1, 1, "string", True)
    assert build_inputs(double_it, {"NumberToDouble": 4}) == [("NumberToDouble", "4")]
    with pytest.raises(InputValidationError, match="NumberToDouble: 2 values given, at most 1 allowed"):
        build_inputs(double_it, {"NumberToDouble": [4, 5]})
    usgs = describe("wps_USGSDescribeProcess.xml", USGS_PROCESS)
    assert usgs.input("DATASET_ID").max_occurs is None  # maxOccurs="2147483647": no limit
    assert usgs.input("STATISTICS").max_occurs == 7


def test_bounding_box_outputs_are_labelled_bbox():
    """wps_bbox_DescribeProcess.xml and Emu's `inout` declare BoundingBoxOutput."""
    assert [(o.identifier, o.kind) for o in describe("wps_bbox_DescribeProcess.xml", "bbox").outputs] == [
        ("bbox", "bbox")]
    inout = {o.identifier: o for o in describe("wps_EmuDescribeProcess_all.xml", "inout").outputs}
    assert inout["bbox"].kind == "bbox" and inout["int"].kind == "literal" and inout["text"].kind == "complex"


def test_bounding_box_inputs_are_sent_as_the_emu_client_sends_them():
    """wps_bbox_DescribeProcess.xml describes the input; wps_EmuExecuteRequest11.xml is the
    request a client sent for it: the same BoundingBoxData (CRS, dimensions, corners)."""
    from prefect_egi.tasks import BoundingBox

    description = describe("wps_bbox_DescribeProcess.xml", "bbox")
    sent = wire_input(execute_document(description, {"bbox": BoundingBox((51.9, 7.0), (53.0, 8.0))}), "bbox")
    recorded = wire_input(etree.parse(str(DATA / "wps_EmuExecuteRequest11.xml")).getroot(), "bbox")

    def box(node: etree._Element) -> tuple:
        data = node.find(f"{{{WPS}}}Data/{{{WPS}}}BoundingBoxData")
        return (data.get("crs").lower(), data.get("dimensions"), data.findtext(f"{{{OWS}}}LowerCorner"),
                data.findtext(f"{{{OWS}}}UpperCorner"))

    assert box(sent) == box(recorded) == ("epsg:4326", "2", "51.9 7.0", "53.0 8.0")
    # the same box as KVP text, and another spelling of a supported CRS: sent as the server spells it
    other = wire_input(execute_document(description, {"bbox": "51.9,7,53,8,urn:ogc:def:crs:EPSG::3035"}), "bbox")
    assert box(other) == ("epsg:3035", "2", "51.9 7.0", "53.0 8.0")
    with pytest.raises(InputValidationError) as caught:
        build_inputs(description, {"bbox": BoundingBox((1, 2), (3, 4), crs="EPSG:32632")})
    assert caught.value.problems == ["bbox: CRS 'EPSG:32632' is not offered (this input takes EPSG:4326, EPSG:3035)"]
    for wrong, problem in [
        (BoundingBox((1, 2, 3), (4, 5)), "bbox: the lower corner has 3 coordinates and the upper 2"),
        (BoundingBox((1,), (2,)), "bbox: a corner needs 2 coordinates at least"),
        (BoundingBox((1, float("nan")), (2, 3)), "bbox: coordinates must be finite numbers"),
        ("1,2,3", "bbox: expected 'minx,miny,maxx,maxy[,crs]', got '1,2,3'"),
        ([1, 2, 3, 4], "bbox: 4 values given, at most 1 allowed (one box is BoundingBox(lower, upper, crs) "
                       "or 'minx,miny,maxx,maxy[,crs]')"),
        (42, "bbox: expected a BoundingBox(lower, upper, crs) or 'minx,miny,maxx,maxy[,crs]', got int"),
    ]:
        with pytest.raises(InputValidationError) as caught:
            build_inputs(description, {"bbox": wrong})
        assert caught.value.problems == [problem]


def test_a_reference_with_a_post_body_is_sent_as_the_usgs_client_sends_it():
    """wps_USGSExecuteRequest1.xml: the feature collection by reference, its WFS GetFeature
    in a wps:Body. Ours says method="POST" too (PyWPS fetches with GET without it)."""
    description = describe("wps_USGSDescribeProcess.xml", USGS_PROCESS)
    recorded = wire_input(etree.parse(str(DATA / "wps_USGSExecuteRequest1.xml")).getroot(), "FEATURE_COLLECTION")
    reference = recorded.find(f"{{{WPS}}}Reference")
    get_feature = etree.tostring(reference.find(f"{{{WPS}}}Body")[0]).decode()

    from prefect_egi.tasks import Reference

    sent = wire_input(execute_document(description, usgs_inputs(
        FEATURE_COLLECTION=Reference(reference.get(f"{{{XLINK}}}href"), body=get_feature))), "FEATURE_COLLECTION")
    ours = sent.find(f"{{{WPS}}}Reference")
    assert ours.get(f"{{{XLINK}}}href") == reference.get(f"{{{XLINK}}}href")
    assert (ours.get("method"), ours.get("mimeType")) == ("POST", "text/xml")
    assert etree.tostring(ours.find(f"{{{WPS}}}Body")[0], method="c14n", exclusive=True) == etree.tostring(
        reference.find(f"{{{WPS}}}Body")[0], method="c14n", exclusive=True)  # the same GetFeature, to the byte
    # a plain URL is still a GET reference, with no body
    plain = wire_input(execute_document(description, usgs_inputs(FEATURE_COLLECTION="https://example.org/f.gml")),
                       "FEATURE_COLLECTION").find(f"{{{WPS}}}Reference")
    assert plain.get("method") is None and plain.find(f"{{{WPS}}}Body") is None
    for wrong, problem in [
        (Reference("https://example.org/wfs", body="<a/>", method="GET"),
         "FEATURE_COLLECTION: a body is sent with method='POST' only (method='GET' given)"),
        (Reference("https://example.org/wfs", method="POST"),
         "FEATURE_COLLECTION: method='POST' needs the body to send (body=…)"),
        (Reference("https://example.org/wfs", body="<wfs:GetFeature"),
         "FEATURE_COLLECTION: the body looks like XML but is not well-formed"),
        (Reference("ftp://example.org/f.gml"), "FEATURE_COLLECTION: reference 'ftp://example.org/f.gml' is not an "
         "http(s) URL"),
        (Reference("https://example.org/f.json", mime_type="application/json"),
         "FEATURE_COLLECTION: format 'application/json' is not accepted (this input takes text/xml)"),
    ]:
        with pytest.raises(InputValidationError) as caught:
            build_inputs(description, usgs_inputs(FEATURE_COLLECTION=wrong))
        assert caught.value.problems[-1] == problem


def test_embedded_text_is_sent_as_data_even_when_it_starts_like_a_url(tmp_path):
    """owslib sends complex data as a reference whenever the text parses with a URL scheme:
    a table whose header starts `id:…` went out as `xlink:href="id:…"`. Emu's `wordcounter`
    (wps_EmuDescribeProcess_all.xml) takes a text/plain document."""
    text = tmp_path / "notes.txt"
    text.write_text("id:1 the first line\nid:2 the second\n")
    description = describe("wps_EmuDescribeProcess_all.xml", "wordcounter")
    sent = wire_input(execute_document(description, {"text": text}), "text")
    assert sent.find(f"{{{WPS}}}Reference") is None
    data = sent.find(f"{{{WPS}}}Data/{{{WPS}}}ComplexData")
    assert (data.get("mimeType"), data.text) == ("text/plain", text.read_text())
