"""The `dirac` worker type end to end: a real Prefect server, `prefect worker start` of the
installed package, a real DiracX 0.7 (recording every job search), and the local site's
pilot, which really runs each job's script — here, a Prefect flow run's engine.

The flows live in a project folder of the test (not in prefect-egi): a deployment made
through the API names `grid_flows.py:<flow>` as its entrypoint, without pull steps, and the
file travels to the node in each job's input sandbox — what a researcher does on EGI when
the node cannot clone a repository.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prefect_stack import StackError, start_server, wait_until

pytestmark = [pytest.mark.prefect, pytest.mark.timeout(900)]

FLOWS = textwrap.dedent('''
    import os
    import time
    from pathlib import Path

    from prefect import flow, get_run_logger


    @flow
    def grid_hello(name: str = "grid", seconds: float = 0.0) -> str:
        here = os.getcwd()
        Path("hello.txt").write_text(f"hello {name} from {here}\\n")
        get_run_logger().info("grid_hello ran in %s", here)
        time.sleep(seconds)
        return here
''')
API_KEY = "pnu_prefect-egi-test-key-0123456789abcdef"  # the worker's; must never reach a JDL or a log
SITE = "DIRAC.Sandbox.local"


class Grid:
    """The stack of this module's tests."""

    def __init__(self, root: Path, diracx, stack, pilot, project: Path, searches: Path):
        self.root, self.diracx, self.stack, self.pilot = root, diracx, stack, pilot
        self.project, self.searches = project, searches
        self.outputs = root / "outputs"
        self.deployments: dict[str, str] = {}
        self.worker = None

    def start_worker(self, name: str = "grid-worker"):
        self.worker = self.stack.start_worker(
            "grid", name=name, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5",
            PREFECT_WORKER_HEARTBEAT_SECONDS="5", PREFECT_API_KEY=API_KEY)
        return self.worker

    def deployment(self, name: str, entry: str = "grid_hello", **job_variables) -> str:
        """A deployment of `grid_flows.py:<entry>` on the pool (made once per name)."""
        if name not in self.deployments:
            flow = self.stack.api("POST", "/flows/", json={"name": entry.replace("_", "-")})
            variables = {"input_sandbox": [str(self.project / "grid_flows.py")], "output_sandbox": ["hello.txt"],
                         "fetch_outputs_to": str(self.outputs), **job_variables}
            made = self.stack.api("POST", "/deployments/", json={
                "name": name, "flow_id": flow["id"], "entrypoint": f"grid_flows.py:{entry}",
                "work_pool_name": "grid", "job_variables": variables, "pull_steps": [], "path": None})
            self.deployments[name] = made["id"]
        return self.deployments[name]

    def run(self, deployment_id: str, **parameters) -> str:
        return self.stack.run_deployment(deployment_id, parameters)["id"]

    def jobs(self, *flow_run_ids: str) -> list[dict]:
        """DiracX's rows for the jobs named after these flow runs."""
        import asyncio

        from prefect_egi.tasks.dirac.worker import job_name

        async def search():
            async with self.diracx_pilot_client() as api:
                return await api.jobs.search(
                    parameters=["JobID", "JobName", "Status", "MinorStatus", "ApplicationStatus"],
                    search=[{"parameter": "JobName", "operator": "in", "values": [job_name(i) for i in flow_run_ids]}],
                    per_page=1000)

        return asyncio.run(search())

    def job_ended(self, flow_run_id: str, timeout: float = 120) -> dict:
        """The run's job once DIRAC has a final status for it."""
        def ended() -> dict | None:
            (job,) = self.jobs(flow_run_id)
            return job if job["Status"] in ("Done", "Failed", "Killed") else None

        return wait_until(ended, timeout, f"the DIRAC job of flow run {flow_run_id} to end")

    def diracx_pilot_client(self):
        from diracx.client.aio import AsyncDiracClient
        from diracx.core.preferences import DiracxPreferences

        (vo, creds), *_ = self.diracx.info["vos"].items()
        return AsyncDiracClient(diracx_preferences=DiracxPreferences(url=self.diracx.info["url"],
                                                                     credentials_path=creds["pilot"]))

    def worker_searches(self, job_ids: set[int]) -> list[dict]:
        """The server's record of the searches about these jobs (the worker's status polls)."""
        rows = [json.loads(line) for line in self.searches.read_text().splitlines() if line.strip()]
        return [r for r in rows if r["ids"] and set(r["ids"]) & job_ids]

    def log_text(self, flow_run_id: str) -> str:
        time.sleep(1)  # the worker's and the node's log batches
        return "\n".join(line["message"] for line in self.stack.api(
            "POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}},
                                          "sort": "TIMESTAMP_ASC", "limit": 200}))

    def wait_for_state(self, flow_run_id: str, state: str, timeout: float = 240) -> dict:
        def reached() -> dict | None:
            run = self.stack.api("GET", f"/flow_runs/{flow_run_id}")
            return run if run["state"]["type"] == state else None

        return wait_until(reached, timeout, f"flow run {flow_run_id} {state}")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    from prefect_egi.sandbox.peers import start_peer

    root = tmp_path_factory.mktemp("grid")
    searches = root / "searches.jsonl"
    diracx = start_peer("diracx-grid", "diracx_peer.py", "--vo", "egi.test:egi_user:alice",
                        "--record-searches", str(searches), timeout=120)
    (vo, creds), *_ = diracx.info["vos"].items()
    pilot = start_peer("pilot-grid", "dirac_pilot.py", "--url", diracx.info["url"], "--credentials", creds["pilot"],
                       "--keystore", diracx.info["keystore"], "--job-db", diracx.info["job_db"],
                       "--registry", diracx.info["registry"],
                       "--workdir", str(root / "site"), "--site", SITE, "--slots", "32", "--duration", "0",
                       timeout=60)
    stack = start_server(root / "stack")
    project = root / "project"
    project.mkdir()
    (project / "grid_flows.py").write_text(FLOWS)
    try:
        stack.cli("work-pool", "create", "grid", "--type", "dirac")
        from prefect_egi.tasks import DiracX

        stack.save_blocks({"diracx": DiracX(url=diracx.info["url"], vo=vo, group=creds["group"],
                                            credentials_path=creds["user"])})
        grid = Grid(root, diracx, stack, pilot, project, searches)
        grid.start_worker()
        yield grid
    finally:
        stack.stop()
        pilot.stop()
        diracx.stop()


