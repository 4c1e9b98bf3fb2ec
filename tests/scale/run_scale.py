#!/usr/bin/env python
"""Scale run: many concurrent flow runs and thousands of DIRAC jobs on a real stack.

    python tests/scale/run_scale.py --database postgres --workers 2 --runs 50 --jobs-per-run 200 --flow pipeline
    python tests/scale/run_scale.py --database sqlite --workers 1 --runs 5 --jobs-per-run 40   # what CI runs

What it starts (all on 127.0.0.1, all stopped on exit, Ctrl-C included):
- PostgreSQL (`--database postgres`): a private cluster in a temporary directory from
  Debian's `postgresql` (`apt-get install -y postgresql`; installed here when missing and
  running as root), run as the `postgres` user when we are root (initdb refuses root),
  password auth on a free port, one database `prefect`. Or Prefect's SQLite file.
- the sandbox peers (`deployments/sandbox/stack.py`: Check-in, DataMiner, DiracX + the test
  pilot, FedCloud sites; no hub), DiracX recording every job search it answers;
- a Prefect server on that database, the `egi-process` pool, the deployment of `--flow`
  (`prefect deploy` from prefect.yaml), `--workers` process workers on the pool;

then creates `--runs` flow runs at once, waits for all, and reports: runs by final state,
DIRAC jobs on the server vs expected (duplicates, lost), status requests per poll cycle of
each flow (from the DiracX server's own record of the searches), peak RSS of each worker's
process tree (sampled from /proc), wall time and database size.

Status requests per poll cycle, measured at the server: a flow's searches are the ones
naming its jobs (from its final-states table artifacts). A new cycle starts when a
request asks again about a job the current cycle already asked about (page 2.. of a
paged search continue their cycle). One bulk request per cycle gives 1.0; polling
each job separately would give the number of pending jobs.

`--flow dirac-batch` (the default) runs the DIRAC flow; `--flow pipeline` the whole pipeline
(Check-in → DataMiner work items → DIRAC → DataMiner summary → FedCloud VMs), which also
loads the DataMiner peer (PyWPS): 50 concurrent pipelines first found three limits of that
test peer, now fixed in it — forked executions hung on locks copied from its threads, died
on 'database is locked', and queued ones got multi-line inputs still wrapped in CDATA.

Not collected by pytest (not named test_*.py); `tests/test_scale.py` runs a small size
through `run_scale()`.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:  # prefect_stack (the plugin and its sandbox come installed)
    sys.path.insert(0, str(TESTS))

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect_stack import PrefectStack, StackError, Started, free_port, start_server  # noqa: E402

POOL = "egi-process"
DEPLOYMENTS = {"pipeline": "pipeline", "dirac-batch": "dirac-batch"}
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class ScaleConfig:
    database: str = "sqlite"  # or "postgres"
    workers: int = 1
    runs: int = 5
    jobs_per_run: int = 40
    flow: str = "dirac-batch"  # or "pipeline" (adds the DataMiner and FedCloud stages)
    pilot_duration: float = 1.0  # seconds each DIRAC job "runs"
    failure_rate: float = 0.0  # of job runs (failed ones are resubmitted by the flows)
    worker_limit: int | None = None  # flow runs at once per worker (default: runs / workers, rounded up)
    timeout: float = 1800.0  # for all runs to end
    workdir: Path | None = None  # default: a temporary directory, removed at the end
    checkout: Path = REPO  # whose prefect.yaml is deployed (the workers run the installed package)
    keep: bool = False  # keep the work directory (logs, databases) for a look afterwards
    progress: bool = True  # print what happens while it happens

    def limit(self) -> int:
        return self.worker_limit or max(1, math.ceil(self.runs / self.workers))


# --------------------------------------------------------------------------- PostgreSQL


def find_postgres_bin() -> Path | None:
    """Debian's server binaries: /usr/lib/postgresql/<version>/bin, the newest version."""
    found = sorted(Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").exists())
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0) if found else None


def ensure_postgres(say: Any = print) -> Path:
    """The PostgreSQL binaries; as root, `apt-get install -y postgresql` when they are missing."""
    bindir = find_postgres_bin()
    if bindir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        say("PostgreSQL not found: apt-get install -y postgresql")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env)
        bindir = find_postgres_bin()
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries not found: apt-get install -y postgresql")
    return bindir


