"""Crash and resume, on the whole system: a real Prefect server, the project's `prefect.yaml`
deployment `dirac-batch`, process workers and a real DiracX server.

Two `dirac-batch` runs of 30 jobs each are SIGKILLed while they wait, in the two ways a run dies:

- A: the flow-run process alone. The worker survives, sees exit -9, reports the run Crashed and
  runs the `on_crashed` hook, which leaves the jobs running (a crash is not a cancellation) and
  logs how to resume.
- B: the whole worker with its flow process (the machine died). No one is left to notice: the
  run stays Running until a heartbeat-based "zombie" automation marks it Crashed. No hook runs.

Each run is then retried with `prefect flow-run retry <id>` — the CLI, as a user would — which
schedules the SAME flow run again; a new worker runs it, the run finds the job ids in its ledger
and resumes watching them; only then does the grid run the jobs. Counted on the DiracX server
per batch: exactly 30 jobs (0 duplicated), all Done, every output on disk (0 lost).

The two scenarios overlap (A is retried while B waits for the automation), so the test takes
about one zombie timeout plus one resume, not two of each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from prefect_stack import MARKER, PrefectStack, StackError, start_server, wait_until

from prefect_egi.tasks.job_ledger import describe_ids

pytestmark = [pytest.mark.system, pytest.mark.prefect]

POOL = "egi-process"
JOBS = 30
HEARTBEAT = 30  # seconds between flow-run heartbeats (Prefect's minimum; the automation allows 15 s of lateness)
WORKER_ENV = dict(PREFECT_WORKER_QUERY_SECONDS="1",
                  PREFECT_WORKER_PREFETCH_SECONDS="5", PREFECT_RUNNER_POLL_FREQUENCY="1",
                  PREFECT_WORKER_HEARTBEAT_SECONDS="5", PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT))
ZOMBIE_MESSAGE = "No heartbeat: the flow run's infrastructure is gone"
# Prefect's recipe against zombie flow runs: a Running run whose heartbeats stop -> Crashed
ZOMBIE_AUTOMATION = {
    "name": "crash-zombie-flow-runs",
    "trigger": {
        "type": "event", "posture": "Proactive",
        "after": ["prefect.flow-run.heartbeat"],
        "expect": ["prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                   "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"],
        "for_each": ["prefect.resource.id"], "threshold": 1, "within": HEARTBEAT + 15,
        "match": {"prefect.resource.id": "prefect.flow-run.*"},
    },
    "actions": [{"type": "change-flow-run-state", "state": "CRASHED", "message": ZOMBIE_MESSAGE}],
}


# --------------------------------------------------------------------------- helpers


def ledger(stack: PrefectStack, run_id: str) -> list[dict]:
    """The run's job ledger (flow-run inputs `egi-jobs-*`), read over HTTP."""
    found = stack.api("POST", f"/flow_runs/{run_id}/input/filter",
                      json={"prefix": "egi-jobs-", "limit": 100, "exclude_keys": []})
    return [json.loads(item["value"]) for item in found]


def all_logs(stack: PrefectStack, run_id: str) -> list[str]:
    lines, offset = [], 0
    while True:
        page = stack.api("POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}},
                                                       "sort": "TIMESTAMP_ASC", "limit": 200, "offset": offset})
        lines += [line["message"] for line in page]
        if len(page) < 200:
            return lines
        offset += 200


def state(stack: PrefectStack, run_id: str) -> dict:
    return stack.api("GET", f"/flow_runs/{run_id}")["state"]


