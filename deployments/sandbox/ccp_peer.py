"""A local D4Science CCP: real pygeoapi (OGC API – Processes) behind a D4Science-like front.

pygeoapi serves the API with its TinyDB process manager (asynchronous jobs in threads,
`/jobs` listing, dismiss) and the CCP-like methods of `ccp_processes.py`. The front, as
D4Science's gateway does for CCP:

- accepts ONLY the UMA token (RPT) of its VRE: an RS256 JWT signed by the Check-in peer's
  key (its JWKS, fetched from the issuer's discovery; fetched again for an unknown `kid`),
  issued by that issuer, not expired, whose `aud` names the VRE context (as is or
  percent-encoded) and that carries `authorization` (an RPT, not the user's plain access
  token). Anything else: 401 with an RFC 7807 body and `WWW-Authenticate: Bearer`;
- answers an asynchronous Execute with `201`, `Location` AND the job's `statusInfo` (pygeoapi
  sends `null`; `/_peer/config {"plain_execute": true}` passes pygeoapi's own answer);
- keeps the Execute's `Idempotency-Key` header: a repeated key gets the first answer again
  (nothing executed twice), and the job's documents (`/jobs`, `/jobs/{id}`) show it as
  `idempotencyKey`, kept across restarts on one `--workdir` (`markers.json`, beside
  pygeoapi's TinyDB jobs) — pygeoapi itself keeps nothing of the request (`/_peer/config
  {"keep_markers": false}` serves as plain pygeoapi would);
- records a dismissal (`DELETE /jobs/{id}`) where the methods see it, so a running one stops
  (pygeoapi deletes the record but leaves the thread running);
- serves the methods' result files (`output.zip`) at `/ccp-data/<job>/<file>`, token required.

Where pygeoapi (read in its code, 0.21.0 and 0.24.0: same manager) differs from the standard
or from CCP, and how the peer answers:

1. a job stays `accepted` until the process returns (pygeoapi never records `running`), and
   a process has no progress API → the methods write `running`, `progress` and `message`
   into their TinyDB record themselves (`ccp_processes.JobRecord`);
2. the async Execute's body is `null` (0.21) or `{"jobID", "type", "status"}` (0.24), not a
   full statusInfo → the front answers the job's statusInfo (`plain_execute` turns this off);
3. nothing of the request is kept (no inputs, title or header in the job record) → the front
   keeps the `Idempotency-Key` and shows it as `idempotencyKey`, and replays a repeated key;
4. dismissing a running job deletes its record and result file but leaves the thread
   running; the job then answers 404 → the front flags the dismissal for the methods, which
   stop; the 404 stays (the standard allows a dismissed job to disappear; CCP's own
   answer after a cancel is not verified);
5. `GET /jobs` ignores `processID` and `status` (the TinyDB manager filters nothing), pages
   by `limit`/`offset` with `rel=next` links, and sorts each page by `started` after slicing
   → left as is: the client applies the filters itself;
6. errors are `{"code", "type", "description"}` (not RFC 7807's `title`/`detail`), an unknown
   job is `InvalidParameterValue` 404 (the standard's type is `no-such-job`), results of an
   unfinished job `ResultNotReady` 404, of a failed one `InvalidParameterValue` 400 "job failed"
   (the standard: the job's exception) → left as is: the client reads both shapes and names
   a failed job's own message (`CCPJobFailed`);
7. a failed job's message is `InvalidParameterValue: Error executing process: <message>`;
8. `response: document` stores `{"outputs": [<results map>]}` → the client unwraps it;
9. `outputTransmission` in a description is always `["value"]`, whatever the process says;
10. `GET /processes?limit=` only cuts the list: no `rel=next` paging of processes.

For tests: `/_peer/stats` (requests per kind: processes, describe, execute, status, results,
jobs, dismiss, download, unauthorized; and `status:<job id>`, the status requests of each job),
`/_peer/reset`, `/_peer/config`, and `/_peer/fault`
(`kind`, `status`, `count`, `delay`; `after_backend: true` answers the fault only after
pygeoapi did the work — an Execute whose answer is lost).

Run: `python -m prefect_egi.sandbox.ccp_peer --issuer <Check-in peer issuer>` prints one JSON
line with its URLs.
"""

from __future__ import annotations

import argparse
import io
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
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

DEFAULT_CONTEXT = "/d4science.research-infrastructures.eu/D4OS/Blue-Cloud2026Lab"
MARKER_HEADER = "HTTP_IDEMPOTENCY_KEY"
JOB_PATH = re.compile(r"^/jobs/([^/]+)(/results)?$")


