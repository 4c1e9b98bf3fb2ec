"""Log in to DiracX with the OAuth device flow — what `dirac login` does.

A researcher without DiracX credentials runs this once: `device_login` asks the
DiracX server for a device code, hands the verification link and user code to the
caller (`on_code`: the `dirac_login` task shows them as a Prefect link artifact and in
the run's log; `egi-flows dirac login` prints them), and polls until the user has
approved it at the identity provider (EGI Check-in) or the deadline passes. The tokens
are written, mode 0600, to the block's credentials file — the same file and format
`dirac login` writes — so every DiracX task can use them afterwards, and
diracx-client refreshes them from then on.

The device code (which redeems the tokens) and the tokens themselves never
reach logs, artifacts or results; only the user code is shown, since the user
has to type it.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect_egi.tasks.dirac.client import DiracxClient, engine_error
from prefect_egi.tasks.faults import TransientServiceError
from prefect_egi.tasks.redaction import register_all

#: diracx-client's public client id (what `dirac login` uses)
CLIENT_ID = "myDIRACClientID"

logger = logging.getLogger("prefect_egi.dirac")


class DiracLoginFailed(RuntimeError):
    """The device flow ended without credentials (denied, expired, deadline)."""


@dataclass(frozen=True)
class DeviceCode:
    """What the user needs to approve the login (the device code stays inside the task)."""

    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int


def _scope(client: DiracxClient) -> str:
    return " ".join([f"vo:{client.vo}", *([f"group:{client.group}"] if client.group else [])])


async def device_login(client: DiracxClient, *, deadline_seconds: float = 600.0, poll_seconds: float = 2.0,
                       on_code: Callable[[DeviceCode], Awaitable[None] | None] | None = None,
                       log: logging.Logger | logging.LoggerAdapter | Any = logger) -> Path:
    """Run the device flow for the client's VO/group; write and return its credentials file.

    `on_code(DeviceCode)` (sync or async) is called once the link is known — the task
    uses it for the artifact; tests use it to play the browser. `log`: where progress
    goes (the task passes the run's logger).
    """
    if client.refresh_token is not None:
        raise ValueError("refresh_token: this DiracX block already has credentials; a device login would write "
                         "a credentials file it does not read — clear refresh_token or skip the login")
    if deadline_seconds <= 0 or poll_seconds <= 0:
        raise ValueError("deadline_seconds and poll_seconds must be positive")
    from diracx.core.utils import write_credentials

    async with client.session(anonymous=True) as api:
        try:
            started = await api.auth.initiate_device_flow(client_id=CLIENT_ID, scope=_scope(client))
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
                log.warning("DiracX did not answer the login poll (%s); trying again", type(exc).__name__)
                continue
            error = getattr(answer, "error", None)
            if error is None:
                break
            if error == "slow_down":
                interval += 5  # RFC 8628 §3.5
            elif error != "authorization_pending":
                raise DiracLoginFailed(f"DiracX login for VO {client.vo} failed: {error}")
            if time.monotonic() >= deadline:
                raise DiracLoginFailed(
                    f"DiracX login for VO {client.vo} was not approved within "
                    f"{min(deadline_seconds, code.expires_in):.0f} s; run the login again and open the new link")
    register_all([answer.access_token, answer.refresh_token])
    path = client.credentials_target()
    write_credentials(answer, location=path)
    log.info("DiracX login for VO %s succeeded; credentials written to %s", client.vo, path)
    return path


def _login_error(exc: BaseException, during: str) -> Exception:
    mapped = engine_error(exc)
    return DiracLoginFailed(f"DiracX login: {during} failed — {mapped if mapped is not exc else type(exc).__name__}: "
                            f"{getattr(exc, 'message', None) or exc}")
