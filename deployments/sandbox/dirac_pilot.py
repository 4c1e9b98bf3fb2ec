"""A small DIRAC site for the local DiracX: a pilot that really runs the jobs, as DIRAC's
optimizers, pilot (JobAgent) and JobWrapper do.

Each cycle (one client for the pilot's life, one write request to DiracX at a time):

1. plays the optimizers: Received → Checking ("JobScheduling") → Waiting ("Pilot Agent
   Submission"), in bulk;
2. one bulk heartbeat for all its running jobs; a "Kill" command in the answer (DiracX sets
   one when a job is set Killed or Deleted) terminates the job's process group (SIGTERM, then
   SIGKILL after a grace period); such a job is never reported again (it stays Killed);
3. matches Waiting jobs (optionally of one `--job-group`) whose JDL `Site` allows this site
   (`--site`, default LCG.Sandbox.local) and whose `BannedSites` do not name it, up to
   `--slots` jobs at a time: Matched ("Assigned") → Running ("Initializing Job"), in bulk.

The JDL comes from the server's JobDB (diracx-client 0.7 has no call that returns it), read
with diracx-db at `--job-db`, and parsed with the project's JDL parser. Per job, as the
JobWrapper does: a fresh working directory; every `SB:` input sandbox downloaded through
DiracX AS THE JOB'S OWNER (a 1 h NormalUser token minted with the server's key, `--keystore`,
for the owner found in the Registry, `--registry`) and unpacked there (file modes kept); an
`LFN:` entry (needs grid storage) fails the job ("Failed Downloading InputSandbox LFN(s)");
`Executable` (made executable when it is a file of the sandbox) run with `Arguments`
(shell-split), `StdOutput`/`StdError` captured, `CPUTime` as RLIMIT_CPU ("Job has reached
the CPU limit of the queue"); the "worker node software" is the pilot's own environment (the
directory of its Python first on PATH, as CVMFS provides it, plus `--env KEY=VALUE`), without
the pilot's credentials. At the end: Completing ("Uploading Output Sandbox"), the files of
`OutputSandbox` that exist (glob patterns allowed) packed, uploaded and assigned as the owner,
then Done ("Execution Complete") or Failed ("Application Finished With Errors"), with the
ApplicationStatus "Exit code N" or "Killed by signal NAME". Minor statuses are DIRAC's
wording (DIRAC.WorkloadManagementSystem.Client.JobMinorStatus). No transition is forced:
DiracX applies DIRAC's state machine, so a Killed job can never become Done.

Test knobs: `--duration` (a job stays Running at least this long), `--failure-rate` and
`--seed` (and `fail_first` in-process): a failing payload (`false`, exit 1) replaces the
job's, so the failure is a real one.

Stand-alone (the sandbox runs it so): `python dirac_pilot.py --url URL --credentials
PILOT.json --keystore JWKS --job-db URL --registry CS.yml --workdir DIR [--site S]
[--slots 8] [--job-group G] [--env K=V] [--duration 1] [--failure-rate 0.2] [--seed 1]
[--stats FILE]` prints one JSON line when ready and runs until terminated.

Throughput (it must keep up with 10,000 jobs for the scale test): processes spawned
concurrently (asyncio subprocesses), statuses written in bulk (chunks of 100, all jobs that
reached a step since the last write in one request), heartbeats in one request per cycle,
the JDLs of a cycle's candidates in one database read, output sandboxes built in memory (tar +
zstd level 3) — but one write request to DiracX at a time (its SQLite takes one writer),
failed requests tried again (sandbox writes have a lock of their own: they go to another
SQLite file). Measured on 2 cores (DiracX on local disk; 1,000
`echo "job %s"` jobs, `--duration 0`, 32 slots, each job with its own working directory,
process and output sandbox uploaded as its owner): 15.5 jobs/s with the machine to itself
(load ~2 from the pilot and DiracX), 11.1 jobs/s beside another test run — against ~20 jobs/s
for the earlier pilot that only moved statuses and uploaded a made-up file. What bounds it:
the per-job sandbox writes (initiate + assign, one at a time on SQLite) and the cycle that
refills the free slots (soon after a job ends, at most 0.2 s apart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import glob
import hashlib
import io
import json
import os
import random
import re
import resource
import shlex
import signal
import sys
import tarfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: measured jobs per second on 1,000 trivial jobs (see the module's text)
MEASURED = "15.5 jobs/s: 1,000 echo jobs, 32 slots, 2 cores (11.1 jobs/s with other work on them)"

SITE = "LCG.Sandbox.local"
STATUS_CHUNK = 100  # jobs per set_job_statuses call: short write transactions on the server's SQLite
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
OWNER_TOKEN_LIFETIME = 3600
FAILING_PAYLOAD = ["false"]  # what fail_first / failure_rate run instead of the job's executable

# DIRAC's wording: the optimizer's name, JobMinorStatus constants and the Watchdog's CPU message
JOB_SCHEDULING = "JobScheduling"
PILOT_AGENT_SUBMISSION = "Pilot Agent Submission"
ASSIGNED = "Assigned"
JOB_INITIALIZATION = "Initializing Job"
FAILED_DOWNLOADING_INPUT_SANDBOX = "Failed Downloading InputSandbox"
FAILED_DOWNLOADING_INPUT_SANDBOX_LFN = "Failed Downloading InputSandbox LFN(s)"
UPLOADING_OUTPUT_SANDBOX = "Uploading Output Sandbox"
EXEC_COMPLETE = "Execution Complete"
APP_ERRORS = "Application Finished With Errors"
JOB_EXCEEDED_CPU = "Job has reached the CPU limit of the queue"

#: the pilot's own walk for status-only tests (`Pilot.walk`, `Pilot.run`)
WALK = ["Checking", "Waiting", "Matched", "Running", "Completing"]
#: environment variables a job never inherits from the pilot: its DiracX credentials and server
PRIVATE_ENV = re.compile(r"^(DIRACX_|DIRAC_)|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


class Pilot:
    """The pilot's identity on one DiracX server: its (JobAdministrator) credentials, and what it
    needs to act as a job's owner (the server's signing keys and Registry) and to read JDLs."""

    def __init__(self, url: str, credentials: str | Path, keystore: str | Path | None = None,
                 job_db: str | None = None, registry: str | Path | None = None, issuer: str | None = None):
        self.url = url
        self.credentials = Path(credentials)
        self.keystore = Path(keystore) if keystore else None
        self.job_db = job_db
        self.registry = Path(registry) if registry else None
        self.issuer = issuer or url

    def client(self, credentials: str | Path | None = None) -> Any:
        from diracx.client.aio import AsyncDiracClient
        from diracx.core.preferences import DiracxPreferences

        return AsyncDiracClient(diracx_preferences=DiracxPreferences(
            url=self.url, credentials_path=Path(credentials or self.credentials)))

    async def set_status(self, ids: Iterable[int | str], status: str, minor: str = "pilot", api: Any = None,
                         lock: asyncio.Lock | None = None, application: str | None = None,
                         source: str = "Pilot") -> dict[int, str | None]:
        """Report `status` for the jobs (chunks of STATUS_CHUNK; never forced: DiracX keeps a job
        where DIRAC's state machine says). Returns job id → the status the server holds after
        (None when it did not say). `api`: an open client; `lock`: held for each chunk."""
        if api is None:
            async with self.client() as api:
                return await self.set_status(ids, status, minor, api, lock, application, source)
        ids = [str(j) for j in ids]
        after: dict[int, str | None] = {}
        for start in range(0, len(ids), STATUS_CHUNK):
            when = datetime.now(timezone.utc).isoformat()
            update = {"Status": status, "MinorStatus": minor, "Source": source}
            if application is not None:
                update["ApplicationStatus"] = application
            body = {j: {when: update} for j in ids[start:start + STATUS_CHUNK]}
            async with lock or contextlib.nullcontext():
                result = await _again(lambda body=body: api.jobs.set_job_statuses(body))
            after.update(_statuses_after(result, body))
        return after

    async def walk(self, ids: Iterable[int | str], to: str, minor: str = "pilot", api: Any = None,
                   application: str | None = None) -> dict[int, str | None]:
        """Walk Received jobs along DIRAC's usual path up to `to` (Checking, Waiting, Matched,
        Running, Completing, then Done/Failed/Completed/Killed …), one legal step at a time."""
        if api is None:
            async with self.client() as api:
                return await self.walk(ids, to, minor, api, application)
        ids = list(ids)
        steps = WALK[:WALK.index(to)] if to in WALK else WALK
        for step in steps:
            await self.set_status(ids, step, "pilot", api)
        return await self.set_status(ids, to, minor, api, application=application)

    async def run(self, ids: list[int], start_after: float = 0.3, duration: float = 1.0,
                  fail: Iterable[int] = ()) -> None:
        """Status only, no payload (for tests of the waiting side): start every job after
        `start_after`, end it `duration` later (Failed for `fail`), along DIRAC's state machine."""
        failing = {int(f) for f in fail}
        await asyncio.sleep(start_after)
        async with self.client() as api:
            for status in WALK[:-1]:
                await self.set_status(ids, status, api=api)
            await asyncio.sleep(duration)
            await self.set_status(ids, "Completing", UPLOADING_OUTPUT_SANDBOX, api=api)
            done = [j for j in ids if int(j) not in failing]
            if done:
                await self.set_status(done, "Done", EXEC_COMPLETE, api=api, application="Exit code 0")
            if failing:
                await self.set_status(sorted(failing), "Failed", APP_ERRORS, api=api, application="Exit code 1")

    def run_in_background(self, ids: list[int], **kwargs: Any) -> threading.Thread:
        thread = threading.Thread(target=lambda: asyncio.run(self.run(ids, **kwargs)), daemon=True)
        thread.start()
        return thread

    # -- acting as a job's owner ------------------------------------------------------------------

    def owner_sub(self, vo: str, user: str) -> str:
        """The owner's subject, from the Registry of the server's configuration."""
        import yaml

        if self.registry is None:
            raise RuntimeError("the pilot needs --registry to act as a job's owner")
        users = (yaml.safe_load(self.registry.read_text()).get("Registry", {}).get(vo, {}).get("Users") or {})
        for sub, about in users.items():
            if about.get("PreferedUsername") == user:
                return sub
        raise RuntimeError(f"{user} is not in the Registry of {vo}")

    def owner_credentials(self, folder: Path, vo: str, group: str, user: str) -> Path:
        """A DiracX credentials file holding a fresh 1 h NormalUser token of the owner (0600)."""
        from prefect_egi.sandbox.diracx_peer import credentials_file, mint

        if self.keystore is None:
            raise RuntimeError("the pilot needs --keystore to act as a job's owner")
        token = mint(self.keystore, self.issuer, vo, group, user, self.owner_sub(vo, user), ["NormalUser"],
                     OWNER_TOKEN_LIFETIME)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return credentials_file(folder / f"owner-{vo}-{group}-{user}.json", token, OWNER_TOKEN_LIFETIME)


