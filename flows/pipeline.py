"""`egi-pipeline`: the services chained the way a researcher would.

    from prefect_egi.flows import egi_pipeline
    report = egi_pipeline()                 # the defaults run against `egi-flows sandbox up`
    print(report.markdown())

1. identity — the Check-in token every later stage uses (who, which VOs);
2. work items — a DataMiner algorithm whose CSV output lists the work items;
3. grid — one DIRAC job per item (a parametric batch), waited for in bulk,
   failures resubmitted, output sandboxes collected;
4. summary (optional) — a DataMiner algorithm over a table of the grid results;
5. VMs (optional) — a snapshot of the VO's FedCloud VMs;
6. a markdown report (artifact `egi-pipeline`) linking every execution, job and output.

Each stage is one task whose result is persisted under a key made of the flow
run and the stage: when a failed run is retried, finished stages come back
from storage instead of running again, and a stage that had already submitted
remote work finds it in the run's ledger — nothing is submitted twice.
Transient failures are retried inside the stages, by the service tasks.
Cancelling the run kills its DIRAC jobs and marks its DataMiner executions; a
crash leaves them running, and `prefect flow-run retry <id>` resumes watching them.
"""

import asyncio
import csv
from pathlib import Path
from typing import Annotated, Any, Optional

from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext
from pydantic import BaseModel, Field

from prefect_egi.flows.base import egi_flow, load_blocks
from prefect_egi.tasks import (
    CheckinCredentials,
    DataMiner,
    DataMinerResult,
    DiracBatchReport,
    DiracJob,
    DiracX,
    FedCloud,
    Inventory,
    WatchPolicy,
    egi_task,
    run_algorithm,
    run_batch,
    vm_inventory,
)
from prefect_egi.tasks.reporting import publish_sync


class WorkItems(BaseModel):
    """The DataMiner algorithm that lists the work items, and where they are in its output."""

    process: str = Field(default="GRID_SPLITTER", description="Algorithm (short name or full id).")
    inputs: dict[str, Any] = Field(default_factory=lambda: {"items": 5}, description="Its inputs.")
    output: Optional[str] = Field(default=None, description="The CSV output holding the items (default: the first CSV).")
    column: str = Field(default="item", description="The column whose values become the grid jobs' parameters.")


class GridJobs(BaseModel):
    """One DIRAC job per work item: `%s` in the arguments (and name) is the item."""

    job: DiracJob = Field(default_factory=lambda: DiracJob(
        executable="echo", arguments="processing %s", job_name="egi-pipeline-%s"))
    max_resubmissions: int = Field(default=2, ge=0, le=10, description="How often a failed job is submitted again.")


class Summary(BaseModel):
    """A DataMiner algorithm run over the grid results (a CSV: item_index, job_id, output_bytes)."""

    process: str = Field(default="CSV_SUMMARY", description="Algorithm (short name or full id).")
    table_input: str = Field(default="table", description="Its input that receives the results table.")


class Identity(BaseModel):
    subject: Optional[str]
    username: Optional[str]
    vos: list[str]


class WorkItemsResult(BaseModel):
    execution: DataMinerResult
    items: list[str]


class PipelineReport(BaseModel):
    """Everything the run did, with links: no secret in it."""

    identity: Identity
    work_items: WorkItemsResult
    grid: DiracBatchReport
    summary: Optional[DataMinerResult] = None
    vms: Optional[Inventory] = None

    def markdown(self) -> str:
        w, g = self.work_items, self.grid
        lines = ["# EGI pipeline", "", f"Run as **{self.identity.username or self.identity.subject}** "
                 f"(VOs: {', '.join(self.identity.vos) or 'none'}).", "",
                 "| stage | result | where |", "|---|---|---|",
                 f"| work items | {len(w.items)} from DataMiner {w.execution.process} | <{w.execution.status_location}> |",
                 f"| grid | {g.succeeded}/{g.submitted} DIRAC jobs done, {g.resubmitted} resubmitted, "
                 f"{len(g.failed)} failed | `{g.destination}` |"]
        if self.summary:
            lines.append(f"| summary | DataMiner {self.summary.process}: {len(self.summary.files)} file(s) "
                         f"| <{self.summary.status_location}> |")
        if self.vms:
            answered = sum(1 for s in self.vms.sites if s.failure is None)
            lines.append(f"| VMs | {len(self.vms.vms)} VM(s) of {self.vms.vo} on {answered}/{len(self.vms.sites)} "
                         "site(s) | artifact `vm-inventory` |")
        lines += ["", "## Grid jobs", "", "| item | job | output |", "|---|---|---|"]
        outputs = {o.job_id: o for o in g.outputs}
        for item, job_id in zip(w.items, g.jobs):
            out = outputs.get(job_id)
            where = f"`{out.path}`" if out and out.path else (out.note if out else "failed")
            lines.append(f"| {item} | {job_id} | {where} |")
        if g.failed:
            lines += ["", "Failed: " + ", ".join(f"{f.job_id} ({f.status}: {f.minor_status})" for f in g.failed)]
        files = [*w.execution.files, *(self.summary.files if self.summary else [])]
        if files:
            lines += ["", "## DataMiner files", ""] + [f"- [{f.name}]({f.url}) → `{f.path}`" for f in files if f.path]
        return "\n".join(lines)


