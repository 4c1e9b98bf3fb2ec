"""Whole flows through a faulty network: the fault proxy between our tasks and the
real DiracX / PyWPS servers faults about one request in five — 503s from a front,
connection resets, black holes, answers lost after the server acted, latency — and
the flows still complete with correct outputs, nothing is submitted twice (counted
on the servers), and the extra requests stay bounded (printed)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr

from prefect_egi.sandbox.fault_proxy import FaultProxy
from prefect_egi.tasks import DataMiner

pytestmark = [pytest.mark.prefect, pytest.mark.system]

RATE = 0.2


def behind_proxy(url: str) -> tuple[FaultProxy, str]:
    """A fault proxy in front of `url`'s server, and `url` through it."""
    parts = urlsplit(url)
    proxy = FaultProxy(f"{parts.scheme}://{parts.netloc}").start()
    return proxy, proxy.url + parts.path


def faulted_share(stats: dict) -> float:
    return sum(stats["faulted"].values()) / max(1, stats["requests"])


# One kind per route (the proxy's first matching rule decides): every kind is exercised,
# and about one request in five is faulted. Submissions lose their answer AFTER the server
# created the jobs (both chunks' first sends: the worst case, deterministic); token requests only
# see 503s (a lost token answer would burn a rotated refresh token — the server's business).
DIRAC_FAULTS = [
    {"kind": "drop-response", "method": "POST", "path": r"^/api/jobs/jdl", "requests": [1, 2]},
    {"kind": "error", "path": r"^/api/auth/", "rate": RATE},
    {"kind": "reset", "path": r"^/api/jobs/search", "requests": [1, 3]},
    {"kind": "error", "path": r"^/api/jobs/\d+/sandbox", "rate": RATE},
    {"kind": "blackhole", "path": r"^/api/jobs/sandbox", "rate": RATE, "seconds": 1},
    {"kind": "latency", "path": r"^/\.well-known/", "rate": RATE, "seconds": 0.3},
    {"kind": "error", "rate": RATE},
]


def run_dirac_batch(diracx, proxy, url, rules, folder, jobs: int):
    """The `dirac-batch` flow through `proxy` (with `rules`) while a pilot runs the jobs;
    returns the final state, the proxy's counters and the number of jobs the server gained."""
    from prefect_egi.flows import dirac_batch
    from prefect_egi.sandbox.dirac_pilot import BatchPilot
    from prefect_egi.tasks import DiracJob, DiracX

    proxy.reset()
    proxy.set_rules(rules, seed=7)
    name = f"dx-faults-{uuid.uuid4().hex[:6]}"
    # the black holes close after 1 s: a long timeout keeps a busy machine's slow answers from counting as faults
    DiracX(url=url, vo=diracx.vo, group=diracx.group, credentials_path=diracx.credentials,
           timeout_seconds=30).save(name, overwrite=True)
    group = f"faults-{uuid.uuid4().hex[:6]}"
    before = diracx.job_count()
    pilot = BatchPilot(diracx.pilot, group, folder / "pilot", duration=0.2).start()
    try:
        job = DiracJob(executable="echo", arguments="%s", parameters=list(range(jobs)), job_group=group)
        state = dirac_batch(job, diracx_block=name, destination=str(folder / "out"), return_state=True)
    finally:
        pilot.stop()
    return state, proxy.stats(), diracx.job_count() - before


def test_dirac_batch_completes_through_a_faulty_network_without_duplicates(prefect_db, diracx, tmp_path):
    jobs = 30
    proxy, url = behind_proxy(diracx.url)
    try:
        clean_state, clean, _ = run_dirac_batch(diracx, proxy, url, [], tmp_path / "clean", jobs)
        state, stats, created = run_dirac_batch(diracx, proxy, url, DIRAC_FAULTS, tmp_path / "faulty", jobs)
    finally:
        proxy.stop()
    faults = sum(stats["faulted"].values())
    extra = stats["requests"] - clean["requests"]
    print(f"\nDIRAC batch of {jobs} through faults: {stats['requests']} requests vs {clean['requests']} without "
          f"faults; {faults} faulted ({faulted_share(stats):.0%}: {stats['faulted']}); {extra} extra")
    assert clean_state.is_completed() and state.is_completed(), state.message
    report = state.result()
    assert report.succeeded == jobs and report.failed == []
    assert created == jobs + report.resubmitted  # nothing submitted twice
    assert sorted((tmp_path / "faulty" / "out" / str(j) / "std.out").is_file() for j in report.jobs) == [True] * jobs
    assert stats["faulted"]["drop-response"] == 2 and faulted_share(stats) >= 0.1
    assert all(stats["faulted"][kind] for kind in ("reset", "error", "blackhole", "latency"))
    assert extra <= 3 * faults  # each fault costs at most a retry and a reconciliation search


