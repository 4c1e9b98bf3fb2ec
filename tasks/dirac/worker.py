"""The `dirac` worker type: every Prefect flow run becomes one DIRAC job.

    prefect work-pool create grid --type dirac
    prefect worker start --pool grid

Each flow run of the pool is submitted through the pool's DiracX block as one job.
The job's input sandbox carries:

- `prefect-egi-job.sh` (the Executable): loads the run's environment, runs the pool's
  setup command (a CVMFS `source …` line, or creating a venv with the matching
  Prefect), then `exec`s the flow run's command (`python -m prefect.engine`, which runs
  the deployment's pull steps and the flow in the job's working directory, or for a
  bound flow `python -m prefect.bundles.execute --key prefect-bundle.json`);
- `prefect-egi.env` (mode 0600): the run's environment — PREFECT__FLOW_RUN_ID, the
  Prefect API URL and, when the worker has one, PREFECT_API_KEY — which the script
  reads and deletes before the setup command runs; so it is never in the JDL (what a
  site administrator sees in a job's description) nor in the output sandbox. It does
  travel in the input sandbox: the DIRAC sandbox store and the node's administrators
  could read it while the job waits or runs. Give the pool a Prefect API key that can
  do no more than run flows;
- the pool's extra input sandbox files, and a bound flow's bundle.

The DIRAC job id is the run's infrastructure id. The JobName holds the flow run id
(`prefect-flow-run-<uuid>`): a submission whose answer was lost, or made by a worker
that was killed before it saved the id, is found again by it, never sent twice.

One `SharedWatch` per DiracX block follows every run's job with ONE bulk search per
cycle, however many runs are in flight. When a job ends:

- the run reached a final state (the engine on the node reported it): nothing to do;
- the job was Killed (a cancellation), or the run is Cancelling: the run ends Cancelled
  — also for a run that had started, which Prefect's base worker leaves to a runner
  that does not exist on the grid. The worker finds Cancelling runs at each poll of the
  pool (one read), not through Prefect's cancellation observer, which is off by
  default (`PREFECT_WORKER_ENABLE_CANCELLATION`) and only handles runs not yet started.
  A started run is marked Cancelled before its job is killed, so the engine's answer
  to the SIGTERM (Crashed) is refused; its `on_cancellation` hooks do not run on the node;
- otherwise the engine never finished (broken setup command, missing software, a node
  without outbound access): the run is Crashed with the job's status and the tail of
  its std.out/std.err in the run's logs.

A worker that is killed and started again adopts the pool's runs that are still
Pending/Running (its own, or those of workers that are gone) and follows their jobs.
"""

from __future__ import annotations

import asyncio
import copy
import os
import shlex
import stat
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from prefect.exceptions import InfrastructureNotFound, ObjectNotFound
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult
from pydantic import Field, field_validator

from prefect_egi.tasks.dirac.jdl import SITE_NAME_PATTERN, site_name_problem
from prefect_egi.tasks.remote import JobState, JobStatus, SharedWatch, WatchClosed, WatchPolicy, WatchReporter

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from prefect_egi.tasks.dirac.block import DiracX

SCRIPT = "prefect-egi-job.sh"
ENV_FILE = "prefect-egi.env"
BUNDLE_FILE = "prefect-bundle.json"
JOB_NAME_PREFIX = "prefect-flow-run-"
SETUP_FAILED_EXIT = 97  # the script's exit code when the setup command fails
TAIL_LINES = 30
#: a Pending run without a job id is adopted only after this long: its own worker may
#: still be submitting it
ADOPT_AFTER = 30.0
ADOPT_EVERY = 30.0  # seconds between two looks for runs nobody follows
#: the worker's pacing: runs last minutes to hours; a start is seen within ~2 s
WORKER_WATCH = WatchPolicy(first_interval=2.0, max_interval=15.0, deadline=None)


#: the same rule in the pool's schema: the server refuses a flow run with a bad site name
SITE_ITEMS = {"items": {"type": "string", "pattern": f"^{SITE_NAME_PATTERN}$"}}