def test_the_pool_comes_from_the_entry_point_and_its_template_is_a_form(grid):
    """`prefect work-pool create grid --type dirac` found the worker type through the
    collection entry point; the pool's variables are a JSON schema the UI renders as a form."""
    pool = grid.stack.api("GET", "/work_pools/grid")
    assert pool["type"] == "dirac"
    variables = pool["base_job_template"]["variables"]["properties"]
    for name in ("diracx_block", "site", "banned_sites", "cpu_time", "tags", "platform", "priority", "job_group",
                 "setup_command", "input_sandbox", "env"):
        assert name in variables and variables[name].get("title"), name
    assert variables["site"]["items"]["pattern"].startswith("^")
    assert {"exclusiveMinimum": 0, "type": "integer"} in variables["cpu_time"]["anyOf"]


def test_a_deployment_run_completes_in_the_jobs_working_directory(grid):
    run_id = grid.run(grid.deployment("hello"), name="EGI")
    run = grid.stack.wait_for_flow_run(run_id, timeout=240)
    assert run["state"]["type"] == "COMPLETED", grid.log_text(run_id)
    job_id = int(run["infrastructure_pid"])
    job = grid.job_ended(run_id)  # the engine reported the run; the pilot then ends the job
    assert (job["JobID"], job["Status"], job["ApplicationStatus"]) == (job_id, "Done", "Exit code 0")
    hello = grid.outputs / run_id / str(job_id) / "hello.txt"
    wait_until(hello.is_file, 60, "the worker to fetch the output sandbox")
    logs = grid.log_text(run_id)
    ran_in = next(line for line in logs.splitlines() if line.startswith("grid_hello ran in ")).split(" in ", 1)[1]
    assert Path(ran_in).is_relative_to(grid.root / "site"), ran_in  # the pilot's job folder, not the project
    assert hello.read_text() == f"hello EGI from {ran_in}\n"  # written on the node, came back in the sandbox
    assert f"is DIRAC job {job_id}" in logs
    assert API_KEY not in logs
    assert not list((grid.root / "site").rglob("prefect-egi.env")), "the env file is deleted on the node"


