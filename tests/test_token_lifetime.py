"""Token expiry mid-wait: 30-second Check-in tokens over a two-minute server start.

The `notebooks-server` flow starts a server whose spawn takes two minutes; our
engine (`prefect_egi.tasks.remote.watch`) polls the hub through EGI's token front the whole
time, each poll with the current Check-in token. The Check-in peer issues access
tokens living 30 s, so the block's refresh token must be redeemed again and again
— ahead of expiry (no request may meet a 401), but no more often than the
provider's refresh-ahead margin makes necessary.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid

import pytest

pytestmark = [pytest.mark.system, pytest.mark.prefect]

LIFETIME = 30  # seconds an access token lives on our Check-in peer, for this test only
SPAWN = 120  # seconds the hub's spawner takes to make the server ready


@pytest.fixture
def slow_spawn(notebooks):
    """Server starts take SPAWN seconds on the Notebooks peer, until the test ends."""
    notebooks.control("config", spawn_seconds=SPAWN)
    yield notebooks
    notebooks.control("reset")  # back to the peer's --spawn-seconds


@pytest.mark.timeout(280)
def test_a_two_minute_wait_on_30_second_tokens(prefect_db, slow_spawn, checkin, monkeypatch, caplog, capsys):
    from conftest import database_bytes
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    from prefect_egi.flows import notebooks_server
    from prefect_egi.tasks import NotebooksHub, OidcClient, parse_token, stop_server

    notebooks = slow_spawn
    issued: list[str] = []  # every access and refresh token the token endpoint handed us
    token_response = OidcClient._token_response

    def recording(body, url):
        response = token_response(body, url)
        issued.extend(s.get_secret_value() for s in (response.access_token, response.refresh_token) if s)
        return response

    monkeypatch.setattr(OidcClient, "_token_response", staticmethod(recording))

    checkin.configure(access_token_lifetime=LIFETIME)  # the `checkin` fixture restores the default after
    credentials = checkin.credentials("alice")  # a refresh token and the client: nothing else
    sample = parse_token(checkin.login(access_token_lifetime=LIFETIME)["access_token"])
    margin = credentials.provider.margin_for(sample)  # how early the provider refreshes a 30 s token
    assert 0 < margin < LIFETIME
    server, block_name = f"long-{uuid.uuid4().hex[:6]}", f"hub-{uuid.uuid4().hex[:8]}"
    block = NotebooksHub(url=notebooks.info["api_url"], checkin=credentials)
    block.save(block_name, overwrite=True)
    refreshes_before = checkin.refresh_grants()

    caplog.set_level(logging.DEBUG, logger="prefect_egi")
    started = time.monotonic()
    try:
        me = notebooks_server("start", server=server, hub_block=block_name, deadline_minutes=5)
        duration = time.monotonic() - started
        stats = notebooks.stats()
        refreshes = checkin.refresh_grants() - refreshes_before
        issued_by_the_flow = list(issued)
    finally:
        try:
            asyncio.run(stop_server.fn(block, server=server, deadline_seconds=60))
        except Exception:  # a failed start leaves a pending spawn the hub will not stop: harmless
            pass

    polls = stats.get("GET /services/jwt/users/alice", 0) - 1  # minus the read after the wait
    with capsys.disabled():
        print(f"\nwait {duration:.1f} s, {polls} polls, {refreshes} refreshes (margin {margin:.0f} s), "
              f"{stats.get('unauthorized', 0)} rejected tokens, {stats.get('hub_tokens_minted', 0)} tokens "
              "seen by the hub")
    # the flow completed: the server is ready after the whole spawn
    assert me.name == "alice" and me.servers[server].ready
    assert duration >= SPAWN

    # every poll carried a valid token: the front refused none (a 401 would also have failed the flow)
    assert stats.get("unauthorized", 0) == 0
    assert polls >= 10
    # refreshed "just enough": at least once per token lifetime, at most once per (lifetime - margin)
    assert math.floor(duration / LIFETIME) - 1 <= refreshes <= math.ceil(duration / (LIFETIME - margin)) + 1
    assert stats.get("hub_tokens_minted", 0) >= math.floor(duration / LIFETIME) - 1  # the front saw them rotate
    assert not [r for r in caplog.records if "no source has a fresher one" in r.getMessage()]

    # no token in Prefect's database or in the logs
    access_tokens = [t for t in issued_by_the_flow if t.startswith("eyJ")]
    assert len(access_tokens) == refreshes
    secrets = issued + [credentials.refresh_token.get_secret_value(), sample.value]
    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    stored = database_bytes(prefect_db)
    captured = capsys.readouterr()
    logged = caplog.text + captured.out + captured.err
    for secret in secrets:
        assert secret.encode() not in stored
        assert secret not in logged
