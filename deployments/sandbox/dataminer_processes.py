"""The algorithms of the local DataMiner: real PyWPS processes with DataMiner ids.

- FAST_ECHO       literal inputs of every kind → one literal output, in well under a second
- SLOW_COUNTER    runs `seconds`, reporting progress at every step (asynchronous)
- CSV_SUMMARY     a CSV by URL, by POST request (a WFS GetFeature) or embedded → a summary
                  file by reference, listed again in DataMiner's result block with the
                  algorithm's other files
- CSV_CORRELATION a CSV of two columns → values only: DataMiner writes them into its
                  result block (no declared output but the block)
- BOUNDING_BOX    a bounding box → the same box (a bounding-box output) and its area
- LEVEL_CHECK     an integer allowed in two ranges (1–10 and 100–200)
- GRID_SPLITTER   splits a range into `items` work items → a CSV table by reference
                  (item, start, end): what a pipeline fans out to grid jobs
- ALWAYS_FAILS    ends in ProcessFailed with a readable message
- CRASHES         dies with an unexpected exception (the server hides its text)

Like every DataMiner algorithm (gCube's mapped classes), each declares DataMiner's result
block, `non_deterministic_output`; it stays empty when the algorithm wrote nothing there.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import time
from pathlib import Path

from pywps import (
    BoundingBoxInput,
    BoundingBoxOutput,
    ComplexInput,
    ComplexOutput,
    Format,
    LiteralInput,
    LiteralOutput,
    Process,
)
from pywps.app.exceptions import ProcessError
from pywps.inout.literaltypes import AllowedValue
from pywps.validator.allowed_value import ALLOWEDVALUETYPE
from pywps.validator.mode import MODE

PREFIX = "org.gcube.dataanalysis.wps.statisticalmanager.synchserver.mappedclasses.transducerers."
CSV = Format("text/csv", extension=".csv")
XML = Format("text/xml", extension=".xml")
TEXT = Format("text/plain", extension=".txt")
RESULT_BLOCK = "non_deterministic_output"


def _echo(request, response):
    text = request.inputs["text"][0].data
    times = request.inputs["times"][0].data if "times" in request.inputs else 1
    if "uppercase" in request.inputs and request.inputs["uppercase"][0].data:
        text = text.upper()
    tags = [i.data for i in request.inputs.get("tags", [])]
    scale = request.inputs["scale"][0].data if "scale" in request.inputs else 1.0
    mode = request.inputs["mode"][0].data if "mode" in request.inputs else "plain"
    body = " ".join([text] * times)
    if mode == "fancy":
        body = f"*** {body} ***"
    response.outputs["result"].data = f"{body} | tags={','.join(tags)} | scale={scale:g}"
    return response


def _count(request, response):
    seconds = request.inputs["seconds"][0].data
    steps = request.inputs["steps"][0].data if "steps" in request.inputs else 5
    for step in range(steps):
        response.update_status(f"step {step + 1}/{steps}", int(100 * step / steps))
        time.sleep(seconds / steps)
    response.outputs["count"].data = steps
    return response


def _table(request) -> tuple[list[str], list[list[str]]]:
    data = request.inputs["table"][0].data
    if isinstance(data, bytes):
        data = data.decode()
    rows = [row for row in csv.reader(io.StringIO(data)) if row]
    return rows[0], rows[1:]


def _numbers(body: list[list[str]], index: int) -> list[float] | None:
    """The column's values as numbers, or None when it is not a numeric column (a WFS
    answer starts with the features' ids, `FID`)."""
    try:
        return [float(r[index]) for r in body if r[index].strip()]
    except ValueError:
        return None


def _summary(request, response):
    header, body = _table(request)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["column", "count", "sum"])
    for index, name in enumerate(header):
        values = _numbers(body, index)
        if values is not None:
            writer.writerow([name, len(values), f"{sum(values):g}"])
    response.outputs["summary"].data = out.getvalue()

    workdir = Path(response.process.workdir)
    log = workdir / "computation.log"
    log.write_text(f"read {len(body)} rows, {len(header)} columns\n")
    result = workdir / "summary_result.csv"
    result.write_text(out.getvalue())
    base = os.environ["DATAMINER_PEER_STORAGE_URL"].rstrip("/")
    declared = response.process.outputs[0]  # `summary`: DataMiner lists a declared file output again
    entries = [("Log", "Log of the computation", "text/plain", _publish(log, base)),
               ("summary", declared.title, "text/csv", _publish(result, base)),
               ("SummaryTable", "Summary table", "text/csv", _publish(result, base))]
    foreign = os.environ.get("DATAMINER_PEER_FOREIGN_URL")
    if foreign:
        entries.append(("SharedCopy", "Copy on the shared storage", "text/csv", _publish(result, foreign.rstrip("/"))))
    _write_result_block(response, entries)
    return response