def job_name(flow_run_id: Any) -> str:
    return f"{JOB_NAME_PREFIX}{flow_run_id}"


def _sites(value: list[str], field: str) -> list[str]:
    for site in value:
        problem = site_name_problem(site)
        if problem:
            raise ValueError(f"{field}: {problem}")
    return value


class DiracVariables(BaseVariables):
    """What a `dirac` pool's runs may set (the UI's form for the pool and for job variables)."""

    diracx_block: str = Field(default="diracx", title="DiracX block",
                              description="Name of the DiracX block whose server and credentials submit the jobs.")
    site: list[str] = Field(default_factory=list, title="Sites", json_schema_extra=SITE_ITEMS,
                            description="DIRAC sites to run at, e.g. EGI.SARA.nl (empty: any).")
    banned_sites: list[str] = Field(default_factory=list, title="Banned sites", json_schema_extra=SITE_ITEMS,
                                    description="DIRAC sites never to run at.")
    cpu_time: int | None = Field(default=None, gt=0, title="CPU time (s)",
                                 description="CPUTime of the job: the queue's CPU-time limit it needs.")
    tags: list[str] = Field(default_factory=list, description="Tags the resource must have (e.g. GPU, 8GB).")
    platform: list[str] = Field(default_factory=list, description="Platforms the job can run on (empty: any).")
    priority: int | None = Field(default=None, ge=0, le=10, description="Priority among your jobs, 0–10.")
    job_group: str | None = Field(default=None, title="Job group",
                                  description="JobGroup (default: prefect-<work pool>).")
    setup_command: str | None = Field(
        default=None, title="Setup command",
        description="Shell line run on the node before the flow, e.g. "
                    "`source /cvmfs/sw.egi.eu/…/setup.sh`, or creating a venv with `pip install prefect-egi`.")
    input_sandbox: list[str] = Field(default_factory=list, title="Extra input sandbox files",
                                     description="Files (on the worker's machine) sent with every job.")
    output_sandbox: list[str] = Field(default_factory=list, title="Extra output sandbox files",
                                      description="Files (patterns) the job brings back besides std.out/std.err.")
    fetch_outputs_to: str | None = Field(
        default=None, title="Fetch outputs to",
        description="A folder on the worker's machine: each run's output sandbox is unpacked into "
                    "<folder>/<flow run id>/ when its job ends.")

    @field_validator("site", "banned_sites")
    @classmethod
    def _check_sites(cls, value: list[str], info: Any) -> list[str]:
        return _sites(value, info.field_name)


def _templated(name: str) -> dict[str, Any]:
    """A job configuration field filled from the variable of the same name."""
    return {"template": "{{ " + name + " }}"}