def _statuses_after(result: Any, body: dict[str, Any]) -> dict[int, str | None]:
    success = getattr(result, "success", None)
    if success is None and isinstance(result, (tuple, list)):
        success = result[0]
    after: dict[int, str | None] = {}
    for job in body:
        row = (success or {}).get(job) if isinstance(success, dict) else None
        status = getattr(row, "status", None) if row is not None else None
        if status is None and isinstance(row, dict):
            status = row.get("Status") or row.get("status")
        after[int(job)] = str(status) if status is not None else None
    return after


@dataclass
class Job:
    """One matched job on this site."""

    id: int
    owner: str
    group: str
    vo: str
    jdl: dict[str, Any]
    fails: bool = False
    workdir: Path | None = None
    process: Any = None
    killed: str | None = None  # why the server killed it
    executing: bool = True  # until the payload (and its hold) ended: heartbeats are sent
    started: float = field(default_factory=time.monotonic)


def _listed(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [str(i) for i in items if str(i).strip()]


def read_jdl(text: str) -> dict[str, Any]:
    """The attributes of a JDL as DiracX stores it, with the project's parser (the nested
    `JobRequirements = [ … ];` ClassAd the server adds is left out: the JobWrapper does not need it)."""
    from DIRACCommon.WorkloadManagementSystem.DB.JobDBUtils import extractJDL

    from prefect_egi.tasks.dirac.jdl import parse_jdl

    plain = extractJDL(text).strip()
    if plain.startswith("[") and plain.endswith("]"):
        plain = plain[1:-1]
    plain = re.sub(r"JobRequirements\s*=\s*\[[^\[\]]*\]\s*;", "", plain)
    return parse_jdl(plain)


class BatchPilot:
    """The site: runs every Waiting job it matches (of one JobGroup, or all), see the module's text.
    Failures for tests: `fail_first(job_id)` jobs fail on their first run only, and any run fails
    with probability `failure_rate` (seeded, so a run is repeatable): the payload becomes `false`."""

    def __init__(self, pilot: Pilot, job_group: str | None, workdir: Path, fail_first: Any = lambda job_id: False,
                 duration: float = 0.3, failure_rate: float = 0.0, seed: int | None = None,
                 uploads: int = 8, site: str = SITE, slots: int = 8, env: dict[str, str] | None = None,
                 kill_grace: float = KILL_GRACE):
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1")
        self.pilot, self.job_group, self.workdir = pilot, job_group, Path(workdir)
        self.fail_first, self.duration, self.failure_rate = fail_first, duration, failure_rate
        self.uploads, self.site, self.slots, self.extra_env = uploads, site, slots, dict(env or {})
        self.kill_grace = kill_grace
        self.random = random.Random(seed)
        self.runs: dict[int, int] = {}
        self.outcomes: dict[str, int] = {"Done": 0, "Failed": 0, "Killed": 0}
        self.cycles = 0
        self.busiest = 0  # most jobs matched by one cycle
        self.heartbeats = 0  # heartbeat requests sent
        self.started_at: float | None = None
        self.last_end: float | None = None
        self.jobs: dict[int, Job] = {}  # matched, not yet ended
        self._not_here: set[int] = set()  # Waiting jobs this site never matches
        self._jdl_cache: dict[int, dict[str, Any] | None] = {}  # Waiting jobs read, not yet matched
        self._sandbox_lock: asyncio.Lock | None = None
        self._freed: asyncio.Event | None = None  # set when a job ends: the loop's next cycle comes sooner
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._batches: set[asyncio.Task] = set()
        self._write_lock: asyncio.Lock | None = None
        self._upload_limit: asyncio.Semaphore | None = None
        self._owners: dict[tuple[str, str, str], tuple[Any, float]] = {}
        self._owners_lock: asyncio.Lock | None = None
        self._db: Any = None
        self._pending: dict[int, tuple[str, str, str | None, asyncio.Future]] = {}
        self._flusher: asyncio.Task | None = None
        self._http: Any = None

    def _writer(self) -> asyncio.Lock:
        """One write request to the server at a time from this pilot, however many jobs run:
        DiracX's SQLite takes one writer at a time, and the flows' submissions must get their
        turn between the pilot's short writes."""
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        return self._write_lock

    def _sandbox_writer(self) -> asyncio.Lock:
        """One sandbox write at a time: those go to DiracX's SandboxMetadataDB, another SQLite file
        than the JobDB the status writes take (SQLite locks a file, not a server), so the two
        kinds of write go alongside each other."""
        if self._sandbox_lock is None:
            self._sandbox_lock = asyncio.Lock()
        return self._sandbox_lock

    def _fails(self, job_id: int) -> bool:
        first = self.runs.get(job_id, 0) == 0 and self.fail_first(job_id)
        return bool(first) or self.random.random() < self.failure_rate

    # -- the cycle ------------------------------------------------------------------------------

    async def _cycle(self, api: Any = None) -> None:
        if api is None:  # one cycle on its own (tests); the loop passes its open client
            self._write_lock, self._sandbox_lock = asyncio.Lock(), asyncio.Lock()  # of this event loop
            async with self._resources(), self.pilot.client() as api:
                self._api = api
                await self._cycle(api)
                await self.drain()
            return
        self._api = api
        self.cycles += 1
        await self._optimize(api)
        await self._heartbeat(api)
        await self._match(api)

    def _search(self, status: str) -> list[dict[str, Any]]:
        search = [{"parameter": "Status", "operator": "eq", "value": status}]
        if self.job_group:
            search.append({"parameter": "JobGroup", "operator": "eq", "value": self.job_group})
        return search

    async def _optimize(self, api: Any) -> None:
        """The optimizers' part: Received → Checking → Waiting."""
        rows = await api.jobs.search(parameters=["JobID"], per_page=10_000, search=self._search("Received"))
        ids = sorted(int(r["JobID"]) for r in rows)
        if not ids:
            return
        after = await self.pilot.set_status(ids, "Checking", JOB_SCHEDULING, api=api, lock=self._writer(),
                                            source="JobScheduling")
        checked = [j for j in ids if after.get(j) == "Checking"]
        if checked:
            await self.pilot.set_status(checked, "Waiting", PILOT_AGENT_SUBMISSION, api=api, lock=self._writer(),
                                        source="JobScheduling")

    def _for_this_site(self, jdl: dict[str, Any]) -> bool:
        sites = [s for s in _listed(jdl.get("Site")) if s.upper() != "ANY"]
        return (not sites or self.site in sites) and self.site not in _listed(jdl.get("BannedSites"))

    async def _match(self, api: Any) -> None:
        """The matcher's and the JobAgent's part: Waiting jobs for this site, up to the free slots,
        → Matched → Running; each then runs as its own task."""
        free = self.slots - len(self.jobs)
        if free <= 0:
            return
        rows = await api.jobs.search(parameters=["JobID", "Owner", "OwnerGroup", "VO"], per_page=10_000,
                                     search=self._search("Waiting"))
        candidates = {int(r["JobID"]): r for r in rows
                      if int(r["JobID"]) not in self._not_here and int(r["JobID"]) not in self.jobs}
        if not candidates:
            return
        chosen: list[Job] = []
        order = sorted(candidates)
        step = max(2 * free, 100)
        for start in range(0, len(order), step):  # JDLs in a few reads, until the free slots are taken
            ids = order[start:start + step]
            unread = [j for j in ids if j not in self._jdl_cache]
            if unread:
                texts = await self._jdls(unread)
                for job_id in unread:
                    text = texts.get(job_id)
                    try:
                        self._jdl_cache[job_id] = read_jdl(text) if text else None
                    except ValueError as exc:
                        print(f"pilot: job {job_id}: its JDL does not parse ({exc})", file=sys.stderr)
                        self._jdl_cache[job_id] = None
            for job_id in ids:
                jdl = self._jdl_cache.get(job_id)
                if jdl is None or not self._for_this_site(jdl):
                    self._not_here.add(job_id)
                    self._jdl_cache.pop(job_id, None)
                    continue
                row = candidates[job_id]
                chosen.append(Job(job_id, row["Owner"], row["OwnerGroup"], row["VO"], jdl))
                if len(chosen) == free:
                    break
            if len(chosen) == free:
                break
        for job in chosen:
            self._jdl_cache.pop(job.id, None)
        if not chosen:
            return
        ids = [j.id for j in chosen]
        after = await self.pilot.set_status(ids, "Matched", ASSIGNED, api=api, lock=self._writer(), source="Matcher")
        matched = [j for j in ids if after.get(j) == "Matched"]
        if not matched:
            return
        after = await self.pilot.set_status(matched, "Running", JOB_INITIALIZATION, api=api, lock=self._writer(),
                                            source="JobWrapper")
        running = [j for j in chosen if after.get(j.id) == "Running"]
        if self.started_at is None:
            self.started_at = time.monotonic()
        self.busiest = max(self.busiest, len(running))
        for job in running:
            job.fails = self._fails(job.id)
            self.jobs[job.id] = job
            task = asyncio.create_task(self._run(api, job))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _jdls(self, ids: list[int]) -> dict[int, str]:
        if self._db is None:
            raise RuntimeError("the pilot needs --job-db to read the jobs' JDLs")

        async def read() -> dict[int, str]:
            async with self._db as db:
                return await db.get_job_jdls(ids)

        return await _again(read)

    async def _heartbeat(self, api: Any) -> None:
        """One heartbeat request for every running job; the server's Kill commands are obeyed."""
        alive = [j for j, job in self.jobs.items() if job.killed is None and job.executing]
        if not alive:
            return
        from diracx.client.models import HeartbeatData

        # a sign of life only (no job parameters: with them, DiracX 0.7 on SQLite was seen to hold
        # its JobDB locked); the Watchdog's beats end with the payload, as DIRAC's do
        body = {str(j): HeartbeatData() for j in alive}
        try:
            async with self._writer():
                commands = await api.jobs.add_heartbeat(body)
        except Exception as exc:  # a job the server no longer has, a restart: the next cycle tries again
            print(f"pilot: heartbeat failed ({type(exc).__name__}: {str(exc)[:200]})", file=sys.stderr)
            return
        self.heartbeats += 1
        for command in commands or []:
            if command.command == "Kill" and command.job_id in self.jobs:
                self.kill(command.job_id, "Kill command from the server")

    def kill(self, job_id: int, why: str) -> None:
        """Terminate the job's process group: SIGTERM, then SIGKILL after `kill_grace` seconds."""
        job = self.jobs.get(job_id)
        if job is None or job.killed:
            return
        job.killed = why
        process = job.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)

        async def hard() -> None:
            await asyncio.sleep(self.kill_grace)
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)

        task = asyncio.create_task(hard())
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    # -- one job: the JobWrapper ---------------------------------------------------------------

    async def _run(self, api: Any, job: Job) -> None:
        try:
            await self._wrap(api, job)
        except Exception as exc:  # this job stays where it is; say so, keep the pilot alive
            print(f"pilot: job {job.id} stuck ({type(exc).__name__}: {exc})", file=sys.stderr)
        finally:
            self.jobs.pop(job.id, None)
            self.runs[job.id] = self.runs.get(job.id, 0) + 1
            self.last_end = time.monotonic()
            if self._freed is not None:
                self._freed.set()

    async def _wrap(self, api: Any, job: Job) -> None:
        workdir = self.workdir / str(job.id)
        n = 1
        while workdir.exists():  # a rescheduled job runs again: a fresh directory each time
            n += 1
            workdir = self.workdir / f"{job.id}.{n}"
        workdir.mkdir(parents=True)
        job.workdir = workdir
        inputs = _listed(job.jdl.get("InputSandbox"))
        if any(i.upper().startswith("LFN:") for i in inputs):
            return await self._end(job, "Failed", FAILED_DOWNLOADING_INPUT_SANDBOX_LFN, None, outputs=False)
        for pfn in (i for i in inputs if i.startswith("SB:")):
            try:
                await self._download(job, pfn, workdir)
            except Exception as exc:
                print(f"pilot: job {job.id}: input sandbox {pfn}: {type(exc).__name__}: {exc}", file=sys.stderr)
                return await self._end(job, "Failed", FAILED_DOWNLOADING_INPUT_SANDBOX, None, outputs=False)
        if job.killed:
            return self._count_killed(job)
        code = await self._execute(job, workdir)
        held = self.duration - (time.monotonic() - job.started)
        if held > 0 and not job.killed:
            await asyncio.sleep(held)
        job.executing = False
        if job.killed:
            return self._count_killed(job)
        if code >= 0:
            application = f"Exit code {code}"
        else:
            application = f"Killed by signal {signal.Signals(-code).name}"
        cpu_limited = code in (-signal.SIGXCPU, -signal.SIGKILL) and job.jdl.get("CPUTime") is not None
        if code == 0:
            await self._end(job, "Done", EXEC_COMPLETE, application)
        else:
            await self._end(job, "Failed", JOB_EXCEEDED_CPU if cpu_limited else APP_ERRORS, application)

    def _count_killed(self, job: Job) -> None:
        self.outcomes["Killed"] += 1

    async def _end(self, job: Job, status: str, minor: str, application: str | None, outputs: bool = True) -> None:
        """Completing, the output sandbox as the owner, then the final status (each report bulked
        with the other jobs'). A job the server killed meanwhile is left as it is."""
        if outputs:
            if await self.report(job.id, "Completing", UPLOADING_OUTPUT_SANDBOX, application) != "Completing":
                return self._count_killed(job)
            try:
                await self.attach_outputs([job.id])
            except Exception as exc:
                print(f"pilot: job {job.id}: output sandbox: {type(exc).__name__}: {exc}", file=sys.stderr)
                status, minor = "Failed", UPLOADING_OUTPUT_SANDBOX
        if await self.report(job.id, status, minor, application) == status:
            self.outcomes[status] += 1
        else:
            self._count_killed(job)

    async def report(self, job_id: int, status: str, minor: str, application: str | None) -> str | None:
        """A status for one job, sent with every other job's that reached a step meanwhile (one
        request per chunk). Returns the status the server holds after."""
        future = asyncio.get_running_loop().create_future()
        self._pending[job_id] = (status, minor, application, future)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            await asyncio.sleep(0.05)  # let the other jobs of this moment join the request
            pending, self._pending = self._pending, {}
            groups: dict[tuple[str, str, str | None], list[int]] = {}
            for job_id, (status, minor, application, _) in pending.items():
                groups.setdefault((status, minor, application), []).append(job_id)
            for (status, minor, application), ids in groups.items():
                try:
                    after = await self.pilot.set_status(ids, status, minor, api=self._api, lock=self._writer(),
                                                        application=application, source="JobWrapper")
                except Exception as exc:
                    for job_id in ids:
                        if not pending[job_id][3].done():
                            pending[job_id][3].set_exception(exc)
                    continue
                for job_id in ids:
                    if not pending[job_id][3].done():
                        pending[job_id][3].set_result(after.get(job_id))

    # -- owners, sandboxes, the payload ---------------------------------------------------------

    async def _owner(self, job: Job) -> Any:
        """An open client acting as the job's owner (a fresh token before the last one ends)."""
        key = (job.vo, job.group, job.owner)
        if self._owners_lock is None:
            self._owners_lock = asyncio.Lock()
        async with self._owners_lock:  # one client per owner, however many of their jobs end at once
            client, minted = self._owners.get(key, (None, 0.0))
            if client is None or time.monotonic() - minted > OWNER_TOKEN_LIFETIME - 600:
                if client is not None:
                    await _close(client)
                path = self.pilot.owner_credentials(self.workdir / ".owners", *key)
                client = await self.pilot.client(path).__aenter__()
                self._owners[key] = (client, time.monotonic())
            return client

    async def _download(self, job: Job, pfn: str, workdir: Path) -> None:
        owner = await self._owner(job)
        answer = await _again(lambda: owner.jobs.get_sandbox_file(pfn=pfn))
        response = await self._http.get(answer.url)
        response.raise_for_status()
        await asyncio.to_thread(_unpack, response.content, workdir)

    def _command(self, job: Job, workdir: Path) -> list[str]:
        if job.fails:
            return list(FAILING_PAYLOAD)
        executable = str(job.jdl.get("Executable", "")).strip()
        local = workdir / executable
        if executable and "/" not in executable.lstrip("./") and local.is_file():
            local.chmod(local.stat().st_mode | 0o755)  # as DIRAC's JobWrapper does
            executable = str(local)
        return [executable, *shlex.split(str(job.jdl.get("Arguments", "")))]

    def _environment(self, job: Job, workdir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not PRIVATE_ENV.search(k)}
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
        env.update(self.extra_env)
        env.update({"DIRACJOBID": str(job.id), "JOBID": str(job.id), "DIRACSITE": self.site, "PWD": str(workdir)})
        return env

    async def _execute(self, job: Job, workdir: Path) -> int:
        """Run the payload in `workdir`; its exit code (negative: the signal that ended it)."""
        command = self._command(job, workdir)
        cpu = job.jdl.get("CPUTime")
        limit = int(cpu) if isinstance(cpu, (int, float)) and cpu > 0 else None

        def limits() -> None:  # in the child, before exec
            if limit:
                resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 2))

        stdout = workdir / str(job.jdl.get("StdOutput") or "std.out")
        stderr = workdir / str(job.jdl.get("StdError") or "std.err")
        with stdout.open("wb") as out, (out if stderr == stdout else stderr.open("wb")) as err:
            try:
                job.process = await asyncio.create_subprocess_exec(
                    *command, cwd=workdir, env=self._environment(job, workdir), stdin=asyncio.subprocess.DEVNULL,
                    stdout=out, stderr=err, start_new_session=True, preexec_fn=limits)
            except OSError as exc:  # as a shell says it
                err.write(f"{command[0]}: {exc.strerror or exc}\n".encode())
                return 127 if isinstance(exc, FileNotFoundError) else 126
        if job.killed:  # the kill came while it started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.process.pid, signal.SIGTERM)
        return await job.process.wait()

    async def attach_outputs(self, ids: list[int], api: Any = None) -> None:
        """Pack each job's OutputSandbox files that exist, upload and assign them as its owner
        (`uploads` at a time; the two server writes one sandbox write at a time, the upload to S3
        alongside)."""
        from diracx.client.models import SandboxInfo

        async def one(job_id: int) -> None:
            job = self.jobs[job_id]
            files = _outputs(job.workdir, _listed(job.jdl.get("OutputSandbox")))
            if not files:
                return
            archive = await asyncio.to_thread(_sandbox_archive, job.workdir, files)
            info = SandboxInfo(checksum_algorithm="sha256", checksum=hashlib.sha256(archive).hexdigest(),
                               size=len(archive), format="tar.zst")
            owner = await self._owner(job)

            async def attach() -> None:
                async with self._sandbox_writer():
                    upload = await owner.jobs.initiate_sandbox_upload(info)
                if upload.url:
                    sent = await self._http.post(upload.url, data=upload.fields, files={"file": ("file", archive)})
                    sent.raise_for_status()
                async with self._sandbox_writer():
                    await owner.jobs.assign_sandbox_to_job(job_id, json.dumps(upload.pfn))

            async with self._upload_limit:
                await _again(attach)

        await asyncio.gather(*(one(j) for j in ids))

    async def drain(self) -> None:
        """Wait for every job in flight (heartbeats go on meanwhile when called by `_cycle`)."""
        while self._batches:
            done, _ = await asyncio.wait(list(self._batches), timeout=1.0)
            if self.jobs and getattr(self, "_api", None) is not None:
                await self._heartbeat(self._api)

    @contextlib.asynccontextmanager
    async def _resources(self):
        """The JobDB engine, the HTTP client for the sandbox store, the owners' clients."""
        import httpx2

        self._upload_limit = asyncio.Semaphore(self.uploads)
        self._owners_lock = asyncio.Lock()
        self._pending, self._flusher = {}, None
        async with contextlib.AsyncExitStack() as stack:
            if self.pilot.job_db:
                from diracx.db.sql import JobDB

                self._db = JobDB(self.pilot.job_db)
                await stack.enter_async_context(self._db.engine_context())
            self._http = await stack.enter_async_context(httpx2.AsyncClient(timeout=60))
            try:
                yield
            finally:
                for client, _ in self._owners.values():
                    await _close(client)
                self._owners.clear()
                self._db = None

    async def loop(self, on_cycle: Any = None) -> None:
        api = None
        self._write_lock = asyncio.Lock()  # of this event loop
        self._sandbox_lock = asyncio.Lock()
        self._freed = asyncio.Event()
        async with self._resources():
            try:
                while not self._stop.is_set():
                    try:
                        if api is None:
                            api = await self.pilot.client().__aenter__()
                        await self._cycle(api)
                    except Exception as exc:  # the server restarting must not end the pilot
                        print(f"pilot: cycle failed ({type(exc).__name__}: {exc}); trying again", file=sys.stderr)
                        if api is not None and not self._batches:
                            await _close(api)
                            api = None
                    if on_cycle:
                        on_cycle(self)
                    # the next cycle after 0.2 s, or soon after a job ended (its slot is free)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._freed.wait(), 0.2)
                        await asyncio.sleep(0.05)  # the other jobs ending about now free theirs too
                    self._freed.clear()
            finally:
                for job in list(self.jobs.values()):  # the node goes away: so do its payloads
                    if job.process is not None and job.process.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(job.process.pid, signal.SIGKILL)
                for batch in list(self._batches):
                    batch.cancel()
                await asyncio.gather(*list(self._batches), return_exceptions=True)
                if self._flusher is not None:
                    self._flusher.cancel()
                    await asyncio.gather(self._flusher, return_exceptions=True)
                if api is not None:
                    await _close(api)

    def start(self) -> "BatchPilot":
        self._thread = threading.Thread(target=lambda: asyncio.run(self.loop()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)

    def stats(self) -> dict[str, Any]:
        """Outcome counts and throughput (jobs ended per second since the first job was matched)."""
        ended = self.outcomes["Done"] + self.outcomes["Failed"]
        span = (self.last_end - self.started_at) if self.started_at and self.last_end else 0.0
        return {**self.outcomes, "jobs": len(self.runs), "in_flight": len(self.jobs), "cycles": self.cycles,
                "heartbeats": self.heartbeats, "busiest_cycle": self.busiest,
                "jobs_per_second": round(ended / span, 1) if span > 0 else None}


async def _again(call: Any, attempts: int = 6, delay: float = 0.5) -> Any:
    """`await call()`, again after a pause when it fails: the SQLite-backed test server answers
    500 on 'database is locked' under concurrent writers (and races on a new sandbox owner)."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except Exception as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None) or getattr(exc, "status_code", None)
            if attempt == attempts or status in (401, 403, 404, 422):  # a refusal: asking again changes nothing
                raise
            print(f"pilot: {type(exc).__name__}: {str(exc)[:200]}; again in {delay * attempt:.1f} s", file=sys.stderr)
            await asyncio.sleep(delay * attempt)


async def _close(api: Any) -> None:
    try:
        await api.__aexit__(None, None, None)
    except Exception:
        pass


def _unpack(archive: bytes, destination: Path) -> None:
    """A sandbox (zstd- or otherwise compressed tar) into `destination`, file modes kept."""
    import zstandard

    if archive[:4] == b"\x28\xb5\x2f\xfd":
        archive = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(archive)).read()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
        tar.extractall(destination, filter="data")


def _outputs(workdir: Path | None, patterns: list[str]) -> list[str]:
    """The OutputSandbox entries that exist in `workdir` (glob patterns allowed), relative, sorted."""
    if workdir is None:
        return []
    found: set[str] = set()
    for pattern in patterns:
        if pattern.upper().startswith("LFN:"):
            continue
        if glob.has_magic(pattern):
            found.update(str(Path(p).relative_to(workdir)) for p in glob.glob(str(workdir / pattern))
                         if not fnmatch.fnmatch(Path(p).name, ".*"))
        elif (workdir / pattern).exists():
            found.add(pattern)
    return sorted(found)


def _sandbox_archive(folder: Path, names: list[str]) -> bytes:
    """A sandbox as DiracX stores it: a zstd-compressed tar of `names` in `folder`, modes kept
    (level 3: the client's level 18 costs CPU the pilot needs for thousands of jobs; any level
    decompresses the same)."""
    import zstandard

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name in names:
            tar.add(folder / name, arcname=name)
    return zstandard.ZstdCompressor(level=3).compress(raw.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="DiracX server URL")
    parser.add_argument("--credentials", required=True, help="a JobAdministrator credentials file")
    parser.add_argument("--keystore", help="the server's JWKS file (to act as a job's owner)")
    parser.add_argument("--job-db", help="the server's JobDB URL (to read the jobs' JDLs)")
    parser.add_argument("--registry", help="the server's configuration (default.yml: the owners' subjects)")
    parser.add_argument("--workdir", required=True, help="where the jobs' working directories are made")
    parser.add_argument("--site", default=SITE, help=f"this site's name (default {SITE})")
    parser.add_argument("--slots", type=int, default=8, help="jobs running at once (default 8)")
    parser.add_argument("--job-group", help="only run jobs of this JobGroup (default: every job)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="set in every job's environment (repeatable)")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds each job stays Running at least")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="probability that a run fails")
    parser.add_argument("--seed", type=int, help="random seed (repeatable failures)")
    parser.add_argument("--stats", help="a JSON file kept up to date with the outcome counts")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env if "=" in item)
    pilot = BatchPilot(Pilot(args.url, args.credentials, keystore=args.keystore, job_db=args.job_db,
                             registry=args.registry), args.job_group, Path(args.workdir),
                       duration=args.duration, failure_rate=args.failure_rate, seed=args.seed, site=args.site,
                       slots=args.slots, env=env)
    signal.signal(signal.SIGTERM, lambda *_: pilot._stop.set())

    def save(current: BatchPilot) -> None:
        if args.stats:
            partial = Path(args.stats + ".tmp")  # readers never see a half-written file
            partial.write_text(json.dumps(current.stats()))
            partial.replace(args.stats)

    print(json.dumps({"pilot": args.url, "site": args.site, "slots": args.slots, "failure_rate": args.failure_rate,
                      "duration": args.duration}), flush=True)
    asyncio.run(pilot.loop(on_cycle=save))
    save(pilot)  # the final counts: a job may have ended after the last cycle's save


if __name__ == "__main__":
    main()
