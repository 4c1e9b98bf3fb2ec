"""`egi-pipeline`: the services chained the way a researcher would.

    from prefect_egi.flows import egi_pipeline
    report = egi_pipeline()                 # the defaults run against `egi-flows sandbox up`
    print(report.markdown())

1. identity — the Check-in token every later stage uses (who, which VOs);
2. work items — an algorithm whose CSV output lists the work items;
3. grid — one DIRAC job per item (a parametric batch), waited for in bulk,
   failures resubmitted, output sandboxes collected;
4. summary (optional) — an algorithm over a table of the grid results;
5. VMs (optional) — a snapshot of the VO's FedCloud VMs;
6. a markdown report (artifact `egi-pipeline`) linking every execution, job and output.

Each stage is one task whose result is persisted under a key made of the flow
run and the stage: when a failed run is retried, finished stages come back
from storage instead of running again, and a stage that had already submitted
remote work finds it in the run's ledger — nothing is submitted twice.
Transient failures are retried inside the stages, by the service tasks.
Cancelling the run kills its DIRAC jobs and marks its DataMiner executions (or
dismisses its CCP jobs); a crash leaves them running, and `prefect flow-run retry
<id>` resumes watching them.

The algorithms (stages 2 and 4) run on D4Science DataMiner (WPS, the default) or
D4Science CCP (OGC API – Processes): `algorithms="ccp"`, `ccp_block`, and the CCP
methods' ids in `work_items.process` and `summary.process`. With CCP the work items
are read from a CSV the method wrote (in its `output.zip`; `work_items.output` is its
file name or path in the zip) or from a value output (a list, or CSV text), and the
summary method gets the grid results' CSV as a string input value (CCP inputs are
JSON values: a local file cannot be referenced).

    report = egi_pipeline(algorithms="ccp",
                          work_items=WorkItems(process="ccp-grid-splitter", inputs={"items": 5}),
                          summary=Summary(process="ccp-csv-summary"))
"""

import asyncio
import csv
import io
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Optional, Union

from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext
from pydantic import BaseModel, Field

from prefect_egi.flows.base import egi_flow, load_blocks
from prefect_egi.tasks import (
    CCP,
    CCPNoSuchProcess,
    CCPResult,
    CheckinCredentials,
    DataMiner,
    DataMinerResult,
    DiracBatchReport,
    DiracJob,
    DiracX,
    FedCloud,
    Inventory,
    OutputFile,
    WatchPolicy,
    egi_task,
    list_ccp_methods,
    run_algorithm,
    run_batch,
    run_ccp_method,
    vm_inventory,
)
from prefect_egi.tasks.reporting import publish_sync

#: where the algorithm stages run: D4Science DataMiner (WPS) or D4Science CCP (OGC API – Processes)
Algorithms = Literal["dataminer", "ccp"]
#: an algorithm stage's execution, as its service's task returned it
Execution = Union[DataMinerResult, CCPResult]


class WorkItems(BaseModel):
    """The algorithm (DataMiner or CCP) that lists the work items, and where they are in its output."""

    process: str = Field(default="GRID_SPLITTER",
                         description="DataMiner algorithm (short name or full id), or CCP method id.")
    inputs: dict[str, Any] = Field(default_factory=lambda: {"items": 5}, description="Its inputs.")
    output: Optional[str] = Field(
        default=None, description="The CSV holding the items: an output's name, a file's name or its path in "
                                  "CCP's output.zip, or a value output (a list, or CSV text); default: the first CSV.")
    column: str = Field(default="item", description="The column whose values become the grid jobs' parameters.")


class GridJobs(BaseModel):
    """One DIRAC job per work item: `%s` in the arguments (and name) is the item."""

    job: DiracJob = Field(default_factory=lambda: DiracJob(
        executable="echo", arguments="processing %s", job_name="egi-pipeline-%s"))
    max_resubmissions: int = Field(default=2, ge=0, le=10, description="How often a failed job is submitted again.")


class Summary(BaseModel):
    """An algorithm (DataMiner or CCP) run over the grid results (a CSV: item_index, job_id, output_bytes)."""

    process: str = Field(default="CSV_SUMMARY",
                         description="DataMiner algorithm (short name or full id), or CCP method id.")
    table_input: str = Field(default="table", description="Its input that receives the results table "
                                                          "(with CCP: the CSV as a string value).")


class Identity(BaseModel):
    subject: Optional[str]
    username: Optional[str]
    vos: list[str]


