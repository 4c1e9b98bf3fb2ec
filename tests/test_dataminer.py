"""DataMiner over WPS against the local PyWPS peer: discovery, validation,
execution end to end, failures, faults and the token's reach."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from prefect_egi.tasks import (
    DataMinerExecutionFailed,
    InputValidationError,
    JobState,
    WatchDeadlineExceeded,
    WatchGaveUp,
    WatchPolicy,
    WPSAuthError,
    WPSServiceError,
    watch,
)
from prefect_egi.tasks.dataminer.adapter import process_id

FAST = WatchPolicy(first_interval=0.2, max_interval=1.0, error_backoff=0.2, max_error_backoff=1.0)


def run(coro):
    return asyncio.run(coro)


def test_processes_and_descriptions(dataminer):
    from prefect_egi.tasks import describe_process, list_processes

    block = dataminer.block()
    names = [p.identifier for p in run(list_processes.fn(block))]
    assert process_id("FAST_ECHO") in names and process_id("CSV_SUMMARY") in names
    described = run(describe_process.fn(block, "FAST_ECHO"))
    times, mode, tags = described.input("times"), described.input("mode"), described.input("tags")
    assert (times.data_type, times.default, times.required) == ("integer", "1", False)
    assert [(r.minimum, r.maximum) for r in times.allowed_ranges] == [(1.0, 5.0)]
    assert mode.allowed_values == ("plain", "fancy") and tags.max_occurs == 3
    assert described.input("text").required
    table = run(describe_process.fn(block, "CSV_SUMMARY")).input("table")
    assert table.kind == "complex" and table.mime_types == ("text/csv",)


def test_every_input_problem_is_listed_and_nothing_is_submitted(dataminer, tmp_path):
    from prefect_egi.tasks.dataminer.tasks import submit_execution

    big = tmp_path / "big.csv"
    big.write_bytes(b"a\n" + b"1\n" * (3 * 1024 * 1024))
    with pytest.raises(InputValidationError) as caught:
        run(submit_execution(dataminer.block(), "FAST_ECHO", {
            "times": 9, "scale": "wide", "uppercase": "maybe", "mode": "loud", "tags": ["a", "b", "c", "d"],
            "colour": "red"}))
    problems = caught.value.problems
    assert problems == [
        "colour: unknown input (this process takes: text, times, scale, uppercase, mode, tags)",
        "text: missing (string input, required)",
        "times: 9 is outside the allowed range 1…5",
        "scale: expected a number, got 'wide'",
        "uppercase: expected true or false, got 'maybe'",
        "mode: 'loud' is not one of plain, fancy",
        "tags: 4 values given, at most 3 allowed",
    ]
    with pytest.raises(InputValidationError, match="table: file .* does not exist"):
        run(submit_execution(dataminer.block(), "CSV_SUMMARY", {"table": Path(tmp_path / "nope.csv")}))
    with pytest.raises(InputValidationError, match="over the 5242880-byte limit"):
        run(submit_execution(dataminer.block(), "CSV_SUMMARY", {"table": big}))
    assert "post-execute" not in dataminer.stats()


def test_unknown_process_and_bad_token_are_clear(dataminer):
    from prefect_egi.tasks import describe_process

    with pytest.raises(WPSServiceError) as caught:
        run(describe_process.fn(dataminer.block(), "NO_SUCH_ALGORITHM"))
    assert "NO_SUCH_ALGORITHM" in str(caught.value) and "<" not in str(caught.value)
    with pytest.raises(WPSAuthError, match="refused the gCube token \\(HTTP 401\\)"):
        run(describe_process.fn(dataminer.block(gcube_token="wrong-token-value"), "FAST_ECHO"))


@pytest.mark.parametrize("mode", ["header", "query", "basic"])
def test_literal_algorithm_with_each_token_mode(dataminer, tmp_path, mode):
    from prefect_egi.tasks import run_algorithm

    result = run(run_algorithm.fn(dataminer.block(token_mode=mode), "FAST_ECHO",
                                  {"text": "hi", "times": 2, "uppercase": True, "tags": ["x", "y"], "scale": 0.5},
                                  destination=str(tmp_path), policy=FAST))
    assert result.state == "succeeded" and result.process == "FAST_ECHO"
    assert result.literals == {"result": "HI HI | tags=x,y | scale=0.5"}
    assert dataminer.stats().get("unauthorized", 0) == 0


def test_files_by_url_and_reference_and_the_token_stays_home(dataminer, tmp_path):
    from prefect_egi.tasks import run_algorithm

    table = tmp_path / "in.csv"
    table.write_text("a,b\n1,2\n3,4\n")
    # by URL: PyWPS fetches it from the peer's own storage (a public output URL)
    result = run(run_algorithm.fn(dataminer.block(), "CSV_SUMMARY", {"table": table},
                                  destination=str(tmp_path / "out"), policy=FAST))
    assert result.state == "succeeded"
    names = {f.name: f for f in result.files}
    assert sorted(n[:3] for n in names) == ["01-", "02-", "03-", "sum"]
    assert all(f.path and f.error is None for f in result.files)
    summary = Path(names["summary.csv"].path).read_text()
    assert summary.splitlines() == ["column,count,sum", "a,2,4", "b,2,6"]
    described = {f.description: f for f in result.files if f.name != "summary.csv"}
    assert set(described) == {"Log of the computation", "Summary table", "Copy on the shared storage"}
    assert Path(described["Copy on the shared storage"].path).read_text() == summary
    assert described["Copy on the shared storage"].url.startswith(dataminer.foreign_url)
    assert dataminer.stats()["foreign_credentials"] == []  # the foreign host never saw a credential
    by_url = run(run_algorithm.fn(dataminer.block(), "CSV_SUMMARY", {"table": described["Summary table"].url},
                                  destination=str(tmp_path / "again"), policy=FAST))
    assert Path(next(f.path for f in by_url.files if f.name == "summary.csv")).read_text().startswith("column,count,sum")


def test_server_side_failure_and_crash_carry_the_server_text(dataminer, tmp_path):
    from prefect_egi.tasks import run_algorithm

    with pytest.raises(DataMinerExecutionFailed) as failed:
        run(run_algorithm.fn(dataminer.block(), "ALWAYS_FAILS", {}, destination=str(tmp_path), policy=FAST))
    assert "ALWAYS_FAILS failed: Process error: Algorithm failed: the input table has no numeric column" in str(failed.value)
    with pytest.raises(DataMinerExecutionFailed, match="CRASHES failed: Process failed, please check server error log"):
        run(run_algorithm.fn(dataminer.block(), "CRASHES", {}, destination=str(tmp_path), policy=FAST))


def _submit(dataminer, process, inputs):
    from prefect_egi.tasks.dataminer.tasks import submit_execution

    return run(submit_execution(dataminer.block(), process, inputs))


@pytest.mark.parametrize(("seconds", "steps"), [(2, 5), (7, 4), (12, 10)])
def test_the_default_wait_never_sends_more_status_requests_than_owslib(dataminer, seconds, steps):
    """owslib's monitorExecution(sleepSecs=5) looks at once and then every 5 s: 1 + ⌈T/5⌉
    status requests for an execution that ends T s after the wait began. Ours spends
    at most that, wherever the progress puts them (latency: the benchmark measures it)."""
    import math
    import time

    from prefect_egi.tasks import DATAMINER_WAIT

    job = _submit(dataminer, "SLOW_COUNTER", {"seconds": seconds, "steps": steps})
    began = time.time()
    final = run(watch(dataminer.block().job_adapter(), [job], DATAMINER_WAIT))
    assert final[job].state is JobState.SUCCEEDED
    uuid = job.rsplit("id=", 1)[1]
    ended = (Path(dataminer.process.info["workdir"]) / "outputs" / f"{uuid}.xml").stat().st_mtime
    assert dataminer.stats()[f"status:{uuid}"] <= 1 + math.ceil((ended - began) / 5)


def test_transient_5xx_during_the_wait_is_absorbed(dataminer):
    job = _submit(dataminer, "SLOW_COUNTER", {"seconds": 2, "steps": 4})
    dataminer.control("fault", kind="status", status=503, count=3)
    adapter = dataminer.block().job_adapter()
    final = run(watch(adapter, [job], FAST))
    assert final[job].state is JobState.SUCCEEDED
    stats = dataminer.stats()
    assert stats["status"] >= 4 and stats["status"] < 40


@pytest.mark.parametrize("kept", [0.5, 0.0])
def test_a_status_document_read_while_rewritten_is_read_again(dataminer, kept):
    """PyWPS rewrites the status file in place: a read can get it cut short or empty (seen
    with 50 pipelines at once, where it failed a run). The wait reads it again."""
    job = _submit(dataminer, "SLOW_COUNTER", {"seconds": 2, "steps": 4})
    dataminer.control("fault", kind="status", status=200, truncate=kept, count=2)
    final = run(watch(dataminer.block().job_adapter(), [job], FAST))
    assert final[job].state is JobState.SUCCEEDED
    assert 4 <= dataminer.stats()["status"] < 40


def test_a_status_answer_that_is_no_status_document_fails_at_once(dataminer):
    job = _submit(dataminer, "SLOW_COUNTER", {"seconds": 2, "steps": 4})
    dataminer.control("fault", kind="status", status=200, count=5)  # a 200 page saying "injected fault"
    with pytest.raises(WPSServiceError, match="not XML"):
        run(watch(dataminer.block().job_adapter(), [job], FAST))
    assert dataminer.stats()["status"] == 1


def test_revoked_token_mid_job_fails_clearly_without_a_busy_loop(dataminer):
    job = _submit(dataminer, "SLOW_COUNTER", {"seconds": 5, "steps": 5})
    adapter = dataminer.block().job_adapter()
    dataminer.control("revoke", token=dataminer.token)
    with pytest.raises(WatchGaveUp, match="rejected the credentials \\(HTTP 401\\) 2 times.*cannot be renewed"):
        run(watch(adapter, [job], FAST))
    assert dataminer.stats()["status"] == 2  # one retry, then a clear failure


def test_deadline_is_enforced(dataminer):
    job = _submit(dataminer, "SLOW_COUNTER", {"seconds": 6, "steps": 3})
    adapter = dataminer.block().job_adapter()
    with pytest.raises(WatchDeadlineExceeded) as caught:
        run(watch(adapter, [job], WatchPolicy(first_interval=0.2, max_interval=0.5, deadline=1.5)))
    assert "after the 2 s deadline" in str(caught.value) or "after the 1 s deadline" in str(caught.value)
    assert caught.value.statuses[job].state in (JobState.QUEUED, JobState.RUNNING)


@pytest.mark.timeout(600)  # room for the wait's own deadline and the join after it
def test_server_restarted_mid_job_the_wait_resumes(tmp_path):
    """The DataMiner front dies (SIGKILL) while a computation runs; the computation
    finishes; the server comes back on the same port: the wait picks up the result."""
    import os
    import signal
    import socket
    import threading
    import time

    from pydantic import SecretStr

    from prefect_egi.sandbox.peers import start_peer
    from prefect_egi.tasks import DataMiner
    from prefect_egi.tasks.dataminer.tasks import submit_execution

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ("--port", str(port), "--workdir", str(tmp_path / "wps"))
    first = start_peer("dataminer-restart", "dataminer_peer.py", *args)
    second = None
    try:
        # the default request timeout: the first Execute may wait for the peer's fork server to
        # start, and requests to the SIGKILLed front are refused at once anyway
        block = DataMiner(url=first.info["wps_url"], gcube_token=SecretStr(first.info["token"]))
        job = run(submit_execution(block, "SLOW_COUNTER", {"seconds": 3, "steps": 3}))
        outcome: dict = {}

        def wait() -> None:
            adapter = block.job_adapter()
            policy = WatchPolicy(first_interval=0.2, max_interval=0.5, error_backoff=0.3, max_error_backoff=1,
                                 max_consecutive_errors=120, deadline=240)  # the restart may be slow on a busy machine
            try:
                outcome["final"] = run(watch(adapter, [job], policy))
            except Exception as exc:  # reported below
                outcome["error"] = exc

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.8)
        os.kill(first.process.pid, signal.SIGKILL)  # the front only: the forked computation goes on
        first.process.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the computation holds the port until it ends
            try:
                second = start_peer("dataminer-restart", "dataminer_peer.py", *args)
                break
            except RuntimeError:
                time.sleep(0.5)
        assert second is not None, "the DataMiner peer could not restart on its port"
        waiter.join(300)
        assert not waiter.is_alive(), "the wait did not end after the restart"
        assert "error" not in outcome, outcome.get("error")
        assert outcome["final"][job].state is JobState.SUCCEEDED
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_bad_url_and_unreachable_server_are_clear(tmp_path):
    from pydantic import SecretStr

    from prefect_egi.tasks import DataMiner, WPSError
    from prefect_egi.tasks.dataminer.client import WPSClient
    from prefect_egi.tasks.http import RetryPolicy

    with pytest.raises(ValueError, match="url must be an https:// URL"):
        DataMiner(url="ftp://example.org/wps")
    with pytest.raises(ValueError, match="url must be an https:// URL"):
        DataMiner(url="http://dataminer.example.org/wps")  # a gCube token never crosses a network in clear
    client = WPSClient("http://127.0.0.1:9/wps/WebProcessingService", SecretStr("gcube-secret-token"),
                       retry=RetryPolicy(attempts=2, backoff=0.05))
    with pytest.raises(WPSError, match="failed 2 times; last failure: ConnectError") as caught:
        run(client.describe("X"))
    assert "gcube-secret-token" not in str(caught.value)


def test_executions_queued_by_the_server_get_their_inputs_intact(tmp_path):
    """Over its `parallelprocesses`, PyWPS queues an execution and launches it later from a
    stored copy; a multi-line table sent inline must reach the algorithm unchanged (a PyWPS
    bug left it wrapped in CDATA — seen with 50 pipelines at once)."""
    from pydantic import SecretStr

    from prefect_egi.sandbox.peers import start_peer
    from prefect_egi.tasks import DataMiner, run_algorithm
    from prefect_egi.tasks.dataminer.tasks import submit_execution

    peer = start_peer("dataminer-queue", "dataminer_peer.py", "--parallel", "1")
    try:
        block = DataMiner(url=peer.info["wps_url"], gcube_token=SecretStr(peer.info["token"]))
        table = tmp_path / "in.csv"
        table.write_text("a,b\n1,2\n3,4\n5,6\n")

        async def scenario():
            await submit_execution(block, "SLOW_COUNTER", {"seconds": 2, "steps": 2})  # holds the only slot
            return await asyncio.gather(*(
                run_algorithm.fn(block, "CSV_SUMMARY", {"table": table}, destination=str(tmp_path / f"out{i}"),
                                 policy=FAST) for i in range(2)))

        for result in run(scenario()):
            assert result.state == "succeeded", result
            summary = next(f for f in result.files if f.name == "summary.csv")
            assert Path(summary.path).read_text().splitlines() == ["column,count,sum", "a,3,9", "b,3,12"]
    finally:
        peer.stop()
