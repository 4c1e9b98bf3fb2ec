"""A real Prefect stack for end-to-end tests: `prefect server start`, a work pool,
blocks, `prefect deploy` from the repository's prefect.yaml, a worker — and a
headless Chromium (Debian's `chromium`, driven over the DevTools protocol) to
look at the result in the Prefect UI.

Everything runs as subprocesses on 127.0.0.1 with its own PREFECT_HOME and
SQLite database under a temporary directory; no telemetry. Every process is
started in its own process group and tagged with a per-stack environment
marker, so that stopping the stack can prove nothing it started is left over.

The one entry point tests use:

    with deployed_run(tmp_path, deployment="vm-inventory", blocks={"fedcloud": block},
                      artifact_keys=["vm-inventory", "vm-inventory-sites"]) as run:
        ...                                   # run.flow_run, run.artifacts, run.logs
        pages = check_ui(run, out_dir, ...)   # screenshots + DOM checks

Only HTTP (httpx) is used to drive the API, except for saving blocks, which
goes through Prefect's own client pointed at this server.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]
MARKER = "PREFECT_EGI_TEST_STACK"  # environment marker on every process a stack starts
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class StackError(AssertionError):
    """The stack did not get where a test needed it; the message carries the logs' tails."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text[-lines:])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25,
               on_timeout: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:.0f} s waiting for {what}\n{on_timeout()}")
        time.sleep(interval)


# --------------------------------------------------------------------------- processes


@dataclass
class Started:
    """One subprocess of the stack, leader of its own process group, output in a file."""

    name: str
    process: subprocess.Popen
    log: Path
    started_at: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 15.0) -> None:
        if self.process.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, sig)
                try:
                    self.process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # the leader is gone; anything left in its group (a child that ignored SIGTERM) goes too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def tagged_processes(stack_id: str) -> list[int]:
    """PIDs of live processes carrying this stack's marker (Linux /proc; [] elsewhere)."""
    needle = f"{MARKER}={stack_id}".encode()
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":  # zombies are already gone
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


# --------------------------------------------------------------------------- the stack