class TokenJudge:
    """Validates bearer tokens as a Keycloak-protected D4Science service does."""

    def __init__(self, issuer: str, context: str):
        self.issuer, self.context = issuer.rstrip("/"), context
        self.audiences = {context, quote(context, safe="")}
        self._keys: Any = None
        self._lock = threading.Lock()

    def _keyset(self, refresh: bool = False) -> Any:
        import httpx
        from joserfc.jwk import KeySet

        with self._lock:
            if self._keys is None or refresh:
                discovery = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=10).json()
                self._keys = KeySet.import_key_set(httpx.get(discovery["jwks_uri"], timeout=10).json())
            return self._keys

    def problem(self, token: str | None) -> str | None:
        """Why the token is refused, or None when it is the VRE's valid UMA token."""
        from joserfc import jwt
        from joserfc.errors import JoseError

        if not token:
            return "no bearer token"
        try:
            try:
                claims = jwt.decode(token, self._keyset(), algorithms=["RS256"]).claims
            except (JoseError, ValueError):  # perhaps a new signing key: fetch the JWKS once more
                claims = jwt.decode(token, self._keyset(refresh=True), algorithms=["RS256"]).claims
        except (JoseError, ValueError):
            return "the token's signature does not verify"
        now = time.time()
        if claims.get("iss") != self.issuer:
            return "the token was issued by another issuer"
        if float(claims.get("exp", 0)) <= now:
            return "the token has expired"
        if float(claims.get("nbf", 0)) > now + 30:
            return "the token is not valid yet"
        audience = claims.get("aud")
        audiences = set(audience if isinstance(audience, list) else [audience])
        if not audiences & self.audiences:
            return f"the token is not for this VRE ({self.context})"
        if not isinstance(claims.get("authorization"), dict):
            return "the token is not an UMA token (no authorization): exchange it for the VRE's UMA token"
        return None


class FrontState:
    """What the front keeps. Markers are saved beside pygeoapi's jobs (`markers.json`), so a
    peer restarted on the same `--workdir` (a crashed service coming back) still shows them."""

    def __init__(self, storage: Path):
        self.storage = storage
        self.saved = storage.parent / "markers.json"
        self.counters: Counter[str] = Counter()
        self.faults: dict[str, dict[str, Any]] = {}
        self.markers: dict[str, str] = {}  # job id -> Idempotency-Key
        self.replies: dict[str, tuple[str, list[tuple[str, str]], bytes]] = {}  # key -> first answer
        self.plain_execute = False
        self.keep_markers = True  # False: a server that keeps nothing of the request (plain pygeoapi)
        self.lock = threading.Lock()
        self.executing = threading.Lock()  # one Execute at a time: a repeated key waits for the first
        if self.saved.exists():
            self.markers = dict(json.loads(self.saved.read_text()))

    def remember(self, job_id: str, key: str) -> None:
        with self.lock:
            self.markers[job_id] = key
            self.saved.write_text(json.dumps(self.markers))

    def count(self, kind: str) -> None:
        with self.lock:
            self.counters[kind] += 1

    def take_fault(self, kind: str) -> dict[str, Any] | None:
        with self.lock:
            for name in (kind, "any"):
                fault = self.faults.get(name)
                if fault and fault["count"] > 0:
                    fault["count"] -= 1
                    return dict(fault)
        return None


def _kind(method: str, path: str) -> str:
    if path.startswith("/ccp-data/"):
        return "download"
    if path == "/processes":
        return "processes"
    if path.startswith("/processes/"):
        return "execute" if path.endswith("/execution") and method == "POST" else "describe"
    if path == "/jobs":
        return "jobs"
    match = JOB_PATH.match(path)
    if match:
        return "results" if match.group(2) else ("dismiss" if method == "DELETE" else "status")
    return "other"


def _reply(start_response: Any, status: str, body: bytes, content_type: str = "application/json",
           extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))), *(extra or [])])
    return [body]


def _problem(status: int, title: str, detail: str) -> bytes:
    return json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()


