"""The EGI Notebooks hub from a flow: who am I there, start and stop my server.

    from tasks.notebooks import NotebooksHub, start_server
    NotebooksHub(checkin=CheckinCredentials.load("egi-checkin")).save("notebooks")
    server = start_server("notebooks")            # waits until it is ready

The same Check-in identity as every other service: the block's
`CheckinCredentials` give the bearer token, refreshed when needed.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from pydantic import Field, field_validator

from tasks.block_base import EgiBlock
from tasks.checkin import CheckinCredentials
from tasks.http import require_https, tls_verify
from tasks.hub_api import DEFAULT_HUB_URL, HubClient, HubServer, HubServerAdapter, HubUser
from tasks.redaction import redact_errors
from tasks.remote import JobState, WatchError, WatchPolicy, WatchReporter, run_logger, watch


class NotebooksHub(EgiBlock):
    """The EGI Notebooks hub's REST API and the Check-in identity used on it."""

    _block_type_name = "EGI Notebooks Hub"
    _block_type_slug = "egi-notebooks-hub"
    _logo_url = "https://www.egi.eu/wp-content/uploads/2021/06/EGI-Logo.png"  # type: ignore[assignment]
    _documentation_url = "https://docs.egi.eu/users/dev-env/notebooks/"  # type: ignore[assignment]

    url: str = Field(default=DEFAULT_HUB_URL, description="The hub API behind EGI's token front.")
    checkin: CheckinCredentials = Field(default_factory=CheckinCredentials,
                                        description="Where the Check-in access token comes from.")
    timeout_seconds: float = Field(default=30.0, gt=0, description="Timeout of each request.")
    verify_tls: bool = Field(default=True, description="Verify the hub's TLS certificate.")
    ca_bundle: str | None = Field(default=None, description="CA bundle for the hub (instead of the system one).")

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        return require_https(value, "url")

    def client(self) -> HubClient:
        return HubClient(self.url, self.checkin.aget_access_token,
                         verify=tls_verify(self.verify_tls, self.ca_bundle, what=f"the hub {self.url}"),
                         timeout=self.timeout_seconds)


class ServerWaitFailed(RuntimeError):
    """The server did not reach the state asked for before the deadline (or its start failed)."""


@task(name="notebooks-hub-version", retries=2, retry_delay_seconds=5)
@redact_errors
async def hub_version(hub: NotebooksHub | str = "notebooks") -> str:
    """The hub's JupyterHub version (needs no token)."""
    async with NotebooksHub.resolve(hub).client() as client:
        return await client.version()


@task(name="notebooks-whoami")
@redact_errors
async def hub_user(hub: NotebooksHub | str = "notebooks") -> HubUser:
    """The current user as the hub sees them: name, groups, servers, last activity."""
    async with NotebooksHub.resolve(hub).client() as client:
        return await client.me()


@task(name="notebooks-list-users")
@redact_errors
async def hub_users(hub: NotebooksHub | str = "notebooks") -> list[HubUser]:
    """Every hub user (hub admins only: others get a clear 403 error)."""
    async with NotebooksHub.resolve(hub).client() as client:
        return await client.users()


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


@task(name="notebooks-start-server")
@redact_errors
async def start_server(hub: NotebooksHub | str = "notebooks", server: str = "",
                       options: dict[str, Any] | None = None, deadline_seconds: float = 600.0) -> HubServer:
    """Start my server (or a named one, with spawner options) and wait until it is ready."""
    async with NotebooksHub.resolve(hub).client() as client:
        me = await client.me()
        await client.start(me.name, server, options)
        user = await _wait(client, me.name, server, "ready", deadline_seconds)
    return user.servers[server]


@task(name="notebooks-stop-server")
@redact_errors
async def stop_server(hub: NotebooksHub | str = "notebooks", server: str = "",
                      deadline_seconds: float = 300.0) -> HubUser:
    """Stop my server (or a named one) and wait until it is gone."""
    async with NotebooksHub.resolve(hub).client() as client:
        me = await client.me()
        await client.stop(me.name, server)
        return await _wait(client, me.name, server, "stopped", deadline_seconds)