@dataclass
class PrefectStack:
    """A running `prefect server start` plus the client-side environment to talk to it."""

    root: Path
    port: int
    stack_id: str
    server: Started
    started: list[Started] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    database_url: str = ""  # what the server stores into (SQLite under root/server unless told otherwise)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def database(self) -> Path:
        return self.root / "server" / "prefect.db"

    @property
    def workdir(self) -> Path:
        """Where this stack's flow runs work (prefect.yaml's pull step: `$PREFECT_EGI_WORKDIR`)."""
        folder = self.root / "flow-runs"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a client process (CLI, worker, flow runs) of this stack."""
        return client_env(self.root / "client", self.stack_id, PREFECT_API_URL=self.api_url,
                          **{"PREFECT_EGI_WORKDIR": str(self.workdir), **extra})

    # ---- HTTP API

    def api(self, method: str, path: str, retry_for: float = 30, **kwargs: Any) -> Any:
        """One API call. Like Prefect's own client, it tries again on 429/502/503/504 and on
        connection errors: SQLite answers 'database is locked' as a 503 when the server, the
        worker's heartbeats and a flow run write at once on a busy machine (the write was
        rolled back, so a retried POST does not duplicate it)."""
        deadline = time.monotonic() + retry_for
        delay = 0.25
        while True:
            try:
                response = httpx.request(method, f"{self.api_url}{path}", timeout=30, **kwargs)
                if response.status_code not in (429, 502, 503, 504):
                    break
                problem = f"HTTP {response.status_code} {response.text[:500]}"
            except (httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError) as error:
                problem = f"{type(error).__name__}: {error}"
            if time.monotonic() + delay > deadline:
                raise StackError(f"{method} {path}: {problem} (still, after {retry_for:.0f} s of retries)")
            time.sleep(delay)
            delay = min(delay * 2, 4)
        if response.status_code >= 400:
            raise StackError(f"{method} {path}: HTTP {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def cli(self, *args: str, cwd: Path = REPO, timeout: float = 120, **extra_env: str) -> str:
        """Run `prefect <args>` against this server; its output, or a StackError with it."""
        started = time.monotonic()
        result = subprocess.run([*PREFECT, *args], cwd=cwd, env=self.env(**extra_env), capture_output=True,
                                text=True, timeout=timeout, start_new_session=True)
        self.timings[f"prefect {args[0] if args[0] != '--no-prompt' else args[1]}"] = time.monotonic() - started
        output = result.stdout + result.stderr
        if result.returncode:
            raise StackError(f"prefect {' '.join(args)} exited {result.returncode}:\n{output[-4000:]}")
        return output

    def spawn(self, name: str, args: Sequence[str], cwd: Path = REPO, **extra_env: str) -> Started:
        log = self.root / f"{name}.log"
        handle = log.open("ab")
        process = subprocess.Popen(list(args), cwd=cwd, env=self.env(**extra_env), stdout=handle,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        handle.close()
        started = Started(name, process, log)
        self.started.append(started)
        return started

    # ---- setup steps

    def create_work_pool(self, name: str, type: str = "process") -> None:
        """What `prefect work-pool create <name> --type <type>` does: the worker type's default
        base job template, posted to the API (for a process pool without spending a CLI start)."""
        if type != "process":
            self.cli("work-pool", "create", name, "--type", type, "--overwrite")
            return
        from prefect.workers.process import ProcessWorker

        self.api("POST", "/work_pools/", json={
            "name": name, "type": type, "base_job_template": ProcessWorker.get_default_base_job_template()})

    def save_blocks(self, blocks: Mapping[str, Any]) -> None:
        """Save blocks (Prefect `Block` instances, nested blocks included) on this server."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        started = time.monotonic()
        with temporary_settings({PREFECT_API_URL: self.api_url}):
            for name, block in blocks.items():
                block.save(name, overwrite=True)
        self.timings["save blocks"] = time.monotonic() - started

    def deploy(self, name: str, project_dir: Path = REPO, prefect_file: str = "prefect.yaml",
               pause_schedules: bool = True, **extra_env: str) -> dict:
        """`prefect --no-prompt deploy --name <name>` from `project_dir`; the deployment as the API has it.

        Schedules are paused at once (and the server runs without its scheduler service), so the
        only runs of the deployment are the ones a test creates."""
        self.cli("--no-prompt", "deploy", "--name", name, "--prefect-file", prefect_file, cwd=project_dir,
                 **extra_env)
        found = self.api("POST", "/deployments/filter", json={"deployments": {"name": {"any_": [name]}}})
        if len(found) != 1:
            raise StackError(f"expected one deployment named {name!r}, the server has {len(found)}")
        deployment = found[0]
        if pause_schedules:
            for schedule in deployment.get("schedules", []):
                self.api("PATCH", f"/deployments/{deployment['id']}/schedules/{schedule['id']}",
                         json={"active": False})
        return self.api("GET", f"/deployments/{deployment['id']}")

    def start_worker(self, pool: str, wait: bool = True, name: str | None = None,
                     limit: int | None = None, **extra_env: str) -> Started:
        """`prefect worker start --pool <pool>`; with `wait`, returns once it is ONLINE (else call
        `wait_for_worker` later, e.g. after deploying in the meantime). Several workers on one
        pool need distinct `name`s (also their log's name); `limit`: its `--limit` (flow runs
        at once). The worker starts in the stack's work folder, not in this checkout: it runs the
        flows of the installed package, as a worker on another machine would."""
        name = name or f"test-{self.stack_id[:8]}"
        worker = self.spawn(f"worker-{pool}" if name.startswith("test-") else f"worker-{name}",
                            [*PREFECT, "worker", "start", "--pool", pool, "--name", name,
                             *(["--limit", str(limit)] if limit else [])], cwd=self.workdir, **extra_env)
        if wait:
            self.wait_for_worker(worker, pool)
        return worker

    def wait_for_worker(self, worker: Started, pool: str, timeout: float = 60, name: str | None = None) -> None:
        """Until a worker of `pool` (the one called `name`, when given) is ONLINE."""
        wait_until(lambda: not worker.alive() or self._worker_online(pool, name), timeout,
                   f"worker {name or ''} on pool {pool!r}", on_timeout=lambda: _tail(worker.log))
        if not worker.alive():
            raise StackError(f"worker exited with code {worker.process.returncode}:\n{_tail(worker.log)}")
        self.timings["worker start"] = time.monotonic() - worker.started_at

    def _worker_online(self, pool: str, name: str | None = None) -> bool:
        return any(w.get("status") == "ONLINE" and name in (None, w.get("name"))
                   for w in self.api("POST", f"/work_pools/{pool}/workers/filter", json={}))

    def run_deployment(self, deployment_id: str, parameters: Mapping[str, Any] | None = None) -> dict:
        return self.api("POST", f"/deployments/{deployment_id}/create_flow_run",
                        json={"parameters": dict(parameters or {})})

    def wait_for_flow_run(self, flow_run_id: str, timeout: float = 180) -> dict:
        def final() -> dict | None:
            run = self.api("GET", f"/flow_runs/{flow_run_id}")
            return run if (run.get("state") or {}).get("type") in TERMINAL else None

        def diagnostics() -> str:
            run = self.api("GET", f"/flow_runs/{flow_run_id}")
            return (f"flow run state: {run.get('state')}\n--- logs\n"
                    + "\n".join(line["message"] for line in self.logs(flow_run_id))
                    + "".join(f"\n--- {p.name}\n{_tail(p.log)}" for p in self.started))

        return wait_until(final, timeout, f"flow run {flow_run_id} to end", interval=0.5, on_timeout=diagnostics)

    def logs(self, flow_run_id: str) -> list[dict]:
        return self.api("POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}},
                                                      "sort": "TIMESTAMP_ASC", "limit": 200})

    def artifacts(self, flow_run_id: str) -> list[dict]:
        return self.api("POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}},
                                                           "sort": "CREATED_DESC"})

    def flow_runs_of(self, deployment_id: str) -> list[dict]:
        return self.api("POST", "/flow_runs/filter",
                        json={"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})

    # ---- teardown

    def stop(self) -> list[int]:
        """Stop workers, then the server; kill whatever still carries the marker. Returns the
        PIDs that had to be killed by the marker sweep (empty when the process groups sufficed)."""
        began = time.monotonic()
        for started in reversed(self.started):
            started.stop()
        self.server.stop()
        leftovers = tagged_processes(self.stack_id)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not tagged_processes(self.stack_id), 10, "the stack's processes to exit")
        self.timings["stop"] = time.monotonic() - began
        return leftovers


def client_env(home: Path, stack_id: str, **settings: str) -> dict[str, str]:
    """os.environ without any PREFECT_* setting it inherited, plus this stack's own."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_HOME=str(home),
        PREFECT_LOGGING_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        **{MARKER: stack_id},
    )
    env.update(settings)
    return env


def start_server(root: Path, timeout: float = 120, attempts: int = 3, database_url: str | None = None,
                 **server_env: str) -> PrefectStack:
    """`prefect server start` on a free port of 127.0.0.1, its own PREFECT_HOME and SQLite DB,
    the UI on, telemetry and the scheduler service off; returns once /api/health answers.
    (A port taken between choosing and binding it means another try on a new port.)

    `database_url`: another database instead, e.g. `postgresql+asyncpg://user:pw@127.0.0.1:5432/prefect`
    (asyncpg comes with Prefect). `server_env`: more PREFECT_SERVER_* settings for the server."""
    from leak_sweep import STACK_ROOTS

    root.mkdir(parents=True, exist_ok=True)
    STACK_ROOTS.append(root)
    stack_id = uuid.uuid4().hex
    for attempt in range(1, attempts + 1):
        try:
            return _start_server(root, stack_id, timeout, database_url, server_env)
        except StackError as error:
            if attempt == attempts or "address already in use" not in str(error).lower():
                raise
    raise AssertionError("unreachable")


def _start_server(root: Path, stack_id: str, timeout: float, database_url: str | None = None,
                  server_env: Mapping[str, str] | None = None) -> PrefectStack:
    port = free_port()
    home = root / "server"
    env = client_env(
        home, stack_id,
        PREFECT_UI_ENABLED="true",
        PREFECT_SERVER_UI_ENABLED="true",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        PREFECT_SERVER_LOG_RETRYABLE_ERRORS="true",  # a 503 (e.g. SQLite locked) shows in server.log
        **dict(server_env or {}),
    )
    log = root / "server.log"
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off",
             "--no-scheduler", "--ui"],
            cwd=root, env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    stack = PrefectStack(root=root, port=port, stack_id=stack_id, server=Started("server", process, log),
                         database_url=env["PREFECT_SERVER_DATABASE_CONNECTION_URL"])
    started = time.monotonic()

    def healthy() -> bool:
        if process.poll() is not None:
            raise StackError(f"prefect server exited with code {process.returncode}:\n{_tail(log)}")
        try:
            return httpx.get(f"{stack.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, timeout, "prefect server /api/health", on_timeout=lambda: _tail(log))
    except BaseException:
        stack.stop()
        raise
    stack.timings["server start"] = time.monotonic() - started
    return stack


@dataclass
class DeployedRun:
    """A finished flow run of a deployment on a live stack (the stack stops when the `with` ends)."""

    stack: PrefectStack
    deployment: dict
    flow_run: dict
    artifacts: list[dict]  # every artifact of the run, newest first
    logs: list[dict]

    @property
    def state(self) -> str:
        return self.flow_run["state"]["type"]

    @property
    def log_text(self) -> str:
        return "\n".join(line["message"] for line in self.logs)

    @property
    def by_key(self) -> dict[str, dict]:
        """The newest artifact of each key (unkeyed artifacts left out)."""
        found: dict[str, dict] = {}
        for artifact in self.artifacts:
            if artifact.get("key"):
                found.setdefault(artifact["key"], artifact)
        return found

    def select(self, selectors: Sequence[str]) -> list[dict]:
        """Artifacts named by `selectors`: a key (its newest artifact), or `type:<type>` (every
        unkeyed artifact of that type, e.g. `type:progress` for the remote engine's progress)."""
        chosen, missing = [], []
        for selector in selectors:
            if selector.startswith("type:"):
                found = [a for a in self.artifacts if not a.get("key") and a["type"] == selector[5:]]
            else:
                found = [self.by_key[selector]] if selector in self.by_key else []
            chosen += found
            if not found:
                missing.append(selector)
        if missing:
            have = sorted(a.get("key") or f"type:{a['type']}" for a in self.artifacts)
            raise StackError(f"the run made no artifact {missing}; it made {have}")
        return chosen


def _settled_logs(stack: PrefectStack, flow_run_id: str, timeout: float = 15) -> list[dict]:
    """The run's logs once they stop arriving (the flow process ships its last batch after the
    final state is set)."""
    deadline = time.monotonic() + timeout
    logs = stack.logs(flow_run_id)
    while time.monotonic() < deadline:
        time.sleep(1)
        again = stack.logs(flow_run_id)
        finished = any(line["message"].startswith("Finished in state") and line["name"] == "prefect.flow_runs"
                       for line in again)
        if len(again) == len(logs) and finished:
            return again
        logs = again
    return logs


@contextlib.contextmanager
def deployed_run(
    root: Path,
    *,
    deployment: str,
    blocks: Mapping[str, Any],
    artifact_keys: Sequence[str] = (),
    parameters: Mapping[str, Any] | None = None,
    pool: str = "egi-process",
    project_dir: Path = REPO,
    timeout: float = 180,
    leftovers: list[int] | None = None,
) -> Iterator[DeployedRun]:
    """Server → work pool → blocks → `prefect deploy --name <deployment>` → worker → one run of
    it, waited for until it ends (any final state: the caller asserts). When it completed,
    `artifact_keys` (see `DeployedRun.select`) must all have been made. The whole stack is
    stopped on exit; PIDs the marker sweep had to kill are appended to `leftovers` when given."""
    stack = start_server(root)
    try:
        stack.create_work_pool(pool)
        # the worker starts while blocks are saved and the deployment made (no run exists yet)
        worker = stack.start_worker(pool, wait=False, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5",
                                    PREFECT_RUNNER_POLL_FREQUENCY="1", PREFECT_WORKER_HEARTBEAT_SECONDS="5")
        stack.save_blocks(blocks)
        deployed = stack.deploy(deployment, project_dir=project_dir)
        stack.wait_for_worker(worker, pool)
        started = time.monotonic()
        created = stack.run_deployment(deployed["id"], parameters)
        flow_run = stack.wait_for_flow_run(created["id"], timeout=timeout)
        logs = _settled_logs(stack, flow_run["id"])
        stack.timings["flow run"] = time.monotonic() - started
        run = DeployedRun(stack, deployed, flow_run, stack.artifacts(flow_run["id"]), logs)
        if run.state == "COMPLETED":
            run.select(artifact_keys)
        yield run
    finally:
        killed = stack.stop()
        if leftovers is not None:
            leftovers.extend(killed)


# --------------------------------------------------------------------------- the browser

CHROMIUM_CANDIDATES = (
    "/usr/lib/chromium/chromium",  # Debian's real binary (/usr/bin/chromium is a shell wrapper)
    "chromium",
    "chromium-browser",
)


def find_chromium() -> str | None:
    """Debian's `chromium` (apt-get install -y chromium); $CHROMIUM overrides. Never downloaded."""
    for candidate in filter(None, (os.environ.get("CHROMIUM"), *CHROMIUM_CANDIDATES)):
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.access(path, os.X_OK):
            return path
    return None


@dataclass
class PageCheck:
    """What one UI page showed: its URL, text, the expected strings not seen, where its files are."""

    name: str
    url: str
    text: str
    missing: list[str]
    screenshot: Path
    dom: Path
    seconds: float
    extra: Any = None  # the value of the page's `collect` script

    @property
    def ok(self) -> bool:
        return not self.missing


def _squash(text: str) -> str:
    return " ".join(text.split())


# Click the innermost visible element whose own text is exactly the given string (a tab, a button).
_CLICK = """(() => {
  const wanted = %s;
  for (const selector of ['[role=tab], .p-tab', 'button, a, li, span, div']) {
    const all = [...document.querySelectorAll(selector)]
      .filter(e => e.offsetParent !== null && (e.innerText || '').trim() === wanted);
    const inner = all.filter(e => !all.some(o => o !== e && e.contains(o)));
    if (inner.length) { inner[0].click(); return true; }
  }
  return false;
})()"""

# Scroll the element holding the given text into the middle of the viewport.
_SCROLL = """(() => {
  const wanted = %s;
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  let last = null;
  while (walker.nextNode()) {
    if (walker.currentNode.textContent.includes(wanted)) last = walker.currentNode.parentElement;
  }
  if (last) last.scrollIntoView({block: 'center'});
  return !!last;
})()"""


class Chromium:
    """Headless Chromium driven over the DevTools protocol (one websocket, flattened sessions).

    Only 127.0.0.1 resolves; every request for another host is recorded in `foreign_requests`
    (it fails at DNS), so a test can see the UI tried no outside call that worked."""

    def __init__(self, binary: str, profile: Path, env: Mapping[str, str], log: Path,
                 window: tuple[int, int] = (1400, 1000)):
        from websockets.sync.client import connect

        profile.mkdir(parents=True, exist_ok=True)
        active = profile / "DevToolsActivePort"
        active.unlink(missing_ok=True)  # a reused profile's stale port
        self.window = window
        self.foreign_requests: list[str] = []
        self.foreign_responses: list[str] = []  # a foreign request that got an answer (must stay empty)
        self.console: list[str] = []
        handle = log.open("ab")
        self.process = Started("chromium", subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--disable-quic", "--disable-extensions", "--hide-scrollbars",
             "--mute-audio", "--disable-breakpad", "--disable-crash-reporter", "--no-proxy-server",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             f"--window-size={window[0]},{window[1]}", f"--user-data-dir={profile}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
            env=dict(env), stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True), log)
        handle.close()
        try:
            lines = wait_until(lambda: self._announced(active), 30, "Chromium's DevTools port",
                               on_timeout=lambda: _tail(log))
            port, path = lines[0], lines[1]
            self.ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=10)
        except BaseException:
            self.process.stop(grace=5)
            raise
        self._next = 0

    def _announced(self, active: Path) -> list[str] | None:
        if not self.process.alive():
            raise StackError(f"chromium exited with code {self.process.process.returncode}")
        try:
            lines = active.read_text().split()
        except OSError:
            return None
        return lines if len(lines) == 2 else None

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params: Any) -> dict:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StackError(f"DevTools {method}: no answer within {timeout:.0f} s")
            reply = json.loads(self.ws.recv(timeout=left))
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise StackError(f"DevTools {method}: {reply['error']}")
                return reply.get("result", {})
            self._event(reply)

    def _event(self, event: dict) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            host = urlsplit(url).hostname
            if (url.startswith(("http:", "https:", "ws:", "wss:")) and host not in ("127.0.0.1", "localhost")
                    and url not in self.foreign_requests):
                self.foreign_requests.append(url)
        elif method == "Network.responseReceived":
            url = params.get("response", {}).get("url", "")
            if url.startswith(("http:", "https:")) and urlsplit(url).hostname not in ("127.0.0.1", "localhost"):
                self.foreign_responses.append(url)
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning"):
            args = params.get("args", [])
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif method == "Runtime.exceptionThrown":
            self.console.append(params.get("exceptionDetails", {}).get("text", "exception"))

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise StackError(f"page script failed: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def check_page(self, name: str, url: str, expect: Sequence[str], out_dir: Path, timeout: float = 45,
                   click: str | None = None, scroll_to: str | None = None, collect: str | None = None,
                   settle: float = 0.75) -> PageCheck:
        """Open `url` in a fresh tab, wait until the rendered text (document.body.innerText, i.e.
        what the single-page app rendered, not its shell) holds every string of `expect`
        (whitespace-insensitive), then keep a screenshot and the DOM.

        `click`: the exact text of a tab or button to click once it is rendered (e.g. "Artifacts").
        `scroll_to`: a text to scroll into view before the screenshot (e.g. the last log line).
        `collect`: a JS expression evaluated at the end, returned as `PageCheck.extra`."""
        out_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        wanted = [_squash(s) for s in expect]
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        try:
            for domain in ("Page", "Runtime", "Network"):
                self.call(f"{domain}.enable", session)
            self.call("Emulation.setDeviceMetricsOverride", session, width=self.window[0], height=self.window[1],
                      deviceScaleFactor=1, mobile=False)
            self.call("Page.navigate", session, url=url)
            deadline = time.monotonic() + timeout
            if click:
                with contextlib.suppress(StackError):
                    wait_until(lambda: self.evaluate(session, _CLICK % json.dumps(click)),
                               max(1.0, deadline - time.monotonic()), f"{name}: {click!r} to click", interval=0.3)
            text = ""

            def rendered() -> bool:
                nonlocal text
                text = _squash(self.evaluate(session, "document.body ? document.body.innerText : ''") or "")
                return all(s in text for s in wanted)

            with contextlib.suppress(StackError):
                wait_until(rendered, max(1.0, deadline - time.monotonic()), name, interval=0.3)
            if all(s in text for s in wanted):
                if scroll_to:
                    self.evaluate(session, _SCROLL % json.dumps(scroll_to))
                time.sleep(settle)  # transitions, fonts and late images, before the picture
                rendered()
            extra = self.evaluate(session, collect) if collect else None
            shot = self.call("Page.captureScreenshot", session, format="png", timeout=60)
            screenshot = out_dir / f"{name}.png"
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            dom = out_dir / f"{name}.html"
            dom.write_text(self.evaluate(session, "document.documentElement.outerHTML"))
            return PageCheck(name, url, text, [e for e, w in zip(expect, wanted) if w not in text], screenshot, dom,
                             time.monotonic() - started, extra)
        finally:
            self.call("Target.closeTarget", targetId=target)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=5)
        with contextlib.suppress(Exception):
            self.ws.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.process.wait(timeout=5)
        self.process.stop(grace=5)


