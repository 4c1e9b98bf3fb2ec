"""The CCP client through TLS and the fault proxy: a second CCP peer whose public URL is the
proxy's (https, with the test CA), so job locations and result files point through it."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest

from prefect_egi.sandbox.fault_proxy import FaultProxy
from prefect_egi.sandbox.peers import start_peer
from prefect_egi.tasks.ccp.client import CCPClient, ExecuteOutcomeUnknown
from prefect_egi.tasks.http import RetryPolicy, TLSVerificationError, tls_verify
from prefect_egi.tasks.remote import JobState
from test_ccp_client import wait_for

FAST = RetryPolicy(attempts=4, backoff=0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def proxied(checkin_process, certificate):
    """(proxy, peer): pygeoapi's CCP peer reached only through a TLS-terminating fault proxy."""
    port = free_port()
    peer = start_peer("ccp-proxied", "ccp_peer.py", "--issuer", checkin_process.info["issuer"],
                      "--public-url", f"https://127.0.0.1:{port}", timeout=90)
    proxy = FaultProxy(peer.url, port=port, tls_cert=certificate[0], tls_key=certificate[1]).start()
    yield proxy, peer
    proxy.stop()
    peer.stop()


@pytest.fixture
def through(proxied, ccp, certificate):
    """A client factory for the proxied peer, with the VRE's UMA token of alice."""
    proxy, peer = proxied
    proxy.reset()
    peer.control("reset")
    token = ccp.rpt()

    async def bearer() -> str:
        return token

    def client(**options) -> CCPClient:
        options.setdefault("verify", tls_verify(ca_bundle=certificate[0]))
        options.setdefault("retry", FAST)
        return CCPClient(proxy.url, bearer, context=ccp.context, **options)

    return client


def test_tls_is_verified_by_default(through):
    async def scenario():
        async with through(verify=True) as client:
            await client.processes()

    with pytest.raises(TLSVerificationError, match="CA bundle"):
        asyncio.run(scenario())


def test_a_whole_run_over_tls_with_the_ca_bundle(through, tmp_path):
    async def scenario():
        async with through() as client:
            submitted = await client.execute("ccp-write-files", {"count": 2})
            final, _ = await wait_for(client, submitted.job_id)
            results = await client.results(submitted.job_id)
            return final, await client.download(results.references[0].href, tmp_path)

    final, archive = asyncio.run(scenario())
    assert final.state is JobState.SUCCEEDED and archive.stat().st_size > 0


def test_an_execute_whose_response_is_dropped_is_found_not_resent(through, proxied):
    proxy, peer = proxied
    proxy.set_rules([{"kind": "drop-response", "method": "POST", "path": "/execution$"}])

    async def scenario():
        async with through() as client:
            with pytest.raises(ExecuteOutcomeUnknown) as lost:
                await client.execute("ccp-progress", {"steps": 1, "seconds": 0})
            return await client.find_job(lost.value.marker, "ccp-progress", lost.value.sent_at), lost.value

    found, lost = asyncio.run(scenario())
    assert found.marker == lost.marker
    assert peer.stats()["execute"] == 1  # pygeoapi got it once; the client did not send it again


def test_resets_and_503s_on_reads_are_absorbed(through, proxied):
    proxy, peer = proxied

    async def scenario():
        async with through() as client:
            submitted = await client.execute("ccp-progress", {"steps": 1, "seconds": 0})
            proxy.set_rules([{"kind": "reset", "method": "GET", "requests": [1]}])
            job = await client.job(submitted.job_id)
            proxy.set_rules([{"kind": "error", "status": 503, "method": "GET", "requests": [1]}])
            listed = await client.jobs(process_id="ccp-progress")
            return job, listed

    job, listed = asyncio.run(scenario())
    assert job.job_id in {j.job_id for j in listed}
    assert sum(proxy.stats()["faulted"].values()) == 2


def test_ccp_run_completes_through_a_faulty_network_executing_once(prefect_db, proxied, ccp, certificate, tmp_path):
    """`ccp-run` through the fault proxy: the Execute's answer dropped once (found by its
    marker, not resent), resets, 503s, black holes and latency on the reads and downloads.
    The run completes with the right results; pygeoapi executed the method once."""
    from prefect_egi.flows import ccp_run

    proxy, peer = proxied
    proxy.reset()
    peer.control("reset")
    proxy.set_rules([
        {"kind": "drop-response", "method": "POST", "path": "/execution$", "requests": [1]},
        {"kind": "reset", "method": "GET", "path": r"/jobs/[^/]+$", "requests": [1]},
        {"kind": "error", "status": 503, "method": "GET", "path": r"/processes/", "requests": [1]},
        {"kind": "error", "status": 502, "method": "GET", "path": r"/results$", "requests": [1]},
        {"kind": "blackhole", "path": r"/ccp-data/", "requests": [1], "seconds": 1},
        {"kind": "latency", "method": "GET", "every": 2, "seconds": 0.2},
    ], seed=5)
    name = f"ccp-faults-{uuid.uuid4().hex[:6]}"
    ccp.block(url=proxy.url, ca_bundle=certificate[0], timeout_seconds=30).save(name, overwrite=True)
    try:
        state = ccp_run(method="ccp-write-files", inputs={"count": 4}, ccp_block=name,
                        destination=str(tmp_path / "out"), return_state=True)
    finally:
        stats = proxy.stats()
        proxy.reset()
    print(f"\nCCP through faults: {stats['requests']} requests, faulted {stats['faulted']}")
    assert state.is_completed(), state.message
    result = state.result()
    assert result.values["rows"] == 10 and len(result.unpacked) == 5
    assert (tmp_path / "out" / result.job_id / "ccp_data" / "table_4.csv").is_file()
    assert peer.stats()["execute"] == 1  # dropped answer: looked up by its marker, not sent again
    assert stats["faulted"]["drop-response"] == 1 and stats["faulted"]["error"] == 2
    assert all(stats["faulted"][kind] for kind in ("reset", "blackhole", "latency")), stats["faulted"]
