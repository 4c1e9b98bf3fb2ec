"""The Check-in task: a flow's access token, from a `CheckinCredentials` block."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from prefect_egi.tasks.checkin.block import CheckinCredentials
from prefect_egi.tasks.checkin.errors import IssuerUnreachableError
from prefect_egi.tasks.task_base import egi_task, raised


def _retry_when_issuer_unreachable(task: Any, task_run: Any, state: Any) -> bool:
    """Retry the token task only for an unreachable issuer, never for a bad token or grant."""
    exc = raised(state)
    return isinstance(exc, IssuerUnreachableError) or getattr(exc, "transient", False)


@egi_task(
    name="get-checkin-token",
    persist_result=False,  # persisted results are plain pickles on disk: never a token
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[5, 20],
    retry_condition_fn=_retry_when_issuer_unreachable,
)
async def get_checkin_token(credentials: CheckinCredentials | None = None) -> SecretStr:
    """A valid EGI Check-in access token — never cached, persisted or logged.

    The token is refreshed first when it is about to expire; concurrent callers share
    one refresh, and a refresh never blocks the event loop.

    Args:
        credentials: where the token comes from; without one, the default sources
            apply (the environment, then the EGI Notebooks token files).

    Returns:
        The access token as a `SecretStr` (`.get_secret_value()` gives the string).

    Raises:
        NoTokenError: no source had a token; the message lists each source and its fix.
        TokenExpiredError: the only token found has expired and nothing can renew it.
        IssuerUnreachableError: the issuer did not answer (the task retries twice first).

    Example:
        token = get_checkin_token(CheckinCredentials.load("egi-checkin"))   # sync flow or script
        token = await get_checkin_token(credentials)                       # async code
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"}
    """
    return SecretStr(await (credentials or CheckinCredentials()).aget_access_token())


#: The same task under its former async name (`get_checkin_token` is awaitable itself now).
aget_checkin_token = get_checkin_token
