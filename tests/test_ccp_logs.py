"""A CCP method's stdout/stderr read by the client, against the real peer (pygeoapi behind the
D4Science-like front): the job document links each log (`rel` `[ogc-rel:log]`), the front
serves it growing while the job runs, and the client reads only the new part (Range).

No timed asserts: waits are on states (the job's status, the log's content), with generous
deadlines (a busy machine)."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prefect_egi.tasks.ccp.client import (
    LOG_RELATIONS,
    CCPClient,
    CCPTokenRejected,
    ForeignDownload,
    JobInfo,
    LogChunk,
    _utf8_whole,
)
from prefect_egi.tasks.http import RetryPolicy
from prefect_egi.tasks.remote import JobState

FAST = RetryPolicy(attempts=3, backoff=0.05)
DEADLINE = 120.0


async def until(client: CCPClient, job_id: str, done, deadline: float = DEADLINE) -> JobInfo:
    """Poll the job until `done(job)`."""
    limit = time.monotonic() + deadline
    job = None
    while time.monotonic() < limit:
        job = await client.job(job_id)
        if done(job):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached the condition; last: {job}")


def step_of(job: JobInfo) -> int:
    """The step a `ccp-progress` job says it is at (`step k/n`), 0 before the first."""
    return int(job.message.split()[1].split("/")[0]) if job.message.startswith("step ") else 0


def test_progress_stdout_is_read_incrementally_while_it_runs(ccp):
    steps = 6

    async def scenario():
        async with ccp.client(retry=FAST) as client:
            submitted = await client.execute("ccp-progress", {"steps": steps, "seconds": 0.4})
            assert set(submitted.info.logs) == {"stdout", "stderr"}  # linked from the Execute's answer already
            chunks: list[LogChunk] = []
            offset = 0
            # the method prints "step k/n" before its status says so: once the status says
            # step 2 (and it runs), at least two lines are there to read
            seen = await until(client, submitted.job_id, lambda job: job.state.terminal or step_of(job) >= 2)
            while True:
                job = await client.job(submitted.job_id)
                chunk = await client.read_log(submitted.job_id, "stdout", offset)
                assert chunk.offset == offset and chunk.next_offset == offset + len(chunk.text.encode())
                chunks.append(chunk)
                offset = chunk.next_offset
                if job.state.terminal:  # read once more after the end: nothing may be left
                    last = await client.read_log(submitted.job_id, "stdout", offset)
                    chunks.append(last)
                    break
                await asyncio.sleep(0.05)
            whole = await client.read_log(submitted.job_id, "stdout", 0)
            return seen, job, chunks, whole

    seen, job, chunks, whole = asyncio.run(scenario())
    assert job.state is JobState.SUCCEEDED
    expected = [f"step {n}/{steps}" for n in range(1, steps + 1)] + [f"done: {steps} steps"]
    assert whole.text.splitlines() == expected
    assert "".join(chunk.text for chunk in chunks) == whole.text  # no line read twice, none lost
    assert chunks[-1].text == "" and chunks[-1].status == 416  # nothing new after the end
    if seen.state is JobState.RUNNING:  # the first read came while it ran: two lines at least
        assert len(chunks[0].text.splitlines()) >= 2
    nonempty = [chunk for chunk in chunks if chunk.text]
    assert all(a.next_offset <= b.offset for a, b in zip(nonempty, nonempty[1:]))  # offsets only advance
    assert all(chunk.status in (206, 416) for chunk in chunks)  # only the new part was sent
    assert ccp.stats().get("logs", 0) >= len(chunks) + 1


def test_a_running_jobs_log_grows_and_stays_readable_after_dismissal(ccp):
    """Deterministic growth: `ccp-sleep` prints one line and runs until dismissed, then prints
    that it stops."""

    async def scenario():
        async with ccp.client(retry=FAST) as client:
            submitted = await client.execute("ccp-sleep", {"seconds": 3600})
            await until(client, submitted.job_id, lambda job: job.state is JobState.RUNNING)
            first = await client.read_log(submitted.job_id, "stdout")
            links = await client.log_links(submitted.job_id)
            nothing_new = await client.read_log(links["stdout"].href, "stdout", first.next_offset)
            await client.dismiss(submitted.job_id)
            limit = time.monotonic() + DEADLINE
            later = nothing_new
            while not later.text and time.monotonic() < limit:  # the job record is gone: read by its URL
                later = await client.read_log(links["stdout"].href, "stdout", first.next_offset)
                await asyncio.sleep(0.05)
            return first, nothing_new, later, links

    first, nothing_new, later, links = asyncio.run(scenario())
    assert first.text == "sleeping for 3600 seconds\n" and first.status == 206
    assert nothing_new.text == "" and nothing_new.status == 416 and nothing_new.next_offset == first.next_offset
    assert later.text == "dismissed: stopping\n" and later.offset == first.next_offset
    assert links["stdout"].media_type == "text/plain" and links["stdout"].href.endswith("/logs/stdout.log")


def test_a_failed_jobs_stderr_is_readable_and_names_the_failure(ccp):
    async def scenario():
        async with ccp.client(retry=FAST) as client:
            submitted = await client.execute("ccp-fail", {"message": "no such station: XYZ"})
            final = await until(client, submitted.job_id, lambda job: job.state.terminal)
            return final, await client.read_log(final, "stderr"), await client.read_log(final, "stdout")

    final, stderr, stdout = asyncio.run(scenario())
    assert final.state is JobState.FAILED
    assert set(final.logs) == {"stdout", "stderr"}  # pygeoapi links nothing for a failed job; the front does
    assert stderr.text.startswith("Traceback (most recent call last):")
    assert stderr.text.rstrip().endswith("RuntimeError: no such station: XYZ")
    assert stdout.text == "starting\n"


def test_logs_need_the_uma_token(ccp):
    async def scenario():
        async with ccp.client(retry=FAST) as client:
            submitted = await client.execute("ccp-write-files", {"count": 1})
            await until(client, submitted.job_id, lambda job: job.state.terminal)
            return (await client.log_links(submitted.job_id))["stdout"].href

    href = asyncio.run(scenario())
    before = ccp.stats().get("unauthorized", 0)
    assert httpx.get(href, timeout=10).status_code == 401
    plain = ccp.checkin.login()["access_token"]  # the user's own token, not the VRE's UMA token
    refused = httpx.get(href, headers={"Authorization": f"Bearer {plain}"}, timeout=10)
    assert refused.status_code == 401 and "VRE" in refused.json()["detail"]

    async def with_plain_token():
        async with ccp.client(token=plain, retry=FAST) as client:
            return await client.read_log(href, "stdout")

    with pytest.raises(CCPTokenRejected):
        asyncio.run(with_plain_token())
    assert ccp.stats().get("unauthorized", 0) == before + 3


def test_range_answers_of_the_front(ccp):
    """The front's side of Range, as RFC 9110 has it (206 + Content-Range, 416 + `bytes */size`)."""

    async def scenario():
        async with ccp.client(retry=FAST) as client:
            submitted = await client.execute("ccp-write-files", {"count": 2})
            await until(client, submitted.job_id, lambda job: job.state.terminal)
            return (await client.log_links(submitted.job_id))["stdout"].href

    href = asyncio.run(scenario())
    auth = {"Authorization": f"Bearer {ccp.rpt()}"}
    whole = httpx.get(href, headers=auth, timeout=10)
    size = len(whole.content)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"].startswith("text/plain")
    part = httpx.get(href, headers={**auth, "Range": "bytes=5-"}, timeout=10)
    assert part.status_code == 206 and part.content == whole.content[5:]
    assert part.headers["content-range"] == f"bytes 5-{size - 1}/{size}"
    some = httpx.get(href, headers={**auth, "Range": "bytes=2-4"}, timeout=10)
    assert some.status_code == 206 and some.content == whole.content[2:5]
    tail = httpx.get(href, headers={**auth, "Range": "bytes=-3"}, timeout=10)
    assert tail.status_code == 206 and tail.content == whole.content[-3:]
    beyond = httpx.get(href, headers={**auth, "Range": f"bytes={size}-"}, timeout=10)
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"
    assert beyond.content == b""
    assert httpx.get(href, headers={**auth, "Range": "lines=1-"}, timeout=10).status_code == 200  # ignored