def _correlation(request, response):
    header, body = _table(request)
    xs, ys = (_numbers(body, 0) or []), (_numbers(body, 1) or [])
    if len(header) < 2 or len(xs) != len(ys) or len(xs) < 2:
        raise ProcessError("The table needs two numeric columns of the same length (two rows at least)")
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    r = sxy / (sxx * syy) ** 0.5 if sxx and syy else 0.0
    log = Path(response.process.workdir) / "computation.log"
    log.write_text(f"correlated {header[0]} and {header[1]} over {n} rows\n")
    base = os.environ["DATAMINER_PEER_STORAGE_URL"].rstrip("/")
    # values computed by the algorithm (undeclared outputs): DataMiner writes the value itself
    # where a file would have its URL, as text/plain
    _write_result_block(response, [("Log", "Log of the computation", "text/plain", _publish(log, base)),
                                   ("Correlation", "Pearson correlation", "text/plain", f"{r:.4f}"),
                                   ("Rows", "", "text/plain", str(n))])
    return response


def _bounding_box(request, response):
    box = request.inputs["bbox"][0]
    minx, miny, maxx, maxy = (float(v) for v in box.data)
    response.outputs["bbox"].data = [minx, miny, maxx, maxy]
    response.outputs["bbox"].crs = box.crs
    response.outputs["area"].data = abs((maxx - minx) * (maxy - miny))
    return response


def _level(request, response):
    response.outputs["level"].data = request.inputs["level"][0].data
    return response


_published = itertools.count(1)


def _publish(path: Path, base: str) -> str:
    """A copy of `path` on the storage at `base` (each copy a URL of its own)."""
    storage = Path(os.environ["DATAMINER_PEER_STORAGE_DIR"])
    target = storage / f"{os.getpid()}-{next(_published)}-{path.name}"
    target.write_bytes(path.read_bytes())
    return f"{base}/{target.name}"


def _write_result_block(response, entries: list[tuple[str, str, str, str]]) -> None:
    """DataMiner's `non_deterministic_output` from (name, description, mime type, payload):
    the feature collection of gCube's `OutputsManager.generateNonDeterministicOutput`
    (dataminer 1.0.2, see tests/data/dataminer/README.md) — its namespaces and schema
    location, `ogr:Result` fids from F0, the payload (a file's URL, or a value itself) and
    the description in CDATA, the name standing in for an empty description. With no
    entry it writes nothing: the template returns no document and the output stays empty."""
    if not entries:
        return
    results = ""
    for fid, (name, description, mime, payload) in enumerate(entries):
        label = name if not description.strip() and payload.strip() else description
        results += (f'\t\t<ogr:Result fid="F{fid}">\t\t\t<d4science:Data><![CDATA[{payload}]]></d4science:Data>\n'
                    f"\t\t\t<d4science:Description><![CDATA[{label}]]></d4science:Description>\n"
                    f"\t\t\t<d4science:MimeType>{mime}</d4science:MimeType>\n\t\t</ogr:Result>\n")
    response.outputs[RESULT_BLOCK].data = (
        '<ogr:FeatureCollection xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://ogr.maptools.org/ result_8751.xsd" xmlns:ogr="http://ogr.maptools.org/" '
        'xmlns:gml="http://www.opengis.net/gml" xmlns:d4science="http://www.d4science.org">'
        f"\n<gml:featureMember>\n{results}\t</gml:featureMember>\n</ogr:FeatureCollection>")


def _split(request, response):
    items = request.inputs["items"][0].data
    span = request.inputs["span"][0].data if "span" in request.inputs else 100.0
    prefix = request.inputs["prefix"][0].data if "prefix" in request.inputs else "item"
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["item", "start", "end"])
    for index in range(items):
        response.update_status(f"item {index + 1}/{items}", int(100 * index / items))
        writer.writerow([f"{prefix}-{index:03d}", f"{span * index / items:g}", f"{span * (index + 1) / items:g}"])
    response.outputs["table"].data = out.getvalue()
    return response


def _fail(request, response):
    raise ProcessError("Algorithm failed: the input table has no numeric column")


def _crash(request, response):
    return 1 / 0


