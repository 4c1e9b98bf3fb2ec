"""The CCP client against the real peer: pygeoapi (TinyDB manager, asynchronous jobs) behind a
D4Science-like front that accepts only the UMA token of its VRE, issued by the Check-in peer.

No timed asserts: waits are on conditions, with generous deadlines (a busy machine)."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import zipfile
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect_egi.tasks.ccp.client import (
    MARKER_HEADER,
    CCPClient,
    CCPError,
    CCPJobFailed,
    CCPNoSuchJob,
    CCPNoSuchProcess,
    CCPTokenRejected,
    ExecuteOutcomeUnknown,
    ForeignDownload,
    JobInfo,
    LostExecute,
    UnsafeArchive,
    unpack_zip,
)
from prefect_egi.tasks.faults import CredentialsRejected, TransientServiceError, classify
from prefect_egi.tasks.http import RetryPolicy
from prefect_egi.tasks.remote import JobState

FAST = RetryPolicy(attempts=3, backoff=0.05)
CCP_METHODS = {"ccp-write-files", "ccp-progress", "ccp-fail", "ccp-sleep"}


async def wait_for(client: CCPClient, job_id: str, done=lambda job: job.state.terminal,
                   deadline: float = 120.0) -> tuple[JobInfo, list[JobInfo]]:
    """Poll until `done(job)`; every status seen, for what the test checks afterwards."""
    seen: list[JobInfo] = []
    limit = time.monotonic() + deadline
    while time.monotonic() < limit:
        job = await client.job(job_id)
        seen.append(job)
        if done(job):
            return job, seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached the condition; last: {seen[-1] if seen else None}")


def test_lists_and_describes_the_methods(ccp):
    async def scenario():
        async with ccp.client(retry=FAST) as client:
            listed = await client.processes()
            described = await client.process("ccp-write-files")
            return listed, described

    listed, described = asyncio.run(scenario())
    assert CCP_METHODS <= {p.id for p in listed}
    assert all(p.runs_async for p in listed)
    assert set(described.inputs) == {"count", "prefix", "ccpimage"}
    # the JSON Schema as the server sent it
    assert described.inputs["count"].schema == {"type": "integer", "minimum": 1, "maximum": 20}
    assert described.inputs["count"].required and not described.inputs["prefix"].required
    assert described.outputs["output"].schema["contentMediaType"] == "application/zip"


def test_a_method_writing_files_gives_output_zip_unpacked_safely(ccp, tmp_path):
    async def scenario():
        async with ccp.client(retry=FAST) as client:
            submitted = await client.execute("ccp-write-files", {"count": 3, "prefix": "table"})
            final, _ = await wait_for(client, submitted.job_id)
            results = await client.results(submitted.job_id)
            archive = await client.download(results.references[0].href, tmp_path / "download")
            return submitted, final, results, archive

    submitted, final, results, archive = asyncio.run(scenario())
    assert submitted.info is not None and submitted.info.job_id == submitted.job_id  # the statusInfo of the 201
    assert submitted.status_url.endswith(f"/jobs/{submitted.job_id}")
    assert final.state is JobState.SUCCEEDED and final.progress == 100
    assert final.created and final.finished and final.created <= final.finished
    assert results.values == {"files": ["table_1.csv", "table_2.csv", "table_3.csv"], "rows": 6}
    [reference] = results.references
    assert reference.output == "output" and reference.media_type == "application/zip"
    assert archive.name == "output.zip"
    written = unpack_zip(archive, tmp_path / "out")
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in written)
    assert names == ["ccp_data/logs/method.log", "ccp_data/table_1.csv", "ccp_data/table_2.csv",
                     "ccp_data/table_3.csv"]
    assert (tmp_path / "out" / "ccp_data" / "table_3.csv").read_text().splitlines()[-1] == "3,2,6"
    assert not list((tmp_path / "download").glob(".*"))  # no partial file left behind


def test_progress_and_messages_as_the_method_reports_them(ccp):
    async def scenario():
        async with ccp.client(retry=FAST) as client:
            submitted = await client.execute("ccp-progress", {"steps": 6, "seconds": 0.4})
            final, seen = await wait_for(client, submitted.job_id)
            results = await client.results(submitted.job_id)
            return final, seen, results

    final, seen, results = asyncio.run(scenario())
    running = [job for job in seen if job.state is JobState.RUNNING]
    assert running, "the job was never seen running"
    assert all(job.message.startswith("step ") for job in running if job.progress not in (None, 95))
    assert {job.progress for job in running} - {95.0} <= {0.0, 16.0, 33.0, 50.0, 66.0, 83.0}
    assert final.state is JobState.SUCCEEDED
    assert results.values == {"steps": 6} and results.media_types == {"steps": "application/json"}


def test_a_failing_method_reports_its_message(ccp):
    async def scenario():
        async with ccp.client(retry=FAST) as client:
            submitted = await client.execute("ccp-fail", {"message": "no data for this region"})
            final, _ = await wait_for(client, submitted.job_id)
            with pytest.raises(CCPJobFailed) as failure:
                await client.results(submitted.job_id)
            return final, failure.value

    final, failure = asyncio.run(scenario())
    assert final.state is JobState.FAILED
    assert "no data for this region" in final.message
    # pygeoapi answers the results request with 400 "job failed": the job's own message is named
    assert failure.status == 400 and "no data for this region" in str(failure) and failure.detail == final.message


def test_dismissing_a_running_job_stops_it_and_a_second_dismiss_finds_it_gone(ccp):
    async def scenario():
        async with ccp.client(retry=FAST) as client:
            submitted = await client.execute("ccp-sleep", {"seconds": 600})
            await wait_for(client, submitted.job_id, done=lambda job: job.state is JobState.RUNNING)
            dismissed = await client.dismiss(submitted.job_id)
            with pytest.raises(CCPNoSuchJob):
                await client.job(submitted.job_id)
            again = await client.dismiss(submitted.job_id)
            return dismissed, again

    dismissed, again = asyncio.run(scenario())
    assert dismissed is not None and dismissed.state is JobState.CANCELLED
    assert again is None


def test_an_execute_whose_answer_was_lost_is_found_by_its_marker_not_run_twice(ccp):
    """The gateway answers 504 after pygeoapi created the job: the client reports the outcome
    unknown (no resend), the job listing finds the job by the marker; sending the same
    marker again gets the first answer back."""
    ccp.control("fault", kind="execute", status=504, after_backend=True)

    async def scenario():
        async with ccp.client(retry=FAST) as client:
            with pytest.raises(ExecuteOutcomeUnknown) as lost:
                await client.execute("ccp-progress", {"steps": 2, "seconds": 0.1})
            found = await client.find_job(lost.value.marker, "ccp-progress", lost.value.sent_at)
            replayed = await client.execute("ccp-progress", {"steps": 2, "seconds": 0.1}, marker=lost.value.marker)
            return lost.value, found, replayed

    lost, found, replayed = asyncio.run(scenario())
    assert lost.marker.startswith("prefect-egi-") and lost.marker in str(lost)
    assert found.marker == lost.marker and found.process_id == "ccp-progress"
    assert replayed.job_id == found.job_id
    stats = ccp.stats()
    assert stats["execute"] == 2 and stats.get("execute replayed") == 1  # pygeoapi ran it once


def test_an_execute_refused_unread_every_time_is_transient_and_created_nothing(ccp):
    """503 (a front shedding load) proves the request was not read: retried, then reported as
    transient and safe to send again; the listing confirms no job carries its marker."""
    ccp.control("fault", kind="execute", status=503, count=10)
    since = datetime.now(timezone.utc)

    async def scenario():
        async with ccp.client(retry=FAST) as client:
            with pytest.raises(TransientServiceError, match="safe to send it again") as refused:
                await client.execute("ccp-fail", {}, marker="prefect-egi-refused")
            with pytest.raises(LostExecute) as missing:
                await client.find_job("prefect-egi-refused", "ccp-fail", since)
            return refused.value, missing.value

    refused, missing = asyncio.run(scenario())
    assert classify(refused) is TransientServiceError
    assert missing.candidates == [] and "did not reach the server" in str(missing)
    assert ccp.stats()["execute"] == FAST.attempts


def test_job_listing_pages_and_filters(ccp):
    async def scenario():
        async with ccp.client(retry=FAST) as client:
            ids = [(await client.execute("ccp-progress", {"steps": 1, "seconds": 0})).job_id for _ in range(3)]
            for job_id in ids:
                await wait_for(client, job_id)
            before = ccp.stats().get("jobs", 0)
            listed = await client.jobs(process_id="ccp-progress", status=["successful"], limit=2)
            pages = ccp.stats()["jobs"] - before
            failed = await client.jobs(process_id="ccp-progress", status=["failed"], limit=50)
            return ids, listed, pages, failed

    ids, listed, pages, failed = asyncio.run(scenario())
    assert set(ids) <= {job.job_id for job in listed}
    assert all(job.process_id == "ccp-progress" and job.status == "successful" for job in listed)
    assert len({job.job_id for job in listed}) == len(listed)  # no page read twice
    assert pages >= 2  # rel=next was followed
    assert failed == []


def test_the_users_plain_token_an_expired_rpt_and_no_token_are_refused_with_401(ccp, checkin):
    plain = checkin.login("alice")["access_token"]
    checkin.configure(access_token_lifetime=1)
    expiring = ccp.rpt()
    checkin.configure(access_token_lifetime=3600)

    async def refused(token: str | None) -> CCPTokenRejected:
        async with (ccp.client(token) if token else CCPClient(ccp.url, retry=FAST)) as client:
            with pytest.raises(CCPTokenRejected) as rejected:
                await client.processes()
            return rejected.value

    for token, reason in ((plain, "not for this VRE"), (None, "no bearer token")):
        error = asyncio.run(refused(token))
        assert error.status == 401 and reason in str(error)
        assert isinstance(error, CredentialsRejected) and classify(error) is CredentialsRejected
        assert plain not in str(error)
    deadline = time.time() + 60
    while time.time() < deadline and asyncio.run(_expired(ccp, expiring)) is False:
        time.sleep(0.5)
    error = asyncio.run(refused(expiring))
    assert "expired" in str(error) and expiring not in str(error)


async def _expired(ccp, token: str) -> bool:
    async with ccp.client(token, retry=FAST) as client:
        try:
            await client.processes()
        except CCPTokenRejected:
            return True
    return False


def test_the_servers_exceptions_are_named(ccp):
    async def scenario():
        async with ccp.client(retry=FAST) as client:
            with pytest.raises(CCPNoSuchProcess) as process:
                await client.process("no-such-method")
            with pytest.raises(CCPNoSuchJob) as job:
                await client.job("00000000-0000-0000-0000-000000000000")
            submitted = await client.execute("ccp-sleep", {"seconds": 600})
            await wait_for(client, submitted.job_id, done=lambda j: j.state is JobState.RUNNING)
            with pytest.raises(CCPError) as early:
                await client.results(submitted.job_id)
            await client.dismiss(submitted.job_id)
            return process.value, job.value, early.value

    process, job, early = asyncio.run(scenario())
    assert process.status == 404 and process.ogc_type  # pygeoapi's `code`/`type`
    assert "no-such-method" in str(process)
    assert job.status == 404 and "00000000-0000-0000-0000-000000000000" in str(job)
    assert early.status and early.status >= 400 and early.detail  # what pygeoapi said about a running job


def test_bad_input_is_refused_before_anything_is_sent(ccp):
    async def scenario():
        async with ccp.client(retry=FAST) as client:
            for process_id, inputs, message in (("", {}, "process id"), ("a/b", {}, "URL path"),
                                                ("ccp-fail", [1], "mapping"), ("ccp-fail", {1: 2}, "names"),
                                                ("ccp-fail", {"x": object()}, "not JSON")):
                with pytest.raises(ValueError, match=message):
                    await client.execute(process_id, inputs)

    asyncio.run(scenario())
    assert ccp.stats().get("execute", 0) == 0


def test_pygeoapis_own_answer_to_an_async_execute_is_understood(ccp):
    """pygeoapi 0.21 answers 201 + Location with the body `null`; 0.24 adds a minimal statusInfo
    (`jobID`, `type`, `status`): the job is found either way."""
    import pygeoapi

    ccp.control("config", plain_execute=True)

    async def scenario():
        async with ccp.client(retry=FAST) as client:
            submitted = await client.execute("ccp-progress", {"steps": 1, "seconds": 0})
            return submitted, (await wait_for(client, submitted.job_id))[0]

    submitted, final = asyncio.run(scenario())
    assert submitted.job_id == final.job_id
    if pygeoapi.__version__ == "0.21.0":
        assert submitted.info is None
    else:
        assert submitted.info is not None and submitted.info.status == "accepted"
    assert final.state is JobState.SUCCEEDED


def test_transient_faults_on_status_are_absorbed(ccp):
    async def scenario():
        async with ccp.client(retry=FAST) as client:
            submitted = await client.execute("ccp-progress", {"steps": 1, "seconds": 0})
            ccp.control("fault", kind="status", status=502, count=2)
            return await client.job(submitted.job_id)

    assert asyncio.run(scenario()).job_id
    assert ccp.stats()["status"] >= 3


class _Recorder(BaseHTTPRequestHandler):
    """Another host holding a result file: records the credentials it receives."""

    seen: list[str | None] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        body = b"foreign file"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_files_on_another_host_are_refused_unless_named_and_never_get_the_token(ccp, tmp_path):
    server = ThreadingHTTPServer(("localhost", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    href = f"http://localhost:{server.server_address[1]}/files/data.csv"
    try:
        async def scenario():
            async with ccp.client(retry=FAST) as client:
                with pytest.raises(ForeignDownload, match="download_hosts"):
                    await client.download(href, tmp_path)
            async with ccp.client(retry=FAST, download_hosts=["localhost"]) as client:
                return await client.download(href, tmp_path)

        saved = asyncio.run(scenario())
    finally:
        server.shutdown()
    assert saved.read_bytes() == b"foreign file"
    assert _Recorder.seen == [None]


@pytest.mark.parametrize("member", ["../escape.txt", "/etc/passwd", "a/../../escape.txt", "C:/windows.txt",
                                    "..\\escape.txt"])
def test_unpacking_refuses_members_outside_the_destination(tmp_path, member):
    archive = tmp_path / "output.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("fine.txt", "ok")
        zipped.writestr(member, "bad")
    with pytest.raises(UnsafeArchive, match="nothing unpacked"):
        unpack_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "fine.txt").exists()  # checked before anything is written


def test_unpacking_refuses_symbolic_links_and_bombs(tmp_path):
    link = zipfile.ZipInfo("link")
    link.external_attr = (0o120777 << 16)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr(link, "/etc/passwd")
    (tmp_path / "link.zip").write_bytes(buffer.getvalue())
    with pytest.raises(UnsafeArchive, match="symbolic link"):
        unpack_zip(tmp_path / "link.zip", tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "big.zip", "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("zeros", b"\0" * 100_000)
    with pytest.raises(UnsafeArchive, match="bytes once unpacked"):
        unpack_zip(tmp_path / "big.zip", tmp_path / "out", max_bytes=10_000)


def test_the_marker_travels_in_the_idempotency_key_header():
    assert MARKER_HEADER == "Idempotency-Key"
    job = JobInfo.of({"jobID": "j", "status": "running", "idempotencyKey": "prefect-egi-1",
                      "created": "2026-01-01T00:00:00.000000Z"})
    assert job.marker == "prefect-egi-1" and job.created == datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_on_a_server_that_keeps_no_marker_a_lost_execute_is_not_guessed(ccp):
    """Plain pygeoapi keeps nothing of the request: the jobs created since the Execute are
    named as candidates, none is adopted."""
    ccp.control("config", keep_markers=False)
    ccp.control("fault", kind="execute", status=504, after_backend=True)

    async def scenario():
        async with ccp.client(retry=FAST) as client:
            with pytest.raises(ExecuteOutcomeUnknown) as lost:
                await client.execute("ccp-sleep", {"seconds": 0})
            with pytest.raises(LostExecute) as unknown:
                await client.find_job(lost.value.marker, "ccp-sleep", lost.value.sent_at)
            return unknown.value

    unknown = asyncio.run(scenario())
    assert unknown.candidates and all(job.process_id == "ccp-sleep" for job in unknown.candidates)
    assert "not adopted" in str(unknown)


def test_no_token_in_errors_or_logs(ccp, checkin, caplog):
    """Every kind of failure, logged at DEBUG: neither the RPT nor the user's token appears."""
    import logging

    rpt, plain = ccp.rpt(), checkin.login("alice")["access_token"]
    ccp.control("fault", kind="execute", status=504, after_backend=True)
    messages: list[str] = []

    async def scenario():
        async with ccp.client(rpt, retry=FAST) as client:
            for call in (lambda: client.execute("ccp-fail", {}), lambda: client.process("nope"),
                         lambda: client.job("nope"), lambda: client.download("http://elsewhere.test/f", ".")):
                try:
                    await call()
                except Exception as exc:  # every failure's text, as a user would see it
                    messages.append(repr(exc) + str(exc))
        async with ccp.client(plain, retry=FAST) as client:
            try:
                await client.processes()
            except CCPTokenRejected as exc:
                messages.append(repr(exc) + str(exc))

    with caplog.at_level(logging.DEBUG):
        asyncio.run(scenario())
    assert len(messages) == 5
    for text in (*messages, caplog.text):
        assert rpt not in text and plain not in text


