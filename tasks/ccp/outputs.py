"""What a CCP job returned: values as Python values, files downloaded, `output.zip` unpacked.

A CCP method's files come back as one `output.zip` (everything it wrote under
`/ccp_data`, CCP's documentation says: "files are currently the only way for a Method
to output results by value"); other servers give each file by reference. Either way
each file lands in `<destination>/<job id>/`, and a zip named `output.zip` is unpacked
there too (safely: `client.unpack_zip`). One file that cannot be fetched or unpacked is
reported in its `OutputFile.error`; it never costs the others.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin, urlsplit

from pydantic import BaseModel, Field

from prefect_egi.tasks.ccp.client import OUTPUT_ZIP, CCPClient, Reference, unpack_zip
from prefect_egi.tasks.files import OutputFile, safe_name
from prefect_egi.tasks.redaction import redact
from prefect_egi.tasks.remote import JobState

#: at most this many unpacked files are listed in the UI's table (all are on disk)
SHOWN_FILES = 50


class CCPResult(BaseModel):
    """What a job returned: values, files (and what `output.zip` held), and how it ended."""

    process: str = ""
    job_id: str
    status_url: str
    state: str
    message: str = ""
    values: dict[str, Any] = Field(default_factory=dict)
    files: list[OutputFile] = Field(default_factory=list)
    unpacked: list[str] = Field(default_factory=list, description="files unpacked from output.zip")
    folder: str | None = None

    def markdown(self) -> str:
        """The result as the Prefect UI shows it (the `CCP results` artifact)."""
        lines = [f"# CCP {self.process or 'job'}: {self.state}", "", f"Job: <{self.status_url}>", ""]
        if self.message:
            lines += [f"> {self.message}", ""]
        if self.values:
            lines += ["| output | value |", "|---|---|"]
            lines += [f"| {name} | `{_short(value)}` |" for name, value in self.values.items()] + [""]
        if self.files:
            lines += ["| file | type | size | saved to |", "|---|---|---|---|"]
            for f in self.files:
                saved = f"`{f.path}`" if f.path else f"not downloaded: {f.error}"
                lines.append(f"| [{f.name}]({f.url}) | {f.mime_type} | {f.size or ''} | {saved} |")
            lines.append("")
        if self.unpacked:
            lines += [f"{len(self.unpacked)} file(s) unpacked from {OUTPUT_ZIP} into `{self.folder}`:", ""]
            lines += [f"- `{name}`" for name in self.unpacked[:SHOWN_FILES]]
            if len(self.unpacked) > SHOWN_FILES:
                lines.append(f"- … and {len(self.unpacked) - SHOWN_FILES} more")
        return "\n".join(lines)


class CCPMethodFailed(Exception):
    """The method's job failed (or was dismissed); the message is the server's own, followed
    by the last lines the method wrote to stderr when the server exposes them."""

    def __init__(self, process: str, message: str, job_id: str, state: str = "failed",
                 stderr: Sequence[str] = ()):
        self.process, self.server_message, self.job_id, self.state = process, message, job_id, state
        self.stderr = list(stderr)
        text = f"CCP method {process} {state}: {message or 'no message given'} (job {job_id})"
        if self.stderr:
            text += "\nlast lines of its stderr:\n" + "\n".join(f"  {line}" for line in self.stderr)
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.process, self.server_message, self.job_id, self.state, self.stderr))


def _short(value: Any, limit: int = 200) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"


def _is_output_zip(reference: Reference) -> bool:
    return PurePosixPath(urlsplit(reference.href).path).name == OUTPUT_ZIP


async def collect_results(client: CCPClient, job_id: str, destination: str | Path, process: str = "") -> CCPResult:
    """The job's results: values inline, every referenced file downloaded into
    `<destination>/<job id>/`, an `output.zip` unpacked there. A job that did not succeed
    gives its state and message, and no results are asked for."""
    job = await client.job(job_id)
    result = CCPResult(process=process or job.process_id or "", job_id=job_id, status_url=client.job_url(job_id),
                       state=job.state.value, message=job.message)
    if job.state is not JobState.SUCCEEDED:
        return result
    results = await client.results(job_id)
    result.values = dict(results.values)
    folder = Path(destination).expanduser() / safe_name(job_id)
    result.folder = str(folder)

    async def fetch(reference: Reference) -> tuple[OutputFile, list[Path]]:
        url = urljoin(client.url + "/", reference.href)
        file = OutputFile(name=PurePosixPath(urlsplit(url).path).name or reference.output,
                          description=reference.title or reference.output, mime_type=reference.media_type or "",
                          url=url)
        unpacked: list[Path] = []
        try:
            path = await client.download(url, folder)
            file.path, file.size = str(path), path.stat().st_size
            if _is_output_zip(reference):
                unpacked = await asyncio.to_thread(unpack_zip, path, folder)
        except Exception as exc:  # one bad file must not lose the others
            file.error = redact(str(exc)) or type(exc).__name__
        return file, unpacked

    for file, unpacked in await asyncio.gather(*(fetch(r) for r in results.references)):
        result.files.append(file)
        result.unpacked += [str(path.relative_to(folder)) for path in unpacked]
    return result
