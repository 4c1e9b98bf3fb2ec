"""A local D4Science DataMiner: real PyWPS 4.8 behind a DataMiner-like front.

The front, like DataMiner's:
- requires the gCube token: `gcube-token` header, `gcube-token=` query
  parameter, or HTTP basic auth with the token as password (401 otherwise);
- serves status documents at `/wps/RetrieveResultServlet?id=<uuid>` (the
  statusLocation of every Execute response points there);
- serves the files of DataMiner's `non_deterministic_output` from a storage
  area, and a second "foreign" host on another port (a storage, and a WFS at
  `/wfs` answering GetFeature requests POSTed as XML) that records every
  credential it receives (a token must never reach it).

For tests: `/_peer/stats` (request counters, status reads per execution as
`status:<id>`, credentials seen by the foreign storage), `/_peer/revoke` and
`/_peer/restore` of a token, `/_peer/fault` (5xx bursts or delays on the next N
requests of a kind, optionally `after` letting some through first; `truncate: 0.5`
serves half of a status document with 200, as a read lands while PyWPS rewrites
the file in place).

Run: `python dataminer_peer.py --port 0` prints one JSON line with its URLs.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs


DEFAULT_TOKEN = "gcube-0a1b2c3d-4e5f-6789-abcd-ef0123456789-843339462"
STATUS_PATTERN = re.compile(rb'statusLocation="[^"]*/outputs/([0-9a-f-]{36})\.xml"')


class PeerState:
    def __init__(self, tokens: set[str]):
        self.tokens = set(tokens)
        self.counters: Counter[str] = Counter()
        # kind -> [status, delay, remaining, requests to let through first, share of the status document kept]
        self.faults: dict[str, list[Any]] = {}
        self.foreign_credentials: list[str] = []
        self.lock = threading.Lock()

    def count(self, name: str) -> None:
        with self.lock:
            self.counters[name] += 1

    def take_fault(self, kind: str) -> tuple[int, float, float | None] | None:
        with self.lock:
            fault = self.faults.get(kind)
            if not fault or fault[2] <= 0:
                return None
            if fault[3] > 0:  # let `after` matching requests through first
                fault[3] -= 1
                return None
            fault[2] -= 1
            return fault[0], fault[1], fault[4]


def write_config(folder: Path, base_url: str, parallel: int) -> Path:
    outputs = folder / "outputs"
    work = folder / "work"
    outputs.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    config = folder / "pywps.cfg"
    log_db = folder / "pywps-log.sqlite"  # not in WAL mode: forked executions then met 'disk I/O error'
    config.write_text(
        "[server]\n"
        f"url = {base_url}/wps/WebProcessingService\n"
        f"outputurl = {base_url}/wps/outputs/\n"
        f"outputpath = {outputs}\n"
        f"workdir = {work}\n"
        f"parallelprocesses = {parallel}\n"
        "maxprocesses = 100\n"
        "maxsingleinputsize = 10mb\n"
        "maxrequestsize = 20mb\n"
        "[processing]\n"
        "mode = multiprocessing\n"
        "[logging]\n"
        "level = INFO\n"
        # concurrent executions (forked) write here: wait for the lock instead of dying on it
        f"database = sqlite:///{log_db}?timeout=60\n"
        f"file = {folder / 'pywps.log'}\n"
    )
    return config


def token_of(environ: dict[str, Any], query: dict[str, list[str]]) -> str | None:
    if environ.get("HTTP_GCUBE_TOKEN"):
        return environ["HTTP_GCUBE_TOKEN"]
    if "gcube-token" in query:
        return query["gcube-token"][-1]
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if auth[:6].lower() == "basic ":
        try:
            return base64.b64decode(auth[6:]).decode().partition(":")[2]
        except ValueError:
            return None
    return None


def make_front(service: Any, state: PeerState, outputs: Path, base_url: str):
    def rewrite(body: bytes) -> bytes:
        return STATUS_PATTERN.sub(
            lambda m: f'statusLocation="{base_url}/wps/RetrieveResultServlet?id={m.group(1).decode()}"'.encode(), body)

    def reply(start_response, status: str, body: bytes, content_type: str = "text/plain") -> list[bytes]:
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    def app(environ: dict[str, Any], start_response):
        path = environ.get("PATH_INFO", "")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if path.startswith("/_peer/"):
            return control(path[7:], environ, start_response)
        request = (query.get("request") or query.get("Request") or [""])[0]
        kind = ("status" if path.endswith("RetrieveResultServlet") else
                "output" if "/outputs/" in path else
                request or environ["REQUEST_METHOD"].lower() + "-execute")
        state.count(kind)
        if kind == "status":  # per execution too, for benchmarks that wait on many at once
            state.count("status:" + (query.get("id") or [""])[0])
        fault = state.take_fault(kind) or state.take_fault("any")
        kept: float | None = None  # a status document read while PyWPS rewrites it: cut short
        if fault:
            if fault[1]:
                time.sleep(fault[1])
            kept = fault[2]
            if fault[0] and kept is None:
                return reply(start_response, f"{fault[0]} Injected Fault", b"injected fault")
        token = token_of(environ, query)
        if token not in state.tokens:
            state.count("unauthorized")
            return reply(start_response, "401 Unauthorized", b"Unauthorized: a valid gcube-token is required")
        if path.endswith("RetrieveResultServlet"):
            job = (query.get("id") or [""])[0]
            document = outputs / f"{job}.xml"
            if not re.fullmatch(r"[0-9a-f-]{36}", job) or not document.exists():
                return reply(start_response, "404 Not Found", b"unknown computation id")
            data = rewrite(document.read_bytes())
            return reply(start_response, "200 OK", data[:int(len(data) * kept)] if kept is not None else data, "text/xml")
        if "/outputs/" in path:
            target = (outputs / path.split("/outputs/", 1)[1]).resolve()
            if not target.is_relative_to(outputs.resolve()) or not target.is_file():
                return reply(start_response, "404 Not Found", b"no such output")
            return reply(start_response, "200 OK", target.read_bytes(), "application/octet-stream")
        if path == "/wps/WebProcessingService":
            chunks: list[bytes] = []
            headers: list[Any] = []

            def capture(status: str, response_headers: list[Any], exc_info: Any = None):
                headers[:] = [status, response_headers]

            for chunk in service(environ, capture):
                chunks.append(chunk)
            body = rewrite(b"".join(chunks))
            status, response_headers = headers
            response_headers = [(k, v) for k, v in response_headers if k.lower() != "content-length"]
            start_response(status, response_headers + [("Content-Length", str(len(body)))])
            return [body]
        return reply(start_response, "404 Not Found", b"not found")

    def control(action: str, environ: dict[str, Any], start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length) or b"{}") if length else {}
        with state.lock:
            if action == "stats":
                answer: Any = {**state.counters, "foreign_credentials": list(state.foreign_credentials)}
            elif action == "revoke":
                state.tokens.discard(body["token"])
                answer = {"ok": True}
            elif action == "restore":
                state.tokens.add(body["token"])
                answer = {"ok": True}
            elif action == "fault":
                state.faults[body.get("kind", "any")] = [int(body.get("status", 503)), float(body.get("delay", 0)),
                                                         int(body.get("count", 1)), int(body.get("after", 0)),
                                                         body.get("truncate")]
                answer = {"ok": True}
            elif action == "reset":
                state.counters.clear()
                state.faults.clear()
                state.foreign_credentials.clear()
                answer = {"ok": True}
            else:
                return reply(start_response, "404 Not Found", b"unknown control")
        return reply(start_response, "200 OK", json.dumps(answer).encode(), "application/json")

    return app


#: The layers of the other host's WFS, as GeoServer's `outputFormat="csv"` writes them:
#: the feature id first, then the attributes (these features have no geometry).
WFS_LAYERS = {"sample:stations": "FID,depth,temperature\r\nstations.1,10,12.5\r\nstations.2,20,11.5\r\n"
                                 "stations.3,30,9.0\r\n"}


def _ows_exception(code: str, locator: str, text: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?><ows:ExceptionReport version="1.0.0" '
            'xmlns:ows="http://www.opengis.net/ows"><ows:Exception exceptionCode="' + code + '" locator="' + locator
            + '"><ows:ExceptionText>' + text + "</ows:ExceptionText></ows:Exception></ows:ExceptionReport>").encode()


def wfs_get_feature(body: bytes) -> tuple[int, str, bytes]:
    """Another host's WFS answering a GetFeature POSTed as XML (as a WPS server sends a
    reference with `method="POST"` and a `wps:Body`): the layer as CSV, or GeoServer's
    exception report."""
    from lxml import etree

    try:
        request = etree.fromstring(body)
    except etree.XMLSyntaxError:
        return 400, "text/xml", _ows_exception("NoApplicableCode", "", "Could not parse the request body as XML")
    query = request.find("{http://www.opengis.net/wfs}Query")
    layer = query.get("typeName", "") if query is not None else ""
    if etree.QName(request).localname != "GetFeature" or layer not in WFS_LAYERS:
        return 400, "text/xml", _ows_exception("InvalidParameterValue", "typeName", f"Feature type {layer} unknown")
    if request.get("outputFormat", "").lower() != "csv":
        return 400, "text/xml", _ows_exception("InvalidParameterValue", "outputFormat", "this WFS writes csv only")
    return 200, "text/csv", WFS_LAYERS[layer].encode()


def start_foreign_storage(storage: Path, state: PeerState) -> ThreadingHTTPServer:
    """Another host: a storage serving files and a WFS (`/wfs`); records any credential it is sent."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def record_credentials(self) -> None:
            for header in ("Authorization", "gcube-token", "Cookie"):
                if self.headers.get(header):
                    state.foreign_credentials.append(f"{header} header")
            if "gcube-token" in self.path:
                state.foreign_credentials.append("gcube-token query parameter")

        def answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self.record_credentials()
            if self.path.split("?")[0].endswith("/wfs"):  # no KVP request either: GeoServer's answer
                state.count("wfs-get")
                return self.answer(400, "text/xml", _ows_exception(
                    "MissingParameterValue", "request", "Could not determine geoserver request from http request"))
            target = storage / Path(self.path.split("?")[0]).name
            self.answer(200 if target.is_file() else 404, "application/octet-stream",
                        target.read_bytes() if target.is_file() else b"missing")

        def do_POST(self) -> None:
            self.record_credentials()
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not self.path.split("?")[0].endswith("/wfs"):
                return self.answer(405, "text/plain", b"method not allowed")
            state.count("wfs-post")
            self.answer(*wfs_get_feature(body))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def keep_queued_inputs_intact() -> None:
    """PyWPS 4.8 keeps a request it queues (over `parallelprocesses`) as JSON, its inline
    ComplexData wrapped in CDATA, and unwraps it at launch with a pattern whose `.` stops at
    a newline: multi-line data (a CSV table) reached the process still wrapped, `]]>` and
    all; and a bounding box lost its CRS. DataMiner queues executions too but hands them
    over intact; so must the peer."""
    import pywps.inout.inputs

    pywps.inout.inputs.CDATA_PATTERN = re.compile(r"<!\[CDATA\[(.*?)\]\]>", re.DOTALL)
    # The stored copy of a bounding box keeps its CRS, but PyWPS 4.8 does not read it back
    # (`BoundingBoxInput.from_json` restores the CRSs offered, not the one given): the
    # algorithm saw the input's default CRS instead of the client's.
    if not getattr(pywps.inout.inputs.BoundingBoxInput.from_json, "keeps_crs", False):
        restore = pywps.inout.inputs.BoundingBoxInput.from_json.__func__

        def from_json(cls: Any, json_input: dict[str, Any]) -> Any:
            box = restore(cls, json_input)
            if json_input.get("crs"):
                box.crs = json_input["crs"]
            return box

        from_json.keeps_crs = True  # type: ignore[attr-defined]
        pywps.inout.inputs.BoundingBoxInput.from_json = classmethod(from_json)