def test_a_server_ignoring_range_still_gives_only_the_new_text(ccp):
    ccp.control("config", ignore_range=True)

    async def scenario():
        async with ccp.client(retry=FAST) as client:
            submitted = await client.execute("ccp-write-files", {"count": 3, "prefix": "t"})
            final = await until(client, submitted.job_id, lambda job: job.state.terminal)
            whole = await client.read_log(final, "stdout")
            middle = len(whole.text.encode()) // 2
            rest = await client.read_log(final, "stdout", middle)
            after = await client.read_log(final, "stdout", whole.next_offset)
            return whole, middle, rest, after

    whole, middle, rest, after = asyncio.run(scenario())
    assert whole.status == 200 and "wrote /ccp_data/t_3.csv (3 rows)" in whole.text
    assert rest.status == 200 and rest.text == whole.text.encode()[middle:].decode()
    assert rest.next_offset == whole.next_offset
    assert after.text == "" and after.next_offset == whole.next_offset


def test_the_log_of_an_unknown_job_or_an_unlinked_one_is_empty(ccp):
    ccp.control("config", log_links=False)

    async def scenario():
        async with ccp.client(retry=FAST) as client:
            unknown = await client.read_log("no-such-job", "stdout", 7)
            by_url = await client.read_log(f"{ccp.url}/jobs/no-such-job/logs/stderr.log", "stderr")
            submitted = await client.execute("ccp-write-files", {"count": 1})
            final = await until(client, submitted.job_id, lambda job: job.state.terminal)
            return unknown, by_url, final, await client.read_log(final, "stdout")

    unknown, by_url, final, unlinked = asyncio.run(scenario())
    assert (unknown.text, unknown.next_offset, unknown.found) == ("", 7, False)
    assert tuple(unknown) == ("", 7)
    assert (by_url.text, by_url.status, by_url.found) == ("", 404, False)
    assert final.logs == {} and (unlinked.text, unlinked.found) == ("", False)