class WorkItemsResult(BaseModel):
    execution: Execution
    items: list[str]


@dataclass(frozen=True)
class Produced:
    """What an algorithm stage's execution produced, the same for both services: local files
    by the names `work_items.output` may give, and value outputs."""

    service: str                      # "DataMiner" or "CCP"
    process: str
    link: str                         # the execution's status document / CCP job
    files: dict[str, str]             # name (or path in output.zip) → local path
    values: dict[str, Any]
    downloads: list[OutputFile]       # the files as downloaded, with their URLs


def produced(execution: Execution) -> Produced:
    """One view of a DataMiner or a CCP result."""
    if isinstance(execution, CCPResult):
        # what the method wrote: output.zip's files (the zip itself is only their container)
        files = {name: str(Path(execution.folder or "") / name) for name in execution.unpacked}
        files |= {f.name: f.path for f in execution.files
                  if f.path and f.name not in files and not (f.name == "output.zip" and execution.unpacked)}
        return Produced("CCP", execution.process, execution.status_url, files, dict(execution.values),
                        list(execution.files))
    files = {f.name: f.path for f in execution.files if f.path}
    return Produced("DataMiner", execution.process, execution.status_location, files, dict(execution.literals),
                    list(execution.files))


class PipelineReport(BaseModel):
    """Everything the run did, with links: no secret in it."""

    identity: Identity
    work_items: WorkItemsResult
    grid: DiracBatchReport
    summary: Optional[Execution] = None
    vms: Optional[Inventory] = None

    def markdown(self) -> str:
        w, g = self.work_items, self.grid
        listed = produced(w.execution)
        summary = produced(self.summary) if self.summary else None
        lines = ["# EGI pipeline", "", f"Run as **{self.identity.username or self.identity.subject}** "
                 f"(VOs: {', '.join(self.identity.vos) or 'none'}).", "",
                 "| stage | result | where |", "|---|---|---|",
                 f"| work items | {len(w.items)} from {listed.service} {listed.process} | <{listed.link}> |",
                 f"| grid | {g.succeeded}/{g.submitted} DIRAC jobs done, {g.resubmitted} resubmitted, "
                 f"{len(g.failed)} failed | `{g.destination}` |"]
        if summary:
            values = "".join(f", {name} = `{_short(value)}`" for name, value in summary.values.items()
                             if not isinstance(value, dict) or "href" not in value)
            lines.append(f"| summary | {summary.service} {summary.process}: {len(summary.files)} file(s){values} "
                         f"| <{summary.link}> |")
        if self.vms:
            answered = sum(1 for s in self.vms.sites if s.failure is None)
            lines.append(f"| VMs | {len(self.vms.vms)} VM(s) of {self.vms.vo} on {answered}/{len(self.vms.sites)} "
                         "site(s) | artifact `vm-inventory` |")
        lines += ["", "## Grid jobs", "", "| item | job | printed | output |", "|---|---|---|---|"]
        outputs = {o.job_id: o for o in g.outputs}
        for item, job_id in zip(w.items, g.jobs):
            out = outputs.get(job_id)
            where = f"`{out.path}`" if out and out.path else (out.note if out else "failed")
            printed = f"`{_short(out.printed).replace('`', '')}`" if out and out.printed else ""
            lines.append(f"| {item} | {job_id} | {printed} | {where} |")
        if g.failed:
            lines += ["", "Failed: " + ", ".join(f"{f.job_id} ({f.status}: {f.minor_status})" for f in g.failed)]
        for stage in (listed, summary):
            if stage and stage.files:
                downloaded = {f.path for f in stage.downloads if f.path}
                lines += ["", f"## {stage.service} {stage.process} files", ""]
                lines += [f"- [{f.name}]({f.url}) → `{f.path}`" for f in stage.downloads if f.path]
                lines += [f"- `{name}` → `{path}`" for name, path in stage.files.items() if path not in downloaded]
        return "\n".join(lines)


def _short(value: Any, limit: int = 80) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"


def _stage_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """One result per stage per flow run: a retried run finds the stages it already finished."""
    return f"egi-pipeline/{context.task_run.flow_run_id}/{context.task.name}"


STAGE = dict(cache_key_fn=_stage_key, persist_result=True, cache_expiration=None)


@egi_task(name="pipeline-identity", **STAGE)
async def identity_stage(credentials: CheckinCredentials) -> Identity:
    """Get the Check-in token (refreshing it if needed) and say whose it is."""
    me = await asyncio.to_thread(credentials.identity)
    return Identity(subject=me.subject, username=me.username, vos=list(me.vos))


