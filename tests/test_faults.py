"""Whole flows through a faulty network: the fault proxy between our tasks and the
real DiracX / PyWPS servers faults about one request in five — 503s from a front,
connection resets, black holes, answers lost after the server acted, latency — and
the flows still complete with correct outputs, nothing is submitted twice (counted
on the servers), and the extra requests stay bounded (printed)."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest

from deployments.sandbox.fault_proxy import FaultProxy

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
    {"kind": "reset", "path": r"^/api/jobs/search", "rate": RATE},
    {"kind": "blackhole", "path": r"/sandbox", "rate": RATE, "seconds": 1},
    {"kind": "latency", "path": r"^/\.well-known/", "rate": RATE, "seconds": 0.3},
    {"kind": "error", "rate": RATE},
]


def run_dirac_batch(diracx, proxy, url, rules, folder, jobs: int):
    """The `dirac-batch` flow through `proxy` (with `rules`) while a pilot runs the jobs;
    returns the final state, the proxy's counters and the number of jobs the server gained."""
    from deployments.sandbox.dirac_pilot import BatchPilot
    from flows.dirac import dirac_batch
    from tasks.dirac import DiracJob, DiracX

    proxy.reset()
    proxy.set_rules(rules, seed=7)
    name = f"dx-faults-{uuid.uuid4().hex[:6]}"
    DiracX(url=url, vo=diracx.vo, group=diracx.group, credentials_path=diracx.credentials,
           timeout_seconds=5).save(name, overwrite=True)
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
    assert sorted((tmp_path / "faulty" / "out" / str(j) / "result.txt").is_file() for j in report.jobs) == [True] * jobs
    assert stats["faulted"]["drop-response"] == 2 and faulted_share(stats) >= 0.1
    assert extra <= 3 * faults  # each fault costs at most a retry and a reconciliation search