# --------------------------------------------------------------------------- the UI check

# What rendered structure a page holds: table cells and headings (rendered, not raw text).
_STRUCTURE = """(() => ({
  cells: [...document.querySelectorAll('td, th')].map(e => e.innerText.trim()).filter(Boolean),
  headings: [...document.querySelectorAll('h1, h2, h3, h4, h5, h6')].map(e => e.innerText.trim()),
}))()"""


def _plain(markdown: str) -> str:
    """Inline markdown to the text a renderer shows."""
    import re

    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", markdown)
    text = re.sub(r"<((?:https?|mailto):[^>\s]+)>", r"\1", text)  # autolinks show their URL
    text = text.replace("\\|", "|").replace("**", "").replace("__", "").replace("`", "")
    return _squash(re.sub(r"^(?:[-*+]|\d+\.)\s+", "", text.strip()))


@dataclass
class Expected:
    """What an artifact page must show: text anywhere, cells in a rendered table, headings."""

    text: list[str] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)
    headings: list[str] = field(default_factory=list)


def expected_from_artifact(artifact: Mapping[str, Any], rows: int = 3, lines: int = 12) -> Expected:
    """Derive from an artifact's own data what its page must render: a table's column names and
    first rows' cells; a markdown's headings, the cells of its tables and its first plain lines.
    Other types (progress, link, …) give only their description."""
    found = Expected(text=[artifact["key"] or artifact.get("description") or ""])
    data = artifact.get("data")
    if artifact["type"] == "table":
        table = json.loads(data) if isinstance(data, str) else data
        if isinstance(table, dict):  # columns → values
            found.cells += [str(k) for k in table]
            found.cells += [str(v) for values in table.values() for v in list(values)[:rows]]
        elif table and isinstance(table[0], dict):  # records
            found.cells += [str(k) for k in table[0]]
            found.cells += [str(v) for record in table[:rows] for v in record.values()]
        else:  # rows of cells
            found.cells += [str(v) for row in (table or [])[:rows] for v in row]
        found.cells = [c for c in found.cells if c.strip() and not c.startswith(("{", "["))]
    elif artifact["type"] == "markdown" and isinstance(data, str):
        content = [line for line in data.splitlines() if line.strip()][:lines]
        for line in content:
            if line.lstrip().startswith("|"):
                cells = [_plain(c) for c in line.strip().strip("|").split("|")]
                if not all(set(c) <= set("-: ") for c in cells):  # not the |---| separator
                    found.cells += [c for c in cells if c]
            elif line.lstrip().startswith("#"):
                found.headings.append(_plain(line.lstrip().lstrip("#")))
            elif not line.lstrip().startswith(("<", "```", ">")):
                found.text.append(_plain(line))
    found.text = [t for t in found.text if t]
    return found