class DiracJobConfiguration(BaseJobConfiguration):
    """One flow run's job, rendered from the pool's base job template and its variables."""

    diracx_block: str = Field(default="diracx", json_schema_extra=_templated("diracx_block"))
    site: list[str] = Field(default_factory=list, json_schema_extra=_templated("site"))
    banned_sites: list[str] = Field(default_factory=list, json_schema_extra=_templated("banned_sites"))
    cpu_time: int | None = Field(default=None, gt=0, json_schema_extra=_templated("cpu_time"))
    tags: list[str] = Field(default_factory=list, json_schema_extra=_templated("tags"))
    platform: list[str] = Field(default_factory=list, json_schema_extra=_templated("platform"))
    priority: int | None = Field(default=None, ge=0, le=10, json_schema_extra=_templated("priority"))
    job_group: str | None = Field(default=None, json_schema_extra=_templated("job_group"))
    setup_command: str | None = Field(default=None, json_schema_extra=_templated("setup_command"))
    input_sandbox: list[str] = Field(default_factory=list, json_schema_extra=_templated("input_sandbox"))
    output_sandbox: list[str] = Field(default_factory=list, json_schema_extra=_templated("output_sandbox"))
    fetch_outputs_to: str | None = Field(default=None, json_schema_extra=_templated("fetch_outputs_to"))

    @field_validator("site", "banned_sites")
    @classmethod
    def _check_sites(cls, value: list[str], info: Any) -> list[str]:
        return _sites(value, info.field_name)

    @field_validator("site", "banned_sites", "tags", "platform", "input_sandbox", "output_sandbox", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else [value] if isinstance(value, str) else value

    @staticmethod
    def _base_flow_run_command() -> str:
        """`python -m prefect.engine`, not the base's `prefect flow-run execute`: Prefect 3.9's
        runner copies the flow's code into a temporary workspace and runs it there, so the
        files a flow writes would miss the job's working directory — which DIRAC's output
        sandbox is collected from (seen on the local site: `grid_hello ran in
        /tmp/prefect-flow-run-…`). The engine runs the deployment's pull steps, then the
        flow, in the job's folder."""
        return "python -m prefect.engine"

    @field_validator("input_sandbox")
    @classmethod
    def _files_exist(cls, value: list[str]) -> list[str]:
        for item in value:
            if not Path(item).expanduser().is_file():
                raise ValueError(f"input_sandbox: {item} is not a file on the worker's machine (paths are the "
                                 "worker's, and every job of the pool gets them)")
        return value


class DiracWorkerResult(BaseWorkerResult):
    """The run's DIRAC job id and 0 when the run's state is settled (by the engine or the worker)."""


class _RunReporter(WatchReporter):
    """Job transitions into the logs of the flow run each job carries."""

    def __init__(self, adapter: Any, worker: "DiracWorker"):
        super().__init__(adapter, worker._logger)
        self.worker = worker

    async def started(self, statuses: Any) -> None:
        pass

    async def transition(self, old: JobStatus | None, new: JobStatus) -> None:
        log = self.worker._run_loggers.get(new.job_id, self.log)
        log.info("DIRAC job %s: %s", new.job_id, new.message or new.state.value)

    async def trouble(self, problem: str, delay: float) -> None:
        self.log.warning("DiracX status request failed (%s); the worker tries again in %.0f s", problem, delay)


class _Followed:
    """One DiracX block's watch, shared by every run that block submits."""

    def __init__(self, block: "DiracX", worker: "DiracWorker"):
        self.block = block
        self.adapter = block.job_adapter()
        self.watch = SharedWatch(self.adapter, WORKER_WATCH, _RunReporter(self.adapter, worker))
        self.task = asyncio.create_task(self.watch.run(), name=f"dirac-watch-{block.url}")
        self.task.add_done_callback(lambda task: task.cancelled() or not task.exception() or worker._logger.error(
            "The watch of %s's jobs stopped: %r", block.url, task.exception()))


class DiracWorker(BaseWorker[DiracJobConfiguration, DiracVariables, DiracWorkerResult]):
    """Runs each flow run of a `dirac` work pool as a DIRAC job (see the module's text)."""

    type = "dirac"
    job_configuration = DiracJobConfiguration
    job_configuration_variables = DiracVariables
    _description = ("Run each flow run as a DIRAC grid job through DiracX (EGI Workload Manager): one bulk "
                    "status request per cycle for all runs, cancellation kills the job, restarts adopt "
                    "the runs in flight.")
    _documentation_url = "https://diracx.diracgrid.org/"  # the DIRAC side; the README says the rest
    _logo_url = "https://diracgrid.org/images/dirac-logo.png"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._followed: dict[str, _Followed] = {}  # DiracX block name → its shared watch
        self._run_loggers: dict[str, Any] = {}  # job id → its flow run's logger
        self._in_hand: set[str] = set()  # flow run ids this worker follows
        self._last_adoption = float("-inf")
        self._cancelling: set[str] = set()  # Cancelling runs whose kill is under way or done
        self._kills_owed: dict[str, DiracJobConfiguration] = {}  # job id → its configuration

    # -- one run

    async def run(self, flow_run: "FlowRun", configuration: DiracJobConfiguration,
                  task_status: anyio.abc.TaskStatus[str] | None = None) -> DiracWorkerResult:
        """Submit the run's job (exactly once), report its id, follow it to the end."""
        self._in_hand.add(str(flow_run.id))
        try:
            followed = await self._follow_block(configuration.diracx_block)
            job_id = await self._job_of(flow_run, configuration, followed.block)
            if task_status is not None:
                task_status.started(job_id)
            return await self._follow(flow_run, configuration, followed, job_id)
        finally:
            self._in_hand.discard(str(flow_run.id))

    async def _follow_block(self, name: str) -> _Followed:
        """The block's shared watch (loading the block on first use, with a clear error)."""
        if name not in self._followed:
            from prefect_egi.tasks.dirac.block import DiracX

            try:
                block = await DiracX.aload(name)
            except ValueError as exc:
                raise ValueError(f"diracx_block: there is no DiracX block named {name!r} ({exc}); create it "
                                 "(DiracX(url=…, vo=…).save(name)) or set the pool's `diracx_block`") from None
            if name not in self._followed:
                self._followed[name] = _Followed(block, self)
        return self._followed[name]

    async def _job_of(self, flow_run: "FlowRun", configuration: DiracJobConfiguration, block: "DiracX") -> str:
        """The run's job: the one it already has (a restarted worker), else the one found by
        its JobName (a lost answer), else a new one."""
        current = await self.client.read_flow_run(flow_run.id)
        if current.infrastructure_pid:
            return str(current.infrastructure_pid)
        return str(await self._submit(flow_run, configuration, block))

    async def _submit(self, flow_run: "FlowRun", configuration: DiracJobConfiguration, block: "DiracX",
                      bundle: str | None = None) -> int:
        from diracx.api.jobs import create_sandbox

        from prefect_egi.tasks.dirac.client import engine_error
        from prefect_egi.tasks.dirac.jdl import DiracJob
        from prefect_egi.tasks.dirac.submission import submit_exactly_once

        pool = self._work_pool.name if self._work_pool else self._work_pool_name
        with tempfile.TemporaryDirectory(prefix="prefect-egi-job-") as folder:
            files = write_job_files(Path(folder), configuration, bundle)
            job = DiracJob(
                executable=SCRIPT, input_sandbox=[*map(str, files), *configuration.input_sandbox],
                output_sandbox=list(dict.fromkeys(["std.out", "std.err", *configuration.output_sandbox])),
                job_name=job_name(flow_run.id), job_group=configuration.job_group or f"prefect-{pool}",
                site=configuration.site, banned_sites=configuration.banned_sites, cpu_time=configuration.cpu_time,
                tags=configuration.tags, platform=configuration.platform, priority=configuration.priority)

            async def submit(api: Any) -> int:
                uploaded = await create_sandbox(job.local_inputs(), client=api)
                ids, _ = await submit_exactly_once(
                    api, job.to_jdls(uploaded), concurrency=1, reconcile_first=True,
                    since=flow_run.created, classify=lambda exc: engine_error(exc, block.url))
                return ids[0]

            job_id = await block.client().call(submit)
        self.get_flow_run_logger(flow_run).info(
            "Flow run %s is DIRAC job %s on %s (JobGroup %s)", flow_run.name, job_id, block.url, job.job_group)
        return job_id

    async def _follow(self, flow_run: "FlowRun", configuration: DiracJobConfiguration, followed: _Followed,
                      job_id: str) -> DiracWorkerResult:
        self._run_loggers[job_id] = self.get_flow_run_logger(flow_run)
        try:
            final = await followed.watch.add(job_id)
            await self._settle(flow_run, configuration, followed.block, job_id, final)
        except WatchClosed:  # this worker stops; a worker of the pool that starts adopts the run
            self._run_loggers[job_id].info(
                "Worker %s stops before DIRAC job %s ended; a worker of the pool that starts will follow "
                "the run again", self.name, job_id)
        finally:
            self._run_loggers.pop(job_id, None)
        return DiracWorkerResult(identifier=job_id, status_code=0)

    async def _settle(self, flow_run: "FlowRun", configuration: DiracJobConfiguration, block: "DiracX",
                      job_id: str, final: JobStatus) -> None:
        """The job ended: make the run's state tell the truth (see the module's text)."""
        log = self.get_flow_run_logger(flow_run)
        current = await self.client.read_flow_run(flow_run.id)
        state = current.state
        application = final.detail.get("application_status") or ""
        application = "" if application == "Unknown" else application  # DIRAC's word for "nothing reported"
        ended = f"{final.message}{f' ({application})' if application else ''}"
        log.info("DIRAC job %s ended: %s", job_id, ended)
        killed = final.state is JobState.CANCELLED or (state is not None and state.is_cancelling())
        crashed = not killed and not (state is not None and state.is_final())
        # the output sandbox is fetched when it is asked for, or when its std.err must explain a crash
        outputs = (await self._outputs(block, job_id, configuration, flow_run, log)
                   if configuration.fetch_outputs_to or crashed else {})
        if killed:
            # a run the engine reported Crashed on SIGTERM was still cancelled; one that
            # completed before the kill landed, or that is already Cancelled, stays as it is
            if state is None or not (state.is_completed() or state.is_cancelled()):
                await self._mark_flow_run_as_cancelled(
                    current, {"message": f"DIRAC job {job_id} was killed ({final.message})."})
                log.info("Flow run %s cancelled: its DIRAC job %s is %s", flow_run.name, job_id, final.message)
            return
        if not crashed:
            return
        for name, tail in outputs.items():
            log.error("The last lines of DIRAC job %s's %s:\n%s", job_id, name, tail or "(empty)")
        hint = ("the setup command failed" if application == f"Exit code {SETUP_FAILED_EXIT}"
                else "the flow run's engine did not finish on the node")
        await self._propose_crashed_state(
            current, f"DIRAC job {job_id} ended {ended} before the flow run finished: {hint}. Its std.out and "
                     "std.err are in the flow run's logs.")

    async def _outputs(self, block: "DiracX", job_id: str, configuration: DiracJobConfiguration,
                       flow_run: "FlowRun", log: Any) -> dict[str, str]:
        """Fetch the job's output sandbox (into `fetch_outputs_to`, or a scratch folder);
        the tails of its std.out / std.err."""
        from prefect_egi.tasks.dirac.outputs import collect_outputs

        keep = configuration.fetch_outputs_to
        with tempfile.TemporaryDirectory(prefix="prefect-egi-outputs-") as scratch:
            root = Path(keep).expanduser() / str(flow_run.id) if keep else Path(scratch)
            try:
                (output,) = await collect_outputs(block.client(), [int(job_id)], root)
            except Exception as exc:
                log.warning("Could not fetch DIRAC job %s's output sandbox: %s", job_id, exc)
                return {}
            if output.error or not output.path:
                log.warning("DIRAC job %s's output sandbox: %s", job_id, output.error or output.note)
                return {}
            folder = Path(output.path)
            if keep:
                log.info("DIRAC job %s's outputs are in %s: %s", job_id, folder, ", ".join(output.files))
            return {name: _tail(folder / name) for name in ("std.out", "std.err") if (folder / name).is_file()}

    async def _give_worker_labels_to_flow_run(self, flow_run_id: Any) -> None:
        """The base worker's labels call, made harmless: it runs before the submission and its
        failure would crash a run that was never sent (seen: a busy SQLite server answered 503
        for two minutes and Prefect's base worker reported the run Crashed). The labels only
        say which worker took the run; without them any worker of the pool may adopt it."""
        try:
            await super()._give_worker_labels_to_flow_run(flow_run_id)
        except Exception as exc:
            self._logger.warning("Could not label flow run %s with this worker (%s); submitting it anyway",
                                 flow_run_id, exc)

    # -- a flow bound to the pool (`@on_dirac`), without a deployment

    async def _submit_adhoc_run(self, flow: Any, parameters: dict[str, Any] | None = None,
                                job_variables: dict[str, Any] | None = None,
                                task_status: anyio.abc.TaskStatus[Any] | None = None,
                                flow_run: "FlowRun | None" = None) -> None:
        """`BaseWorker.submit` for DIRAC: the flow's bundle travels in the job's input sandbox
        (no bundle storage for the pool to configure, no image, no git repository) and is run
        on the node by `python -m prefect.bundles.execute` after the setup command."""
        import json

        from prefect.bundles import create_bundle_for_flow_run
        from prefect.client.schemas.objects import Flow as APIFlow
        from prefect.context import TagsContext
        from prefect.states import Pending

        variables = {**(job_variables or {}), "command": f"python -m prefect.bundles.execute --key {BUNDLE_FILE}"}
        work_pool = copy.deepcopy(self.work_pool)
        if getattr(flow, "result_storage", None) is None:
            self._logger.warning(
                "Flow %r has no result storage: its result stays on the grid node. Give the flow "
                "result_storage=… (a storage block both sides reach) to get the result back.", flow.name)
        flow = flow.with_options(persist_result=True) if getattr(flow, "persist_result", None) is None else flow
        if getattr(flow, "launcher", None) is None:
            # the node's environment is the setup command's, not a uv snapshot of this one
            flow.launcher = {"execution": ["python"]}
        if flow_run is None:
            flow_run = await self.client.create_flow_run(
                flow, parameters=flow.serialize_parameters(parameters or {}), state=Pending(),
                job_variables=variables, work_pool_name=work_pool.name, tags=TagsContext.get().current_tags)
        else:
            await self.client.set_flow_run_state(flow_run.id, Pending(message="Retrying on the grid"), force=True)
            flow_run = await self.client.read_flow_run(flow_run.id)
        if task_status is not None:
            task_status.started(flow_run)
        self._in_hand.add(str(flow_run.id))
        try:
            configuration = await self.job_configuration.from_template_and_values(
                base_job_template=work_pool.base_job_template, values=variables, client=self.client)
            configuration.prepare_for_flow_run(
                flow_run=flow_run, flow=APIFlow(id=flow_run.flow_id, name=flow.name, labels={}),
                work_pool=work_pool, worker_name=self.name, worker_id=self.backend_id)
            created = create_bundle_for_flow_run(flow=flow, flow_run=flow_run)
            if created.get("zip_path"):
                configuration.input_sandbox = [*configuration.input_sandbox, str(created["zip_path"])]
            followed = await self._follow_block(configuration.diracx_block)
            job_id = await self._submit(flow_run, configuration, followed.block, bundle=json.dumps(created["bundle"]))
            await self.client.update_flow_run(flow_run.id, infrastructure_pid=str(job_id))
        except Exception as exc:
            self.get_flow_run_logger(flow_run).exception("Could not submit flow run %s to DIRAC", flow_run.name)
            await self._propose_crashed_state(flow_run, f"Could not submit the flow run to DIRAC: {exc}")
            self._in_hand.discard(str(flow_run.id))
            return
        try:
            await self._follow(flow_run, configuration, followed, str(job_id))
        finally:
            self._in_hand.discard(str(flow_run.id))

    # -- cancellation

    async def kill_infrastructure(self, infrastructure_pid: str, configuration: DiracJobConfiguration,
                                  grace_seconds: int = 30) -> None:
        """Kill the run's DIRAC job (the site's pilot then stops the payload)."""
        followed = await self._follow_block(configuration.diracx_block)
        answer = await followed.adapter.cancel([str(infrastructure_pid)])
        status = answer.get(str(infrastructure_pid))
        if status is None:
            raise InfrastructureNotFound(f"DiracX has no job {infrastructure_pid}")
        if status.state.terminal and status.state is not JobState.CANCELLED:
            raise InfrastructureNotFound(f"DIRAC job {infrastructure_pid} had already ended ({status.message})")

    async def _cancel_run(self, flow_run_id: Any) -> None:
        """Prefect's base worker only cancels runs that have not started (a runner beside the
        process kills the others); on the grid nothing but DIRAC can stop a started run.

        A started run is marked Cancelled FIRST, then its job killed: the engine on the node
        answers the pilot's SIGTERM by reporting the run Crashed, which the server refuses
        once the run is Cancelled (seen on the local site: killing first left the run
        Crashed). A kill that fails is owed and tried again at every poll."""
        try:
            flow_run = await self.client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            return
        if flow_run.start_time is None or not flow_run.infrastructure_pid:
            return await super()._cancel_run(flow_run_id)  # kills the job of a pending run, marks it Cancelled
        job_id = str(flow_run.infrastructure_pid)
        log = self.get_flow_run_logger(flow_run)
        try:
            configuration = await self.job_configuration.resolve_for_flow_run(
                flow_run, client=self.client, work_pool=copy.deepcopy(self.work_pool), worker_name=self.name,
                worker_id=self.backend_id)
        except Exception:
            log.exception("Could not read the job configuration of flow run %s; trying again at the next poll",
                          flow_run.name)
            self._cancelling.discard(str(flow_run.id))
            return
        await self._mark_flow_run_as_cancelled(
            flow_run, {"message": f"Flow run cancelled: its DIRAC job {job_id} is killed."})
        await self._kill(job_id, configuration, log)

    async def _kill(self, job_id: str, configuration: DiracJobConfiguration, log: Any) -> None:
        try:
            await self.kill_infrastructure(job_id, configuration)
            log.info("Killed DIRAC job %s of a cancelled flow run", job_id)
        except InfrastructureNotFound as exc:
            log.info("Nothing to kill: %s", exc)
        except Exception as exc:
            log.warning("Could not kill DIRAC job %s (%s); trying again at the next poll", job_id, exc)
            self._kills_owed[job_id] = configuration
            return
        self._kills_owed.pop(job_id, None)

    # -- each poll of the pool: cancellations asked for, runs nobody follows

    async def get_and_submit_flow_runs(self) -> list["FlowRun"]:
        if self._has_successfully_synced:
            try:
                await self._look_after_runs()
            except Exception:
                self._logger.exception("Looking after the pool's runs failed; trying again at the next poll")
        return await super().get_and_submit_flow_runs()

    async def _look_after_runs(self) -> None:
        """One read of the pool's Pending/Running/Cancelling runs per poll: kill the jobs of
        the Cancelling ones (Prefect's own cancellation observer is off by default and
        only handles runs that have not started), and — every ADOPT_EVERY seconds — follow
        the runs no live worker follows: this worker's own (it restarted under the same
        name) and those of workers no longer online."""
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
            WorkPoolFilter,
            WorkPoolFilterName,
        )
        from prefect.client.schemas.objects import StateType

        runs = await self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]))),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name])))
        for run in runs:
            if run.state is not None and run.state.is_cancelling() and str(run.id) not in self._cancelling:
                self._cancelling.add(str(run.id))
                self._runs_task_group.start_soon(self._cancel_run, run.id)
        for job_id, configuration in list(self._kills_owed.items()):
            await self._kill(job_id, configuration, self._logger)
        if time.monotonic() - self._last_adoption < ADOPT_EVERY:
            return
        self._last_adoption = time.monotonic()
        online = {w.name for w in await self.client.read_workers_for_work_pool(self._work_pool_name)
                  if str(getattr(w, "status", "")).upper().endswith("ONLINE") and w.name != self.name}
        now = time.time()
        for run in runs:
            owner = (run.labels or {}).get("prefect.worker.name")
            if str(run.id) in self._in_hand or run.id in self._submitting_flow_run_ids or owner in online:
                continue
            if not run.infrastructure_pid and (run.state is None or run.state.timestamp is None
                                               or now - run.state.timestamp.timestamp() < ADOPT_AFTER):
                continue
            self._in_hand.add(str(run.id))
            self._runs_task_group.start_soon(self._adopt, run)

    async def _adopt(self, flow_run: "FlowRun") -> None:
        log = self.get_flow_run_logger(flow_run)
        try:
            configuration = await self.job_configuration.resolve_for_flow_run(
                flow_run, client=self.client, work_pool=copy.deepcopy(self.work_pool), worker_name=self.name,
                worker_id=self.backend_id)
            followed = await self._follow_block(configuration.diracx_block)
            job_id = flow_run.infrastructure_pid or str(await self._submit(flow_run, configuration, followed.block))
            if not flow_run.infrastructure_pid:
                await self.client.update_flow_run(flow_run.id, infrastructure_pid=job_id)
            log.info("Worker %s follows flow run %s (DIRAC job %s) again", self.name, flow_run.name, job_id)
            await self._follow(flow_run, configuration, followed, job_id)
        except Exception as exc:
            log.exception("Could not follow flow run %s again", flow_run.name)
            await self._propose_crashed_state(flow_run, f"The dirac worker lost this run: {exc}")
        finally:
            self._in_hand.discard(str(flow_run.id))

    async def teardown(self, *exc_info: Any) -> None:
        """Stop the watches first: the runs they follow return (adopted by the next worker of
        the pool), so the worker's task group can end — a bound flow's worker ends as soon
        as its result is back, while the job is still finishing on the node."""
        for followed in self._followed.values():
            followed.watch.close()
            followed.task.cancel()
        for followed in self._followed.values():
            await asyncio.gather(followed.task, return_exceptions=True)
            await followed.adapter.aclose()
        self._followed.clear()
        await super().teardown(*exc_info)