def test_the_api_key_travels_only_in_the_private_sandbox_file(grid):
    """Not in the JDL (what `dirac-wms-job-get-jdl` or a site administrator sees), not in
    the job's std.out, not in any log of the run."""
    import asyncio

    from diracx.db.sql import JobDB

    run_id = grid.run(grid.deployment("hello"), name="secret")
    run = grid.stack.wait_for_flow_run(run_id, timeout=240)
    assert run["state"]["type"] == "COMPLETED"
    job_id = int(run["infrastructure_pid"])

    async def jdl() -> str:
        from DIRACCommon.WorkloadManagementSystem.DB.JobDBUtils import extractJDL

        db = JobDB(grid.diracx.info["job_db"])
        async with db.engine_context(), db:
            return extractJDL((await db.get_job_jdls([job_id]))[job_id])  # stored compressed

    grid.job_ended(run_id)
    text = asyncio.run(jdl())
    assert "prefect-egi-job.sh" in text and "SB:" in text
    assert API_KEY not in text and "PREFECT_API" not in text and run_id in text  # the JobName marker
    out = grid.outputs / run_id / str(job_id)
    wait_until((out / "std.out").is_file, 60, "the worker to fetch the output sandbox")
    assert API_KEY not in (out / "std.out").read_text() + (out / "std.err").read_text()
    assert API_KEY not in grid.log_text(run_id)


def test_twenty_concurrent_runs_are_twenty_jobs_watched_by_one_search_per_cycle(grid):
    deployment = grid.deployment("hello")
    started = time.time()
    runs = [grid.run(deployment, name=f"r{i}", seconds=4) for i in range(20)]
    finished = [grid.stack.wait_for_flow_run(r, timeout=600) for r in runs]
    span = time.time() - started
    assert [r["state"]["type"] for r in finished] == ["COMPLETED"] * 20
    jobs = grid.jobs(*runs)
    ids = {int(j["JobID"]) for j in jobs}
    assert len(jobs) == 20 and ids == {int(r["infrastructure_pid"]) for r in finished}
    searches = grid.worker_searches(ids)
    assert max(len(s["ids"]) for s in searches) == 20  # one request asked about every run's job
    # per-run polling would send a request per run per cycle; the worker sends one per cycle,
    # and its cycles are at least its first interval (2 s) apart
    assert len(searches) <= span / 2.0 + 2, (len(searches), span)
    assert sum(len(s["ids"]) for s in searches) > len(searches)  # the requests were shared


def test_cancelling_a_running_run_kills_its_job(grid):
    run_id = grid.run(grid.deployment("hello"), name="long", seconds=300)
    grid.wait_for_state(run_id, "RUNNING")
    grid.stack.api("POST", f"/flow_runs/{run_id}/set_state",
                   json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True})
    run = grid.stack.wait_for_flow_run(run_id, timeout=180)
    assert run["state"]["type"] == "CANCELLED", grid.log_text(run_id)
    (job,) = grid.jobs(run_id)
    assert job["Status"] == "Killed"
    time.sleep(3)
    (job,) = grid.jobs(run_id)
    assert job["Status"] == "Killed"  # and stays so: the pilot never reports it Done


def test_a_broken_setup_command_crashes_the_run_with_the_jobs_stderr_in_its_logs(grid):
    run_id = grid.run(grid.deployment("broken-setup", setup_command="no-such-setup-tool --init"), name="x")
    run = grid.stack.wait_for_flow_run(run_id, timeout=240)
    assert run["state"]["type"] == "CRASHED"
    assert "the setup command failed" in run["state"]["message"]
    logs = grid.log_text(run_id)
    assert "no-such-setup-tool: command not found" in logs  # bash's own words, from the job's std.err
    job = grid.job_ended(run_id)
    assert job["Status"] == "Failed" and job["ApplicationStatus"] == "Exit code 97"