@dataclass
class UICheck:
    """Every page looked at, and what the browser saw beyond them."""

    pages: list[PageCheck]
    foreign_requests: list[str]  # tried by the UI (they fail: only 127.0.0.1 resolves)
    foreign_responses: list[str]  # answered: must be empty
    console: list[str]
    seconds: float

    @property
    def failures(self) -> list[str]:
        return [f"{p.name} ({p.url}): not rendered: {p.missing}" for p in self.pages if p.missing]

    @property
    def screenshots(self) -> list[Path]:
        return [p.screenshot for p in self.pages]

    def summary(self) -> dict:
        return {"seconds": round(self.seconds, 1), "foreign_requests": self.foreign_requests,
                "foreign_responses": self.foreign_responses,
                "console": self.console[:50],
                "pages": [{"name": p.name, "url": p.url, "missing": p.missing, "seconds": round(p.seconds, 1),
                           "screenshot": p.screenshot.name} for p in self.pages]}

    def publish(self, directory: Path, prefix: str, **facts: Any) -> list[Path]:
        """Copy the screenshots (and a summary.json, with `facts` added) to a CI artifact folder,
        replacing only this prefix's files from an earlier run."""
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob(f"{prefix}-*"):
            old.unlink()
        copied = [Path(shutil.copy2(p, directory / p.name)) for p in self.screenshots]
        summary = directory / f"{prefix}-summary.json"
        summary.write_text(json.dumps({**facts, **self.summary()}, indent=2, default=str))
        return [*copied, summary]