def _is_csv(name: str, path: str, mime_types: dict[str, str]) -> bool:
    return mime_types.get(name) == "text/csv" or name.endswith(".csv") or path.endswith(".csv")


def _items_from(execution: Execution, output: Optional[str], column: str) -> list[str]:
    """The work items: the `column` of the CSV `output` names (an output, a file name, a path
    in output.zip), of the first CSV file by default, or the items of a value output."""
    got = produced(execution)
    if output is not None and output not in got.files and output in got.values:
        value = got.values[output]
        if isinstance(value, list):
            items = [str(v[column] if isinstance(v, dict) else v) for v in value
                     if (v.get(column) if isinstance(v, dict) else v) not in (None, "")]
            if not items:
                raise ValueError(f"work_items: the value output {output!r} of {got.service} {got.process} "
                                 "lists no work items")
            return items
        if not isinstance(value, str):
            raise ValueError(f"work_items.output: the value output {output!r} of {got.service} {got.process} is "
                             f"a {type(value).__name__}, neither a list nor CSV text")
        return _column(output, io.StringIO(value), column)
    mime_types = {f.name: f.mime_type for f in got.downloads}
    tables = [(name, path) for name, path in got.files.items()
              if _is_csv(name, path, mime_types) and (output is None or output in (name, PurePosixPath(name).name))]
    if not tables:
        values = [name for name, value in got.values.items() if isinstance(value, (list, str))]
        raise ValueError(f"work_items.output: {got.service} {got.process} produced no CSV"
                         f"{' named ' + repr(output) if output else ''}; its files: {list(got.files)}"
                         f"; its value outputs (a list or CSV text): {values}")
    name, path = tables[0]
    with open(path, newline="") as handle:
        return _column(name, handle, column)


def _column(name: str, handle: Any, column: str) -> list[str]:
    rows = list(csv.DictReader(handle))
    if rows and column not in rows[0]:
        raise ValueError(f"work_items.column: {name} has no column {column!r}; it has {list(rows[0])}")
    items = [row[column] for row in rows if row.get(column)]
    if not items:
        raise ValueError(f"work_items: {name} lists no work items")
    return items


async def _run(service: DataMiner | CCP, process: str, inputs: dict[str, Any], destination: str,
               parameter: str) -> Execution:
    """Run one algorithm on the stage's service: a DataMiner algorithm or a CCP method. A CCP
    method that does not exist is named with the `parameter` that gave it, and the VRE's methods
    (the processes' defaults are DataMiner algorithms)."""
    if not isinstance(service, CCP):
        return await run_algorithm(service, process, inputs, destination=destination)
    try:
        return await run_ccp_method(service, process, inputs, destination)
    except CCPNoSuchProcess:
        methods = sorted(m.id for m in await list_ccp_methods(service))
        raise ValueError(f"{parameter}: CCP has no method {process!r} in the VRE {service.context}; "
                         f"its methods: {methods}") from None


def _table_value(service: DataMiner | CCP, table: Path) -> str:
    """The results table as the service takes an input file: DataMiner uploads a local file
    (its path), CCP takes JSON values only (the CSV text itself)."""
    return table.read_text() if isinstance(service, CCP) else str(table)


@egi_task(name="pipeline-work-items", **STAGE)
async def work_items_stage(service: DataMiner | CCP, spec: WorkItems, destination: str) -> WorkItemsResult:
    """Run the algorithm that lists the work items (DataMiner or CCP); read them from its CSV."""
    result = await _run(service, spec.process, spec.inputs, destination, "work_items.process")
    return WorkItemsResult(execution=result, items=_items_from(result, spec.output, spec.column))


@egi_task(name="pipeline-grid", **STAGE)
async def grid_stage(diracx: DiracX, spec: GridJobs, items: list[str], destination: str,
                     deadline_hours: float) -> DiracBatchReport:
    """One DIRAC job per item, waited for in bulk, failures resubmitted, outputs collected."""
    job = spec.job.model_copy(update={"parameters": list(items)})
    policy = WatchPolicy(deadline=deadline_hours * 3600)
    return await run_batch(diracx, job, spec.max_resubmissions, destination, policy)