def write_job_files(folder: Path, configuration: DiracJobConfiguration, bundle: str | None = None) -> list[Path]:
    """The job's script, its private environment file and (a bound flow) its bundle."""
    environment = {k: v for k, v in configuration.env.items() if v is not None}
    env_file = _private(folder / ENV_FILE, "".join(f"export {k}={shlex.quote(str(v))}\n"
                                                   for k, v in sorted(environment.items())))
    files = [folder / SCRIPT, env_file]
    command = configuration.command or DiracJobConfiguration._base_flow_run_command()
    if bundle is not None:
        files.append(_private(folder / BUNDLE_FILE, bundle))
    setup = configuration.setup_command or ""
    script = f"""#!/bin/bash
# prefect-egi: one Prefect flow run on this node (written by the `dirac` worker)
set -a; . ./{ENV_FILE}; set +a
rm -f ./{ENV_FILE}
echo "prefect-egi: flow run $PREFECT__FLOW_RUN_ID on $(hostname) in $PWD"
"""
    if setup.strip():
        script += f"""echo "prefect-egi: setup command: {_echoable(setup)}"
{{
{setup}
}} || {{ code=$?; echo "prefect-egi: the setup command failed (exit $code)" >&2; exit {SETUP_FAILED_EXIT}; }}
"""
    script += f"""echo "prefect-egi: starting {_echoable(command)} with $(command -v python || echo 'no python')"
exec {command}
"""
    (folder / SCRIPT).write_text(script)
    (folder / SCRIPT).chmod(0o755)
    return files


