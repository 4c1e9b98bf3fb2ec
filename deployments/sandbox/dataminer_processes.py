"""The algorithms of the local DataMiner: real PyWPS processes with DataMiner ids.

- FAST_ECHO      literal inputs of every kind → one literal output, in well under a second
- SLOW_COUNTER   runs `seconds`, reporting progress at every step (asynchronous)
- CSV_SUMMARY    a CSV by URL or embedded → a summary file by reference, plus the
                 DataMiner-shaped `non_deterministic_output` feature collection
- GRID_SPLITTER  splits a range into `items` work items → a CSV table by reference
                 (item, start, end): what a pipeline fans out to grid jobs
- ALWAYS_FAILS   ends in ProcessFailed with a readable message
- CRASHES        dies with an unexpected exception (the server hides its text)
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

from pywps import ComplexInput, ComplexOutput, Format, LiteralInput, LiteralOutput, Process
from pywps.app.exceptions import ProcessError
from pywps.inout.literaltypes import AllowedValue
from pywps.validator.allowed_value import ALLOWEDVALUETYPE
from pywps.validator.mode import MODE

PREFIX = "org.gcube.dataanalysis.wps.statisticalmanager.synchserver.mappedclasses.transducerers."
CSV = Format("text/csv", extension=".csv")
XML = Format("text/xml", extension=".xml")
TEXT = Format("text/plain", extension=".txt")


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


def _summary(request, response):
    data = request.inputs["table"][0].data
    if isinstance(data, bytes):
        data = data.decode()
    rows = list(csv.reader(io.StringIO(data)))
    header, body = rows[0], rows[1:]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["column", "count", "sum"])
    for index, name in enumerate(header):
        values = [float(r[index]) for r in body if r[index].strip()]
        writer.writerow([name, len(values), f"{sum(values):g}"])
    response.outputs["summary"].data = out.getvalue()

    # DataMiner's non_deterministic_output: a feature collection of (description, mime, URL).
    workdir = Path(response.process.workdir)
    log = workdir / "computation.log"
    log.write_text(f"read {len(body)} rows, {len(header)} columns\n")
    result = workdir / "summary_result.csv"
    result.write_text(out.getvalue())
    base = os.environ["DATAMINER_PEER_STORAGE_URL"].rstrip("/")
    entries = [("Log of the computation", "text/plain", _publish(log, base)),
               ("Summary table", "text/csv", _publish(result, base))]
    foreign = os.environ.get("DATAMINER_PEER_FOREIGN_URL")
    if foreign:
        entries.append(("Copy on the shared storage", "text/csv", _publish(result, foreign.rstrip("/"))))
    response.outputs["non_deterministic_output"].data = _feature_collection(entries)
    return response


def _publish(path: Path, base: str) -> str:
    storage = Path(os.environ["DATAMINER_PEER_STORAGE_DIR"])
    target = storage / f"{os.getpid()}-{int(time.time() * 1000)}-{path.name}"
    target.write_bytes(path.read_bytes())
    return f"{base}/{target.name}"


def _feature_collection(entries: list[tuple[str, str, str]]) -> str:
    results = "".join(
        f'<ogr:Result fid="F{i}"><d4science:Data><![CDATA[{url}]]></d4science:Data>'
        f"<d4science:Description><![CDATA[{desc}]]></d4science:Description>"
        f"<d4science:MimeType>{mime}</d4science:MimeType></ogr:Result>"
        for i, (desc, mime, url) in enumerate(entries, start=1)
    )
    return (
        '<ogr:FeatureCollection xmlns:ogr="http://ogr.maptools.org/" xmlns:gml="http://www.opengis.net/gml" '
        'xmlns:d4science="http://www.d4science.org">'
        f"<gml:featureMember>{results}</gml:featureMember></ogr:FeatureCollection>"
    )


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


def processes() -> list[Process]:
    return [
        Process(
            _echo, PREFIX + "FAST_ECHO", "Fast echo",
            abstract="Repeats a text; exercises every literal type.",
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
            store_supported=True, status_supported=True,
        ),
        Process(
            _count, PREFIX + "SLOW_COUNTER", "Slow counter",
            abstract="Counts for a while and reports progress.",
            inputs=[LiteralInput("seconds", "Seconds", data_type="float", min_occurs=1),
                    LiteralInput("steps", "Steps", data_type="integer", min_occurs=0, default=5)],
            outputs=[LiteralOutput("count", "Count", data_type="integer")],
            store_supported=True, status_supported=True,
        ),
        Process(
            _summary, PREFIX + "CSV_SUMMARY", "CSV summary",
            abstract="Sums every column of a CSV table.",
            inputs=[ComplexInput("table", "Table", supported_formats=[CSV], mode=MODE.NONE, min_occurs=1)],
            outputs=[ComplexOutput("summary", "Summary", supported_formats=[CSV], as_reference=True),
                     ComplexOutput("non_deterministic_output", "NonDeterministicOutput", supported_formats=[XML])],
            store_supported=True, status_supported=True,
        ),
        Process(
            _split, PREFIX + "GRID_SPLITTER", "Grid splitter",
            abstract="Splits a range into work items, one row each (item, start, end).",
            inputs=[LiteralInput("items", "Items", data_type="integer", min_occurs=1,
                                 allowed_values=[AllowedValue(ALLOWEDVALUETYPE.RANGE, minval=1, maxval=1000)]),
                    LiteralInput("span", "Span", data_type="float", min_occurs=0, default=100.0),
                    LiteralInput("prefix", "Prefix", data_type="string", min_occurs=0, default="item")],
            outputs=[ComplexOutput("table", "Work items", supported_formats=[CSV], as_reference=True)],
            store_supported=True, status_supported=True,
        ),
        Process(_fail, PREFIX + "ALWAYS_FAILS", "Always fails", inputs=[], outputs=[
            LiteralOutput("never", "Never", data_type="string")], store_supported=True, status_supported=True),
        Process(_crash, PREFIX + "CRASHES", "Crashes", inputs=[], outputs=[
            LiteralOutput("never", "Never", data_type="string")], store_supported=True, status_supported=True),
    ]