def call(app: Any, environ: dict[str, Any], method: str, path: str, body: bytes = b"",
         query: str = "") -> tuple[str, list[tuple[str, str]], bytes]:
    """Call the pygeoapi WSGI app; (status line, headers, body)."""
    sub = dict(environ)
    sub.update({"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
                "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)})
    captured: dict[str, Any] = {}

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"], captured["headers"] = status, list(headers)
        return lambda data: None

    chunks = app(sub, start)
    try:
        data = b"".join(chunks)
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
    return captured["status"], captured["headers"], data


def make_front(app: Any, judge: TokenJudge, state: FrontState, public_url: str) -> Any:
    def annotate(data: bytes) -> bytes:
        """Show each job's Idempotency-Key in a job document or listing."""
        try:
            body = json.loads(data)
        except ValueError:
            return data
        jobs = body.get("jobs") if isinstance(body, dict) and isinstance(body.get("jobs"), list) else [body]
        for job in jobs:
            if isinstance(job, dict) and job.get("jobID") in state.markers:
                job["idempotencyKey"] = state.markers[job["jobID"]]
        return json.dumps(body).encode()

    def front(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["ccp.public_url"] = public_url
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if path.startswith("/_peer/"):
            return control(path[len("/_peer/"):], environ, start_response)
        kind = _kind(method, path)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        auth = environ.get("HTTP_AUTHORIZATION", "")
        problem = judge.problem(auth[7:].strip() if auth[:7].lower() == "bearer " else None)
        if problem:
            state.count("unauthorized")
            return _reply(start_response, "401 Unauthorized", _problem(401, "Unauthorized", problem),
                          "application/problem+json",
                          [("WWW-Authenticate", f'Bearer realm="d4science", error="invalid_token", '
                                                f'error_description="{problem}"')])
        state.count(kind)
        if kind == "status":  # per job too, for benchmarks that wait on many at once
            state.count("status:" + unquote(JOB_PATH.match(path).group(1)))  # type: ignore[union-attr]
        fault = state.take_fault(kind)
        if fault and fault.get("delay"):
            time.sleep(float(fault["delay"]))
        if fault and not fault.get("after_backend"):
            return _reply(start_response, f"{fault['status']} Injected", _problem(fault["status"], "Injected fault",
                                                                                  "injected by the test"))
        if kind == "download":
            answer = download(path)
        elif kind == "execute":
            answer = execute(environ, path, body)
        else:
            if kind == "dismiss":
                job_id = unquote(JOB_PATH.match(path).group(1))  # type: ignore[union-attr]
                flags = state.storage / "dismissed"
                flags.mkdir(exist_ok=True)
                (flags / job_id).touch()
            answer = call(app, environ, method, path, body, environ.get("QUERY_STRING", ""))
            if kind in ("jobs", "status") and answer[0].startswith("200"):
                answer = (answer[0], [(k, v) for k, v in answer[1] if k.lower() != "content-length"],
                          annotate(answer[2]))
        if fault:  # after the backend did the work: the answer is lost
            return _reply(start_response, f"{fault['status']} Injected", _problem(fault["status"], "Injected fault",
                                                                                  "the gateway lost the answer"))
        status, headers, data = answer
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        start_response(status, [*headers, ("Content-Length", str(len(data)))])
        return [data]

    def download(path: str) -> tuple[str, list[tuple[str, str]], bytes]:
        relative = Path(unquote(path[len("/ccp-data/"):]))
        target = (state.storage / relative).resolve()
        if ".." in relative.parts or state.storage.resolve() not in target.parents or not target.is_file():
            return "404 Not Found", [("Content-Type", "application/json")], _problem(404, "Not Found", str(relative))
        return "200 OK", [("Content-Type", "application/zip")], target.read_bytes()

    def execute(environ: dict[str, Any], path: str, body: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
        key = environ.get(MARKER_HEADER)
        with state.executing:
            if key and key in state.replies:
                state.count("execute replayed")
                return state.replies[key]
            known = next((job for job, marker in state.markers.items() if marker == key), None) if key else None
            if known is not None:  # a key saved before a restart: answer with that job, do not run it again
                state.count("execute replayed")
                job = call(app, environ, "GET", f"/jobs/{known}", query="f=json")
                return ("201 Created", [("Location", f"{environ['ccp.public_url']}/jobs/{known}"),
                                        ("Content-Type", "application/json")], annotate(job[2]))
            status, headers, data = call(app, environ, "POST", path, body, environ.get("QUERY_STRING", ""))
            location = next((v for k, v in headers if k.lower() == "location"), None)
            if status.startswith("201") and location:
                job_id = location.rstrip("/").rsplit("/", 1)[-1]
                if key and state.keep_markers:
                    state.remember(job_id, key)
                if not state.plain_execute:  # the standard's 201 body: the job's statusInfo
                    job = call(app, environ, "GET", f"/jobs/{job_id}", query="f=json")
                    data = annotate(job[2])
                    headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
                    headers.append(("Content-Type", "application/json"))
                if key:
                    state.replies[key] = (status, headers, data)
            return status, headers, data

    def control(action: str, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        form = json.loads(environ["wsgi.input"].read(length) or b"{}") if length else {}
        with state.lock:
            if action == "stats":
                return _reply(start_response, "200 OK", json.dumps(dict(state.counters)).encode())
            if action == "reset":
                state.counters.clear()
                state.faults.clear()
                state.plain_execute = False
                state.keep_markers = True
            elif action == "fault":
                state.faults[form.get("kind", "any")] = {
                    "status": int(form.get("status", 503)), "count": int(form.get("count", 1)),
                    "delay": float(form.get("delay", 0)), "after_backend": bool(form.get("after_backend"))}
            elif action == "config":
                for name in ("plain_execute", "keep_markers"):
                    if name in form:
                        setattr(state, name, bool(form[name]))
            else:
                return _reply(start_response, "404 Not Found", b'{"error": "unknown control"}')
        return _reply(start_response, "200 OK", b'{"ok": true}')

    return front


def write_config(folder: Path, public_url: str) -> tuple[Path, Path]:
    """pygeoapi's configuration (TinyDB manager, our methods) and a minimal OpenAPI document."""
    import yaml
    from prefect_egi.sandbox.ccp_processes import PROCESSORS

    resources = {identifier: {"type": "process", "processor": {"name": f"{cls.__module__}.{cls.__name__}"}}
                 for identifier, cls in PROCESSORS.items()}
    config = {
        "server": {
            "bind": {"host": "127.0.0.1", "port": 0}, "url": public_url,
            "mimetype": "application/json; charset=UTF-8", "encoding": "utf-8", "gzip": False,
            "languages": ["en-US"], "pretty_print": False, "limits": {"default_items": 10, "max_items": 100},
            "map": {"url": "https://tile.openstreetmap.org/{z}/{x}/{y}.png", "attribution": "OpenStreetMap"},
            "manager": {"name": "TinyDB", "connection": str(folder / "jobs.db"), "output_dir": str(folder / "results")},
            "admin": False,
        },
        "logging": {"level": "ERROR"},
        "metadata": {
            "identification": {"title": {"en": "CCP peer"}, "description": {"en": "D4Science CCP-like methods"},
                               "keywords": {"en": ["ccp"]}, "keywords_type": "theme", "terms_of_service": "",
                               "url": public_url},
            "license": {"name": "CC-BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"},
            "provider": {"name": "prefect-egi", "url": public_url},
            "contact": {"name": "prefect-egi", "position": "", "address": "", "city": "", "stateorprovince": "",
                        "postalcode": "", "country": "", "phone": "", "fax": "", "email": "", "url": public_url,
                        "hours": "", "instructions": "", "role": "pointOfContact"},
        },
        "resources": resources,
    }
    (folder / "results").mkdir(exist_ok=True)
    path = folder / "pygeoapi.yml"
    path.write_text(yaml.safe_dump(config))
    openapi = folder / "openapi.yml"
    openapi.write_text("openapi: 3.0.2\ninfo: {title: CCP peer, version: '1'}\npaths: {}\n")
    return path, openapi


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--issuer", required=True, help="the Check-in peer's issuer (its Keycloak realm)")
    parser.add_argument("--context", default=DEFAULT_CONTEXT, help="the VRE whose UMA token is accepted")
    parser.add_argument("--workdir", help="where jobs and files are kept (kept across restarts)")
    parser.add_argument("--public-url", help="the base URL clients reach us by (a proxy in front)")
    args = parser.parse_args(argv)

    from waitress.server import create_server

    folder = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ccp-peer-"))
    folder.mkdir(parents=True, exist_ok=True)
    storage = folder / "ccp-data"
    storage.mkdir(exist_ok=True)
    holder: dict[str, Any] = {}
    server = create_server(lambda e, s: holder["app"](e, s), host="127.0.0.1", port=args.port, threads=16)
    url = f"http://127.0.0.1:{server.effective_port}"
    public_url = (args.public_url or url).rstrip("/")
    config, openapi = write_config(folder, public_url)
    os.environ.update(PYGEOAPI_CONFIG=str(config), PYGEOAPI_OPENAPI=str(openapi),
                      CCP_PEER_JOBS_DB=str(folder / "jobs.db"), CCP_PEER_STORAGE_DIR=str(storage),
                      CCP_PEER_STORAGE_URL=f"{public_url}/ccp-data")

    from pygeoapi.flask_app import APP

    state = FrontState(storage)
    holder["app"] = make_front(APP.wsgi_app, TokenJudge(args.issuer, args.context), state, public_url)
    print(json.dumps({"url": url, "api_url": public_url, "context": args.context, "workdir": str(folder)}),
          flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.run()
    finally:
        if not args.workdir:
            shutil.rmtree(folder, ignore_errors=True)
        os._exit(0)  # pygeoapi runs jobs in non-daemon threads: do not wait for them


if __name__ == "__main__":
    main()
