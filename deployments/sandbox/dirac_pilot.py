"""A test "pilot" for the local DiracX: no worker nodes run jobs here, so this
moves them through Received → Checking → Waiting → Matched → Running → Done (or
Failed) with the JobAdministrator credentials, after the delays it is given."""

from __future__ import annotations

import asyncio
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
