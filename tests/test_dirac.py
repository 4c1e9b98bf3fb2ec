"""DIRAC through a real DiracX 0.7 server: JDL rendering and validation, chunked
submission, bulk waiting over more than 100 jobs, kill, resume without resubmitting."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from prefect_egi.tasks import DiracJob, ExpiredCredentials, JobState, WatchPolicy, kill_jobs, watch
from prefect_egi.tasks.dirac.tasks import submit

FAST = WatchPolicy(first_interval=0.3, max_interval=1.0)


def run(coro):
    return asyncio.run(coro)


def test_jdl_renders_every_field(tmp_path):
    job = DiracJob(executable="analyse.sh", arguments="--input %s --fast", parameters=["a.csv", "b.csv"],
                   input_sandbox=["SB:SandboxSE|/S3/x.tar.zst"], output_sandbox=["out.csv", "std.out"],
                   job_name="ana-%s", job_group="g1", site=["EGI.SITE"], banned_sites=["BAD.SITE"],
                   cpu_time=3600, tags=["8Processors"], platform="x86_64")
    first, second = job.to_jdls()
    assert 'Arguments = "--input a.csv --fast";' in first and 'JobName = "ana-a.csv";' in first
    assert 'JobName = "ana-b.csv";' in second and 'Parameter = "b.csv";' in second
    for line in ('Executable = "analyse.sh";', 'InputSandbox = "SB:SandboxSE|/S3/x.tar.zst";',
                 'OutputSandbox = {"out.csv", "std.out"};', 'Site = "EGI.SITE";', 'BannedSites = "BAD.SITE";',
                 "CPUTime = 3600;", 'Tags = "8Processors";', 'Platform = "x86_64";', 'JobGroup = "g1";'):
        assert line in first  # a list of one is written as a scalar, as DIRAC's job API writes it


@pytest.mark.parametrize(("fields", "message"), [
    ({"executable": "  "}, "executable: give the program or script to run"),
    ({"executable": "x", "arguments": 'say "hi"'}, "arguments: 'say \"hi\"' cannot be written into JDL"),
    ({"executable": "x", "input_sandbox": ["/no/such/file.sh"]}, "input_sandbox: /no/such/file.sh does not exist"),
    ({"executable": "x", "cpu_time": -5}, "cpu_time"),
    ({}, "executable"),
])
def test_bad_descriptions_fail_before_anything_is_sent(fields, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace('"', '.')):
        DiracJob(**fields)


def test_chunked_submission_and_bulk_wait_over_a_hundred_jobs(diracx):
    block = diracx.block()
    before = diracx.job_count()
    job = DiracJob(executable="echo", arguments="%s", parameters=list(range(130)))
    ids = run(submit(block, [job]))
    assert len(ids) == 130 and len(set(ids)) == 130
    assert diracx.job_count() == before + 130
    diracx.pilot.run_in_background(ids, start_after=0.5, duration=1.0, fail=ids[:3])
    adapter = block.job_adapter()
    cycles = 0
    poll = adapter.poll

    async def counted(job_ids):
        nonlocal cycles
        cycles += 1
        return await poll(job_ids)

    adapter.poll = counted
    final = run(watch(adapter, [str(i) for i in ids], FAST))
    states = [s.state for s in final.values()]
    assert states.count(JobState.SUCCEEDED) == 127 and states.count(JobState.FAILED) == 3
    assert final[str(ids[0])].message == "Failed: Application Finished With Errors"
    # one search per cycle for all 130 jobs, not one per job (how many cycles depends on the machine's pace)
    assert adapter.searches == cycles < len(ids)


def test_pages_are_walked_beyond_the_page_size(diracx):
    block = diracx.block()
    ids = run(submit(block, [DiracJob(executable="echo", parameters=list(range(25)))]))
    adapter = block.job_adapter()
    import prefect_egi.tasks.dirac.adapter as dirac

    original = dirac.MAX_PER_PAGE
    dirac.MAX_PER_PAGE = 10
    try:
        rows = run(adapter.statuses(ids))
    finally:
        dirac.MAX_PER_PAGE = original
    assert len(rows) == 25 and adapter.searches == 3


def test_a_full_last_page_ends_the_walk(diracx):
    """Jobs the server no longer has (DIRAC cleans old ones) leave the last page full;
    the page after it is answered 416 Requested Range Not Satisfiable: the walk ends."""
    block = diracx.block()
    ids = run(submit(block, [DiracJob(executable="echo", parameters=list(range(20)))]))
    gone = [max(ids) + 1_000_000 + i for i in range(5)]
    adapter = block.job_adapter()
    import prefect_egi.tasks.dirac.adapter as dirac

    original = dirac.MAX_PER_PAGE
    dirac.MAX_PER_PAGE = 10
    try:
        rows = run(adapter.statuses([*ids, *gone]))
    finally:
        dirac.MAX_PER_PAGE = original
    assert sorted(int(j) for j in rows) == sorted(ids) and adapter.searches == 3


def test_a_job_the_server_does_not_have_is_reported_not_waited_for(diracx):
    """An id the server does not know (a submission it did not keep) ends Failed as
    "Missing" after a few polls — then it can be resubmitted — instead of waiting a week."""
    block = diracx.block()
    ids = run(submit(block, [DiracJob(executable="echo", parameters=[1])]))
    diracx.pilot.run_in_background(ids, start_after=0.2, duration=0.5)
    ghost = str(max(ids) + 1_000_000)
    adapter = block.job_adapter()
    final = run(watch(adapter, [str(ids[0]), ghost], FAST))
    assert final[str(ids[0])].state is JobState.SUCCEEDED
    assert final[ghost].state is JobState.FAILED and final[ghost].message.startswith("Missing: ")
    assert adapter.searches >= adapter.MISSING_AFTER


def test_kill_is_verified_on_the_server(diracx):
    block = diracx.block()
    ids = run(submit(block, [DiracJob(executable="sleep", arguments="600", parameters=[1, 2])]))
    run(diracx.pilot.walk([ids[1]], "Done", "Execution Complete"))
    outcome = run(kill_jobs.fn(block, ids))
    assert outcome == {str(ids[0]): "Killed", str(ids[1]): "Done"}  # Done→Killed is refused


def test_input_sandbox_is_uploaded(diracx, tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    ids = run(submit(diracx.block(), [DiracJob(executable="run.sh", input_sandbox=[str(script)])]))
    assert len(ids) == 1


def test_missing_credentials_file_is_a_clear_error(diracx, tmp_path):
    with pytest.raises(ValueError, match="credentials_path: .* does not exist; run `dirac login`"):
        diracx.block(credentials_path=str(tmp_path / "nope.json")).client().credentials_file()


def test_expired_credentials_without_refresh_are_a_clear_error(diracx, tmp_path):
    import json

    expired = tmp_path / "expired.json"
    data = json.loads(Path(diracx.credentials).read_text())
    data["expires_on"] = 0
    expired.write_text(json.dumps(data))
    block = diracx.block(credentials_path=str(expired))
    with pytest.raises(ExpiredCredentials, match=r"expired at 1970-01-01T00:00:00\+00:00 and there is no refresh"):
        run(block.job_adapter().poll(["1"]))


def test_two_blocks_for_two_vos_in_one_process(diracx):
    """Explicit preferences per block: each submits with its own identity."""
    first, second = diracx.block("egi.test"), diracx.block("vo.second.eu")
    ids_first = run(submit(first, [DiracJob(executable="echo", arguments="first")]))
    ids_second = run(submit(second, [DiracJob(executable="echo", arguments="second")]))

    async def owners(block, ids):
        async with block.client().session() as api:
            rows = await api.jobs.search(parameters=["JobID", "Owner", "VO", "OwnerGroup"],
                                         search=[{"parameter": "JobID", "operator": "in", "values": ids}])
        return {(r["Owner"], r["VO"], r["OwnerGroup"]) for r in rows}

    assert run(owners(first, ids_first)) == {("alice", "egi.test", "egi_user")}
    assert run(owners(second, ids_second)) == {("bob", "vo.second.eu", "second_user")}


def test_outputs_and_resubmission(diracx, tmp_path):
    import uuid

    from prefect_egi.sandbox.dirac_pilot import BatchPilot
    from prefect_egi.tasks.dirac.outputs import collect_outputs as collect
    from prefect_egi.tasks.dirac.tasks import resubmit

    group = f"g-{uuid.uuid4().hex[:6]}"
    block = diracx.block()
    ids = run(submit(block, [DiracJob(executable="echo", arguments="%s", parameters=list(range(6)),
                                      job_group=group)]))
    pilot = BatchPilot(diracx.pilot, group, tmp_path / "pilot", fail_first=lambda j: j == ids[0]).start()
    try:
        final = run(watch(block.job_adapter(), [str(i) for i in ids], FAST))
        failed = [int(j) for j, s in final.items() if s.state is JobState.FAILED]
        assert failed == [ids[0]]
        (replacement,) = run(resubmit(block, failed, attempt=1)).values()
        assert replacement not in ids
        again = run(watch(block.job_adapter(), [str(replacement)], FAST))
        assert again[str(replacement)].state is JobState.SUCCEEDED
    finally:
        pilot.stop()
    done = ids[1:] + [replacement]
    outputs = run(collect(block.client(), done, tmp_path / "out"))
    assert all(sorted(o.files) == ["std.err", "std.out"] for o in outputs)
    # what each job printed: `echo %s`, the replacement of job 0 printing 0 as its first run did not
    assert [(tmp_path / "out" / str(j) / "std.out").read_text() for j in done] == [f"{n}\n" for n in range(1, 6)] + ["0\n"]
    (failed_run,) = run(collect(block.client(), [ids[0]], tmp_path / "out"))  # a failed job's sandbox comes too
    assert sorted(failed_run.files) == ["std.err", "std.out"] and (tmp_path / "out" / str(ids[0]) / "std.out").read_text() == ""


@pytest.mark.timeout(600)  # room for the wait's own deadline and the join after it
def test_server_restarted_mid_wait_the_wait_resumes(tmp_path):
    import socket
    import threading

    from prefect_egi.sandbox.dirac_pilot import Pilot
    from prefect_egi.sandbox.peers import start_peer
    from prefect_egi.tasks import DiracX

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ("--port", str(port), "--workdir", str(tmp_path / "diracx"))
    first = start_peer("diracx-restart", "diracx_peer.py", *args, timeout=120)
    second = None
    try:
        (vo, creds), = first.info["vos"].items()
        block = DiracX(url=first.info["url"], vo=vo, group=creds["group"], credentials_path=creds["user"])
        ids = run(submit(block, [DiracJob(executable="echo", parameters=[1, 2, 3])]))
        outcome: dict = {}
        policy = WatchPolicy(first_interval=0.3, max_interval=1, error_backoff=0.3, max_error_backoff=1,
                             max_consecutive_errors=300, deadline=300)

        def wait() -> None:
            try:
                outcome["final"] = run(watch(block.job_adapter(), [str(i) for i in ids], policy))
            except Exception as exc:  # reported below
                import traceback

                outcome["error"] = exc
                outcome["trace"] = traceback.format_exc()

        waiter = threading.Thread(target=wait)
        waiter.start()
        first.stop()  # uvicorn and moto go down; the databases stay in the workdir
        second = start_peer("diracx-restart", "diracx_peer.py", *args, timeout=120)
        run(Pilot(second.info["url"], creds["pilot"]).run(ids, start_after=0.1, duration=0.2))
        waiter.join(300)
        assert not waiter.is_alive(), "the wait did not end after the restart"
        assert "error" not in outcome, outcome.get("trace")
        assert {s.state for s in outcome["final"].values()} == {JobState.SUCCEEDED}
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_refresh_token_becomes_a_private_credentials_file(diracx):
    import json
    import stat

    from pydantic import SecretStr

    from prefect_egi.tasks.redaction import redact

    token = "diracx-refresh-token-for-a-test-0123456789"
    block = diracx.block(credentials_path=None, refresh_token=SecretStr(token))
    path = block.client().credentials_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"access_token": "", "refresh_token": token, "expires_on": 0}
    assert block.client().credentials_file() == path  # one file per block object
    assert redact(f"refresh={token}") == "refresh=***"
    assert token not in repr(block)


# -- statuses as DIRAC has them --------------------------------------------------------------------


def test_every_dirac_status_is_known_and_final_as_dirac_says():
    """DIRAC's own lists (DIRACCommon's JobStatus: JOB_STATES, JOB_FINAL_STATES and
    JOB_REALLY_FINAL_STATES) and diracx-core's JobStatus: every status is mapped, and a wait
    ends exactly at the statuses DIRAC calls final (before, Submitting and Scouting were
    UNKNOWN and Completed was RUNNING: a Completed job was waited for until the deadline)."""
    from diracx.core.models import JobStatus as DiracxStatus
    from DIRACCommon.WorkloadManagementSystem.Client import JobStatus as dirac

    from prefect_egi.tasks.dirac.adapter import DIRAC_STATES

    final = set(dirac.JOB_FINAL_STATES) | set(dirac.JOB_REALLY_FINAL_STATES)
    assert set(DIRAC_STATES) == set(dirac.JOB_STATES) >= {s.value for s in DiracxStatus}
    assert {s for s, state in DIRAC_STATES.items() if state.terminal} == final
    assert JobState.UNKNOWN not in DIRAC_STATES.values()
    assert DIRAC_STATES["Completed"] is DIRAC_STATES["Done"] is JobState.SUCCEEDED
    assert DIRAC_STATES["Submitting"] is DIRAC_STATES["Scouting"] is JobState.QUEUED


def test_a_completed_job_ends_the_wait_and_submitting_ones_are_queued(diracx):
    """On the real server: a job its pilot leaves `Completed` (payload done, requests pending)
    ends the wait as succeeded; the jobs of a parametric JDL DiracX expanded itself (left
    `Submitting`) are queued, not unknown. (DiracX 0.7 cannot hold `Scouting`: its JobStatus
    lacks it and a status update to it is refused with 422.)"""
    import uuid

    block = diracx.block()
    (completed,) = run(submit(block, [DiracJob(executable="echo")]))
    run(diracx.pilot.walk([completed], "Completed", "Pending Requests"))

    async def dirac_expands() -> list[int]:
        async with block.client().session() as api:
            jdl = f'Executable = "echo";\nJobName = "p_%n";\nJobGroup = "s-{uuid.uuid4().hex[:6]}";\nParameters = 2;'
            return [j.job_id for j in await api.jobs.submit_jdl_jobs([jdl])]

    submitting = run(dirac_expands())
    final = run(watch(block.job_adapter(), [str(completed)], WatchPolicy(first_interval=0.3, max_interval=1,
                                                                           deadline=120)))
    assert final[str(completed)].state is JobState.SUCCEEDED and final[str(completed)].detail["status"] == "Completed"
    polled = run(block.job_adapter().poll([str(j) for j in submitting]))
    assert {(s.detail["status"], s.state) for s in polled.values()} == {("Submitting", JobState.QUEUED)}


# -- output sandboxes one by one -------------------------------------------------------------------


def assign_foreign_sandbox(diracx, job_id: int, folder: Path) -> None:
    """Give `job_id` an output sandbox uploaded and assigned by ANOTHER identity (bob of
    vo.second.eu, JobAdministrator there): DiracX serves a sandbox only to the user under whose
    VO/group/name it was uploaded, so the job's owner gets 403 "Invalid PFN"."""
    from diracx.api.jobs import create_sandbox

    from prefect_egi.sandbox.dirac_pilot import Pilot

    bob = Pilot(diracx.url, diracx.vos["vo.second.eu"]["pilot"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "foreign.txt").write_text("not yours\n")

    async def assign() -> None:
        async with bob.client() as api:
            pfn = await create_sandbox([folder / "foreign.txt"], client=api)
            await api.jobs.assign_sandbox_to_job(job_id, f'"{pfn}"')

    run(assign())


def test_an_unreadable_output_sandbox_is_reported_and_the_others_fetched(diracx, tmp_path):
    """One job's sandbox refused (403 Invalid PFN: uploaded by another identity, reproduced on
    the real server) costs that job's outputs only: it is reported with DiracX's reason, at
    once (a refusal is not retried), and every other job's outputs are fetched. Before, the
    whole fetch failed (and was retried) and no job's outputs were reported."""
    import time
    import uuid

    from prefect_egi.sandbox.dirac_pilot import BatchPilot
    from prefect_egi.tasks.dirac.outputs import collect_outputs

    group = f"o-{uuid.uuid4().hex[:6]}"
    block = diracx.block()
    ids = run(submit(block, [DiracJob(executable="echo", parameters=[1, 2, 3], job_group=group)]))
    pilot = BatchPilot(diracx.pilot, group, tmp_path / "pilot")
    run(pilot._cycle())  # runs them: Done, each with its own std.out and std.err
    assign_foreign_sandbox(diracx, ids[1], tmp_path / "bob")
    started = time.monotonic()
    outputs = run(collect_outputs(block.client(), ids, tmp_path / "out"))
    assert [o.job_id for o in outputs] == ids
    assert [sorted(o.files) for o in outputs] == [["std.err", "std.out"]] * 3  # its own one came
    refused = outputs[1]
    assert refused.error.startswith("DiracX refused it (HTTP 403: Invalid PFN. PFN must start with /S3/")
    assert outputs[0].error is None and outputs[2].error is None
    assert time.monotonic() - started < 60  # no backoff spent on a refusal (a generous bound on a busy machine)


def test_outputs_of_jobs_the_server_refuses_to_show_are_reported(diracx, tmp_path):
    """A job id of somebody else's job (bob's, in another VO): DiracX refuses to list its
    sandboxes (403); that job is reported, the fetch goes on."""
    bob_ids = run(submit(diracx.block("vo.second.eu"), [DiracJob(executable="echo")]))
    mine = run(submit(diracx.block(), [DiracJob(executable="echo")]))
    from prefect_egi.tasks.dirac.outputs import collect_outputs

    theirs, own = run(collect_outputs(diracx.block().client(), [*bob_ids, *mine], tmp_path / "out"))
    assert theirs.error and theirs.error.startswith("DiracX refused it (HTTP 403") and theirs.path is None
    assert own.error is None and own.note == "no output sandbox"


# -- the recovery search adopts only our own jobs --------------------------------------------------


def through_proxy(diracx, rules, vo: str | None = None):
    from prefect_egi.sandbox.fault_proxy import FaultProxy
    from prefect_egi.tasks import DiracX

    proxy = FaultProxy(diracx.url).start()
    proxy.set_rules(rules, seed=1)
    vo = vo or diracx.vo
    return proxy, DiracX(url=proxy.url, vo=vo, group=diracx.vos[vo]["group"],
                         credentials_path=diracx.vos[vo]["user"], timeout_seconds=60)


LOSE_FIRST_SUBMIT_ANSWER = [{"kind": "drop-response", "method": "POST", "path": r"^/api/jobs/jdl", "requests": [1]}]


def owners(diracx, ids):
    async def search():
        async with diracx.pilot.client() as api:
            return await api.jobs.search(parameters=["JobID", "Owner", "VO"], search=[
                {"parameter": "JobID", "operator": "in", "values": list(ids)}], per_page=1000)

    return {(r["Owner"], r["VO"]) for r in run(search())}


def test_a_lost_answer_is_reconciled_with_our_own_jobs_only(diracx):
    """DiracX 0.7 lets alice's search see bob's jobs (another user, another VO). Bob has jobs of
    the very group and names alice's batch uses; alice's first submit answer is lost after the
    server created her jobs (the fault proxy). The recovery search must adopt her jobs, never
    his (before, it took bob's: the lowest ids of that group and name)."""
    import uuid

    group = f"shared-{uuid.uuid4().hex[:6]}"
    job = DiracJob(executable="echo", arguments="%s", job_name="step-%s", parameters=[1, 2, 3], job_group=group)

    async def bob_submits() -> list[int]:  # from his own machine: nothing of his is in our job ledger
        async with diracx.block("vo.second.eu").client().session() as api:
            return [j.job_id for j in await api.jobs.submit_jdl_jobs(job.to_jdls())]

    decoys = run(bob_submits())
    before = diracx.job_count()
    proxy, block = through_proxy(diracx, LOSE_FIRST_SUBMIT_ANSWER)
    try:
        ids = run(submit(block, [job]))
        assert proxy.stats()["faulted"]["drop-response"] == 1
    finally:
        proxy.stop()
    assert not set(ids) & set(decoys)
    assert owners(diracx, ids) == {("alice", "egi.test")}
    assert diracx.job_count() == before + 3  # created once, adopted, not sent again


def test_a_lost_answer_for_names_holding_the_job_id_is_reconciled(diracx):
    """DiracX replaces `%j` in a JobName with the job's id (`run-%j` is stored as `run-1234`):
    the recovery search finds such jobs too, instead of sending them again (before, the search
    for the name "run-%j" found nothing and the batch was created twice)."""
    import uuid

    job = DiracJob(executable="echo", job_name="run-%j-%n", number_of_parameters=4,
                   job_group=f"j-{uuid.uuid4().hex[:6]}")
    before = diracx.job_count()
    proxy, block = through_proxy(diracx, LOSE_FIRST_SUBMIT_ANSWER)
    try:
        ids = run(submit(block, [job]))
    finally:
        proxy.stop()
    assert diracx.job_count() == before + 4
    async def names():
        async with diracx.pilot.client() as api:
            return await api.jobs.search(parameters=["JobID", "JobName"], search=[
                {"parameter": "JobID", "operator": "in", "values": ids}], per_page=100)

    assert sorted((r["JobID"], r["JobName"]) for r in run(names())) == [
        (j, f"run-{j}-{n}") for n, j in enumerate(ids)]


def test_a_sandbox_store_answering_5xx_is_retried_and_its_url_never_told():
    """The store's presigned URL is a credential for the file: a 503 from the store is a
    transient fault (tried again, then reported on the job), and neither text holds the URL."""
    import httpx2

    from prefect_egi.tasks.dirac.client import engine_error
    from prefect_egi.tasks.dirac.outputs import refusal
    from prefect_egi.tasks.faults import TransientServiceError

    url = "http://127.0.0.1:9/sandboxes/x.tar.zst?X-Amz-Signature=0123456789abcdef"
    request = httpx2.Request("GET", url)
    for status, transient in ((503, True), (404, False)):
        error = httpx2.HTTPStatusError(f"Server error '{status}' for url '{url}'", request=request,
                                       response=httpx2.Response(status, request=request))
        mapped = engine_error(error)
        assert isinstance(mapped, TransientServiceError) is transient
        reason = refusal(error, mapped)
        assert f"HTTP {status}" in reason and "Signature" not in reason
        assert ("fetch it again later" in reason) is transient
        if transient:
            assert "Signature" not in str(mapped)  # what a task raising it would say
