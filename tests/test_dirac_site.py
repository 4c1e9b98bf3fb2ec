"""The local DIRAC site (deployments/sandbox/dirac_pilot.py) against the real DiracX peer: jobs
really run, as DIRAC's pilot and JobWrapper run them.

The expected minor statuses are DIRAC's own wording: "Execution Complete", "Application
Finished With Errors", "Failed Downloading InputSandbox LFN(s)" are JobMinorStatus constants
(DIRAC.WorkloadManagementSystem.Client.JobMinorStatus: EXEC_COMPLETE, APP_ERRORS,
FAILED_DOWNLOADING_INPUT_SANDBOX_LFN), "Job has reached the CPU limit of the queue" is
JOB_EXCEEDED_CPU (the Watchdog's message); "Exit code N" is the ApplicationStatus the JobWrapper
writes for a payload's exit code."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
import uuid
from pathlib import Path

import pytest

from prefect_egi.sandbox.dirac_pilot import SITE, BatchPilot
from prefect_egi.tasks import DiracJob
from prefect_egi.tasks.dirac.outputs import collect_outputs
from prefect_egi.tasks.dirac.tasks import submit

FINAL = {"Done", "Failed", "Killed", "Deleted"}


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def site(diracx, tmp_path):
    """A running site for this test's own JobGroup: (group, pilot)."""
    group = f"site-{uuid.uuid4().hex[:6]}"
    pilot = BatchPilot(diracx.pilot, group, tmp_path / "site", duration=0, env={"SITE_SETTING": "from-the-pilot"},
                       kill_grace=2).start()
    yield group, pilot
    pilot.stop()


def jobs(diracx, ids: list[int]) -> dict[int, dict]:
    async def search() -> dict[int, dict]:
        async with diracx.pilot.client() as api:
            rows = await api.jobs.search(parameters=["JobID", "Status", "MinorStatus", "ApplicationStatus"],
                                         search=[{"parameter": "JobID", "operator": "in", "values": ids}])
        return {int(r["JobID"]): r for r in rows}

    return run(search())


def wait_for(diracx, ids: list[int], statuses: set[str] = FINAL, timeout: float = 120) -> dict[int, dict]:
    deadline = time.monotonic() + timeout
    while True:
        now = jobs(diracx, ids)
        if len(now) == len(ids) and all(r["Status"] in statuses for r in now.values()):
            return now
        assert time.monotonic() < deadline, f"the jobs did not reach {statuses}: {now}"
        time.sleep(0.3)


def submitted(diracx, group: str, **fields) -> list[int]:
    fields.setdefault("job_group", group)
    return run(submit(diracx.block(), [DiracJob(**fields)]))


def outputs(diracx, ids: list[int], folder: Path):
    return {o.job_id: o for o in run(collect_outputs(diracx.block().client(), ids, folder))}


def test_the_executable_runs_in_its_unpacked_sandbox_and_its_outputs_come_back(diracx, site, tmp_path):
    """A script of the input sandbox (uploaded 0644: the JobWrapper makes it executable) runs in
    a fresh working directory where the sandbox was unpacked, with the JDL's Arguments; its
    stdout/stderr go to StdOutput/StdError; the file it wrote comes back in the output sandbox
    (a glob pattern); a 0600 file of the input sandbox is still 0600 there."""
    group, _ = site
    script = tmp_path / "analyse.sh"
    script.write_text('#!/bin/sh\necho "args: $1 $2"\necho "in $(pwd)"\necho "to stderr" >&2\n'
                      'stat -c %a secret.txt\necho "result of $1" > result-$1.csv\n')
    script.chmod(0o644)
    secret = tmp_path / "secret.txt"
    secret.write_text("only mine\n")
    secret.chmod(0o600)
    ids = submitted(diracx, group, executable="analyse.sh", arguments="%s 'two words'", parameters=["a", "b"],
                    input_sandbox=[str(script), str(secret)], stdout="out.log", stderr="err.log",
                    output_sandbox=["out.log", "err.log", "result-*.csv", "missing.txt"])
    final = wait_for(diracx, ids)
    assert {(r["Status"], r["MinorStatus"], r["ApplicationStatus"]) for r in final.values()} == {
        ("Done", "Execution Complete", "Exit code 0")}
    got = outputs(diracx, ids, tmp_path / "out")
    for job_id, item in zip(ids, ["a", "b"]):
        folder = tmp_path / "out" / str(job_id)
        assert sorted(got[job_id].files) == ["err.log", "out.log", f"result-{item}.csv"]  # what exists, no more
        printed = (folder / "out.log").read_text().splitlines()
        assert printed[0] == f"args: {item} two words"
        workdir = Path(printed[1].removeprefix("in "))
        assert workdir.name == str(job_id) and workdir != Path.cwd()
        assert printed[2] == "600"  # the mode the file was uploaded with
        assert (folder / "err.log").read_text() == "to stderr\n"
        assert (folder / f"result-{item}.csv").read_text() == f"result of {item}\n"
        assert stat.S_IMODE((workdir / "secret.txt").stat().st_mode) == 0o600