def waiting(stack: PrefectStack, run_id: str, attempt: int) -> bool:
    """The run's `attempt`-th run is Running and inside its `dirac-wait` task (a killed attempt's
    task run stays Running in the database forever: only this attempt's counts)."""
    run = stack.api("GET", f"/flow_runs/{run_id}")
    if run["state"]["type"] != "RUNNING" or run["run_count"] != attempt:
        return False
    tasks = stack.api("POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}})
    # a task run just created may not have a state yet (seen on a loaded machine)
    return any(t["name"].startswith("dirac-wait") and (t.get("state") or {}).get("type") == "RUNNING"
               and t["flow_run_run_count"] == attempt for t in tasks)


def wait_mid_wait(stack: PrefectStack, run_id: str, attempt: int = 1) -> None:
    wait_until(lambda: waiting(stack, run_id, attempt), 150, f"flow run {run_id} (run {attempt}) to wait for "
               "its jobs", interval=0.5, on_timeout=lambda: f"{state(stack, run_id)}\n" + "\n".join(
                   all_logs(stack, run_id)))


def heartbeats(stack: PrefectStack, run_id: str) -> int:
    """How many heartbeat events of this flow run the server has (the zombie automation arms on one)."""
    page = stack.api("POST", "/events/filter", json={"filter": {
        "event": {"name": ["prefect.flow-run.heartbeat"]}, "resource": {"id": [f"prefect.flow-run.{run_id}"]}},
        "limit": 1})
    return page["total"]


def flow_processes(stack: PrefectStack, run_id: str | None = None) -> list[int]:
    """PIDs of this stack's live processes whose environment says PREFECT__FLOW_RUN_ID=<run id>
    (of any run when `run_id` is None)."""
    marker = f"{MARKER}={stack.stack_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            environ = (entry / "environ").read_bytes().split(b"\0")
            runs = {v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"PREFECT__FLOW_RUN_ID=")}
            if marker in environ and runs and (run_id is None or str(run_id) in runs) \
                    and not gone(int(entry.name)):
                found.append(int(entry.name))
    return found


def flow_process(stack: PrefectStack, run_id: str) -> int:
    """The PID of the process executing this flow run: the one process of this stack whose
    environment says PREFECT__FLOW_RUN_ID=<run id> (Prefect's workspace supervisor execs the
    engine in place, so it is one PID, a child of the worker)."""
    found = flow_processes(stack, run_id)
    if len(found) != 1:
        raise StackError(f"expected one process for flow run {run_id}, found {found}")
    return found[0]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def server_jobs(diracx, group: str) -> dict[int, str]:
    """Every job of this JobGroup on the DiracX server: id -> status (asked as the DiracX admin)."""

    async def search() -> dict[int, str]:
        async with diracx.pilot.client() as api:
            rows = await api.jobs.search(parameters=["JobID", "Status"], per_page=10_000,
                                         search=[{"parameter": "JobGroup", "operator": "eq", "value": group}])
        return {int(r["JobID"]): r["Status"] for r in rows}

    return asyncio.run(search())


