"""CCP-like methods as pygeoapi process plugins, for the CCP peer (`ccp_peer.py`).

Each answers as a CCP method does where pygeoapi alone would not:

- `ccp-write-files`: writes files (as a CCP method writes under `/ccp_data`) and returns,
  as CCP does, an `output.zip` of them by reference, beside literal results; prints each
  file it writes;
- `ccp-progress`: reports progress (`progress`, `message`) step by step, printing a line
  per step;
- `ccp-fail`: prints a traceback to stderr, then fails with its message, as a method
  exiting non-zero;
- `ccp-sleep`: prints a start line and runs until its time is up or it is dismissed
  (cancelled), printing that it stops;
- `ccp-grid-splitter`: splits a range into `items` work items, as DataMiner's GRID_SPLITTER
  (`dataminer_processes.py`) does: a CSV `work_items.csv` (item, start, end) in `output.zip`,
  the items' names as a value too (`items`, a list) and their number (`count`);
- `ccp-csv-summary`: sums every numeric column of a CSV table given as a string input
  (`table`: CCP inputs are JSON values, a local file cannot be referenced), as DataMiner's
  CSV_SUMMARY does: `summary.csv` (column, count, sum) in `output.zip`, the row count
  (`rows`) and the totals (`totals`, column → sum) as values.

Each execution's stdout and stderr are written as they would come out of a method's
container: line by line, while it runs, appended to `<storage>/<job id>/outputs/stdout.log`
and `stderr.log` (`Console`; the layout of an execution in CCP's documentation,
05_advanced_topics/02_execution_engine/01_execution_lifecycle: `outputs/stdout.log /
stderr.log`). The front serves them (`ccp_peer.py`).

pygeoapi (0.21 and 0.23) leaves a job `accepted` until `execute()` returns — it never
records `running` — and has no progress API for a process: the methods update their job
record through the TinyDB manager themselves (`JobRecord`). A dismissed job's record is
deleted while its thread keeps running: `ccp-sleep` looks for the dismissal the front
records (`<storage>/dismissed/<job id>`) and stops.

Configuration comes from the peer's environment: `CCP_PEER_JOBS_DB` (the TinyDB file),
`CCP_PEER_STORAGE_DIR` and `CCP_PEER_STORAGE_URL` (where result files are kept and served).
"""

from __future__ import annotations

import csv
import io
import os
import time
import zipfile
from pathlib import Path
from typing import Any

from pygeoapi.process.base import BaseProcessor, ProcessorExecuteError


def _metadata(identifier: str, title: str, description: str, inputs: dict[str, Any],
              outputs: dict[str, Any]) -> dict[str, Any]:
    return {"version": "1.0.0", "id": identifier, "title": {"en": title}, "description": {"en": description},
            "jobControlOptions": ["async-execute", "sync-execute"], "outputTransmission": ["value", "reference"],
            "keywords": ["ccp"], "links": [], "inputs": inputs, "outputs": outputs}


def _input(title: str, schema: dict[str, Any], min_occurs: int = 1) -> dict[str, Any]:
    return {"title": title, "description": title, "schema": schema, "minOccurs": min_occurs, "maxOccurs": 1}


CCP_IMAGE = _input("CCP runtime image (a CCP method parameter)", {"type": "string"}, 0)


class JobRecord:
    """The job's record in the TinyDB manager's database, written as pygeoapi writes it."""

    def __init__(self, job_id: str):
        from pygeoapi.process.manager.tinydb_ import TinyDBManager

        self.job_id = job_id
        self.manager = TinyDBManager({"name": "TinyDB", "connection": os.environ["CCP_PEER_JOBS_DB"],
                                      "output_dir": None})

    def update(self, **fields: Any) -> None:
        from pygeoapi.util import get_current_datetime

        self.manager.update_job(self.job_id, {"updated": get_current_datetime(), **fields})

    def running(self, message: str, progress: int = 0) -> None:
        self.update(status="running", message=message, progress=progress)

    @property
    def dismissed(self) -> bool:
        return (Path(os.environ["CCP_PEER_STORAGE_DIR"]) / "dismissed" / self.job_id).exists()


class Console:
    """A method's stdout and stderr: appended a line at a time (flushed at once), so a reader
    sees them grow while the method runs."""

    STREAMS = ("stdout", "stderr")

    def __init__(self, job_id: str):
        self.folder = log_folder(job_id)
        self.folder.mkdir(parents=True, exist_ok=True)
        for stream in self.STREAMS:
            (self.folder / f"{stream}.log").touch()

    def _write(self, stream: str, text: str) -> None:
        with open(self.folder / f"{stream}.log", "a", encoding="utf-8") as out:
            out.write(text if text.endswith("\n") else text + "\n")
            out.flush()

    def out(self, text: str) -> None:
        self._write("stdout", text)

    def err(self, text: str) -> None:
        self._write("stderr", text)