class _Redirector(BaseHTTPRequestHandler):
    """A host that redirects every request to `target`."""

    target = ""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_redirect_to_a_host_not_named_is_not_followed(ccp, tmp_path):
    server = ThreadingHTTPServer(("localhost", 0), _Redirector)
    _Redirector.target = "http://127.0.0.2:9/stolen"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        async def scenario():
            async with ccp.client(retry=FAST, download_hosts=["localhost"]) as client:
                await client.download(f"http://localhost:{server.server_address[1]}/file.csv", tmp_path)

        with pytest.raises(ForeignDownload, match="127.0.0.2"):
            asyncio.run(scenario())
    finally:
        server.shutdown()
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_a_restarted_peer_still_knows_its_jobs_and_their_markers(checkin_process, ccp, tmp_path):
    """A peer on a kept --workdir (a crashed service coming back): pygeoapi's TinyDB jobs and
    the front's markers survive; a repeated Idempotency-Key is answered with the same job."""
    from prefect_egi.sandbox.peers import start_peer

    def peer():
        return start_peer("ccp-restart", "ccp_peer.py", "--issuer", checkin_process.info["issuer"],
                          "--workdir", str(tmp_path), timeout=90)

    token = ccp.rpt()

    async def execute(url: str):
        async with CCPClient(url, _fixed(token), retry=FAST) as client:
            submitted = await client.execute("ccp-progress", {"steps": 1, "seconds": 0}, marker="prefect-egi-kept")
            return submitted, (await wait_for(client, submitted.job_id))[0]

    first = peer()
    try:
        submitted, _ = asyncio.run(execute(first.info["api_url"]))
    finally:
        first.stop()
    second = peer()
    try:
        again, final = asyncio.run(execute(second.info["api_url"]))
        stats = second.stats()
    finally:
        second.stop()
    assert again.job_id == submitted.job_id and final.marker == "prefect-egi-kept"
    assert final.state is JobState.SUCCEEDED
    assert stats.get("execute replayed") == 1


def _fixed(token: str):
    async def bearer() -> str:
        return token

    return bearer