def _stage_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """One result per stage per flow run: a retried run finds the stages it already finished."""
    return f"egi-pipeline/{context.task_run.flow_run_id}/{context.task.name}"


STAGE = dict(cache_key_fn=_stage_key, persist_result=True, cache_expiration=None)


@egi_task(name="pipeline-identity", **STAGE)
async def identity_stage(credentials: CheckinCredentials) -> Identity:
    """Get the Check-in token (refreshing it if needed) and say whose it is."""
    me = await asyncio.to_thread(credentials.identity)
    return Identity(subject=me.subject, username=me.username, vos=list(me.vos))


def _items_from(result: DataMinerResult, output: Optional[str], column: str) -> list[str]:
    tables = [f for f in result.files if f.path and (f.mime_type == "text/csv" or f.path.endswith(".csv"))
              and (output is None or f.name == output)]
    if not tables:
        raise ValueError(f"work_items.output: DataMiner {result.process} produced no CSV output"
                         f"{' named ' + output if output else ''}; its files: {[f.name for f in result.files]}")
    with open(tables[0].path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and column not in rows[0]:
        raise ValueError(f"work_items.column: {tables[0].name} has no column {column!r}; it has {list(rows[0])}")
    items = [row[column] for row in rows if row.get(column)]
    if not items:
        raise ValueError(f"work_items: {tables[0].name} lists no work items")
    return items


@egi_task(name="pipeline-work-items", **STAGE)
async def work_items_stage(dataminer: DataMiner, spec: WorkItems, destination: str) -> WorkItemsResult:
    """Run the algorithm that lists the work items; read them from its CSV output."""
    result = await run_algorithm(dataminer, spec.process, spec.inputs, destination=destination)
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
async def summary_stage(dataminer: DataMiner, spec: Summary, items: list[str], grid: DiracBatchReport,
                        destination: str) -> DataMinerResult:
    """Run a DataMiner algorithm over the table of grid results."""
    table = _results_table(items, grid, Path(destination) / "grid-results.csv")
    return await run_algorithm(dataminer, spec.process, {spec.table_input: str(table)}, destination=destination)


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
    checkin_block: str = "egi-checkin",
    dataminer_block: str = "dataminer",
    diracx_block: str = "diracx",
    fedcloud_block: str = "fedcloud",
    destination: str = "pipeline-outputs",
    deadline_hours: Annotated[float, Field(gt=0)] = 48.0,
) -> PipelineReport:
    """DataMiner work items → one DIRAC job each → optional DataMiner summary → FedCloud VMs → report.

    Args:
        work_items: The DataMiner algorithm that lists the work items (a CSV output).
        grid: The DIRAC job run for each item (%s is the item) and how often to resubmit failures.
        summary: A DataMiner algorithm over the grid results; empty to skip.
        vms: Take a snapshot of the VO's FedCloud VMs.
        vo: The VO for the VM snapshot (default: the FedCloud block's default_vo).
        checkin_block: Name of the EGI Check-in Credentials block.
        dataminer_block: Name of the D4Science DataMiner block.
        diracx_block: Name of the DiracX block.
        fedcloud_block: Name of the EGI FedCloud block.
        destination: Folder for every downloaded output (one sub-folder per stage).
        deadline_hours: Give up waiting for the grid jobs after this many hours.
    """
    blocks = load_blocks({"checkin_block": (CheckinCredentials, checkin_block),
                       "dataminer_block": (DataMiner, dataminer_block), "diracx_block": (DiracX, diracx_block),
                       **({"fedcloud_block": (FedCloud, fedcloud_block)} if vms else {})})
    credentials, dataminer, diracx = blocks["checkin_block"], blocks["dataminer_block"], blocks["diracx_block"]
    fedcloud = blocks.get("fedcloud_block")
    out = Path(destination)

    who = identity_stage(credentials)
    listed = work_items_stage(dataminer, work_items, str(out / "work-items"))
    batch = grid_stage(diracx, grid, listed.items, str(out / "grid"), deadline_hours)
    summarised = summary_stage(dataminer, summary, listed.items, batch, str(out / "summary")) if summary else None
    snapshot = vms_stage(fedcloud, vo) if fedcloud else None

    report = PipelineReport(identity=who, work_items=listed, grid=batch, summary=summarised, vms=snapshot)
    publish_sync("pipeline report", create_markdown_artifact, report.markdown(), key="egi-pipeline",
                 description="What the pipeline did")
    return report
