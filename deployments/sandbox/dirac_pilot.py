"""A test "pilot" for the local DiracX: no worker nodes run jobs here, so this
moves them through Received → Checking → Waiting → Matched → Running → Done (or
Failed) with the JobAdministrator credentials, after the delays it is given.

Stand-alone (the sandbox runs it so): `python dirac_pilot.py --url URL
--credentials PILOT.json [--job-group G] [--duration 1] [--failure-rate 0.2]
[--seed 1] --workdir DIR` runs every Received job until terminated and prints one
JSON line when ready; `--stats FILE` keeps per-outcome counts there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

WALK = ["Checking", "Waiting", "Matched", "Running"]


class Pilot:
    def __init__(self, url: str, credentials: str | Path):
        self.url = url
        self.credentials = Path(credentials)

    def client(self) -> Any:
        from diracx.client.aio import AsyncDiracClient
        from diracx.core.preferences import DiracxPreferences

        return AsyncDiracClient(diracx_preferences=DiracxPreferences(url=self.url, credentials_path=self.credentials))

    async def set_status(self, ids: Iterable[int | str], status: str, minor: str = "pilot") -> None:
        when = datetime.now(timezone.utc).isoformat()
        body = {str(j): {when: {"Status": status, "MinorStatus": minor, "Source": "test-pilot"}} for j in ids}
        async with self.client() as api:
            await api.jobs.set_job_statuses(body, force=True)

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
    run fails with probability `failure_rate` (seeded, so a run is repeatable)."""

    def __init__(self, pilot: Pilot, job_group: str | None, workdir: Path, fail_first: Any = lambda job_id: False,
                 duration: float = 0.3, failure_rate: float = 0.0, seed: int | None = None):
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1")
        self.pilot, self.job_group, self.workdir = pilot, job_group, Path(workdir)
        self.fail_first, self.duration, self.failure_rate = fail_first, duration, failure_rate
        self.random = random.Random(seed)
        self.runs: dict[int, int] = {}
        self.outcomes: dict[str, int] = {"Done": 0, "Failed": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _fails(self, job_id: int) -> bool:
        first = self.runs.get(job_id, 0) == 0 and self.fail_first(job_id)
        return bool(first) or self.random.random() < self.failure_rate

    async def _cycle(self) -> None:
        search = [{"parameter": "Status", "operator": "eq", "value": "Received"}]
        if self.job_group:
            search.append({"parameter": "JobGroup", "operator": "eq", "value": self.job_group})
        async with self.pilot.client() as api:
            waiting = await api.jobs.search(parameters=["JobID"], per_page=10_000, search=search)
        ids = sorted(int(r["JobID"]) for r in waiting)
        if not ids:
            return
        for status in WALK:
            await self.pilot.set_status(ids, status)
        await asyncio.sleep(self.duration)
        failing = [j for j in ids if self._fails(j)]
        done = [j for j in ids if j not in failing]
        for j in ids:
            self.runs[j] = self.runs.get(j, 0) + 1
        if done:
            await self.attach_outputs(done)
            await self.pilot.set_status(done, "Done", "Execution Complete")
        if failing:
            await self.pilot.set_status(failing, "Failed", "Application Finished With Errors")
        self.outcomes["Done"] += len(done)
        self.outcomes["Failed"] += len(failing)

    async def attach_outputs(self, ids: list[int]) -> None:
        from diracx.api.jobs import create_sandbox

        async with self.pilot.client() as api:
            for job_id in ids:
                folder = self.workdir / str(job_id)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "result.txt").write_text(f"job {job_id} run {self.runs[job_id]}\n")
                pfn = await create_sandbox([folder / "result.txt"], client=api)
                await api.jobs.assign_sandbox_to_job(job_id, json.dumps(pfn))

    async def loop(self, on_cycle: Any = None) -> None:
        while not self._stop.is_set():
            try:
                await self._cycle()
            except Exception as exc:  # the server restarting must not end the pilot
                print(f"pilot: cycle failed ({type(exc).__name__}: {exc}); trying again", file=sys.stderr)
            if on_cycle:
                on_cycle(self)
            await asyncio.sleep(0.2)

    def start(self) -> "BatchPilot":
        self._thread = threading.Thread(target=lambda: asyncio.run(self.loop()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)


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
            Path(args.stats).write_text(json.dumps({**current.outcomes, "jobs": len(current.runs)}))

    print(json.dumps({"pilot": args.url, "failure_rate": args.failure_rate, "duration": args.duration}), flush=True)
    asyncio.run(pilot.loop(on_cycle=save))


if __name__ == "__main__":
    main()