def _result_block() -> ComplexOutput:
    return ComplexOutput(RESULT_BLOCK, "NonDeterministicOutput", abstract="Output that is not predetermined",
                         supported_formats=[XML])


def _algorithm(handler, name: str, title: str, inputs: list, outputs: list, abstract: str = "") -> Process:
    """A process as DataMiner publishes its algorithms: asynchronous, with the result block."""
    return Process(handler, PREFIX + name, title, abstract=abstract, inputs=inputs,
                   outputs=[*outputs, _result_block()], store_supported=True, status_supported=True)


def processes() -> list[Process]:
    table = ComplexInput("table", "Table", supported_formats=[CSV], mode=MODE.NONE, min_occurs=1)
    return [
        _algorithm(
            _echo, "FAST_ECHO", "Fast echo", abstract="Repeats a text; exercises every literal type.",
            inputs=[
                LiteralInput("text", "Text", data_type="string", min_occurs=1),
                LiteralInput("times", "Times", data_type="integer", min_occurs=0, default=1,
                             allowed_values=[AllowedValue(ALLOWEDVALUETYPE.RANGE, minval=1, maxval=5)]),
                LiteralInput("scale", "Scale", data_type="float", min_occurs=0),
                LiteralInput("uppercase", "Upper case", data_type="boolean", min_occurs=0),
                LiteralInput("mode", "Mode", data_type="string", min_occurs=0, default="plain",
                             allowed_values=["plain", "fancy"]),
                LiteralInput("tags", "Tags", data_type="string", min_occurs=0, max_occurs=3),
            ],
            outputs=[LiteralOutput("result", "Result", data_type="string")],
        ),
        _algorithm(
            _count, "SLOW_COUNTER", "Slow counter", abstract="Counts for a while and reports progress.",
            inputs=[LiteralInput("seconds", "Seconds", data_type="float", min_occurs=1),
                    LiteralInput("steps", "Steps", data_type="integer", min_occurs=0, default=5)],
            outputs=[LiteralOutput("count", "Count", data_type="integer")],
        ),
        _algorithm(
            _summary, "CSV_SUMMARY", "CSV summary", abstract="Sums every numeric column of a CSV table.",
            inputs=[table],
            outputs=[ComplexOutput("summary", "Summary", supported_formats=[CSV], as_reference=True)],
        ),
        _algorithm(
            _correlation, "CSV_CORRELATION", "CSV correlation",
            abstract="Pearson correlation of the first two columns of a CSV table.",
            inputs=[table.clone()], outputs=[],
        ),
        _algorithm(
            _bounding_box, "BOUNDING_BOX", "Bounding box", abstract="Returns the box it is given, and its area.",
            inputs=[BoundingBoxInput("bbox", "Bounding box", crss=["epsg:4326", "epsg:3035"], min_occurs=1)],
            outputs=[BoundingBoxOutput("bbox", "Bounding box", crss=["epsg:4326", "epsg:3035"]),
                     LiteralOutput("area", "Area", data_type="float")],
        ),
        _algorithm(
            _level, "LEVEL_CHECK", "Level check", abstract="Accepts a level in one of two bands.",
            inputs=[LiteralInput("level", "Level", data_type="integer", min_occurs=1, allowed_values=[
                AllowedValue(ALLOWEDVALUETYPE.RANGE, minval=1, maxval=10),
                AllowedValue(ALLOWEDVALUETYPE.RANGE, minval=100, maxval=200)])],
            outputs=[LiteralOutput("level", "Level", data_type="integer")],
        ),
        _algorithm(
            _split, "GRID_SPLITTER", "Grid splitter",
            abstract="Splits a range into work items, one row each (item, start, end).",
            inputs=[LiteralInput("items", "Items", data_type="integer", min_occurs=1,
                                 allowed_values=[AllowedValue(ALLOWEDVALUETYPE.RANGE, minval=1, maxval=1000)]),
                    LiteralInput("span", "Span", data_type="float", min_occurs=0, default=100.0),
                    LiteralInput("prefix", "Prefix", data_type="string", min_occurs=0, default="item")],
            outputs=[ComplexOutput("table", "Work items", supported_formats=[CSV], as_reference=True)],
        ),
        _algorithm(_fail, "ALWAYS_FAILS", "Always fails", inputs=[],
                   outputs=[LiteralOutput("never", "Never", data_type="string")]),
        _algorithm(_crash, "CRASHES", "Crashes", inputs=[],
                   outputs=[LiteralOutput("never", "Never", data_type="string")]),
    ]