def fetch_references_with_their_body() -> None:
    """A complex input by reference with `method="POST"` and a `wps:Body` (a WFS GetFeature,
    as USGS' 52°North portal takes feature collections): PyWPS 4.8 parses it but cannot use
    it — it stores the body before the URL's handler exists (NotImplementedError: HTTP 500),
    the URL's handler then starts without it, and the stored copy of a queued or
    asynchronous request keeps neither method nor body. DataMiner's 52°North server POSTs
    the body; so must the peer: the body stays with the input, travels in its stored copy,
    and is what the input's URL is fetched with."""
    import pywps.inout.basic
    import pywps.inout.inputs

    complex_input = pywps.inout.inputs.ComplexInput
    if getattr(complex_input, "keeps_posted_body", False):
        return

    def url_handler(self: Any, inpt: dict[str, Any]) -> str:
        if inpt.get("method") == "POST":
            if inpt.get("body"):
                self.posted_body = inpt["body"]
            elif inpt.get("bodyreference"):
                import requests

                self.posted_body = requests.get(url=inpt["bodyreference"], timeout=60).text
            else:
                raise AttributeError("Missing post data content.")
        return inpt.get("href")

    def post_data(handler: Any) -> Any:
        owner = handler._ref()
        return handler._post_data if handler._post_data is not None else getattr(owner, "posted_body", None)

    stored = complex_input.json.fget
    restore = complex_input.from_json.__func__

    def json_with_body(self: Any) -> dict[str, Any]:
        data = stored(self)
        if getattr(self, "posted_body", None) is not None:
            data.update(method="POST", body=self.posted_body)
        return data

    def from_json(cls: Any, json_input: dict[str, Any], validate_file: bool = True) -> Any:
        instance = restore(cls, json_input, validate_file=validate_file)
        if json_input.get("method") == "POST" and json_input.get("body") is not None:
            instance.posted_body = json_input["body"]
        return instance

    pywps.inout.basic.ComplexInput.url_handler = url_handler
    pywps.inout.basic.UrlHandler.post_data = property(post_data, pywps.inout.basic.UrlHandler.post_data.fset)
    complex_input.json = property(json_with_body)
    complex_input.from_json = classmethod(from_json)
    complex_input.keeps_posted_body = True