class PostgresCluster:
    """A private PostgreSQL cluster: initdb in a temporary directory, pg_ctl on a free port of
    127.0.0.1 (no Unix socket outside its directory), password auth, stopped and deleted by `stop`.
    As root it runs as the `postgres` system user (initdb refuses root)."""

    def __init__(self, bindir: Path, user: str = "prefect", database: str = "prefect"):
        self.bindir, self.user, self.database = bindir, user, database
        self.password = secrets.token_hex(16)
        self.root = Path(tempfile.mkdtemp(prefix="prefect-egi-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = 0
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            account = pwd.getpwnam("postgres")  # Debian's package creates it
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *command: str, timeout: float = 120) -> str:
        done = subprocess.run([*self.as_user, *command], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PGPASSWORD": self.password}, cwd=self.root)
        if done.returncode:
            raise StackError(f"{' '.join(command[:2])} exited {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")
        return done.stdout

    def start(self) -> "PostgresCluster":
        secret = self.root / "pwfile"
        secret.write_text(self.password + "\n")
        if self.as_user:
            shutil.chown(secret, "postgres")
        secret.chmod(0o600)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=scram-sha-256",
                  f"--pwfile={secret}", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        secret.unlink()
        self.port = free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} " \
                  "-c max_connections=200"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "60", "start")
        self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                  self.database)
        return self

    def size(self) -> int:
        out = self._run(str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                        "-d", self.database, "-Atc", f"select pg_database_size('{self.database}')")
        return int(out.strip())

    def pids(self) -> list[int]:
        """The postmaster and its backends."""
        try:
            leader = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return [leader, *descendants(leader)]

    def stop(self) -> None:
        if self.port and (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop",
                          timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- memory


def _ppids() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return parents


def descendants(pid: int, parents: dict[int, int] | None = None) -> list[int]:
    parents = parents if parents is not None else _ppids()
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rss(pid: int) -> int:
    """Resident set size in bytes (0 when the process is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class TreePeak:
    own: int = 0  # the leader alone
    tree: int = 0  # leader + descendants, summed at one instant
    children: int = 0  # most direct children at once (a worker: its flow-run processes)
    largest_child_tree: int = 0  # the biggest single child subtree (one flow run)


class MemorySampler:
    """Samples the RSS of process trees every `interval` seconds in a thread; keeps the peaks."""

    def __init__(self, leaders: dict[str, Any], interval: float = 1.0):
        self.leaders = leaders  # name → pid, or a callable returning a list of pids (a group)
        self.interval = interval
        self.peaks: dict[str, TreePeak] = {name: TreePeak() for name in leaders}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def sample(self) -> None:
        parents = _ppids()
        kids: dict[int, list[int]] = {}
        for child, parent in parents.items():
            kids.setdefault(parent, []).append(child)

        def subtree(pid: int) -> int:
            total, todo = 0, [pid]
            while todo:
                current = todo.pop()
                total += rss(current)
                todo += kids.get(current, [])
            return total

        for name, leader in self.leaders.items():
            pids = leader() if callable(leader) else [leader]
            peak = self.peaks[name]
            own = sum(rss(p) for p in pids)
            tree = sum(subtree(p) for p in pids)
            direct = [c for p in pids for c in kids.get(p, [])]
            peak.own = max(peak.own, own)
            peak.tree = max(peak.tree, tree)
            peak.children = max(peak.children, len(direct))
            peak.largest_child_tree = max([peak.largest_child_tree, *(subtree(c) for c in direct)])
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.sample()
            self._stop.wait(self.interval)


# --------------------------------------------------------------------------- the report


@dataclass
class FlowPolling:
    flow_run: str
    jobs: int
    requests: int
    cycles: int

    @property
    def per_cycle(self) -> float:
        return self.requests / self.cycles if self.cycles else 0.0


@dataclass
class ScaleReport:
    config: dict
    runs: dict[str, int]  # final state → count
    expected_jobs: int  # runs × jobs per run + resubmissions
    server_jobs: int  # every job on the DiracX server
    server_statuses: dict[str, int]
    duplicates: int  # server_jobs - expected_jobs
    duplicate_names: int  # job names (one per work item) with more than one successful job
    lost: int  # work items without a Done job
    resubmitted: int
    flows_succeeded_jobs: int  # what the flows' own reports say
    polling: list[FlowPolling]
    unattributed_searches: int  # searches naming jobs of no flow's tables
    pilot: dict
    memory: dict[str, dict]
    wall_seconds: float  # first run created → last run ended
    run_seconds: dict[str, float]  # per run: min / median / max of (end - creation)
    setup_seconds: float
    database_bytes: int
    runs_per_worker: dict[str, int] = field(default_factory=dict)  # flow runs each worker started
    warnings: list[str] = field(default_factory=list)  # WARNING+ flow-run log lines (distinct, counted)
    failures: list[str] = field(default_factory=list)  # what went wrong with runs that did not complete

    @property
    def completed(self) -> int:
        return self.runs.get("COMPLETED", 0)

    @property
    def max_requests_per_cycle(self) -> float:
        return max((p.per_cycle for p in self.polling), default=0.0)

    def worker_peaks(self) -> dict[str, dict]:
        return {k: v for k, v in self.memory.items() if k.startswith("worker")}

    def text(self) -> str:
        c = self.config
        mib = 1024 * 1024
        lines = [
            f"Scale run: {c['runs']} {c['flow']} run(s) × {c['jobs_per_run']} DIRAC job(s) on {c['database']}, "
            f"{c['workers']} worker(s) (limit {c['worker_limit']} each), pilot {c['pilot_duration']} s per job, "
            f"failure rate {c['failure_rate']}",
            f"  checkout {c['checkout']} @ {c.get('commit', '?')}",
            f"runs: {', '.join(f'{n} {s}' for s, n in sorted(self.runs.items()))}; "
            f"{self.completed}/{c['runs']} completed",
            f"wall time {self.wall_seconds:.0f} s (first run created → last run ended; setup before that "
            f"{self.setup_seconds:.0f} s); "
            f"per run min/median/max {self.run_seconds.get('min', 0):.0f}/{self.run_seconds.get('median', 0):.0f}/"
            f"{self.run_seconds.get('max', 0):.0f} s",
            f"DIRAC jobs: {self.server_jobs} on the server, {self.expected_jobs} expected "
            f"({self.resubmitted} resubmitted) → duplicates {self.duplicates}, duplicate names {self.duplicate_names}, "
            f"lost {self.lost}; flows report {self.flows_succeeded_jobs} succeeded",
            f"  server statuses: {self.server_statuses}",
            f"status requests per poll cycle (server-side): max {self.max_requests_per_cycle:.2f} over "
            f"{len(self.polling)} flow(s); {sum(p.requests for p in self.polling)} requests in "
            f"{sum(p.cycles for p in self.polling)} cycles; unattributed searches {self.unattributed_searches}",
        ]
        if self.polling:
            cycles = sorted(p.cycles for p in self.polling)
            lines.append(f"  cycles per flow min/median/max {cycles[0]}/{cycles[len(cycles) // 2]}/{cycles[-1]}")
        lines.append(f"pilot: {self.pilot}")
        for name, peak in self.memory.items():
            lines.append(f"peak RSS {name}: own {peak['own'] / mib:.0f} MiB, tree {peak['tree'] / mib:.0f} MiB, "
                         f"{peak['children']} child process(es) at most, largest child tree "
                         f"{peak['largest_child_tree'] / mib:.0f} MiB")
        lines.append(f"flow runs started per worker: {self.runs_per_worker}")
        lines.append(f"Prefect database ({c['database']}): {self.database_bytes / mib:.1f} MiB")
        if self.warnings:
            lines.append("flow-run warnings:")
            lines += [f"  {w}" for w in self.warnings[:15]]
        if self.failures:
            lines.append("failures:")
            lines += [f"  {f}" for f in self.failures[:10]]
        return "\n".join(lines)


# --------------------------------------------------------------------------- the run


def parameters_for(flow: str, index: int, jobs: int, destination: Path) -> dict:
    """One run's parameters: `jobs` work items named after the run (so every job name is unique)."""
    if flow == "pipeline":
        return {"work_items": {"process": "GRID_SPLITTER", "inputs": {"items": jobs, "prefix": f"r{index:03d}"}},
                "destination": str(destination)}
    return {"job": {"executable": "echo", "arguments": "processing %s", "job_name": "scale-%s",
                    "parameters": [f"r{index:03d}-{k:04d}" for k in range(jobs)]},
            "destination": str(destination)}


def _git_commit(checkout: Path) -> str:
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True)
    dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (done.stdout.strip() or "?") + (" (+ uncommitted changes)" if dirty else "")


