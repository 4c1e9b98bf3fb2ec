"""Artifacts are what a run shows in the UI, never what it is for.

A run that submitted grid jobs or executions, waited for them and fetched their
outputs must not end Failed because the Prefect API would not take its progress
bar or its summary table (at 50 concurrent pipelines a Prefect server on PostgreSQL
answered 500 to an artifact when its database connections timed out; Prefect's
client does not retry a 500). So every artifact goes through `publish`: a failure
is a warning in the run's log, and the run goes on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def publish(what: str, create: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T | None:
    """`await create(*args, **kwargs)` (a `prefect.artifacts.acreate_*`/`aupdate_*`), or None."""
    try:
        return await create(*args, **kwargs)
    except Exception as exc:
        _warn(what, exc)
        return None


def publish_sync(what: str, create: Callable[..., T], /, *args: Any, **kwargs: Any) -> T | None:
    """The same for the synchronous `prefect.artifacts.create_*` a flow body calls."""
    try:
        return create(*args, **kwargs)
    except Exception as exc:
        _warn(what, exc)
        return None


def _warn(what: str, exc: Exception) -> None:
    from tasks.remote import run_logger

    status = getattr(getattr(exc, "response", None), "status_code", None)
    run_logger().warning("The Prefect API did not take the %s artifact (%s%s); the run goes on without it",
                         what, type(exc).__name__, f", HTTP {status}" if status else "")