def _results_table(items: list[str], grid: DiracBatchReport, path: Path) -> Path:
    """One numeric row per work item whose job finished — its position in the item list, its
    final job id, the bytes its output sandbox holds — as the summary algorithm's input. A job
    whose sandbox could not be fetched whole (`error`) has no row: its bytes would be partial."""
    outputs = {o.job_id: o for o in grid.outputs if o.path and not o.error}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_index", "job_id", "output_bytes"])
        for index, (_item, job_id) in enumerate(zip(items, grid.jobs)):
            if job_id in outputs:
                folder = Path(outputs[job_id].path or "")
                writer.writerow([index, job_id, sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())])
    return path


@egi_task(name="pipeline-summary", **STAGE)
async def summary_stage(service: DataMiner | CCP, spec: Summary, items: list[str], grid: DiracBatchReport,
                        destination: str) -> Execution:
    """Run an algorithm (DataMiner or CCP) over the table of grid results."""
    table = _results_table(items, grid, Path(destination) / "grid-results.csv")
    return await _run(service, spec.process, {spec.table_input: _table_value(service, table)}, destination,
                      "summary.process")


@egi_task(name="pipeline-vms", **STAGE)
async def vms_stage(fedcloud: FedCloud, vo: Optional[str]) -> Inventory:
    """A snapshot of the VO's FedCloud VMs (sites that fail are listed, not fatal)."""
    return await vm_inventory(fedcloud, vo)


@egi_flow(name="egi-pipeline")
def egi_pipeline(
    work_items: WorkItems = WorkItems(),
    grid: GridJobs = GridJobs(),
    summary: Optional[Summary] = Summary(),
    vms: bool = True,
    vo: Optional[str] = None,
    algorithms: Algorithms = "dataminer",
    checkin_block: str = "egi-checkin",
    dataminer_block: str = "dataminer",
    ccp_block: str = "ccp",
    diracx_block: str = "diracx",
    fedcloud_block: str = "fedcloud",
    destination: str = "pipeline-outputs",
    deadline_hours: Annotated[float, Field(gt=0)] = 48.0,
) -> PipelineReport:
    """Work items (DataMiner or CCP) → one DIRAC job each → optional summary → FedCloud VMs → report.

    Args:
        work_items: The DataMiner algorithm or CCP method that lists the work items (a CSV).
        grid: The DIRAC job run for each item (%s is the item) and how often to resubmit failures.
        summary: A DataMiner algorithm or CCP method over the grid results; empty to skip.
        vms: Take a snapshot of the VO's FedCloud VMs.
        vo: The VO for the VM snapshot (default: the FedCloud block's default_vo).
        algorithms: Where the work-items and summary algorithms run: D4Science DataMiner (WPS)
            or D4Science CCP (OGC API – Processes; give CCP method ids as their processes).
        checkin_block: Name of the EGI Check-in Credentials block.
        dataminer_block: Name of the D4Science DataMiner block (algorithms = dataminer).
        ccp_block: Name of the D4Science CCP block (algorithms = ccp).
        diracx_block: Name of the DiracX block.
        fedcloud_block: Name of the EGI FedCloud block.
        destination: Folder for every downloaded output (one sub-folder per stage).
        deadline_hours: Give up waiting for the grid jobs after this many hours.
    """
    if algorithms not in ("dataminer", "ccp"):
        raise ValueError(f"algorithms: {algorithms!r} is neither 'dataminer' nor 'ccp'")
    service_block = ({"ccp_block": (CCP, ccp_block)} if algorithms == "ccp"
                     else {"dataminer_block": (DataMiner, dataminer_block)})
    blocks = load_blocks({"checkin_block": (CheckinCredentials, checkin_block), **service_block,
                          "diracx_block": (DiracX, diracx_block),
                          **({"fedcloud_block": (FedCloud, fedcloud_block)} if vms else {})})
    credentials, diracx = blocks["checkin_block"], blocks["diracx_block"]
    service = blocks[next(iter(service_block))]
    fedcloud = blocks.get("fedcloud_block")
    out = Path(destination)

    who = identity_stage(credentials)
    listed = work_items_stage(service, work_items, str(out / "work-items"))
    batch = grid_stage(diracx, grid, listed.items, str(out / "grid"), deadline_hours)
    summarised = summary_stage(service, summary, listed.items, batch, str(out / "summary")) if summary else None
    snapshot = vms_stage(fedcloud, vo) if fedcloud else None

    report = PipelineReport(identity=who, work_items=listed, grid=batch, summary=summarised, vms=snapshot)
    publish_sync("pipeline report", create_markdown_artifact, report.markdown(), key="egi-pipeline",
                 description="What the pipeline did")
    return report