def _private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return path


def _echoable(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    from prefect_egi.tasks.redaction import redact

    text = path.read_text(errors="replace").splitlines()
    return redact("\n".join(text[-lines:]))


def on_dirac(work_pool: str, **job_variables: Any) -> Any:
    """Bind a flow to a `dirac` work pool: calling it runs it as a DIRAC job (no deployment).

        @on_dirac(work_pool="grid", site=["EGI.SARA.nl"], setup_command="source /cvmfs/…/setup.sh")
        @flow
        def analysis(n: int) -> int: ...

        analysis(3)                 # from a script: waits, returns the result
        await analysis(3)           # an async flow, from a notebook cell's running loop
        future = analysis.submit(3) # returns at once

    The job variables are checked here, before anything is submitted (a wrong site name,
    a negative CPU time); the DiracX block is looked up when the run is submitted.
    Modelled on prefect-kubernetes' `@kubernetes` (not called `dirac`: `prefect_egi.tasks.dirac`
    is the DIRAC package, and a name exported beside it would be shadowed by it)."""
    from prefect.flows import bind_flow_to_infrastructure

    checked = DiracVariables.model_validate(job_variables)
    for name in job_variables:
        if name not in DiracVariables.model_fields:
            raise ValueError(f"{name}: not a job variable of a dirac pool ({', '.join(DiracVariables.model_fields)})")
    if checked.input_sandbox:
        DiracJobConfiguration.model_validate({"input_sandbox": checked.input_sandbox})

    def bind(flow: Any) -> Any:
        return bind_flow_to_infrastructure(flow, work_pool, DiracWorker, job_variables=dict(job_variables),
                                           launcher={"execution": ["python"]})

    return bind
