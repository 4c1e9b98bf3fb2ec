"""Log in to DiracX with the OAuth device flow — `dirac login`, from a flow.

A researcher without DiracX credentials runs this once: the task asks the
DiracX server for a device code, shows the verification link and user code as
a Prefect link artifact and in the log, and polls until the user has approved
it at the identity provider (EGI Check-in) or the deadline passes. The tokens
are written, mode 0600, to the block's credentials file — the same file and
format `dirac login` writes — so every DiracX task can use them afterwards,
and diracx-client refreshes them from then on.

The device code (which redeems the tokens) and the tokens themselves never
reach logs, artifacts or results; only the user code is shown, since the user
has to type it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task

from tasks.dirac import DiracX, engine_error
from tasks.redaction import redact_errors, register_all
from tasks.remote import TransientServiceError, in_run, run_logger

#: diracx-client's public client id (what `dirac login` uses)
CLIENT_ID = "myDIRACClientID"


class DiracLoginFailed(RuntimeError):
    """The device flow ended without credentials (denied, expired, deadline)."""


@dataclass(frozen=True)
class DeviceCode:
    """What the user needs to approve the login (the device code stays inside the task)."""

    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int


def _scope(block: DiracX) -> str:
    return " ".join([f"vo:{block.vo}", *([f"group:{block.group}"] if block.group else [])])


def _anonymous_client(block: DiracX) -> Any:
    """A client that needs no credentials yet (the device flow is what gets them)."""
    from diracx.client.aio import AsyncDiracClient
    from diracx.core.preferences import DiracxPreferences

    preferences = DiracxPreferences(url=block.url, credentials_path=block.credentials_target(),
                                    **({"ca_path": block.ca_bundle} if block.ca_bundle else {}))
    return AsyncDiracClient(diracx_preferences=preferences, verify=block.verify_tls,
                            connection_timeout=10, read_timeout=block.timeout_seconds)


async def _tell_the_user(block: DiracX, code: DeviceCode) -> None:
    run_logger().warning(
        "DiracX login for VO %s: open %s and approve (user code %s) within %d s",
        block.vo, code.verification_uri_complete, code.user_code, code.expires_in)
    if in_run():
        from prefect.artifacts import acreate_link_artifact

        from tasks.artifacts import publish

        await publish(  # the link and the code are in the log line above too
            "login link", acreate_link_artifact, key="diracx-login", link=code.verification_uri_complete,
            link_text=f"Log in to DiracX ({block.vo}) — user code {code.user_code}",
            description=f"Open the link and approve the login at your identity provider within "
                        f"{code.expires_in} s. The flow continues by itself once you have.")


async def device_login(block: DiracX, *, deadline_seconds: float = 600.0, poll_seconds: float = 2.0,
                       on_code: Any = None) -> Path:
    """Run the device flow for the block's VO/group; write and return its credentials file.

    `on_code(DeviceCode)` (sync or async) is called once the link is known —
    the task uses it for the artifact; tests use it to play the browser.
    """
    if block.refresh_token is not None:
        raise ValueError("refresh_token: this DiracX block already has credentials; a device login would write "
                         "a credentials file it does not read — clear refresh_token or skip the login")
    if deadline_seconds <= 0 or poll_seconds <= 0:
        raise ValueError("deadline_seconds and poll_seconds must be positive")
    from diracx.core.utils import write_credentials

    async with _anonymous_client(block) as api:
        try:
            started = await api.auth.initiate_device_flow(client_id=CLIENT_ID, scope=_scope(block))
        except Exception as exc:
            raise _login_error(exc, "starting the login") from None
        code = DeviceCode(started.user_code, started.verification_uri, started.verification_uri_complete,
                          int(started.expires_in))
        register_all([started.device_code])
        if on_code is not None:
            outcome = on_code(code)
            if asyncio.iscoroutine(outcome):
                await outcome
        deadline = time.monotonic() + min(deadline_seconds, code.expires_in)
        interval = poll_seconds
        while True:
            await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            try:
                answer = await api.auth.get_oidc_token(device_code=started.device_code, client_id=CLIENT_ID)
            except Exception as exc:
                if not isinstance(engine_error(exc), TransientServiceError) or time.monotonic() >= deadline:
                    raise _login_error(exc, "waiting for the approval") from None
                run_logger().warning("DiracX did not answer the login poll (%s); trying again", type(exc).__name__)
                continue
            error = getattr(answer, "error", None)
            if error is None:
                break
            if error == "slow_down":
                interval += 5  # RFC 8628 §3.5
            elif error != "authorization_pending":
                raise DiracLoginFailed(f"DiracX login for VO {block.vo} failed: {error}")
            if time.monotonic() >= deadline:
                raise DiracLoginFailed(
                    f"DiracX login for VO {block.vo} was not approved within {min(deadline_seconds, code.expires_in):.0f} s; "
                    "run the login again and open the new link")
    register_all([answer.access_token, answer.refresh_token])
    path = block.credentials_target()
    write_credentials(answer, location=path)
    run_logger().info("DiracX login for VO %s succeeded; credentials written to %s", block.vo, path)
    return path


def _login_error(exc: BaseException, during: str) -> Exception:
    mapped = engine_error(exc)
    return DiracLoginFailed(f"DiracX login: {during} failed — {mapped if mapped is not exc else type(exc).__name__}: "
                            f"{getattr(exc, 'message', None) or exc}")


@task(name="dirac-login", persist_result=False)
@redact_errors
async def dirac_login(diracx: DiracX | str, deadline_seconds: float = 600.0) -> str:
    """Log in to DiracX (device flow); returns the credentials file's path.

    Args:
        diracx: the DiracX block (or its saved name) to log in for.
        deadline_seconds: how long to wait for the user to approve.
    """
    block = DiracX.resolve(diracx)
    path = await device_login(block, deadline_seconds=deadline_seconds,
                              on_code=lambda code: _tell_the_user(block, code))
    return str(path)
