"""The EGI Notebooks tasks against a real JupyterHub behind an EGI-like token front."""

from __future__ import annotations

import asyncio
import re

import pytest
from pydantic import SecretStr

from prefect_egi.tasks import (
    HubError,
    HubTokenRejected,
    NotebooksHub,
    hub_user,
    hub_users,
    hub_version,
    start_server,
    stop_server,
)


def hub(notebooks, checkin, user: str = "alice", **fields) -> NotebooksHub:
    return NotebooksHub(url=notebooks.info["api_url"], checkin=checkin.credentials(user), **fields)


def test_version_and_who_i_am(notebooks, checkin):
    block = hub(notebooks, checkin)
    assert asyncio.run(hub_version.fn(block)) == notebooks.info["hub_version"]
    me = asyncio.run(hub_user.fn(block))
    assert me.name == "alice" and me.admin is True and me.servers == {}


def test_only_admins_list_users_and_the_200_with_403_body_is_an_error(notebooks, checkin):
    asyncio.run(hub_user.fn(hub(notebooks, checkin, "carol")))  # carol exists on the hub
    names = {u.name for u in asyncio.run(hub_users.fn(hub(notebooks, checkin)))}
    assert {"alice", "carol"} <= names
    with pytest.raises(HubError, match="Only hub admins can list users") as refused:
        asyncio.run(hub_users.fn(hub(notebooks, checkin, "carol")))
    assert refused.value.status == 403 and "requires any of [list:users]" in str(refused.value)


def test_start_and_stop_my_server_waiting_for_each(notebooks, checkin):
    block = hub(notebooks, checkin, "carol")
    server = asyncio.run(start_server.fn(block, deadline_seconds=60))
    assert server.ready and server.url == "/user/carol/"
    again = asyncio.run(start_server.fn(block, deadline_seconds=60))  # already running: just ready
    assert again.ready
    after = asyncio.run(stop_server.fn(block, deadline_seconds=60))
    assert "" not in after.servers
    stats = notebooks.stats()
    assert stats.get("POST /services/jwt/users/carol/server") == 2
    assert stats.get("DELETE /services/jwt/users/carol/server") == 1


def test_a_named_server_with_options(notebooks, checkin):
    block = hub(notebooks, checkin, "carol")
    server = asyncio.run(start_server.fn(block, server="gpu", options={"image": "pangeo"}, deadline_seconds=60))
    assert server.ready and server.name == "gpu"
    assert "gpu" not in asyncio.run(stop_server.fn(block, server="gpu", deadline_seconds=60)).servers


def test_a_start_that_does_not_finish_in_time_is_a_clear_error(notebooks, checkin):
    from prefect_egi.tasks import ServerWaitFailed

    block = hub(notebooks, checkin, "carol")
    with pytest.raises(ServerWaitFailed, match="carol's server slow is not ready"):
        asyncio.run(start_server.fn(block, server="slow", deadline_seconds=0.3))
    asyncio.run(stop_server.fn(block, server="slow", deadline_seconds=60))


def test_an_expired_token_is_named_in_the_error(notebooks, checkin):
    import time

    from prefect_egi.tasks import CheckinCredentials, parse_token

    token = checkin.login(access_token_lifetime=1)["access_token"]
    credentials = CheckinCredentials(issuer=checkin.issuer, access_token=SecretStr(token), use_environment=False,
                                     token_files=[], margin_seconds=0)
    block = NotebooksHub(url=notebooks.info["api_url"], checkin=credentials)
    # read from the token itself: by the time the provider looks, a 1 s token may have expired
    expiry = parse_token(token).expires_at
    time.sleep(max(0.0, parse_token(token).seconds_left()) + 0.5)
    # the provider would refuse an expired token itself; the hub's own 401 is what we test here
    client = block.client()
    client.token = lambda: _const(token)
    with pytest.raises(HubTokenRejected, match=re.escape(f"expired at {expiry.isoformat(timespec='seconds')}")):
        asyncio.run(client.me())


async def _const(value: str) -> str:
    return value


@pytest.mark.prefect
def test_hub_calls_in_a_flow_leave_no_token_in_prefect(prefect_db, notebooks, checkin, capsys):
    from conftest import database_bytes
    from prefect import flow

    block = hub(notebooks, checkin, "carol")

    @flow(log_prints=True)
    async def my_notebook_server() -> str:
        me = await hub_user(block)
        server = await start_server(block, deadline_seconds=60)
        print(f"{me.name} has a server at {server.url}")
        await stop_server(block, deadline_seconds=60)
        return me.name

    assert asyncio.run(my_notebook_server()) == "carol"
    access = block.checkin.get_access_token()
    refresh = block.checkin.refresh_token.get_secret_value()
    stored = database_bytes(prefect_db)
    captured = capsys.readouterr()
    for secret in (access, refresh):
        assert secret.encode() not in stored
        assert secret not in captured.out + captured.err


