"""EGI Notebooks tasks: who am I on the hub, start and stop my server (waiting until it is so)."""

from __future__ import annotations

import time
from typing import Any

from prefect_egi.tasks.notebooks.adapter import HubServerAdapter
from prefect_egi.tasks.notebooks.block import NotebooksHub
from prefect_egi.tasks.notebooks.client import HubClient, HubServer, HubUser, ServerStopPending
from prefect_egi.tasks.remote import JobState, WatchError, WatchPolicy, WatchReporter, watch
from prefect_egi.tasks.reporting import run_logger
from prefect_egi.tasks.task_base import egi_task

HubArg = NotebooksHub | str


class ServerWaitFailed(RuntimeError):
    """The server did not reach the state asked for before the deadline (or its start failed)."""


@egi_task(name="notebooks-hub-version", retries=2, retry_delay_seconds=5)
async def hub_version(hub: HubArg = "notebooks") -> str:
    """The hub's JupyterHub version (needs no token).

    Args:
        hub: a `NotebooksHub` block or the name of a saved one.

    Returns:
        The version string (`"6.1.1"` on the sandbox's hub).

    Raises:
        TransientServiceError: the hub did not answer (the task retries twice first).

    Example:
        hub_version("notebooks")
    """
    async with NotebooksHub.resolve(hub).client() as client:
        return await client.version()


@egi_task(name="notebooks-whoami")
async def hub_user(hub: HubArg = "notebooks") -> HubUser:
    """The current user as the hub sees them.

    Args:
        hub: a `NotebooksHub` block or the name of a saved one.

    Returns:
        A `HubUser`: name, admin, groups, servers (name → `HubServer`), last activity.

    Raises:
        HubTokenRejected: the front refused the Check-in token (the message names its expiry).
        HubUserNotAdmitted: the hub does not let this Check-in identity in (the message names the token's VOs).
        HubError: the hub refused the call, with the hub's own status and reason.

    Example:
        me = hub_user("notebooks")
        me.servers[""].url if "" in me.servers else "no server"
    """
    async with NotebooksHub.resolve(hub).client() as client:
        return await client.me()


@egi_task(name="notebooks-list-users")
async def hub_users(hub: HubArg = "notebooks") -> list[HubUser]:
    """Every hub user (hub admins only), all pages of them.

    Args:
        hub: a `NotebooksHub` block or the name of a saved one.

    Returns:
        One `HubUser` per user.

    Raises:
        HubError: 403 "Only hub admins can list users" for everyone else.
        HubUserNotAdmitted: the hub does not let this Check-in identity in at all.
        HubListingIncomplete: EGI's front let only the first users be read (`.users` holds them).

    Example:
        [user.name for user in hub_users("notebooks")]
    """
    async with NotebooksHub.resolve(hub).client() as client:
        return await client.users()


async def _start(client: HubClient, user: str, server: str, options: dict[str, Any] | None,
                 deadline_seconds: float) -> HubUser:
    """Ask for the start and wait until the server is ready. A server still stopping cannot
    be started: then the stop is waited for first, within the same deadline."""
    started = time.monotonic()
    try:
        await client.start(user, server, options)
    except ServerStopPending:
        await _wait(client, user, server, "stopped", deadline_seconds)
        await client.start(user, server, options)
    return await _wait(client, user, server, "ready", max(0.0, deadline_seconds - (time.monotonic() - started)))


async def _wait(client: HubClient, user: str, server: str, target: str, deadline_seconds: float) -> HubUser:
    adapter = HubServerAdapter(client, target)
    job = f"{user}/{server}"
    policy = WatchPolicy(first_interval=0.5, max_interval=5.0, deadline=deadline_seconds)
    try:
        final = await watch(adapter, [job], policy, WatchReporter(adapter, run_logger()))
    except WatchError as exc:
        raise ServerWaitFailed(f"{adapter.job_label(job)} is not {target}: {exc}") from None
    if final[job].state is not JobState.SUCCEEDED:
        raise ServerWaitFailed(f"{adapter.job_label(job)} is not {target}: {final[job].message}")
    return await client.user(user)


@egi_task(name="notebooks-start-server")
async def start_server(hub: HubArg = "notebooks", server: str = "",
                       options: dict[str, Any] | None = None, deadline_seconds: float = 600.0) -> HubServer:
    """Start my server (or a named one, with spawner options) and wait until it is ready.

    A server that is already running is simply waited for; one that is still stopping is
    waited for until it stopped, then started.

    Args:
        hub: a `NotebooksHub` block or the name of a saved one.
        server: a named server; empty for the default one.
        options: spawner options (e.g. the image to use).
        deadline_seconds: how long the start may take.

    Returns:
        The ready `HubServer` (its `url`, start time, last activity).

    Raises:
        ServerWaitFailed: the start failed (with the hub's "Spawn failed: …" reason) or did not
            finish before the deadline.
        HubUserNotAdmitted: the hub does not let this Check-in identity in.

    Example:
        server = start_server("notebooks")
        print(server.url)
    """
    async with NotebooksHub.resolve(hub).client() as client:
        me = await client.me()
        user = await _start(client, me.name, server, options, deadline_seconds)
    return user.servers[server]


@egi_task(name="notebooks-stop-server")
async def stop_server(hub: HubArg = "notebooks", server: str = "",
                      deadline_seconds: float = 300.0) -> HubUser:
    """Stop my server (or a named one) and wait until it is gone; a named server the hub
    no longer has is stopped already.

    Args:
        hub: a `NotebooksHub` block or the name of a saved one.
        server: a named server; empty for the default one.
        deadline_seconds: how long the stop may take.

    Returns:
        The `HubUser` afterwards (without that server).

    Raises:
        ServerWaitFailed: the server was still there at the deadline.

    Example:
        stop_server("notebooks")
    """
    async with NotebooksHub.resolve(hub).client() as client:
        me = await client.me()
        await client.stop(me.name, server)
        return await _wait(client, me.name, server, "stopped", deadline_seconds)