# DataMiner: an Execute is refused by the front once (503, never forwarded: sent again);
# status polls, descriptions and downloads meet resets, black holes, 503s and latency.
DATAMINER_FAULTS = [
    {"kind": "error", "method": "POST", "requests": [1]},
    {"kind": "reset", "path": r"RetrieveResultServlet", "rate": RATE},
    {"kind": "blackhole", "path": r"/outputs/|/download", "rate": RATE, "seconds": 1},
    {"kind": "latency", "path": r"DescribeProcess", "rate": 0.5, "seconds": 0.3},
    {"kind": "error", "rate": RATE},
]


@pytest.fixture(scope="module")
def proxied_dataminer():
    """A DataMiner peer whose public URL is a fault proxy in front of it, as a real front would
    be: status locations and output references point through the proxy too."""
    from conftest import DataMinerPeer
    from prefect_stack import free_port

    from prefect_egi.sandbox.peers import start_peer

    port = free_port()
    proxy = FaultProxy(f"http://127.0.0.1:{port}").start()
    peer = start_peer("dataminer-proxied", "dataminer_peer.py", "--port", str(port), "--public-url", proxy.url)
    yield DataMinerPeer(peer), proxy
    peer.stop()
    proxy.stop()


def test_dataminer_flow_completes_through_a_faulty_network_executing_once(prefect_db, proxied_dataminer, tmp_path):
    from prefect_egi.flows import dataminer_run

    table = tmp_path / "t.csv"
    table.write_text("x,y\n1,10\n2,20\n3,30\n")
    dataminer, proxy = proxied_dataminer
    proxy.set_rules(DATAMINER_FAULTS, seed=3)
    name = f"dm-faults-{uuid.uuid4().hex[:6]}"
    # the injected black holes close after 1 s and latencies are 0.3 s: the client's timeout is not what they test
    DataMiner(url=dataminer.wps_url, gcube_token=SecretStr(dataminer.token), timeout_seconds=30).save(name, overwrite=True)
    try:
        state = dataminer_run(process="CSV_SUMMARY", inputs={"table": str(table)}, dataminer_block=name,
                              destination=str(tmp_path / "out"), return_state=True)
    finally:
        stats = proxy.stats()
        proxy.reset()
    print(f"\nDataMiner through faults: {stats['requests']} requests, {stats['faulted']} faulted "
          f"({faulted_share(stats):.0%}); by route {stats['by_route']}")
    assert state.is_completed(), state.message
    result = state.result()
    assert result.state == "succeeded" and len(result.files) == 4
    assert all(Path(f.path).stat().st_size > 0 for f in result.files)
    assert dataminer.stats()["post-execute"] == 1  # refused once by the front, executed once
    assert stats["faulted"]["error"] >= 1


def test_a_lost_execute_answer_is_never_sent_again(prefect_db, proxied_dataminer, tmp_path):
    """The worst case for WPS 1.0: the server started the execution but the answer was lost.
    The task fails saying so, and the flow's retry refuses to execute a second time."""
    from prefect import flow

    from prefect_egi.tasks import execute_process

    dataminer, proxy = proxied_dataminer
    executed = dataminer.stats().get("post-execute", 0)
    proxy.set_rules([{"kind": "drop-response", "method": "POST"}])
    # the dropped answer is a reset, at once: a timeout this long is only room for a busy machine
    block = DataMiner(url=dataminer.wps_url, gcube_token=SecretStr(dataminer.token), timeout_seconds=30)
    errors: list[str] = []

    @flow(retries=1, retry_delay_seconds=0)
    async def run_once() -> str:
        try:
            return await execute_process(block, "SLOW_COUNTER", {"seconds": 2, "steps": 2})
        except Exception as exc:
            errors.append(str(exc))
            raise

    try:
        state = asyncio.run(run_once(return_state=True))
    finally:
        proxy.reset()
    assert state.is_failed()
    assert len(errors) == 2
    assert "may or may not have started" in errors[0]
    assert "is not sent again, so that it cannot run twice" in errors[1]
    assert dataminer.stats()["post-execute"] == executed + 1
