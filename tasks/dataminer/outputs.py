"""What a DataMiner execution returned: literal values as Python values, files downloaded.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from prefect_egi.tasks.dataminer.adapter import execution_label
from prefect_egi.tasks.dataminer.client import (
    RESULT_FILES_OUTPUT,
    OutputValue,
    ResultEntry,
    ResultFile,
    WPSClient,
    parse_result_block,
)
from prefect_egi.tasks.files import OutputFile, safe_name
from prefect_egi.tasks.remote import JobState


class DataMinerResult(BaseModel):
    """What an execution returned: literal values, files, and where it ran."""

    process: str
    status_location: str
    state: str
    message: str = ""
    literals: dict[str, Any] = Field(default_factory=dict)
    files: list[OutputFile] = Field(default_factory=list)

    def markdown(self) -> str:
        """The result as the Prefect UI shows it (the `DataMiner outputs` artifact)."""
        lines = [f"# DataMiner {self.process or 'execution'}: {self.state}", "",
                 f"Status: <{self.status_location}>", ""]
        if self.message:
            lines += [f"> {self.message}", ""]
        if self.literals:
            lines += ["| output | value |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in self.literals.items()] + [""]
        if self.files:
            lines += ["| file | description | type | size | saved to |", "|---|---|---|---|---|"]
            for f in self.files:
                saved = f"`{f.path}`" if f.path else f"not downloaded: {f.error}"
                lines.append(f"| [{f.name}]({f.url}) | {f.description} | {f.mime_type} | {f.size or ''} | {saved} |")
        return "\n".join(lines)


class DataMinerExecutionFailed(Exception):
    """The algorithm ended in ProcessFailed; the message is the server's text."""

    def __init__(self, process: str, message: str, job_id: str):
        self.process, self.server_message, self.job_id = process, message, job_id
        super().__init__(f"DataMiner {process} failed: {message} ({job_id})")

    def __reduce__(self):
        return (type(self), (self.process, self.server_message, self.job_id))


def listed_again(entry: ResultEntry, outputs: tuple[OutputValue, ...]) -> bool:
    """Whether a file of DataMiner's result block is a declared output the status document
    already carries. DataMiner lists each declared file output a second time in the block
    (gCube's `OutputsManager.createOutput`), described by the output's title (the
    description gCube's mapping gives both), or at the same URL."""
    label = entry.description.strip()
    return any(
        output.identifier != RESULT_FILES_OUTPUT and output.data_type == "complex"
        and (output.reference is not None or output.embedded is not None)
        and (output.reference == entry.data or (label and label in (output.title.strip(), output.identifier)))
        for output in outputs)


def _free_name(wanted: str, taken: dict[str, Any], fid: str) -> str:
    """`wanted`, or — when an output already has that name — `wanted (F1)`."""
    name = wanted or fid or "value"
    return name if name not in taken else f"{name} ({fid or len(taken)})"


async def collect_outputs(client: WPSClient, job_id: str, destination: str | Path,
                          max_bytes: int = 500 * 1024 * 1024, timeout: float = 600.0,
                          process: str = "") -> DataMinerResult:
    """Literal outputs as values; referenced and DataMiner result files downloaded into
    `<destination>/<execution id>/`. One file that fails to download is reported in its
    `OutputFile.error`; the others are kept.

    DataMiner's result block (`non_deterministic_output`) is read, never kept as a value:
    its files are downloaded (numbered in the block's order; a declared output listed there
    again only once, under its own name), and the values an algorithm computed — which
    DataMiner writes in place of a URL — join `literals` under their description, as text.
    An empty block adds nothing."""
    status = await client.status(job_id)
    result = DataMinerResult(process=process, status_location=job_id, state=status.state.value,
                             message=status.message)
    if status.state is not JobState.SUCCEEDED:
        return result
    folder = Path(destination).expanduser() / safe_name(execution_label(job_id))
    wanted: list[tuple[str, ResultFile]] = []
    block: list[ResultEntry] = []
    for output in status.outputs:
        if output.reference:
            suffix = Path(urlsplit(output.reference).path).suffix
            wanted.append((output.identifier + suffix,
                           ResultFile(output.identifier, output.mime_type or "", output.reference)))
        elif output.identifier == RESULT_FILES_OUTPUT:
            block = parse_result_block(output.embedded) if output.embedded else []
        elif output.embedded is not None:
            result.literals[output.identifier] = output.embedded
        else:
            result.literals[output.identifier] = output.value
    files = [entry for entry in block if entry.is_file and not listed_again(entry, status.outputs)]
    wanted += [(f"{i:02d}-{Path(urlsplit(entry.data).path).name}", ResultFile(entry.description, entry.mime_type,
                                                                              entry.data))
               for i, entry in enumerate(files, start=1)]
    for entry in block:
        if not entry.is_file:
            result.literals[_free_name(entry.description, result.literals, entry.fid)] = entry.data

    async def fetch(name: str, item: ResultFile) -> OutputFile:
        file = OutputFile(name=name, description=item.description, mime_type=item.mime_type,
                          url=client.public_url(item.url))
        try:
            path = await client.download(item.url, folder / safe_name(name), max_bytes, timeout)
            file.path, file.size = str(path), path.stat().st_size
        except Exception as exc:  # one bad file must not lose the others
            file.error = client.scrub(str(exc)) or type(exc).__name__
        return file

    result.files = list(await asyncio.gather(*(fetch(n, f) for n, f in wanted)))
    return result