@pytest.mark.prefect
def test_the_server_flow_is_a_plain_call(prefect_db, notebooks, checkin):
    """No coroutine: the flow gives its result in a script and under a running loop (a notebook cell)."""
    import uuid

    from prefect_egi.flows import notebooks_server

    name = f"hub-{uuid.uuid4().hex[:8]}"
    hub(notebooks, checkin, "carol").save(name, overwrite=True)
    started = notebooks_server("start", hub_block=name)
    assert started.name == "carol" and started.servers[""].ready

    async def in_a_cell():
        return notebooks_server("stop", hub_block=name)

    assert "" not in asyncio.run(in_a_cell()).servers
    missing = notebooks_server(hub_block="nope", return_state=True)
    assert "hub_block: there is no EGI Notebooks Hub block named 'nope'" in missing.message


def test_stopping_a_named_server_the_hub_does_not_have_is_already_stopped(notebooks, checkin):
    """The hub answers 404 "<user> has no server named '<name>'" (JupyterHub 6.1 users.py): nothing to stop."""
    after = asyncio.run(stop_server.fn(hub(notebooks, checkin, "carol"), server="never-started", deadline_seconds=60))
    assert after.name == "carol" and "never-started" not in after.servers


def test_a_start_while_the_stop_is_pending_waits_for_the_stop_then_starts(notebooks, checkin):
    """The hub refuses the start with 400 "… is pending stop": wait until it stopped, then start."""
    block = hub(notebooks, checkin, "carol")
    assert asyncio.run(start_server.fn(block, server="again", deadline_seconds=60)).ready
    notebooks.control("config", stop_seconds=6)  # longer than the peer's --slow-stop-timeout: the stop stays pending

    async def stop_then_start():
        async with block.client() as client:
            await client.stop("carol", "again")
            assert (await client.user("carol")).servers["again"].pending == "stop"
        return await start_server.fn(block, server="again", deadline_seconds=60)

    try:
        assert asyncio.run(stop_then_start()).ready
        # the start before the pending stop, the refused one, and the one after the stop
        assert notebooks.stats().get("POST /services/jwt/users/carol/servers/again") == 3
    finally:
        notebooks.control("reset")
        asyncio.run(stop_server.fn(block, server="again", deadline_seconds=60))


def test_a_failed_spawn_says_why(notebooks, checkin):
    """The hub keeps the reason for its progress stream ("Spawn failed: …"); the error carries it."""
    from prefect_egi.tasks import ServerWaitFailed

    block = hub(notebooks, checkin, "carol")
    with pytest.raises(ServerWaitFailed) as failed:
        asyncio.run(start_server.fn(block, server="img", options={"image": "unknown/no-such"}, deadline_seconds=60))
    message = str(failed.value)
    assert "carol's server img is not ready: its start failed: Spawn failed: Back-off pulling image" in message
    assert '"unknown/no-such"' in message and "the server is gone" not in message


@pytest.fixture
def dave(checkin):
    """A Check-in user in a cloud VO but not in the Notebooks VO."""
    checkin.process.control("user", name="dave", profile={
        "sub": "1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a@egi.eu", "name": "Dave Cloud",
        "eduperson_entitlement": ["urn:mace:egi.eu:group:vo.access.egi.eu:role=member#aai.egi.eu"]})
    return "dave"


def test_a_user_the_hub_does_not_admit_is_told_why_with_the_tokens_vos(notebooks, checkin, dave):
    """Through EGI's front such a user gets `{"status":403,"message":null}` (or "Missing or invalid
    credentials.") for every call: name the likely cause, not "no reason given"."""
    for user, vos in (("bob", "the token names no VO"), (dave, "the token's VOs are vo.access.egi.eu")):
        block = hub(notebooks, checkin, user)
        for task, args in ((hub_user, ()), (hub_users, ()), (start_server, ("", None, 60)), (stop_server, ())):
            with pytest.raises(HubError) as refused:
                asyncio.run(task.fn(block, *args))
            message = str(refused.value)
            assert f"did not admit this Check-in identity ({user})" in message, message
            assert type(refused.value).__name__ == "HubUserNotAdmitted" and refused.value.status == 403
            assert vos in message and "vo.notebooks.egi.eu" in message and "no reason given" not in message
            assert "Only hub admins" not in message
    assert notebooks.stats()["not_admitted"] >= 8