def test_bad_job_variables_are_refused_before_anything_is_submitted(grid):
    from prefect_egi.tasks.dirac.worker import dirac

    with pytest.raises(ValueError, match=r"site: 'CERN' is not a DIRAC site name"):
        dirac(work_pool="grid", site=["CERN"])
    with pytest.raises(ValueError, match="cpu_time"):
        dirac(work_pool="grid", cpu_time=-60)
    with pytest.raises(ValueError, match="setup: not a job variable"):
        dirac(work_pool="grid", setup="source x")
    # through the server: the pool's schema refuses the run itself
    deployment = grid.deployment("hello")
    for bad, field in (({"cpu_time": -1}, "cpu_time"), ({"site": ["CERN"]}, "site")):
        with pytest.raises(StackError, match=field):
            grid.stack.api("POST", f"/deployments/{deployment}/create_flow_run", json={"job_variables": bad})
    run_id = grid.stack.api("POST", f"/deployments/{deployment}/create_flow_run",
                            json={"job_variables": {"diracx_block": "no-such-block"}})["id"]
    run = grid.stack.wait_for_flow_run(run_id, timeout=120)
    assert run["state"]["type"] == "CRASHED"
    assert "diracx_block: there is no DiracX block named 'no-such-block'" in run["state"]["message"]
    assert grid.jobs(run_id) == []


def test_a_worker_killed_mid_run_is_restarted_and_every_run_finishes_once(grid):
    deployment = grid.deployment("hello")
    runs = [grid.run(deployment, name=f"k{i}", seconds=12) for i in range(3)]
    for run_id in runs:
        grid.wait_for_state(run_id, "RUNNING")
    os.killpg(grid.worker.process.pid, signal.SIGKILL)
    grid.worker.process.wait(30)
    grid.start_worker()  # the same name: it takes its runs back
    finished = [grid.stack.wait_for_flow_run(r, timeout=300) for r in runs]
    assert [r["state"]["type"] for r in finished] == ["COMPLETED"] * 3
    jobs = [grid.job_ended(r) for r in runs]  # one job per run: job_ended unpacks exactly one
    assert {j["Status"] for j in jobs} == {"Done"} and len(grid.jobs(*runs)) == 3  # 0 duplicates
    for run_id in runs:
        wait_until((grid.outputs / run_id).is_dir, 60, "the restarted worker to fetch the outputs")
        assert "follows flow run" in grid.log_text(run_id)


BOUND = textwrap.dedent('''
    import asyncio
    import sys

    from prefect import flow
    from prefect_egi.tasks.dirac.worker import dirac


    @dirac(work_pool="grid", site=["{site}"])
    @flow
    def add(x: int, y: int) -> int:
        return x + y


    @dirac(work_pool="grid")
    @flow
    async def multiply(x: int, y: int) -> int:
        return x * y


    async def in_a_running_loop() -> int:
        return await multiply(6, 7)


    print("sync", add(1, 2))
    print("async", asyncio.run(in_a_running_loop()))
''')


def test_a_bound_flow_runs_on_the_grid_from_a_script_and_from_a_running_loop(grid):
    script = grid.project / "bound.py"
    script.write_text(BOUND.replace("{site}", SITE))
    done = subprocess.run([sys.executable, str(script)], cwd=grid.project, env=grid.stack.env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "sync 3" in done.stdout and "async 42" in done.stdout
    runs = grid.stack.api("POST", "/flow_runs/filter", json={"flow_runs": {"work_pool_name": {"any_": ["grid"]}},
                                                             "flows": {"name": {"any_": ["add", "multiply"]}}})
    assert {r["state"]["type"] for r in runs} == {"COMPLETED"} and len(runs) == 2
    assert all(r["infrastructure_pid"] for r in runs)
