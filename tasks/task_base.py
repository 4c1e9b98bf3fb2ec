"""The base of prefect-egi's tasks: one task, callable from sync code and awaitable from async code.

The service tasks are asynchronous (they wait on remote services without holding a
thread). A plain `async` Prefect task, called from a script, a sync flow or a Jupyter
cell without `await`, hands back an unawaited coroutine — the same trap Prefect's own
`Block.load` sets in a notebook. Prefect's integrations avoid it by dispatching on the
caller's context (`prefect._internal.compatibility.async_dispatch`, private API); ours
dispatch the same way, but on the caller itself:

- called from a coroutine (an `async def` function, an async flow or task, or a notebook
  cell that uses `await`), the call returns the awaitable — `await vm_inventory(...)`;
- called from anything else — a script, a sync flow or task, a notebook cell without
  `await`, even under the kernel's running event loop — the call runs the task to its
  end and returns its result: `inventory = vm_inventory(...)`.

Prefect decides by the running event loop instead, which in a notebook is always
there, so a plain call in a cell would still give a coroutine. `_sync=True` / `False`
forces either side (the keyword Prefect's integrations use); `.aio(...)` is always the
awaitable form. Everything else is Prefect's `Task`: `.submit`, `.map`, `.with_options`,
`.fn`, retries, caching, the UI.

`egi_task(...)` is `@task(...)` for such a task, with errors redacted (`redact_errors`),
so that an exception carrying a secret is masked before Prefect records it.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any, TypeVar

from prefect.tasks import Task

from prefect_egi.tasks.redaction import redact_errors
from prefect_egi.tasks.remote import WatchGaveUp

R = TypeVar("R")

_ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE | inspect.CO_ASYNC_GENERATOR
# frames that only pass a call through: a comprehension, a generator expression, a lambda
_PASS_THROUGH = frozenset({"<genexpr>", "<listcomp>", "<setcomp>", "<dictcomp>", "<lambda>"})


def called_from_async(frame: FrameType | None) -> bool:
    """Whether the code at `frame` (the caller) is a coroutine that can await the result —
    looking through comprehensions, generator expressions and lambdas to where they run."""
    while frame is not None and frame.f_code.co_name in _PASS_THROUGH:
        frame = frame.f_back
    return frame is not None and bool(frame.f_code.co_flags & _ASYNC_CODE)


class EgiTask(Task):
    """A Prefect task around an `async def`, whose call gives a value to sync callers and
    an awaitable to async ones (see the module's docstring)."""

    def __call__(self, *args: Any, _sync: bool | None = None, **kwargs: Any) -> Any:
        run_sync = (not called_from_async(sys._getframe(1))) if _sync is None else _sync
        call = super().__call__(*args, **kwargs)
        if run_sync and inspect.isawaitable(call):
            from prefect.utilities.asyncutils import run_coro_as_sync

            return run_coro_as_sync(call)
        return call

    def aio(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """Always the awaitable form: `await task.aio(...)`."""
        return super().__call__(*args, **kwargs)

    def with_options(self, **options: Any) -> "EgiTask":  # type: ignore[override]
        """Prefect's `with_options`, keeping this calling convention."""
        changed = super().with_options(**options)
        changed.__class__ = EgiTask
        return changed


def egi_task(**options: Any) -> Callable[[Callable[..., Coroutine[Any, Any, R]]], EgiTask]:
    """`@task(**options)` for an `async def`, callable both ways, errors redacted."""

    def decorate(fn: Callable[..., Coroutine[Any, Any, R]]) -> EgiTask:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"egi_task: {fn.__qualname__} must be an async def (sync callers get its result)")
        return EgiTask(fn=redact_errors(fn), **options)

    return decorate


def raised(state: Any) -> Any:
    """What a failed task run raised, for a `retry_condition_fn`. Prefect calls those from
    inside the task's engine, where `state.result()` of an async task is a coroutine (and
    an `isinstance` check on it silently never matches): read it synchronously."""
    return state.result(raise_on_failure=False, _sync=True)


def retry_if_watch_may_recover(task: Any, task_run: Any, state: Any) -> bool:
    """`retry_condition_fn` for wait tasks: retry only when the service was unreachable
    (not when the credentials were refused, nor when the deadline passed)."""
    exc = raised(state)
    return isinstance(exc, WatchGaveUp) and exc.transient