class JobRunner:
    """Plays the grid for one batch, once started: the local DIRAC site (the sandbox's pilot)
    runs this batch's JobGroup for real — Checking → Waiting → Matched → Running → Completing →
    Done, each job's `echo` output in its output sandbox. `join` waits until every job ended
    (or a minute), then stops the site; `errors` says what was left unfinished."""

    def __init__(self, diracx, ids: list[int], workdir: Path, group: str):
        from prefect_egi.sandbox.dirac_pilot import BatchPilot

        self.ids = sorted(ids)
        self.errors: list[str] = []
        self.site = BatchPilot(diracx.pilot, group, workdir, duration=0)

    def start(self) -> "JobRunner":
        self.site.start()
        return self

    def join(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(self.site.outcomes.values()) < len(self.ids):
            time.sleep(0.2)
        self.site.stop()
        if sum(self.site.outcomes.values()) < len(self.ids):
            self.errors.append(f"the site ended {self.site.stats()} of {len(self.ids)} jobs")


class Batch:
    """One `dirac-batch` run of JOBS jobs in its own JobGroup and output folder."""

    def __init__(self, stack: PrefectStack, deployment: dict, block_name: str, root: Path, name: str):
        self.stack, self.group, self.root = stack, f"{name}-{uuid.uuid4().hex[:6]}", root / name
        parameters = {"job": {"executable": "echo", "arguments": "%s", "parameters": list(range(JOBS)),
                              "job_group": self.group},
                      "diracx_block": block_name, "destination": str(self.root / "out")}
        self.run_id: str = stack.run_deployment(deployment["id"], parameters)["id"]
        self.ids: list[int] = []

    def recorded(self) -> list[int]:
        """Once the submission is in the run's ledger: its job ids."""
        found = wait_until(lambda: ledger(self.stack, self.run_id), 150, "the batch in the run's ledger",
                           interval=0.5, on_timeout=lambda: "\n".join(all_logs(self.stack, self.run_id)))
        (submission,) = found
        self.ids = [int(j) for j in submission["job_ids"]]
        return self.ids

    def assert_left_running(self, diracx) -> None:
        on_server = server_jobs(diracx, self.group)
        assert sorted(on_server) == sorted(self.ids) and len(self.ids) == JOBS, "the crash added or dropped jobs"
        assert "Killed" not in set(on_server.values()), f"a crash must leave the jobs running: {on_server}"

    def retry_and_finish(self, diracx) -> dict:
        """`prefect flow-run retry`; once the SAME run waits on its jobs again, the grid runs them.
        The run must complete with exactly these jobs, all Done, every output on disk."""
        stack = self.stack
        said = stack.cli("flow-run", "retry", self.run_id)
        assert "scheduled for retry" in said, said
        wait_mid_wait(stack, self.run_id, attempt=2)
        grid = JobRunner(diracx, self.ids, self.root / "grid", self.group).start()
        try:
            run = stack.wait_for_flow_run(self.run_id, timeout=180)
        finally:
            grid.join()
        logs = all_logs(stack, self.run_id)
        assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{grid.errors}\n" + "\n".join(logs)
        assert run["run_count"] == 2  # the same flow run, run once more
        on_server = server_jobs(diracx, self.group)
        assert sorted(on_server) == sorted(self.ids), "0 duplicated: the retry submitted nothing new"
        assert set(on_server.values()) == {"Done"}, on_server
        outputs = sorted(int(p.parent.name) for p in (self.root / "out").glob("*/std.out"))
        assert outputs == sorted(self.ids), "0 lost: every job's output collected"
        # (the killed attempt's own "Submitted …" line may be missing: a SIGKILLed process cannot
        # ship the log lines it still buffered — the server's job count is the evidence)
        assert sum(f"Resuming {JOBS} DIRAC job(s) this flow run already submitted" in m for m in logs) == 1, logs
        (report,) = [a for a in stack.artifacts(self.run_id) if a.get("key") == "dirac-batch"]
        assert f"{JOBS} submitted, 0 resubmitted, {JOBS} succeeded, 0 failed" in report["data"]
        return run


# --------------------------------------------------------------------------- the test


@pytest.mark.timeout(900)  # ~110 s on an idle 2-core machine, over 200 s when it is busy
def test_sigkill_mid_wait_then_retry_resumes_the_same_jobs(diracx, tmp_path):
    began = time.monotonic()
    timeline: dict[str, float] = {}

    def mark(what: str) -> None:
        timeline[what] = round(time.monotonic() - began, 1)

    stack = start_server(tmp_path / "stack")
    try:
        stack.create_work_pool(POOL)
        worker = stack.start_worker(POOL, wait=False, **WORKER_ENV)
        block_name = f"dx-crash-{uuid.uuid4().hex[:6]}"
        stack.save_blocks({block_name: diracx.block()})
        deployment = stack.deploy("dirac-batch")
        stack.api("POST", "/automations/", json=ZOMBIE_AUTOMATION)
        stack.wait_for_worker(worker, POOL)
        mark("stack up")

        a = Batch(stack, deployment, block_name, tmp_path, "crash-a")
        b = Batch(stack, deployment, block_name, tmp_path, "crash-b")
        for batch in (a, b):
            batch.recorded()
            wait_mid_wait(stack, batch.run_id)
        mark("both mid-wait")

        # A: SIGKILL the flow-run process alone; the worker reports the crash and runs the hook
        pid = flow_process(stack, a.run_id)
        assert parent_of(pid) == worker.process.pid, "the flow-run process is the worker's child"
        os.kill(pid, signal.SIGKILL)
        crashed = stack.wait_for_flow_run(a.run_id, timeout=90)["state"]
        assert crashed["type"] == "CRASHED" and "-9" in (crashed["message"] or ""), crashed
        assert worker.alive()
        hook = wait_until(lambda: [m for m in all_logs(stack, a.run_id) if "LEFT RUNNING" in m], 90,
                          "the crash hook's report", interval=0.5,
                          on_timeout=lambda: "\n".join(all_logs(stack, a.run_id)))[0]
        # every id, folded into ranges (the two batches' chunks of 20 may interleave: 1-20, 41-50)
        assert f"{JOBS} job(s) LEFT RUNNING: {describe_ids([str(j) for j in a.ids])}\n" in hook, hook
        assert f"prefect flow-run retry {a.run_id}" in hook, hook
        a.assert_left_running(diracx)
        mark("A crashed, hook logged")

        # B: the machine dies — the worker's process group and the flow-run process (which has
        # its own session: killing the worker's group alone would not reach it)
        wait_until(lambda: heartbeats(stack, b.run_id), 60, "B's first heartbeat on the server", interval=0.5)
        pid = flow_process(stack, b.run_id)
        assert os.getpgid(pid) != os.getpgid(worker.process.pid), "the flow-run process has its own group"
        os.killpg(worker.process.pid, signal.SIGKILL)
        os.killpg(os.getpgid(pid), signal.SIGKILL)
        worker.process.wait(10)
        wait_until(lambda: gone(pid), 10, "the flow-run process to die")
        # read before a new worker starts: no one was left to report B's crash (on a busy machine
        # the zombie automation, 45 s after B's last heartbeat, may already have marked it)
        after_kill = state(stack, b.run_id)
        assert after_kill["type"] == "RUNNING" or (after_kill["type"] == "CRASHED"
                                                   and after_kill["message"] == ZOMBIE_MESSAGE), after_kill
        mark("B's worker and flow process killed")

        stack.start_worker(POOL, **WORKER_ENV)  # a new worker, as after a reboot
        mark("new worker")

        a.retry_and_finish(diracx)
        mark("A resumed and completed")

        crashed = stack.wait_for_flow_run(b.run_id, timeout=HEARTBEAT + 120)["state"]
        assert crashed["type"] == "CRASHED" and crashed["message"] == ZOMBIE_MESSAGE, crashed
        b.assert_left_running(diracx)
        assert not any("LEFT RUNNING" in m for m in all_logs(stack, b.run_id)), "no hook runs for a dead worker"
        mark("B marked crashed by the automation")

        b.retry_and_finish(diracx)
        mark("B resumed and completed")
        # a finished run's process may still be shipping its logs: let it exit before the sweep counts it
        wait_until(lambda: not flow_processes(stack), 120, "the flow-run processes to exit", interval=0.5,
                   on_timeout=lambda: str(flow_processes(stack)))
    finally:
        leftovers = stack.stop()
    assert not leftovers, f"processes left behind: {leftovers}"
    print(f"\n{hook}\ntimeline (s): {timeline}")


def test_the_crash_hook_never_raises_and_folds_job_ids(caplog):
    """Without a run (or an API) the hook still says what to do; ids fold into ranges."""
    import logging

    from prefect_egi.tasks import keep_remote_jobs_on_crash
    from prefect_egi.tasks.job_ledger import describe_ids

    assert describe_ids(["7", "1", "2", "3", "5", "6", "10"]) == "1-3, 5-7, 10"
    assert describe_ids(["https://dm/a", "https://dm/b"]) == "https://dm/a, https://dm/b"
    cut = describe_ids([str(i) for i in range(0, 20, 2)], limit=2)
    assert cut == "0, 2 … and 8 more (all in the run's job ledger)"
    with caplog.at_level(logging.WARNING, logger="prefect_egi.remote"):
        keep_remote_jobs_on_crash(None, None, None)
    assert "no remote job is recorded" in caplog.text


def test_the_crash_report_lists_jobs_and_submissions_of_unknown_outcome(prefect_db):
    """From the ledger alone (an unsaved block: no service to ask): every job, in ranges, and a
    submission that was being sent when the run died."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    from prefect_egi.tasks.job_ledger import JobLedger, Submission, crash_report

    @flow
    def nothing() -> None:
        pass

    async def scenario() -> tuple[str, str]:
        async with get_client() as client:
            run = await client.create_flow_run(nothing)
        ledger = JobLedger(run.id)
        empty = await crash_report(run.id, "r", "Process exited with status code: -9")
        await ledger.record(Submission(key="dirac-k", service="dirac", job_ids=[str(i) for i in range(100, 130)]))
        await ledger.intend("dataminer-k2")
        return empty, await crash_report(run.id, "r", "Process exited with status code: -9")

    empty, report = asyncio.run(scenario())
    assert "before submitting any remote job: nothing is left running" in empty
    assert "(Process exited with status code: -9)" in report
    assert "- dirac: 30 job(s) left as they were (their status could not be read): 100-129" in report
    assert "- submission dataminer-k2: it was being sent when the run died" in report
    assert "prefect flow-run retry" in report and "cancel_submissions" in report
