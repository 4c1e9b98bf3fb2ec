"""The job ledger outlasts a failing Prefect API: its writes are what a retried run
resumes from, so a 500 or a lost answer must not fail the run (at 50 concurrent flow
runs a Prefect server on PostgreSQL ran out of database connections and answered
500 to a ledger write). The fault proxy sits between the ledger and the real API."""

from __future__ import annotations

import asyncio

import pytest

from prefect_egi.sandbox.fault_proxy import FaultProxy  # noqa: F401 (type of the proxy)
from prefect_egi.tasks import job_ledger
from prefect_egi.tasks.job_ledger import JobLedger, Submission

pytestmark = pytest.mark.prefect


@pytest.fixture
def ledger_through_proxy(prefect_api_proxy, monkeypatch):
    """A ledger for a fresh flow run whose API calls go through the fault proxy."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    @flow
    def nothing() -> None:
        return None

    async def new_run():
        async with get_client() as client:
            return await client.create_flow_run(nothing)

    monkeypatch.setattr(job_ledger, "LEDGER_ATTEMPTS", 4)
    return JobLedger(asyncio.run(new_run()).id), prefect_api_proxy, None


def _submission(key: str = "dirac-abc") -> Submission:
    return Submission(key=key, service="dirac", job_ids=["1", "2", "3"], label="batch")


def _posts(proxy: FaultProxy) -> int:
    """Ledger writes that reached the proxy."""
    return sum(counts["seen"] for route, counts in proxy.stats()["by_route"].items()
               if route.startswith("POST ") and route.endswith("/input"))


def test_a_write_answered_500_is_sent_again(ledger_through_proxy):
    ledger, proxy, _ = ledger_through_proxy
    proxy.set_rules([{"kind": "error", "status": 500, "method": "POST", "path": "/input$", "requests": [1, 2]}])
    asyncio.run(ledger.record(_submission()))
    assert [s.job_ids for s in asyncio.run(ledger.submissions())] == [["1", "2", "3"]]
    assert _posts(proxy) >= 3


def test_a_write_whose_answer_was_lost_is_not_an_error(ledger_through_proxy):
    """Stored, but the answer never came back: the next try meets 409 with the same value."""
    ledger, proxy, _ = ledger_through_proxy
    proxy.set_rules([{"kind": "drop-response", "method": "POST", "path": "/input$", "requests": [1]}])
    asyncio.run(ledger.record(_submission()))
    assert [s.key for s in asyncio.run(ledger.submissions())] == ["dirac-abc"]


def test_a_different_record_under_the_same_key_is_still_refused(ledger_through_proxy):
    ledger, _, _ = ledger_through_proxy
    asyncio.run(ledger.record(_submission()))
    other = Submission(key="dirac-abc", service="dirac", job_ids=["9"])
    with pytest.raises(Exception, match="409"):
        asyncio.run(ledger.record(other))


def test_a_server_that_keeps_failing_fails_the_write_after_a_bounded_number_of_tries(ledger_through_proxy):
    ledger, proxy, _ = ledger_through_proxy
    proxy.set_rules([{"kind": "error", "status": 500, "method": "POST", "path": "/input$", "rate": 1.0}])
    with pytest.raises(Exception, match="500"):
        asyncio.run(ledger.record(_submission()))
    assert _posts(proxy) == 4  # LEDGER_ATTEMPTS, no more