def log_folder(job_id: str) -> Path:
    """Where a job's stdout.log and stderr.log are kept."""
    return Path(os.environ["CCP_PEER_STORAGE_DIR"]) / job_id / "outputs"


class CCPMethod(BaseProcessor):
    """The methods' common part: their job's record, as CCP keeps one per execution."""

    METADATA: dict[str, Any] = {}

    def __init__(self, processor_def: dict[str, Any]):
        super().__init__(processor_def, self.METADATA)
        self.supports_outputs = True

    def set_job_id(self, job_id: str) -> None:  # pygeoapi 0.21's base keeps nothing
        self.job_id = job_id

    def record(self) -> JobRecord:
        return JobRecord(str(self.job_id))

    def console(self) -> Console:
        return Console(str(self.job_id))


class WriteFiles(CCPMethod):
    METADATA = _metadata(
        "ccp-write-files", "Write files", "Writes `count` CSV files and a log, returned as output.zip",
        {"count": _input("How many files", {"type": "integer", "minimum": 1, "maximum": 20}),
         "prefix": _input("File name prefix", {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}, 0),
         "ccpimage": CCP_IMAGE},
        {"output": {"title": "output.zip", "schema": {"type": "string", "contentMediaType": "application/zip"}},
         "files": {"title": "The files written", "schema": {"type": "array", "items": {"type": "string"}}},
         "rows": {"title": "Rows written in all", "schema": {"type": "integer"}}})

    def execute(self, data: dict[str, Any], outputs: Any = None) -> tuple[str, Any]:
        record, console = self.record(), self.console()
        record.running("writing files", 10)
        count, prefix = int(data.get("count", 1)), str(data.get("prefix") or "table")
        console.out(f"writing {count} files with prefix {prefix}")
        folder = Path(os.environ["CCP_PEER_STORAGE_DIR"]) / str(self.job_id)
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"{prefix}_{n}.csv" for n in range(1, count + 1)]
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zipped:
            for n, name in enumerate(names, start=1):
                zipped.writestr(f"ccp_data/{name}", "".join(f"{n},{row},{n * row}\n" for row in range(n)))
                console.out(f"wrote /ccp_data/{name} ({n} rows)")
            zipped.writestr("ccp_data/logs/method.log", f"wrote {count} files\n")
        (folder / "output.zip").write_bytes(archive.getvalue())
        console.out(f"output.zip: {count} files")
        url = f"{os.environ['CCP_PEER_STORAGE_URL']}/{self.job_id}/output.zip"
        return "application/json", {
            "output": {"href": url, "type": "application/zip", "rel": "related", "title": "output.zip"},
            "files": names,
            "rows": sum(range(1, count + 1)),
        }


class Progress(CCPMethod):
    METADATA = _metadata(
        "ccp-progress", "Report progress", "Runs `steps` steps of `seconds` each, reporting progress",
        {"steps": _input("Steps", {"type": "integer", "minimum": 1, "maximum": 100}),
         "seconds": _input("Seconds per step", {"type": "number", "minimum": 0, "maximum": 60}, 0),
         "ccpimage": CCP_IMAGE},
        {"steps": {"title": "Steps done", "schema": {"type": "integer"}}})

    def execute(self, data: dict[str, Any], outputs: Any = None) -> tuple[str, Any]:
        record, console = self.record(), self.console()
        steps, seconds = int(data.get("steps", 4)), float(data.get("seconds", 0.5))
        for step in range(steps):
            console.out(f"step {step + 1}/{steps}")  # printed before the status says so
            record.running(f"step {step + 1}/{steps}", int(100 * step / steps))
            time.sleep(seconds)
        console.out(f"done: {steps} steps")
        return "application/json", {"steps": {"value": steps, "mediaType": "application/json"}}


class Fail(CCPMethod):
    METADATA = _metadata(
        "ccp-fail", "Fail", "Fails with the given message, as a method exiting with an error",
        {"message": _input("The failure's message", {"type": "string"}, 0), "ccpimage": CCP_IMAGE},
        {"never": {"title": "Never produced", "schema": {"type": "string"}}})

    def execute(self, data: dict[str, Any], outputs: Any = None) -> tuple[str, Any]:
        console = self.console()
        message = str(data.get("message") or "the method failed")
        console.out("starting")
        self.record().running("starting", 5)
        console.err("Traceback (most recent call last):\n"
                    '  File "/ccp_data/method.py", line 12, in <module>\n'
                    "    main()\n"
                    '  File "/ccp_data/method.py", line 8, in main\n'
                    "    raise RuntimeError(message)\n"
                    f"RuntimeError: {message}")
        raise ProcessorExecuteError(message)