def _log_samples(logs: Sequence[Mapping[str, Any]], middle: bool = True) -> list[str]:
    """Log lines a page must show: the first two, the warnings and errors (up to 5; `middle`),
    the last two."""
    lines = [entry for entry in logs if "\n" not in entry["message"] and 0 < len(entry["message"]) <= 300]
    chosen = lines[:2] + ([e for e in lines if e["level"] >= 30][:5] if middle else []) + lines[-2:]
    return list(dict.fromkeys(e["message"] for e in chosen))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:60]


def check_ui(
    run: DeployedRun,
    out_dir: Path,
    *,
    artifact_keys: Sequence[str],
    artifact_expect: Mapping[str, Sequence[str]] | None = None,
    log_expect: Sequence[str] = (),
    chromium: str | None = None,
    uis: Sequence[str] = ("v1", "v2"),
    prefix: str | None = None,
    timeout: float = 45,
) -> UICheck:
    """Open the run in the Prefect UI with headless Chromium and check what rendered.

    For each UI — `v1`: the deep links Prefect logs (`/runs/flow-run/<id>`, `/artifacts/artifact/<id>`);
    `v2`: the default UI under `/v2/` — three kinds of page, each kept as `<prefix>-<ui>-<page>.png`
    (plus its DOM as .html) in `out_dir`:
    - `flow-run-logs`: the run's name, state and deployment, the sampled log lines and `log_expect`;
    - `flow-run-artifacts`: the Artifacts tab lists every selected artifact (key and description);
    - `artifact-<key>`: each artifact's page renders its content (`expected_from_artifact`, with
      table cells and headings found in rendered <td>/<th>/<h*> elements) and `artifact_expect[key]`
      (key, or description for an unkeyed artifact).
    """
    started = time.monotonic()
    binary = chromium or find_chromium()
    if binary is None:
        raise StackError("Chromium not found: apt-get install -y chromium")
    prefix = prefix or _slug(run.deployment["name"])
    artifacts = run.select(artifact_keys)
    flow_run = run.flow_run
    state_name = flow_run["state"].get("name") or flow_run["state"]["type"].title()
    logs = [*_log_samples(run.logs), *log_expect]
    # the v2 UI draws only the log lines in view (a virtual list, scrolled to the end, where the
    # worker's lines may sort differently): there the caller's last expected line is checked
    # (e.g. the flow's "Finished in state …"); the v1 page checks every sampled line
    ends = list(log_expect[-1:]) or _log_samples(run.logs, middle=False)[-1:]
    labels = [a["key"] or a.get("description") or a["id"] for a in artifacts]
    listed = list(dict.fromkeys([*labels, *(a["description"] for a in artifacts if a.get("description"))]))
    browser = Chromium(binary, run.stack.root / "chromium-profile", run.stack.env(), run.stack.root / "chromium.log")
    pages: list[PageCheck] = []
    try:
        for ui in uis:
            base = run.stack.url + ("/v2" if ui == "v2" else "")
            run_url = f"{base}/runs/flow-run/{flow_run['id']}"

            def page(name: str, url: str, expect: Sequence[str], **options: Any) -> PageCheck:
                checked = browser.check_page(f"{prefix}-{ui}-{name}", url, expect, out_dir, timeout=timeout,
                                             **options)
                pages.append(checked)
                return checked

            shown_logs = logs if ui == "v1" else ends
            page("flow-run-logs", run_url, [flow_run["name"], state_name, run.deployment["name"], *shown_logs],
                 click="Logs", scroll_to=shown_logs[-1] if shown_logs else None)
            page("flow-run-artifacts", run_url + ("?tab=Artifacts" if ui == "v2" else ""), listed,
                 click="Artifacts")
            for artifact, label in zip(artifacts, labels):
                expected = expected_from_artifact(artifact)
                extra = [*filter(None, [artifact.get("description")]), *(artifact_expect or {}).get(label, ())]
                checked = page(f"artifact-{_slug(label)}", f"{base}/artifacts/artifact/{artifact['id']}",
                               [*expected.text, *extra, *expected.cells, *expected.headings], collect=_STRUCTURE)
                shown = checked.extra or {"cells": [], "headings": []}
                cells = {_squash(c) for c in shown["cells"]}
                headings = {_squash(h) for h in shown["headings"]}
                checked.missing += [f"table cell {c!r}" for c in expected.cells if _squash(c) not in cells]
                checked.missing += [f"heading {h!r}" for h in expected.headings if _squash(h) not in headings]
    finally:
        browser.close()
    return UICheck(pages, browser.foreign_requests, browser.foreign_responses, browser.console,
                   time.monotonic() - started)
