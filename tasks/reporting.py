"""What a run shows in the Prefect UI: run logs, artifacts, events — and only that.

Everything here is best effort and about reporting, never about the work itself:

- `run_logger()`: the run's logger inside a flow or task run, ours outside one;
- `publish` / `publish_sync`: create or update an artifact; a refusal is a warning.
  A run that submitted grid jobs or executions, waited for them and fetched their
  outputs must not end Failed because the Prefect API would not take its progress
  bar or its summary table (at 50 concurrent pipelines a Prefect server on PostgreSQL
  answered 500 to an artifact when its database connections timed out; Prefect's
  client does not retry a 500);
- `PrefectReporter`: the engine's `WatchReporter` for the UI — a throttled progress
  artifact, one event per transition (`egi.<service>.job.<state>`) and a table of
  every job's final state.

The engine (`prefect_egi.tasks.remote`) stays plain Python; this module is the one
place its Prefect side lives. Prefect's heavier parts (artifacts, events) are
imported where they are used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from prefect_egi.tasks.remote import JobStatus, RemoteJobAdapter, WatchReporter, overall_progress, summarise

T = TypeVar("T")

logger = logging.getLogger("prefect_egi.remote")


def in_run() -> bool:
    """True inside a Prefect flow or task run (artifacts and events need one)."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def run_logger() -> Any:
    """The run's logger inside Prefect, ours outside it."""
    if in_run():
        from prefect import get_run_logger

        return get_run_logger()
    return logger


async def publish(what: str, create: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T | None:
    """`await create(*args, **kwargs)` (a `prefect.artifacts.acreate_*`/`aupdate_*`), or None
    with a warning naming `what` when the Prefect API refuses it."""
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
    status = getattr(getattr(exc, "response", None), "status_code", None)
    run_logger().warning("The Prefect API did not take the %s artifact (%s%s); the run goes on without it",
                         what, type(exc).__name__, f", HTTP {status}" if status else "")


class PrefectReporter(WatchReporter):
    """Reports into the Prefect UI: run logs, a throttled progress artifact, one
    event per transition and a table artifact of every job's final state."""

    def __init__(self, adapter: RemoteJobAdapter, title: str = "", log: Any = None,
                 throttle: float = 2.0, clock: Any = time.monotonic):
        self.throttle = throttle
        if log is None:
            log = run_logger()
        super().__init__(adapter, log)
        self.title = title or f"{adapter.service} jobs"
        self.clock = clock
        self._artifact_id: Any = None
        self._last_update = float("-inf")
        self._last_value: float | None = None

    async def started(self, statuses: Mapping[str, JobStatus]) -> None:
        await super().started(statuses)
        if in_run():
            from prefect.artifacts import acreate_progress_artifact

            self._artifact_id = await publish("progress", acreate_progress_artifact,
                                              progress=overall_progress(statuses), description=f"{self.title}: progress")
            self._last_update = self.clock()

    async def transition(self, old: JobStatus | None, new: JobStatus) -> None:
        await super().transition(old, new)
        if not in_run():  # outside a run there is no API to send events to (and none to start)
            return
        from prefect.events import emit_event

        resource = {"prefect.resource.id": f"egi.{self.adapter.service}.job.{new.job_id}",
                    "prefect.resource.name": self.adapter.job_label(new.job_id)}
        link = self.adapter.job_link(new.job_id)
        if link:
            resource["egi.job.url"] = link
        emit_event(
            event=f"egi.{self.adapter.service}.job.{new.state.value}",
            resource=resource,
            payload={"previous": old.state.value if old else None, "progress": new.progress,
                     "message": new.message[:500]},
        )

    async def progress(self, statuses: Mapping[str, JobStatus], force: bool = False) -> None:
        if self._artifact_id is None:
            return
        value = overall_progress(statuses)
        now = self.clock()
        if value == self._last_value or (not force and now - self._last_update < self.throttle):
            return
        from prefect.artifacts import aupdate_progress_artifact

        counts = ", ".join(f"{n} {s}" for s, n in summarise(statuses.values()).items())
        await publish("progress", aupdate_progress_artifact, self._artifact_id, progress=value,
                      description=f"{self.title}: {counts}")
        self._last_update, self._last_value = now, value

    async def finished(self, statuses: Mapping[str, JobStatus]) -> None:
        await super().finished(statuses)
        if not in_run():
            return
        from prefect.artifacts import acreate_table_artifact

        rows = [
            {"job": self.adapter.job_label(s.job_id), "state": s.state.value,
             "progress": "" if s.progress is None else s.progress, "message": s.message[:300],
             "link": self.adapter.job_link(s.job_id) or ""}
            for s in statuses.values()
        ]
        await publish("final states", acreate_table_artifact, rows, description=f"{self.title}: final states")
