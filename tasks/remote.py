"""The remote-job engine: one wait loop for every service.

A DataMiner execution, a DIRAC job and a Notebooks server start have the same
shape: submit, poll, cancel, fetch. Each service is a small `RemoteJobAdapter`
(in its access layer); this module owns the one wait loop (`watch`) so that no
service grows its own polling loop.

The loop, modelled on Parsl's `ExecutionProvider` and Prefect's `JobRun`:
- polls in BULK (`adapter.poll(ids)`: one round trip for all jobs per cycle);
- paces itself (`Pacer`): fast at first, backing off to a cap, fast again
  after a job changes state — and when a job reports progress, the next poll
  goes where that progress says the job will end;
- has an overall deadline;
- absorbs transient errors (5xx, timeouts, resets) with exponential backoff up
  to a bound, and on 401 asks the adapter to renew its credentials first —
  never a busy loop, always a clear error at the end;
- reports through a `WatchReporter`: state changes logged (not every poll);
  `prefect_egi.tasks.reporting.PrefectReporter` adds a progress artifact
  (throttled), an event per transition (`egi.<service>.job.<state>`) and a table
  artifact at the end.

No Prefect imports: the engine is plain Python, usable and testable alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from prefect_egi.tasks.faults import CredentialsRejected, classify, describe

logger = logging.getLogger("prefect_egi.remote")


class JobState(str, Enum):
    """One state set for every service."""

    SUBMITTED = "submitted"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobStatus:
    """What a service says about one job, in the uniform vocabulary."""

    job_id: str
    state: JobState
    progress: float | None = None  # 0–100, None when the service does not say
    message: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)  # service-specific (minor status, site…)

    def same_as(self, other: "JobStatus | None") -> bool:
        return other is not None and (self.state, self.progress, self.message) == (
            other.state, other.progress, other.message)


class WatchError(Exception):
    """Waiting ended without every job finishing; the jobs may still run remotely."""

    def __init__(self, message: str, statuses: Mapping[str, JobStatus]):
        super().__init__(message)
        self.statuses = dict(statuses)

    def __reduce__(self):
        return (type(self), (str(self), self.statuses))


class WatchDeadlineExceeded(WatchError):
    """The overall deadline passed."""


class WatchGaveUp(WatchError):
    """Status requests kept failing beyond the error bound (`transient`: worth
    watching again later; otherwise the credentials were refused)."""

    def __init__(self, message: str, statuses: Mapping[str, JobStatus], transient: bool = True):
        super().__init__(message, statuses)
        self.transient = transient

    def __reduce__(self):
        return (type(self), (str(self), self.statuses, self.transient))


class RemoteJobAdapter(ABC):
    """One service's part of the engine: how to poll and cancel its jobs.

    An adapter may hold connections: use it as `async with block.job_adapter() as adapter:`
    (or call `aclose()`), so they are released however the wait ends."""

    #: short service name used in events (`egi.<service>.job.<state>`) and logs
    service: ClassVar[str]
    #: how `watch` paces this service when the caller gives no policy (None: `WatchPolicy()`)
    default_policy: ClassVar["WatchPolicy | None"] = None

    @abstractmethod
    async def poll(self, job_ids: Sequence[str]) -> Mapping[str, JobStatus]:
        """Statuses of many jobs in as few round trips as the service allows."""

    @abstractmethod
    async def cancel(self, job_ids: Sequence[str]) -> Mapping[str, JobStatus]:
        """Ask the service to stop these jobs; return what it then says about them."""

    async def renew_credentials(self) -> bool:
        """Called after a 401: get fresh credentials. False when nothing can change."""
        return False

    def job_label(self, job_id: str) -> str:
        """How to name a job to a human (logs, tables)."""
        return job_id

    def job_link(self, job_id: str) -> str | None:
        """A URL where the job can be seen, if any (tables, events)."""
        return None

    async def aclose(self) -> None:
        """Release what the adapter holds (connection pools); the default holds nothing."""

    async def __aenter__(self) -> "RemoteJobAdapter":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@dataclass(frozen=True)
class WatchPolicy:
    """How to wait: polls 1, 2, 4 … 10 s apart (sooner where progress says so);
    errors back off 1, 2, 4 … 60 s, at most 10 in a row; a week at most.

    `request_budget` (seconds, off by default) caps the status requests per job at
    what a fixed loop would spend that looks at once and then every
    `request_budget` seconds (owslib's `monitorExecution(sleepSecs=…)`): the
    pacer never sends more, it only places them better. A service whose peers
    expect that loop's load (WPS) sets it; bulk polling (DIRAC) needs no cap.
    """

    first_interval: float = 1.0
    backoff_factor: float = 2.0
    max_interval: float = 10.0
    deadline: float | None = 7 * 24 * 3600.0
    error_backoff: float = 1.0
    max_error_backoff: float = 60.0
    max_consecutive_errors: int = 10
    max_credential_renewals: int = 3
    progress_every: float = 2.0
    request_budget: float | None = None

    def __post_init__(self) -> None:
        if self.first_interval <= 0 or self.max_interval < self.first_interval:
            raise ValueError("WatchPolicy: need 0 < first_interval <= max_interval")
        if self.backoff_factor < 1:
            raise ValueError("WatchPolicy: backoff_factor must be >= 1")
        if self.deadline is not None and self.deadline <= 0:
            raise ValueError("WatchPolicy: deadline must be positive (seconds) or None")
        if self.request_budget is not None and self.request_budget <= 0:
            raise ValueError("WatchPolicy: request_budget must be positive (seconds) or None")


class Pacer:
    """When to poll next.

    Geometric backoff from `first_interval` to `max_interval`, back to the start
    when a job changes state; learning a job's first state is not a change.

    A running job that reports progress is bracketed instead of guessed: if it
    progresses linearly from the start of the watch in steps of at most `d`
    (the smallest increase seen), then seeing p % at time t means it ends no
    later than t·100/p and, while it still shows p, no sooner than t·100/(p+d).
    Every poll narrows that window. Once the window is within the latency we
    aim for (0.5 s, or 10 % of the runtime for long jobs) the pacer polls at its
    end — detection is then at most that late; until then it probes inside the
    window, which either finds the job finished or narrows it again. A job whose
    progress contradicts the model (resumed watches, bursty algorithms) falls
    back to plain backoff.

    Under a `request_budget` of P seconds, a fixed loop looks at 0, P, 2P … and
    so spends 1 + ⌈T/P⌉ requests on a job that ends at T. The n-th look at time t
    may be followed by one more (the one that sees the end), so it fits if
    n ≤ ⌊t/P⌋ + 1: a probe that comes earlier is moved to that time — or, if
    that is past the window, replaced by the poll at the window's end. Only
    progress that runs ahead of the truth can make that last poll miss the end,
    and so cost one look more.
    """

    #: where inside an unresolved window to probe (0 = its start, 1 = its end)
    PROBE = 0.45
    ABSOLUTE_TOLERANCE = 0.5
    RELATIVE_TOLERANCE = 0.1

    def __init__(self, policy: WatchPolicy, now: float):
        self.policy = policy
        self.started = now
        self.backoff = policy.first_interval
        self.looks = 1  # status polls answered so far (the first one precedes the first question)
        # per job: progress value → (first time seen, last time seen)
        self.sightings: dict[str, dict[float, tuple[float, float]]] = {}

    def next_interval(self, now: float, changes: Sequence[tuple[JobStatus, JobStatus]],
                      pending: Mapping[str, JobStatus] | None = None) -> float:
        policy = self.policy
        pending = pending or {}
        for status in pending.values():
            self._sight(status, now)
        state_changed = any(new.state != old.state and old.state is not JobState.SUBMITTED
                            for old, new in changes)
        affordable = self._affordable_from()
        plans = [at for at in (self._plan(job_id, now, affordable) for job_id in pending) if at is not None]
        self.looks += 1  # the poll this interval leads to
        if plans:
            self.backoff = policy.first_interval  # once a window has passed, poll fast
            # the cap may bring a look forward, but not before the budget affords it
            return min(max(min(plans) - now, 0.05), max(policy.max_interval, affordable - now))
        if state_changed:
            self.backoff = policy.first_interval
        interval = self.backoff
        self.backoff = min(self.backoff * policy.backoff_factor, policy.max_interval)
        return max(interval, affordable - now)

    def _affordable_from(self) -> float:
        """The earliest time the next poll fits the request budget even if it is not the last."""
        budget = self.policy.request_budget
        return float("-inf") if budget is None else self.started + budget * self.looks

    def _sight(self, status: JobStatus, now: float) -> None:
        if status.state is not JobState.RUNNING or status.progress is None:
            self.sightings.pop(status.job_id, None)
            return
        seen = self.sightings.setdefault(status.job_id, {})
        first, _ = seen.get(status.progress, (now, now))
        seen[status.progress] = (first, now)

    def end_window(self, job_id: str) -> tuple[float, float] | None:
        """Earliest and latest end consistent with the progress seen, or None."""
        seen = self.sightings.get(job_id)
        values = sorted(p for p in seen or () if 0 < p < 100)
        if not seen or not values:
            return None
        step = min(b - a for a, b in zip([0.0, *values], values))
        earliest, latest = 0.0, float("inf")
        for progress, (first, last) in seen.items():
            earliest = max(earliest, (last - self.started) * 100.0 / min(100.0, progress + step))
            if progress > 0:
                latest = min(latest, (first - self.started) * 100.0 / progress)
        if earliest > latest:
            return None
        return self.started + earliest, self.started + latest

    def _plan(self, job_id: str, now: float, affordable: float) -> float | None:
        """When to look at this job next, or None if its progress gives no window."""
        window = self.end_window(job_id)
        if window is None or window[1] <= now:
            return None
        earliest, latest = max(window[0], now), window[1]
        at_end = latest + 0.02  # land just after it
        tolerance = max(self.ABSOLUTE_TOLERANCE, self.RELATIVE_TOLERANCE * (earliest - self.started))
        if latest - earliest <= tolerance:
            return at_end
        probe = max(earliest + self.PROBE * (latest - earliest), affordable)
        return probe if probe < latest else at_end


class WatchReporter:
    """Hears what the loop sees. This base only logs; `PrefectReporter` adds the UI."""

    def __init__(self, adapter: RemoteJobAdapter, log: logging.Logger | logging.LoggerAdapter | None = None):
        self.adapter = adapter
        self.log = log or logger

    async def started(self, statuses: Mapping[str, JobStatus]) -> None:
        self.log.info("Watching %d %s job(s)", len(statuses), self.adapter.service)

    async def transition(self, old: JobStatus | None, new: JobStatus) -> None:
        before = old.state.value if old else "new"
        text = f" — {new.message}" if new.message else ""
        self.log.info("%s job %s: %s → %s%s", self.adapter.service, self.adapter.job_label(new.job_id),
                      before, new.state.value, text)

    async def progress(self, statuses: Mapping[str, JobStatus], force: bool = False) -> None:
        pass

    async def trouble(self, problem: str, delay: float) -> None:
        self.log.warning("%s status request failed (%s); retrying in %.1f s", self.adapter.service, problem, delay)

    async def finished(self, statuses: Mapping[str, JobStatus]) -> None:
        counts = summarise(statuses.values())
        self.log.info("%s jobs done: %s", self.adapter.service, ", ".join(f"{n} {s}" for s, n in counts.items()))


def summarise(statuses: Any) -> dict[str, int]:
    """Count jobs per state, in the state set's order."""
    counts = {state.value: 0 for state in JobState}
    for status in statuses:
        counts[status.state.value] += 1
    return {state: n for state, n in counts.items() if n}


def overall_progress(statuses: Mapping[str, JobStatus]) -> float:
    """Mean progress: finished jobs count 100, jobs without progress 0."""
    if not statuses:
        return 100.0
    total = 0.0
    for status in statuses.values():
        total += 100.0 if status.state.terminal else float(status.progress or 0.0)
    return round(total / len(statuses), 1)


async def watch(
    adapter: RemoteJobAdapter,
    job_ids: Sequence[str],
    policy: WatchPolicy | None = None,
    reporter: WatchReporter | None = None,
    *,
    sleep: Any = asyncio.sleep,
    clock: Any = time.monotonic,
) -> dict[str, JobStatus]:
    """Wait until every job is finished; return their final statuses.

    Raises `WatchDeadlineExceeded` or `WatchGaveUp` (with the last statuses) —
    the remote jobs are NOT cancelled by that; the caller decides.
    """
    policy = policy or adapter.default_policy or WatchPolicy()
    reporter = reporter or WatchReporter(adapter)
    ids = list(dict.fromkeys(str(i) for i in job_ids))
    statuses: dict[str, JobStatus] = {i: JobStatus(i, JobState.SUBMITTED) for i in ids}
    started = clock()
    deadline = started + policy.deadline if policy.deadline else None
    pacer = Pacer(policy, started)
    errors = renewals = 0
    await reporter.started(statuses)
    await sleep(policy.first_interval)  # the jobs were just submitted (or are being resumed)

    while True:
        pending = [i for i in ids if not statuses[i].state.terminal]
        if not pending:
            break
        try:
            answer = await adapter.poll(pending)
        except Exception as exc:  # classified below; anything unknown is fatal
            kind = classify(exc)
            if kind is None:
                raise
            errors += 1
            if kind is CredentialsRejected:
                renewals += 1
                renewed = await adapter.renew_credentials()
                if renewals > policy.max_credential_renewals or not renewed and renewals > 1:
                    raise WatchGaveUp(
                        f"{adapter.service} rejected the credentials (HTTP 401) {renewals} times while waiting; "
                        f"{'renewing them did not help' if renewed else 'they cannot be renewed'} — check that "
                        "the token is still valid. The jobs may still be running.", statuses, transient=False) from None
            if errors >= policy.max_consecutive_errors:
                raise WatchGaveUp(
                    f"{adapter.service} status requests failed {errors} times in a row; last: {describe(exc)}. "
                    "The jobs may still be running; watch them again later.", statuses) from None
            delay = min(policy.error_backoff * 2 ** (errors - 1), policy.max_error_backoff)
            await reporter.trouble(describe(exc), delay)
            if deadline is not None and clock() + delay > deadline:
                raise WatchDeadlineExceeded(_deadline_text(adapter, policy, statuses), statuses) from None
            await sleep(delay)
            continue

        errors = renewals = 0
        changes: list[tuple[JobStatus, JobStatus]] = []
        for job_id in pending:
            new = answer.get(job_id)
            if new is None:
                continue
            old = statuses[job_id]
            if not new.same_as(old):
                changes.append((old, new))
                if new.state != old.state:
                    await reporter.transition(old, new)
                statuses[job_id] = new
        await reporter.progress(statuses)
        if all(statuses[i].state.terminal for i in ids):
            break
        interval = pacer.next_interval(
            clock(), changes, {i: statuses[i] for i in ids if not statuses[i].state.terminal})
        if deadline is not None and clock() >= deadline:
            raise WatchDeadlineExceeded(_deadline_text(adapter, policy, statuses), statuses)
        if deadline is not None:
            interval = max(0.0, min(interval, deadline - clock()))
        await sleep(interval)

    await reporter.progress(statuses, force=True)
    await reporter.finished(statuses)
    return statuses


def _deadline_text(adapter: RemoteJobAdapter, policy: WatchPolicy, statuses: Mapping[str, JobStatus]) -> str:
    waiting = [adapter.job_label(s.job_id) for s in statuses.values() if not s.state.terminal]
    return (f"gave up waiting for {len(waiting)} {adapter.service} job(s) after the {policy.deadline:.0f} s deadline: "
            f"{', '.join(waiting[:10])}{' …' if len(waiting) > 10 else ''}. They may still be running.")


class WatchClosed(Exception):
    """The shared watch was closed (its process is stopping) before the job ended."""


class SharedWatch:
    """One bulk poll per cycle for a set of jobs that changes while it runs.

    `watch` waits for one batch; a long-lived process that starts jobs one at a time
    (the `dirac` worker: one job per flow run) needs the same loop shared by all of
    them: `add(job_id)` returns a future that resolves with the job's final status, and
    every cycle asks the service about ALL pending jobs in one `adapter.poll` — never one
    loop (and one request per cycle) per job. Pacing is the `Pacer`'s; a newly added job
    is looked at after `policy.first_interval` (jobs added meanwhile join that poll).

    Failures never end it: transient ones and unknown ones back off exactly as in
    `watch` (up to `policy.max_error_backoff`), a 401 renews the credentials first;
    a long-running process must not stop watching its jobs because the service was
    away for a while. `cycles` and `last_error` say what it did.
    """

    def __init__(self, adapter: RemoteJobAdapter, policy: WatchPolicy | None = None,
                 reporter: WatchReporter | None = None, *, sleep: Any = asyncio.sleep,
                 clock: Any = time.monotonic):
        self.adapter = adapter
        self.policy = policy or adapter.default_policy or WatchPolicy()
        self.reporter = reporter or WatchReporter(adapter)
        self.sleep, self.clock = sleep, clock
        self.statuses: dict[str, JobStatus] = {}
        self.cycles = 0  # bulk polls sent
        self.last_error: str | None = None
        self._waiters: dict[str, list[asyncio.Future[JobStatus]]] = {}
        self._added = asyncio.Event()

    def add(self, job_id: str | int) -> "asyncio.Future[JobStatus]":
        """Watch a job (again); the future resolves with its final status."""
        job = str(job_id)
        future: asyncio.Future[JobStatus] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job, []).append(future)
        self.statuses.setdefault(job, JobStatus(job, JobState.SUBMITTED))
        self._added.set()
        return future

    def close(self) -> None:
        """Stop for good: every waiter gets `WatchClosed` (cancel the `run` task too)."""
        for job, futures in list(self._waiters.items()):
            for future in futures:
                if not future.done():
                    future.set_exception(WatchClosed(f"stopped watching job {job}"))
        self._waiters.clear()

    def forget(self, job_id: str | int) -> None:
        """Stop watching a job; its waiters are cancelled."""
        for future in self._waiters.pop(str(job_id), []):
            future.cancel()
        self.statuses.pop(str(job_id), None)

    @property
    def pending(self) -> list[str]:
        return [job for job in self._waiters if not self.statuses[job].state.terminal]

    async def run(self) -> None:
        """Poll until cancelled."""
        policy = self.policy
        pacer = Pacer(policy, self.clock())
        errors = renewals = 0
        interval = policy.first_interval
        while True:
            if not self.pending:
                self._added.clear()
                await self._added.wait()
                await self.sleep(policy.first_interval)  # just submitted; let the others of this moment join
            elif await self._rest(interval):
                await self.sleep(policy.first_interval)
            pending = self.pending
            if not pending:
                continue
            self.cycles += 1
            try:
                answer = await self.adapter.poll(pending)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                errors += 1
                kind = classify(exc)
                if kind is CredentialsRejected and renewals < policy.max_credential_renewals:
                    renewals += 1
                    await self.adapter.renew_credentials()
                interval = min(policy.error_backoff * 2 ** (errors - 1), policy.max_error_backoff)
                self.last_error = describe(exc)
                await self.reporter.trouble(self.last_error if kind else f"unexpected: {self.last_error}", interval)
                continue
            errors = renewals = 0
            self.last_error = None
            changes = await self._apply(pending, answer)
            interval = pacer.next_interval(self.clock(), changes, {j: self.statuses[j] for j in self.pending})

    async def _rest(self, interval: float) -> bool:
        """Sleep `interval`, or less when a job is added meanwhile (True then)."""
        self._added.clear()
        try:
            await asyncio.wait_for(self._added.wait(), interval)
            return True
        except asyncio.TimeoutError:
            return False

    async def _apply(self, pending: Sequence[str], answer: Mapping[str, JobStatus]
                     ) -> list[tuple[JobStatus, JobStatus]]:
        changes: list[tuple[JobStatus, JobStatus]] = []
        for job in pending:
            new = answer.get(job)
            old = self.statuses.get(job)
            if new is None or old is None or new.same_as(old):
                continue
            changes.append((old, new))
            self.statuses[job] = new
            if new.state != old.state:
                await self.reporter.transition(old, new)
            if new.state.terminal:
                for future in self._waiters.pop(job, []):
                    if not future.done():
                        future.set_result(new)
                self.statuses.pop(job, None)
        return changes
