"""Our flows are plain `def` flows so that calling one gives its result — in a
script, in a Jupyter cell (inside the kernel's running loop) or from a worker —
never a coroutine. The service tasks they chain are async; `run` drives one to
completion in the calling flow run's context (task runs stay its children)."""

from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


def run(awaitable: Awaitable[T]) -> T:
    """The result of an async task call, from sync code (also under a running event loop)."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    return run_coro_as_sync(awaitable)  # type: ignore[arg-type,return-value]
