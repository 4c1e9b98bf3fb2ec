"""A run does its remote work even when the Prefect API will not take its artifacts
(at 50 concurrent pipelines a loaded Prefect server answered 500 to an artifact and
failed a run that had done all its work): the run completes, its log says which
artifacts are missing. Real DataMiner peer, real Prefect API behind the fault proxy."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.prefect


def await_result(state):
    result = state.result()
    return asyncio.run(result) if asyncio.iscoroutine(result) else result


def test_artifacts_refused_by_the_api_do_not_fail_the_run(prefect_api_proxy, dataminer, tmp_path):
    from prefect import flow

    from prefect_egi.tasks import WatchPolicy, run_algorithm

    prefect_api_proxy.set_rules([{"kind": "error", "status": 500, "path": "^/api/artifacts", "rate": 1.0}])
    block = dataminer.block()

    @flow
    async def echo_run():
        return await run_algorithm(block, "FAST_ECHO", {"text": "hello", "times": 2}, destination=str(tmp_path),
                             policy=WatchPolicy(first_interval=0.2, max_interval=1.0))

    state = asyncio.run(echo_run(return_state=True))
    assert state.is_completed(), state.message
    assert (await_result(state)).state == "succeeded"
    refused = {route: counts for route, counts in prefect_api_proxy.stats()["by_route"].items()
               if route.startswith(("POST /api/artifacts", "PATCH /api/artifacts"))}
    assert sum(c["faulted"] for c in refused.values()) >= 2, refused  # progress, final states, outputs


def test_refused_artifacts_are_named_in_the_run_log(prefect_api_proxy, dataminer, tmp_path, caplog):
    from prefect import flow

    from prefect_egi.tasks import WatchPolicy, run_algorithm

    prefect_api_proxy.set_rules([{"kind": "error", "status": 500, "path": "^/api/artifacts", "rate": 1.0}])
    block = dataminer.block()

    @flow
    async def echo_run():
        return await run_algorithm(block, "FAST_ECHO", {"text": "hi"}, destination=str(tmp_path),
                             policy=WatchPolicy(first_interval=0.2, max_interval=1.0))

    with caplog.at_level("WARNING"):
        assert asyncio.run(echo_run(return_state=True)).is_completed()
    warned = [r.getMessage() for r in caplog.records if "did not take the" in r.getMessage()]
    assert any("DataMiner outputs artifact (PrefectHTTPStatusError, HTTP 500)" in m for m in warned), warned