def test_a_transient_fault_on_a_log_read_is_retried(ccp):
    async def scenario():
        async with ccp.client(retry=FAST) as client:
            submitted = await client.execute("ccp-write-files", {"count": 1})
            final = await until(client, submitted.job_id, lambda job: job.state.terminal)
            ccp.control("fault", kind="logs", status=503, count=1)
            return await client.read_log(final, "stdout")

    chunk = asyncio.run(scenario())
    assert chunk.text.startswith("writing 1 files")


class _Recorder(BaseHTTPRequestHandler):
    """Another host serving a log: records the credentials it receives."""

    seen: list[tuple[str | None, str | None]] = []

    def do_GET(self):
        _Recorder.seen.append((self.headers.get("Authorization"), self.headers.get("X-D4Science-Context")))
        body = b"foreign log\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_no_credentials_go_to_a_log_on_another_origin(ccp):
    _Recorder.seen = []
    server = ThreadingHTTPServer(("localhost", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    href = f"http://localhost:{server.server_address[1]}/jobs/j/logs/stdout.log"
    job = JobInfo.of({"jobID": "j", "status": "running",
                      "links": [{"href": href, "rel": LOG_RELATIONS[0], "type": "text/plain", "title": "stdout"}]})

    async def scenario(**options):
        async with ccp.client(retry=FAST, **options) as client:
            return await client.read_log(job, "stdout")

    try:
        with pytest.raises(ForeignDownload):
            asyncio.run(scenario())
        assert _Recorder.seen == []  # not even asked
        chunk = asyncio.run(scenario(download_hosts=["localhost"]))
    finally:
        server.shutdown()
        server.server_close()
    assert chunk.text == "foreign log\n" and chunk.status == 200
    assert _Recorder.seen == [(None, None)]


def test_log_links_are_read_from_the_documents_servers_write():
    job = JobInfo.of({"jobID": "j", "status": "failed", "links": [
        {"href": "logs/out", "rel": "[ogc-rel:log]", "title": "stdout of the method"},
        {"href": "https://ccp.example.org/x/outputs_stderr.j.txt", "rel": "logs", "type": "text/plain"},
        {"href": "https://ccp.example.org/x/run.log", "rel": "runlog"},
        {"href": "https://ccp.example.org/jobs/j/results", "rel": "http://www.opengis.net/def/rel/ogc/1.0/results"},
    ]})
    assert set(job.logs) == {"stdout", "stderr", "run.log"}
    assert job.logs["stderr"].media_type == "text/plain"
    assert JobInfo.of({"jobID": "j", "status": "running"}).logs == {}


def test_a_character_cut_at_the_end_of_a_read_waits_for_the_next():
    text = "ok é€😀".encode()
    assert _utf8_whole(text) == len(text)
    for cut in (1, 2, 3):  # inside the 4-byte emoji
        assert _utf8_whole(text[:-cut]) == len(text) - 4
    assert _utf8_whole("é".encode()[:1]) == 0
    assert _utf8_whole(b"") == 0