def _flow_jobs(stack: PrefectStack, flow_run_id: str) -> tuple[list[set[int]], dict]:
    """The job ids of each watch of a run (one 'final states' table each: the first wait, then
    one per resubmission round) and what its summary says."""
    artifacts = stack.artifacts(flow_run_id)
    watches: list[set[int]] = []
    summary = {"submitted": 0, "succeeded": 0, "resubmitted": 0, "failed": 0}
    for artifact in artifacts:
        data = artifact.get("data")
        if artifact["type"] == "table" and (artifact.get("description") or "") == "DIRAC jobs: final states":
            rows = json.loads(data) if isinstance(data, str) else data  # DataMiner's tables are left out
            ids = {int(m.group(1)) for row in rows or [] if (m := re.fullmatch(r"job (\d+)", str(row.get("job", ""))))}
            if ids:
                watches.append(ids)
        elif artifact["type"] == "markdown" and artifact.get("key") in ("dirac-batch", "egi-pipeline") \
                and isinstance(data, str):
            batch = re.search(r"(\d+) submitted, (\d+) resubmitted, (\d+) succeeded, (\d+) failed", data)
            grid = re.search(r"\| grid \| (\d+)/(\d+) DIRAC jobs done, (\d+) resubmitted, (\d+) failed", data)
            if batch:
                summary = dict(zip(("submitted", "resubmitted", "succeeded", "failed"), map(int, batch.groups())))
            elif grid:
                done, submitted, again, failed = map(int, grid.groups())
                summary = {"submitted": submitted, "succeeded": done, "resubmitted": again, "failed": failed}
    return watches, summary