class Sleep(CCPMethod):
    METADATA = _metadata(
        "ccp-sleep", "Sleep", "Runs for `seconds` unless dismissed",
        {"seconds": _input("How long", {"type": "number", "minimum": 0, "maximum": 3600}), "ccpimage": CCP_IMAGE},
        {"slept": {"title": "Seconds slept", "schema": {"type": "number"}}})

    def execute(self, data: dict[str, Any], outputs: Any = None) -> tuple[str, Any]:
        record, console = self.record(), self.console()
        seconds = float(data.get("seconds", 60))
        started = time.monotonic()
        console.out(f"sleeping for {seconds:g} seconds")
        record.running("sleeping", 1)
        while time.monotonic() - started < seconds:
            if record.dismissed:
                console.out("dismissed: stopping")
                raise ProcessorExecuteError("dismissed")
            time.sleep(0.05)
        console.out(f"slept {seconds:g} seconds")
        return "application/json", {"slept": seconds}


def _zip_result(job_id: str, files: dict[str, str]) -> dict[str, Any]:
    """`files` (name under /ccp_data → text) as the job's output.zip, and its reference."""
    folder = Path(os.environ["CCP_PEER_STORAGE_DIR"]) / job_id
    folder.mkdir(parents=True, exist_ok=True)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for name, text in files.items():
            zipped.writestr(f"ccp_data/{name}", text)
    (folder / "output.zip").write_bytes(archive.getvalue())
    url = f"{os.environ['CCP_PEER_STORAGE_URL']}/{job_id}/output.zip"
    return {"href": url, "type": "application/zip", "rel": "related", "title": "output.zip"}


class GridSplitter(CCPMethod):
    METADATA = _metadata(
        "ccp-grid-splitter", "Grid splitter",
        "Splits a range into `items` work items, one row each (item, start, end), in work_items.csv",
        {"items": _input("How many work items", {"type": "integer", "minimum": 1, "maximum": 1000}),
         "span": _input("The range split", {"type": "number", "exclusiveMinimum": 0}, 0),
         "prefix": _input("Item name prefix", {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}, 0),
         "ccpimage": CCP_IMAGE},
        {"output": {"title": "output.zip", "schema": {"type": "string", "contentMediaType": "application/zip"}},
         "items": {"title": "The work items", "schema": {"type": "array", "items": {"type": "string"}}},
         "count": {"title": "How many", "schema": {"type": "integer"}}})

    def execute(self, data: dict[str, Any], outputs: Any = None) -> tuple[str, Any]:
        record, console = self.record(), self.console()
        items, span = int(data["items"]), float(data.get("span", 100.0))
        prefix = str(data.get("prefix") or "item")
        console.out(f"splitting {span:g} into {items} work items")
        record.running("splitting", 10)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["item", "start", "end"])
        names = [f"{prefix}-{index:03d}" for index in range(items)]
        for index, name in enumerate(names):
            writer.writerow([name, f"{span * index / items:g}", f"{span * (index + 1) / items:g}"])
        output = _zip_result(str(self.job_id), {"work_items.csv": out.getvalue()})
        console.out(f"wrote /ccp_data/work_items.csv ({items} rows)")
        return "application/json", {"output": output, "items": names, "count": items}


def _numbers(rows: list[list[str]], index: int) -> list[float] | None:
    """The column's values as numbers, or None when it is not a numeric column."""
    try:
        return [float(row[index]) for row in rows if index < len(row) and row[index].strip()]
    except ValueError:
        return None


class CSVSummary(CCPMethod):
    METADATA = _metadata(
        "ccp-csv-summary", "CSV summary",
        "Sums every numeric column of a CSV table (given as text) into summary.csv",
        {"table": _input("The CSV table, as text (a header row first)", {"type": "string", "minLength": 1}),
         "ccpimage": CCP_IMAGE},
        {"output": {"title": "output.zip", "schema": {"type": "string", "contentMediaType": "application/zip"}},
         "rows": {"title": "Rows read", "schema": {"type": "integer"}},
         "totals": {"title": "Sum of each numeric column",
                    "schema": {"type": "object", "additionalProperties": {"type": "number"}}}})

    def execute(self, data: dict[str, Any], outputs: Any = None) -> tuple[str, Any]:
        record, console = self.record(), self.console()
        rows = [row for row in csv.reader(io.StringIO(str(data["table"]))) if row]
        if not rows:
            console.err("the table is empty: no header row")
            raise ProcessorExecuteError("the table is empty: no header row")
        header, body = rows[0], rows[1:]
        console.out(f"read {len(body)} rows, {len(header)} columns")
        record.running("summing", 50)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["column", "count", "sum"])
        totals: dict[str, float] = {}
        for index, name in enumerate(header):
            values = _numbers(body, index)
            if values is not None:
                total = sum(values, 0.0)
                totals[name] = int(total) if total.is_integer() else total
                writer.writerow([name, len(values), f"{totals[name]:g}"])
        output = _zip_result(str(self.job_id), {"summary.csv": out.getvalue()})
        console.out(f"wrote /ccp_data/summary.csv ({len(totals)} numeric columns)")
        return "application/json", {"output": output, "rows": len(body), "totals": totals}


PROCESSORS = {cls.METADATA["id"]: cls for cls in (WriteFiles, Progress, Fail, Sleep, GridSplitter, CSVSummary)}
