"""A test "pilot" for the local DiracX: no worker nodes run jobs here, so this
moves them through Received → Checking → Waiting → Matched → Running → Done (or
Failed) with the JobAdministrator credentials, after the delays it is given."""

from __future__ import annotations

import asyncio
import json
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
    """Runs every job of one JobGroup as it arrives (or comes back rescheduled):
    Received → … → Running → Done, with an output sandbox holding `result.txt`;
    `fail_first(job_id)` jobs fail on their first run only (to exercise resubmission)."""

    def __init__(self, pilot: Pilot, job_group: str, workdir: Path, fail_first: Any = lambda job_id: False,
                 duration: float = 0.3):
        self.pilot, self.job_group, self.workdir = pilot, job_group, Path(workdir)
        self.fail_first, self.duration = fail_first, duration
        self.runs: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def _cycle(self) -> None:
        async with self.pilot.client() as api:
            waiting = await api.jobs.search(
                parameters=["JobID"], per_page=10_000,
                search=[{"parameter": "JobGroup", "operator": "eq", "value": self.job_group},
                        {"parameter": "Status", "operator": "eq", "value": "Received"}])
        ids = [int(r["JobID"]) for r in waiting]
        if not ids:
            return
        for status in WALK:
            await self.pilot.set_status(ids, status)
        await asyncio.sleep(self.duration)
        failing = [j for j in ids if self.runs.get(j, 0) == 0 and self.fail_first(j)]
        done = [j for j in ids if j not in failing]
        for j in ids:
            self.runs[j] = self.runs.get(j, 0) + 1
        if done:
            await self.attach_outputs(done)
            await self.pilot.set_status(done, "Done", "Execution Complete")
        if failing:
            await self.pilot.set_status(failing, "Failed", "Application Finished With Errors")

    async def attach_outputs(self, ids: list[int]) -> None:
        from diracx.api.jobs import create_sandbox

        async with self.pilot.client() as api:
            for job_id in ids:
                folder = self.workdir / str(job_id)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "result.txt").write_text(f"job {job_id} run {self.runs[job_id]}\n")
                pfn = await create_sandbox([folder / "result.txt"], client=api)
                await api.jobs.assign_sandbox_to_job(job_id, json.dumps(pfn))

    def start(self) -> "BatchPilot":
        async def loop() -> None:
            while not self._stop.is_set():
                await self._cycle()
                await asyncio.sleep(0.2)

        self._thread = threading.Thread(target=lambda: asyncio.run(loop()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)