def polling_per_flow(searches: list[dict], watches_of: dict[str, list[set[int]]]) -> tuple[list[FlowPolling], int]:
    """Status requests and poll cycles of each flow, from the server's record of searches.

    Each request is attributed to the watch (a flow's wait for one set of jobs) whose jobs it
    names. Within a watch, a request that asks again about a job already asked about in the
    current cycle starts a new cycle; requests about other jobs of the watch (what per-job
    polling would send) and later pages belong to the current one."""
    owner = {job: (run, n) for run, watches in watches_of.items() for n, ids in enumerate(watches) for job in ids}
    by_watch: dict[tuple[str, int], list[dict]] = {}
    unattributed = 0
    for search in sorted(searches, key=lambda s: s["t"]):
        if not search.get("ids"):
            continue  # not a status request for given jobs (e.g. the pilot's 'Status = Received')
        watches = {owner.get(j) for j in search["ids"]}
        if len(watches) != 1 or None in watches:
            unattributed += 1
            continue
        by_watch.setdefault(watches.pop(), []).append(search)
    result = []
    for run, watches in watches_of.items():
        requests = cycles = 0
        for n in range(len(watches)):
            asked: set[int] = set()
            for request in by_watch.get((run, n), []):
                requests += 1
                ids = set(request["ids"])
                if request.get("page", 1) > 1:
                    continue  # the next page of this cycle's search
                if not asked or ids & asked:
                    cycles += 1
                    asked = set(ids)
                else:
                    asked |= ids
        result.append(FlowPolling(run, sum(len(w) for w in watches), requests, cycles))
    return result, unattributed


