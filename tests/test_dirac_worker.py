"""The `dirac` worker type end to end: a real Prefect server, `prefect worker start` of the
installed package, a real DiracX 0.7 (recording every job search), and the local site's
pilot, which really runs each job's script — here, a Prefect flow run's engine.

The stack is `grid_stack.py`'s (the flows travel in each job's input sandbox).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from grid_stack import API_KEY, SITE, grid_stack
from prefect_stack import StackError, wait_until

pytestmark = [pytest.mark.prefect, pytest.mark.system, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    with grid_stack(tmp_path_factory.mktemp("grid")) as stack:
        yield stack


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


def test_the_pools_form_renders_in_the_prefect_ui(grid, tmp_path):
    """What a user sees in Work Pools → grid → Edit (headless Debian Chromium): the form the
    pool's variables make, with our titles and help texts."""
    from prefect_stack import Chromium, find_chromium

    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium (Debian's chromium package)")
    browser = Chromium(binary, tmp_path / "profile", grid.stack.env(), tmp_path / "chromium.log")
    try:
        page = browser.check_page("grid-pool-edit", f"{grid.stack.url}/work-pools/work-pool/grid/edit",
                                  ["Base Job Template", "DiracX block", "Sites", "Banned sites", "CPU time (s)",
                                   "Setup command", "Extra input sandbox files", "DIRAC sites to run at"],
                                  tmp_path / "shots", timeout=90)
    finally:
        browser.close()
    assert page.ok, (page.missing, page.text[:2000])
    assert not browser.foreign_responses


def test_a_deployment_run_completes_in_the_jobs_working_directory(grid):
    run_id = grid.run(grid.deployment("hello"), name="EGI")
    run = grid.stack.wait_for_flow_run(run_id, timeout=240)
    assert run["state"]["type"] == "COMPLETED", grid.log_text(run_id)
    job_id = int(run["infrastructure_pid"])
    job = grid.job_ended(run_id)  # the engine reported the run; the pilot then ends the job
    assert (job["JobID"], job["Status"], job["ApplicationStatus"]) == (job_id, "Done", "Exit code 0")
    hello = grid.outputs / run_id / str(job_id) / "hello.txt"
    wait_until(hello.is_file, 60, "the worker to fetch the output sandbox")
    logs = grid.log_with(run_id, "outputs are in")
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
    # one search per cycle: every search asked about EVERY job the worker was watching then
    # (a job is watched from the first search that holds it to the last one) — per-run
    # polling would ask about one job per request
    first = {j: min(q["t"] for q in searches if j in q["ids"]) for j in ids}
    last = {j: max(q["t"] for q in searches if j in q["ids"]) for j in ids}
    for search in searches:
        watched = {j for j in ids if first[j] < search["t"] < last[j]}
        assert watched <= set(search["ids"]), (search, sorted(watched - set(search["ids"])))
    assert max(len(q["ids"]) for q in searches) >= 8  # at least a full site's worth shared one request
    # and its cycles are at least its first interval (2 s) apart, however many runs
    assert len(searches) <= span / 2.0 + 2, (len(searches), span)


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
    logs = grid.log_with(run_id, "no-such-setup-tool: command not found")  # bash's words, from the job's std.err
    assert "The last lines of DIRAC job" in logs and "the setup command failed (exit 127)" in logs
    job = grid.job_ended(run_id)
    assert job["Status"] == "Failed" and job["ApplicationStatus"] == "Exit code 97"


def test_bad_job_variables_are_refused_before_anything_is_submitted(grid):
    from prefect_egi.tasks import on_dirac

    with pytest.raises(ValueError, match=r"site: 'CERN' is not a DIRAC site name"):
        on_dirac(work_pool="grid", site=["CERN"])
    with pytest.raises(ValueError, match="cpu_time"):
        on_dirac(work_pool="grid", cpu_time=-60)
    with pytest.raises(ValueError, match="setup: not a job variable"):
        on_dirac(work_pool="grid", setup="source x")
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
    runs = [grid.run(deployment, name=f"k{i}", seconds=45) for i in range(3)]  # still running when it is back
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
        grid.log_with(run_id, "follows flow run")


BOUND = textwrap.dedent('''
    import asyncio
    import sys

    from prefect import flow
    from prefect_egi.tasks import on_dirac


    @on_dirac(work_pool="grid", site=["{site}"])
    @flow
    def add(x: int, y: int) -> int:
        return x + y


    @on_dirac(work_pool="grid")
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
    runs = grid.stack.api("POST", "/flow_runs/filter", json={"work_pools": {"name": {"any_": ["grid"]}},
                                                             "flows": {"name": {"any_": ["add", "multiply"]}}})
    assert {r["state"]["type"] for r in runs} == {"COMPLETED"} and len(runs) == 2
    assert all(r["infrastructure_pid"] for r in runs)
