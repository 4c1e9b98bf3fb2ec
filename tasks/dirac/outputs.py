"""DIRAC output sandboxes, downloaded and unpacked per job — one job's failure is that job's.

A sandbox DiracX refuses to hand out stays refused however often it is asked: DiracX 0.7
answers `403 Invalid PFN` for a sandbox uploaded by another identity (it serves only
sandboxes under the asking user's own VO/group/name). So each job's outcome is its own:
a refusal, or a sandbox that cannot be unpacked, is reported on that job (`JobOutput.error`)
and the others are fetched; transient faults are tried again, then reported the same way
(the sandbox stays on the server: fetch it again later). Only credentials the server
refuses stop the whole fetch: no job could be fetched with them.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import asyncio
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from prefect_egi.tasks.dirac.client import DiracxClient, engine_error
from prefect_egi.tasks.faults import CredentialsRejected, TransientServiceError
from prefect_egi.tasks.redaction import redact

STDOUT = "std.out"  # DIRAC's default StdOutput: its first line is reported (what the job printed)
FETCH_ATTEMPTS = 4  # per job, for transient faults (azure-core has already retried each request)


class JobOutput(BaseModel):
    """Where one job's output sandbox went (or why there is none)."""

    job_id: int
    path: str | None = Field(default=None, description="The folder it was unpacked into.")
    files: list[str] = Field(default_factory=list, description="The files unpacked, relative to `path`.")
    note: str = Field(default="", description="E.g. 'no output sandbox' (the job has none).")
    printed: str = Field(default="", description="The first line of its std.out, when the sandbox holds one.")
    error: str | None = Field(default=None, description="Why its output sandbox could not be fetched; it is "
                                                        "still on the server.")


def refusal(exc: BaseException, mapped: BaseException) -> str:
    """Why a sandbox could not be fetched, in words safe for reports: the server's `detail`,
    never a URL (the store's are presigned: each one a credential for the file)."""
    import httpx2

    status = getattr(exc, "status_code", None)
    if isinstance(mapped, TransientServiceError):
        return f"{mapped} ({FETCH_ATTEMPTS} attempts); fetch it again later"
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"the sandbox store answered HTTP {exc.response.status_code}"
    if isinstance(exc, tarfile.TarError) or type(exc).__module__.startswith("zstandard"):
        return f"the sandbox could not be unpacked ({type(exc).__name__})"
    if status is not None:
        response = getattr(exc, "response", None)
        try:
            detail = str(response.json().get("detail"))  # type: ignore[union-attr]
        except Exception:
            detail = getattr(exc, "reason", None) or type(exc).__name__
        return f"DiracX refused it (HTTP {status}: {detail})"
    return f"{type(exc).__name__}: {exc}"


async def collect_outputs(client: DiracxClient, job_ids: Sequence[int], destination: str | Path,
                          concurrency: int = 4, backoff: float = 0.5) -> list[JobOutput]:
    """Download and unpack each job's output sandbox into `<destination>/<job id>/`, one
    `JobOutput` per job in the order given. A job without an output sandbox, or whose
    sandbox cannot be had, is reported (`note`, `error`), never fatal to the others."""
    from diracx.api.jobs import download_sandbox

    root = Path(destination).expanduser()
    limit = asyncio.Semaphore(concurrency)

    async def fetch(api: Any, job_id: int, folder: Path) -> JobOutput:
        sandboxes = await api.jobs.get_job_sandboxes(int(job_id))
        pfns = list(sandboxes.get("Output") or [])
        if not pfns:
            return JobOutput(job_id=job_id, note="no output sandbox")
        folder.mkdir(parents=True, exist_ok=True)
        for pfn in pfns:
            await download_sandbox(pfn, folder, client=api)
        return JobOutput(job_id=job_id, path=str(folder), files=unpacked(folder), printed=first_line(folder / STDOUT))

    async def one(api: Any, job_id: int) -> JobOutput:
        folder = root / str(job_id)
        async with limit:
            for attempt in range(FETCH_ATTEMPTS):
                try:
                    return await fetch(api, job_id, folder)
                except Exception as exc:
                    mapped = engine_error(exc, client.url)
                    if isinstance(mapped, CredentialsRejected):
                        raise mapped from None
                    if isinstance(mapped, TransientServiceError) and attempt < FETCH_ATTEMPTS - 1:
                        await asyncio.sleep(backoff * 2 ** attempt)
                        continue
                    if isinstance(exc, OSError) and not isinstance(mapped, TransientServiceError):
                        raise  # the local disk: every job would fail the same
                    files = unpacked(folder)  # what an earlier sandbox of the job left
                    return JobOutput(job_id=job_id, path=str(folder) if files else None, files=files,
                                     error=redact(refusal(exc, mapped)))
        raise AssertionError("unreachable")

    async def everything(api: Any) -> list[JobOutput]:
        return list(await asyncio.gather(*(one(api, j) for j in job_ids)))

    return await client.call(everything)


def first_line(path: Path, limit: int = 200) -> str:
    """The first line of a text file (at most `limit` characters), or "" when there is none."""
    try:
        with path.open("rb") as handle:
            head = handle.readline(4 * limit)
    except OSError:
        return ""
    text = head.decode("utf-8", "replace").rstrip("\r\n")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def unpacked(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