def test_a_non_zero_exit_fails_the_job_with_its_exit_code(diracx, site, tmp_path):
    group, _ = site
    (job_id,) = submitted(diracx, group, executable="sh", arguments="-c 'echo broken >&2 && exit 3'")
    (row,) = wait_for(diracx, [job_id]).values()
    assert (row["Status"], row["MinorStatus"], row["ApplicationStatus"]) == (
        "Failed", "Application Finished With Errors", "Exit code 3")
    got = outputs(diracx, [job_id], tmp_path / "out")[job_id]  # a failed job's sandbox comes back too
    assert (tmp_path / "out" / str(job_id) / "std.err").read_text() == "broken\n" and "std.out" in got.files


def test_exit_1_is_failed_with_exit_code_1(diracx, site):
    group, _ = site
    (job_id,) = submitted(diracx, group, executable="false")
    (row,) = wait_for(diracx, [job_id]).values()
    assert (row["Status"], row["ApplicationStatus"]) == ("Failed", "Exit code 1")


def test_cpu_time_is_a_limit(diracx, site):
    """CPUTime = 1 s for a busy loop: RLIMIT_CPU ends it (SIGXCPU), the job fails as DIRAC's
    Watchdog reports it."""
    group, _ = site
    (job_id,) = submitted(diracx, group, executable="python", arguments="-c 'while True: pass'", cpu_time=1)
    (row,) = wait_for(diracx, [job_id], timeout=60).values()
    assert (row["Status"], row["MinorStatus"], row["ApplicationStatus"]) == (
        "Failed", "Job has reached the CPU limit of the queue", "Killed by signal SIGXCPU")


def test_an_lfn_input_fails_the_job_before_it_runs(diracx, site, tmp_path):
    group, pilot = site
    (job_id,) = submitted(diracx, group, executable="touch", arguments="ran",
                          input_sandbox=["LFN:/egi.test/user/a/alice/data.txt"])
    (row,) = wait_for(diracx, [job_id]).values()
    assert (row["Status"], row["MinorStatus"]) == ("Failed", "Failed Downloading InputSandbox LFN(s)")
    assert not (tmp_path / "site" / str(job_id) / "ran").exists()  # the payload never started


def test_a_kill_from_the_server_terminates_the_process_and_the_job_stays_killed(diracx, site, tmp_path):
    """The user kills a running job (status Killed: DiracX queues a Kill command): the next
    heartbeat brings the command, the process group is terminated, and the pilot reports nothing
    more for it (a Killed job never becomes Done or Failed)."""
    from prefect_egi.tasks.dirac.tasks import kill_jobs

    group, pilot = site
    (job_id,) = submitted(diracx, group, executable="sh", arguments="-c 'echo $$ > pid && exec sleep 600'")
    pid_file = tmp_path / "site" / str(job_id) / "pid"
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, jobs(diracx, [job_id])
        time.sleep(0.2)
    pid = int(pid_file.read_text())
    assert jobs(diracx, [job_id])[job_id]["Status"] == "Running"
    assert run(kill_jobs.fn(diracx.block(), [job_id])) == {str(job_id): "Killed"}
    deadline = time.monotonic() + 30
    while _alive(pid):
        assert time.monotonic() < deadline, "the payload still runs after the kill"
        time.sleep(0.2)
    time.sleep(2)  # the pilot had the time to report an end, had it wanted to
    assert jobs(diracx, [job_id])[job_id]["Status"] == "Killed"
    assert pilot.outcomes["Killed"] == 1 and pilot.outcomes["Done"] == pilot.outcomes["Failed"] == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (our own child not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_jobs_are_matched_by_site_and_banned_sites(diracx, site):
    group, pilot = site
    (elsewhere,) = submitted(diracx, group, executable="true", job_name="elsewhere", site=["LCG.Other.org"])
    (banned,) = submitted(diracx, group, executable="true", job_name="banned", banned_sites=[SITE])
    (here,) = submitted(diracx, group, executable="true", job_name="here", site=[SITE, "LCG.Other.org"],
                        banned_sites=["LCG.Bad.org"])
    (anywhere,) = submitted(diracx, group, executable="true", job_name="anywhere")
    wait_for(diracx, [here, anywhere], {"Done"})
    time.sleep(1)  # more cycles: still not taken
    assert {j: r["Status"] for j, r in jobs(diracx, [elsewhere, banned]).items()} == {
        elsewhere: "Waiting", banned: "Waiting"}


def test_the_job_environment_is_the_pilots_software_without_its_credentials(diracx, site, monkeypatch, tmp_path):
    """PATH starts with the pilot's Python (as CVMFS provides a node's software), `--env` settings
    are there, and nothing of the pilot's DiracX credentials is."""
    import json

    group, _ = site
    credentials = Path(diracx.pilot.credentials)
    token = json.loads(credentials.read_text())["access_token"]
    monkeypatch.setenv("DIRACX_CREDENTIALS_PATH", str(credentials))  # as a pilot started with them has it
    monkeypatch.setenv("PILOT_ACCESS_TOKEN", token)
    (job_id,) = submitted(diracx, group, executable="env")
    wait_for(diracx, [job_id], {"Done"})
    outputs(diracx, [job_id], tmp_path / "out")
    env = dict(line.split("=", 1) for line in (tmp_path / "out" / str(job_id) / "std.out").read_text().splitlines()
               if "=" in line)
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["SITE_SETTING"] == "from-the-pilot" and env["DIRACJOBID"] == str(job_id)
    printed = "\n".join(f"{k}={v}" for k, v in env.items())
    assert str(credentials) not in printed and token not in printed and "DIRACX_" not in printed