def diracx_jobs(url: str, credentials: str) -> list[dict]:
    """Every job on the server (paged): id, name, status."""
    import asyncio

    from azure.core.exceptions import HttpResponseError
    from diracx.client.aio import AsyncDiracClient
    from diracx.core.preferences import DiracxPreferences

    async def everything() -> list[dict]:
        rows: list[dict] = []
        async with AsyncDiracClient(diracx_preferences=DiracxPreferences(url=url, credentials_path=credentials)) as api:
            page = 1
            while True:
                try:
                    found = await api.jobs.search(parameters=["JobID", "JobName", "Status"], search=[], page=page,
                                                  per_page=10_000)
                except HttpResponseError as error:
                    if error.status_code == 416:  # a page past the last (exactly 10,000 jobs): no more rows
                        return rows
                    raise
                rows += found
                if len(found) < 10_000:
                    return rows
                page += 1

    return asyncio.run(everything())


@contextlib.contextmanager
def _uninterrupted():
    """SIGINT and SIGTERM ignored for the duration (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"min": ordered[0], "median": ordered[len(ordered) // 2], "max": ordered[-1]}


def _timestamp(text: str | None) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else 0.0


def run_scale(config: ScaleConfig) -> ScaleReport:
    """Start everything, run, verify, stop everything; the report."""
    from prefect_egi.sandbox.stack import VO, Sandbox, save_blocks

    say = (lambda *a: print(time.strftime("%H:%M:%S"), *a, flush=True)) if config.progress else (lambda *a: None)
    if config.flow not in DEPLOYMENTS:
        raise ValueError(f"--flow: one of {sorted(DEPLOYMENTS)}")
    began = time.monotonic()
    owned = config.workdir is None
    root = Path(config.workdir or tempfile.mkdtemp(prefix="prefect-egi-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    # the peers' SQLite databases (DiracX's, PyWPS' log) on tmpfs when there is one: they fsync
    # every commit, and under many concurrent writers 'database is locked' comes sooner on disk
    shm = Path("/dev/shm")
    fast_dir = Path(tempfile.mkdtemp(prefix="prefect-egi-scale-peers-", dir=shm if shm.is_dir() else None))
    searches_file = root / "diracx-searches.jsonl"
    pilot_stats = root / "pilot-stats.json"
    postgres: PostgresCluster | None = None
    sandbox: Sandbox | None = None
    stack: PrefectStack | None = None
    sampler: MemorySampler | None = None
    try:
        if config.database == "postgres":
            bindir = ensure_postgres(say)
            postgres = PostgresCluster(bindir).start()
            say(f"PostgreSQL {bindir.parent.name} on 127.0.0.1:{postgres.port} ({postgres.root})")
        elif config.database != "sqlite":
            raise ValueError("--database: postgres or sqlite")

        checkout = Path(config.checkout).resolve()
        worker_env = dict(PREFECT_WORKER_QUERY_SECONDS="2",
                          PREFECT_WORKER_PREFETCH_SECONDS="10", PREFECT_WORKER_HEARTBEAT_SECONDS="15",
                          NO_PROXY="127.0.0.1,localhost")
        workers: list[tuple[str, Started]] = []
        started_stack: list[PrefectStack] = []

        def prefect_side() -> dict:
            """Server, pool, workers, deployment: needs none of the peers, so it starts meanwhile."""
            # PostgreSQL serves concurrent writers: a larger connection pool than Prefect's 5 + 10
            pool = dict(PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE="10",
                        PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW="20") if postgres else {}
            started_stack.append(start_server(root / "prefect", database_url=postgres.url if postgres else None,
                                              **pool))
            server = started_stack[0]
            server.create_work_pool(POOL)
            for number in range(1, config.workers + 1):
                name = f"scale-worker-{number}"
                workers.append((name, server.start_worker(POOL, wait=False, name=name, limit=config.limit(),
                                                          **worker_env)))
            return server.deploy(DEPLOYMENTS[config.flow], project_dir=checkout)

        say(f"starting the sandbox peers, and the Prefect server on {config.database}")
        prefect_thread = ThreadPoolExecutor(1)
        prefect_future = prefect_thread.submit(prefect_side)
        sandbox = Sandbox(root / "sandbox", hub=False, failure_rate=config.failure_rate, peer_args={
            "diracx": ("--workdir", str(fast_dir / "diracx"), "--record-searches", str(searches_file)),
            "dataminer": ("--workdir", str(fast_dir / "dataminer")),  # PyWPS' SQLite log DB too
            "pilot": ("--duration", str(config.pilot_duration), "--stats", str(pilot_stats))})
        try:
            info = sandbox.start()
        finally:
            with contextlib.suppress(Exception):
                prefect_future.exception()  # the server side ended, either way (its stop is below)
            prefect_thread.shutdown()
            stack = started_stack[0] if started_stack else None
        deployment = prefect_future.result()
        assert stack is not None
        say(f"DiracX {info['diracx']['url']}, Prefect {stack.url}: saving blocks, waiting for the workers")
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: stack.api_url}):
            save_blocks(info)
        for name, worker in workers:
            stack.wait_for_worker(worker, POOL, name=name)
        leaders: dict[str, Any] = {f"worker {name}": worker.process.pid for name, worker in workers}
        leaders["prefect server"] = stack.server.process.pid
        if postgres:
            leaders["postgresql"] = postgres.pids
        leaders["diracx peer"] = sandbox.peers["diracx"].process.pid
        leaders["pilot"] = sandbox.peers["pilot"].process.pid
        sampler = MemorySampler(leaders).start()
        setup = time.monotonic() - began

        say(f"creating {config.runs} run(s) of {deployment['name']} ({config.jobs_per_run} job(s) each)")
        first_created = time.monotonic()  # the workers start runs while the later ones are being created
        created = [stack.run_deployment(deployment["id"], parameters_for(
            config.flow, i, config.jobs_per_run, root / "outputs" / f"run-{i:03d}")) for i in range(config.runs)]
        ids = {run["id"] for run in created}
        started = time.monotonic()
        last_note = 0.0

        runs: list[dict] = []
        while True:  # until every run ended, or the timeout (then the report says which did not)
            runs = [r for r in stack.flow_runs_of(deployment["id"]) if r["id"] in ids]
            states = Counter((r.get("state") or {}).get("type", "?") for r in runs)
            ended = sum(n for s, n in states.items() if s in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"))
            if ended == len(ids) or time.monotonic() - started > config.timeout:
                break
            if time.monotonic() - last_note >= 30:
                last_note = time.monotonic()
                pilot = _read_json(pilot_stats)
                say(f"{time.monotonic() - started:.0f} s: {dict(states)}; pilot {pilot.get('Done', 0)} done, "
                    f"{pilot.get('in_flight', 0)} job(s) in flight")
            time.sleep(5)
        wall = time.monotonic() - first_created
        sampler.stop()
        say(f"{ended}/{len(ids)} run(s) ended after {wall:.0f} s; verifying")
        report = _verify(config, stack, runs, info, searches_file, pilot_stats, sampler, wall, setup, postgres,
                         checkout, VO)
        for name, worker in workers:
            text = worker.log.read_text(errors="replace") if worker.log.exists() else ""
            report.runs_per_worker[name] = len(re.findall(r"Flow run '[^']+' submitted to infrastructure", text))
        return report
    finally:
        say("stopping everything")
        with _uninterrupted():  # a second Ctrl-C must not leave half the stack running
            for step in (sampler and sampler.stop, stack and stack.stop, sandbox and sandbox.stop,
                         postgres and postgres.stop):
                if step:
                    try:
                        step()
                    except BaseException as error:  # noqa: BLE001 - the other steps must run
                        print(f"cleanup: {step.__qualname__}: {type(error).__name__}: {error}", file=sys.stderr)
        if config.keep:  # the peers' own logs, for a look afterwards
            for log in [*fast_dir.glob("diracx/logs/*.log"), *fast_dir.glob("dataminer/*.log")]:
                with contextlib.suppress(OSError):
                    (root / "peer-logs").mkdir(exist_ok=True)
                    shutil.copy2(log, root / "peer-logs" / f"{log.parent.name}-{log.name}")
        shutil.rmtree(fast_dir, ignore_errors=True)
        if owned and not config.keep:
            shutil.rmtree(root, ignore_errors=True)
        elif config.keep:
            say(f"kept {root}")


def _verify(config: ScaleConfig, stack: PrefectStack, runs: list[dict], info: dict, searches_file: Path,
            pilot_stats: Path, sampler: MemorySampler, wall: float, setup: float,
            postgres: PostgresCluster | None, checkout: Path, vo: str) -> ScaleReport:
    states = Counter(r["state"]["type"] for r in runs)
    jobs_of: dict[str, list[set[int]]] = {}
    succeeded = resubmitted = 0
    failures: list[str] = []
    durations = []
    for run in runs:
        jobs_of[run["id"]], summary = _flow_jobs(stack, run["id"])
        succeeded += summary["succeeded"]
        resubmitted += summary["resubmitted"]
        if run.get("end_time"):
            durations.append(_timestamp(run["end_time"]) - _timestamp(run.get("created")))
        if run["state"]["type"] != "COMPLETED":
            failures.append(f"{run['name']}: {run['state']['type']} {run['state'].get('message') or ''}"[:400])
    warnings: Counter = Counter()
    for run in runs:
        for line in stack.api("POST", "/logs/filter", json={
                "logs": {"flow_run_id": {"any_": [run["id"]]}, "level": {"ge_": 30}}, "limit": 200}):
            text = re.sub(r"req-[0-9a-f-]+|[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", line["message"].splitlines()[0])
            warnings[re.sub(r"\d+", "N", text)[:200]] += 1
    diracx = info["diracx"]
    rows = diracx_jobs(diracx["url"], diracx["vos"][vo]["user"])
    statuses = Counter(str(r.get("Status")) for r in rows)
    done_names = Counter(r.get("JobName") for r in rows if r.get("Status") == "Done")
    expected = config.runs * config.jobs_per_run + resubmitted
    work_items = config.runs * config.jobs_per_run
    searches = [json.loads(line) for line in searches_file.read_text().splitlines() if line.strip()] \
        if searches_file.exists() else []
    polling, unattributed = polling_per_flow(searches, jobs_of)
    pilot = _read_json(pilot_stats)
    if postgres:
        size = postgres.size()
    else:
        size = sum(p.stat().st_size for p in stack.database.parent.glob(stack.database.name + "*"))
    config_view = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    config_view.update(worker_limit=config.limit(), commit=_git_commit(checkout))
    return ScaleReport(
        config=config_view, runs=dict(states), expected_jobs=expected, server_jobs=len(rows),
        server_statuses=dict(statuses), duplicates=len(rows) - expected,
        duplicate_names=sum(1 for n in done_names.values() if n > 1),
        lost=max(0, work_items - sum(1 for n in done_names.values() if n >= 1)), resubmitted=resubmitted,
        flows_succeeded_jobs=succeeded, polling=polling, unattributed_searches=unattributed, pilot=pilot,
        memory={name: asdict(peak) for name, peak in sampler.peaks.items()}, wall_seconds=wall,
        run_seconds=_percentiles(durations), setup_seconds=setup, database_bytes=size,
        warnings=[f"{n}× {text}" for text, n in warnings.most_common()], failures=failures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--jobs-per-run", type=int, default=200)
    parser.add_argument("--flow", choices=sorted(DEPLOYMENTS), default="dirac-batch")
    parser.add_argument("--pilot-duration", type=float, default=1.0, help="seconds each DIRAC job runs")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="of job runs (the flows resubmit)")
    parser.add_argument("--worker-limit", type=int, help="flow runs at once per worker (default runs/workers)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for all runs to end")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary directory)")
    parser.add_argument("--checkout", type=Path, default=REPO, help="the project whose prefect.yaml is deployed (default: this one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, help="also write the report here as JSON")
    args = parser.parse_args(argv)
    config = ScaleConfig(database=args.database, workers=args.workers, runs=args.runs,
                         jobs_per_run=args.jobs_per_run, flow=args.flow, pilot_duration=args.pilot_duration,
                         failure_rate=args.failure_rate, worker_limit=args.worker_limit, timeout=args.timeout,
                         workdir=args.workdir, checkout=args.checkout, keep=args.keep)

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM):  # explicit: a background job may inherit SIGINT ignored
        signal.signal(sig, interrupted)
    try:
        report = run_scale(config)
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    print()
    print(report.text())
    if args.json:
        payload = asdict(report) | {"max_requests_per_cycle": report.max_requests_per_cycle}
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    ok = (report.completed == config.runs and report.duplicates == 0 and report.lost == 0
          and report.max_requests_per_cycle <= 1.0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