def outlast_a_busy_log_database() -> None:
    """PyWPS records every execution in its log database, also from each forked
    execution (its pid, every status); one 'database is locked' there kills the fork
    before the algorithm runs and the execution stays Accepted forever. Seen with 50
    pipelines at once on 2 cores despite a 60 s busy timeout. DataMiner does not lose executions under load, so the peer
    tries such a write again (each try on a fresh connection: PyWPS opens one per call)."""
    import functools

    import pywps.app.Service
    import pywps.dblog
    import pywps.response.basic
    from sqlalchemy.exc import OperationalError

    def patient(call: Any) -> Any:
        @functools.wraps(call)
        def again(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(30):
                try:
                    return call(*args, **kwargs)
                except OperationalError as exc:  # a failed commit rolled back: trying again is safe
                    if "locked" not in str(exc) or attempt == 29:
                        raise
                    time.sleep(min(0.05 * 2 ** attempt, 1.0))
            raise AssertionError("unreachable")
        return again

    for name in ("log_request", "store_status", "update_pid", "store_process", "pop_first_stored",
                 "get_process_counts", "cleanup_crashed_process"):
        patched = patient(getattr(pywps.dblog, name))
        for module in (pywps.dblog, pywps.app.Service, pywps.response.basic):
            if hasattr(module, name):
                setattr(module, name, patched)


def fork_executions_from_a_clean_process(config: Path) -> None:
    """PyWPS forks each execution from the server process, whose 16 request threads
    hold locks at any moment — SQLite's, lxml's; a fork copies them held, and the child
    waits for them forever (three executions of 50 concurrent pipelines hung so:
    'running' for good, with PyWPS' queue stuck behind them). Executions are forked from
    multiprocessing's fork server instead: a single-threaded process of its own that has
    never opened the log database nor parsed XML, so a child starts with no lock held —
    and, as before, outlives a restart of the front. What crosses over is what PyWPS
    itself stores for a queued execution: the process id, the uuid, the request as JSON."""
    import multiprocessing

    import pywps.processing
    import pywps.processing.basic

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["pywps", "prefect_egi.sandbox.dataminer_processes"])

    class ForkServerProcessing(pywps.processing.basic.MultiProcessing):
        def start(self) -> None:
            job = self.job
            context.Process(target=run_execution, daemon=False, args=(
                str(config), job.process.identifier, str(job.process.uuid), job.wps_request.json)).start()

    pywps.processing.MultiProcessing = ForkServerProcessing


