"""DIRAC output sandboxes, downloaded and unpacked per job.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from prefect_egi.tasks.dirac.client import DiracxClient


class JobOutput(BaseModel):
    """Where one job's output sandbox went (or why there is none)."""

    job_id: int
    path: str | None = None
    files: list[str] = Field(default_factory=list)
    note: str = ""


async def collect_outputs(client: DiracxClient, job_ids: Sequence[int], destination: str | Path,
                          concurrency: int = 4) -> list[JobOutput]:
    """Download and unpack each job's output sandbox into `<destination>/<job id>/`.
    A job without an output sandbox is reported, not fatal."""
    from diracx.api.jobs import download_sandbox

    root = Path(destination).expanduser()
    limit = asyncio.Semaphore(concurrency)

    async def one(api: Any, job_id: int) -> JobOutput:
        async with limit:
            sandboxes = await api.jobs.get_job_sandboxes(int(job_id))
            pfns = list(sandboxes.get("Output") or [])
            if not pfns:
                return JobOutput(job_id=job_id, note="no output sandbox")
            folder = root / str(job_id)
            folder.mkdir(parents=True, exist_ok=True)
            for pfn in pfns:
                await download_sandbox(pfn, folder, client=api)
            files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            return JobOutput(job_id=job_id, path=str(folder), files=files)

    async def everything(api: Any) -> list[JobOutput]:
        return list(await asyncio.gather(*(one(api, j) for j in job_ids)))

    return await client.call(everything)