def run_execution(config: str, identifier: str, uuid: str, request_json: str) -> None:
    """In the forked child: rebuild the execution as PyWPS launches a queued one, and run it."""
    from pywps import Service
    from pywps.app.WPSRequest import WPSRequest
    from pywps.response.execute import ExecuteResponse

    from prefect_egi.sandbox.dataminer_processes import processes

    keep_queued_inputs_intact()
    fetch_references_with_their_body()
    outlast_a_busy_log_database()
    fork_executions_from_a_clean_process(Path(config))  # the next queued execution, launched from here
    service = Service(processes(), [config])
    request = WPSRequest()
    request.restore_json(json.loads(request_json))
    process = service.prepare_process_for_execution(identifier)
    process._set_uuid(uuid)
    process._setup_status_storage()
    process.async_ = True
    process.setup_outputs_from_wps_request(request)
    response = ExecuteResponse(request, process=process, uuid=uuid)
    response.store_status_file = True
    process._run_process(request, response)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", action="append", help="accepted gCube token(s)")
    parser.add_argument("--parallel", type=int, default=8, help="PyWPS parallelprocesses")
    parser.add_argument("--workdir", help="where PyWPS keeps status documents and outputs (kept across restarts)")
    parser.add_argument("--public-url", help="the base URL clients reach us by, when a proxy stands in front "
                        "(status locations and output references are built on it, as behind a real front)")
    args = parser.parse_args(argv)

    from waitress.server import create_server

    folder = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="dataminer-peer-"))
    folder.mkdir(parents=True, exist_ok=True)
    state = PeerState(set(args.token or [DEFAULT_TOKEN]))
    holder: dict[str, Any] = {}
    server = create_server(lambda e, s: holder["app"](e, s), host="127.0.0.1", port=args.port, threads=16)
    base_url = (args.public_url or f"http://127.0.0.1:{server.effective_port}").rstrip("/")
    config = write_config(folder, base_url, args.parallel)
    outputs = folder / "outputs"
    foreign = start_foreign_storage(outputs, state)
    foreign_url = f"http://127.0.0.1:{foreign.server_address[1]}/shared"
    # Read by the CSV_SUMMARY process (a forked child) to publish its files.
    os.environ["DATAMINER_PEER_STORAGE_URL"] = f"{base_url}/wps/outputs"
    os.environ["DATAMINER_PEER_STORAGE_DIR"] = str(outputs)
    os.environ["DATAMINER_PEER_FOREIGN_URL"] = foreign_url

    from pywps import Service

    keep_queued_inputs_intact()
    fetch_references_with_their_body()
    outlast_a_busy_log_database()
    fork_executions_from_a_clean_process(config)

    from prefect_egi.sandbox.dataminer_processes import processes

    service = Service(processes(), [str(config)])
    holder["app"] = make_front(service, state, outputs, base_url)
    # "url" is where the test controls are (never through a proxy); "wps_url" what clients use
    print(json.dumps({"url": f"http://127.0.0.1:{server.effective_port}", "wps_url": f"{base_url}/wps/WebProcessingService",
                      "token": sorted(state.tokens)[0], "foreign_url": foreign_url,
                      "wfs_url": f"http://127.0.0.1:{foreign.server_address[1]}/wfs", "workdir": str(folder)}),
          flush=True)
    owner = os.getpid()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.run()
    finally:
        if not args.workdir and os.getpid() == owner:  # forked computations share this stack: only we clean up
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
