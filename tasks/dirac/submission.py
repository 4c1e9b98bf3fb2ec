"""Submitting a batch of JDLs to DiracX exactly once, over a network that loses answers.

A submit call is not idempotent and DiracX has no idempotency key, so a failed call
is sorted by what the failure proves:

- *not sent* (the connection never opened; azure-core's `ServiceRequestError`): safe to
  send again, after a backoff;
- *refused* (a 4xx, bad credentials): nothing was created, the error is final;
- *ambiguous* (reset, timeout, a lost answer, a 5xx from a gateway): the server may
  have created the jobs. Sending again could create them twice, so the batch asks the
  server instead: every job the batch creates carries a `JobGroup` (the user's, or one
  naming the flow run and the batch), and a search for those groups, the lost JDLs' job
  names and a submission time after the batch began finds what exists; only the JDLs
  without a created job are sent again. A retried flow run whose earlier attempt died
  mid-submission starts with that search too (`reconcile_first`). The search is for the
  submitter's own jobs only (Owner, OwnerGroup, VO): DiracX 0.7 shows every user's.

Reconciliation runs after every chunk has finished, one pass at a time, so a chunk
still in flight cannot be mistaken for a lost one; a short grace first lets a server
that is still committing a lost request finish. azure-core already resends a POST
answered 500/503/504 (a front that refused it), so those never reach us as ambiguous.

How many chunks are in flight at once adapts to the server (`SendWindow`): concurrency
hides network latency and feeds a server that works on calls in parallel, but a server
that serialises its writes only makes concurrent calls queue and contend.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from prefect_egi.tasks.faults import TransientServiceError

logger = logging.getLogger("prefect_egi.dirac")

MAX_JDLS_PER_CALL = 20  # DiracX refuses more in one submit_jdl_jobs call
CLOCK_MARGIN = timedelta(minutes=5)  # server and client clocks may differ; the group keeps batches apart
# (DiracX compares SubmissionTime in UTC and parses "YYYY-MM-DD HH:MM:SS", not ISO with an offset)


@dataclass(frozen=True)
class SubmitPolicy:
    """How hard to try: `attempts` sends per chunk, `passes` reconciliations, the grace before each."""

    attempts: int = 5
    backoff: float = 0.5
    passes: int = 4
    grace: float = 2.0

    def delay(self, attempt: int) -> float:
        return min(self.backoff * 2**attempt, 8.0)


class SendWindow:
    """How many submit calls may be in flight: starts at one, widens while more in flight
    do not make the server answer slower, narrows when they do — never beyond `maximum`.

    Why not a fixed number: concurrency pays when a call's time is spent on the network
    or in a server that handles calls in parallel (DiracX on MySQL behind several
    workers). A server that serialises its writes (DiracX on SQLite, as in the sandbox)
    makes every extra call in flight wait for the others, and their transactions contend
    for the database lock: 4 at a time took ~15 % longer there than one after the other.

    The estimate is TCP Vegas's: a call sent with `k` calls in flight (itself included)
    that took `latency` against the fastest call seen (`base`) found about
    `k * (1 - base / latency)` calls queued ahead of it. The window widens by one after
    a call that used the whole window and found (almost) no queue, narrows by one after
    a call that found one (once per change: the calls already sent with the larger
    window all found that queue), and then stays below that size until `REPROBE_AFTER`
    calm calls have passed (the server's load changes). Only the pacing changes: every
    chunk is still sent, and failed calls (whose latency says nothing) are not counted."""

    WIDEN_BELOW = 0.5  # queued calls at or below which the window may grow
    NARROW_ABOVE = 0.8  # queued calls at or above which it shrinks
    REPROBE_AFTER = 16  # calm calls before trying a size that queued before

    def __init__(self, maximum: int):
        self.maximum = max(1, maximum)
        self.size = 1
        self.in_flight = 0
        self._ceiling = self.maximum
        self._base = math.inf
        self._calm = 0
        self._sent = 0  # calls sent so far
        self._narrowed_at = 0  # calls sent when the window last narrowed
        self._changed: asyncio.Condition | None = None  # created in the running loop

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for room in the window, then hold it for one call."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < self.size)
            self.in_flight += 1
            sent_with = self.in_flight
            self._sent += 1
            number = self._sent
        started = time.monotonic()
        answered = False
        try:
            yield
            answered = True
        finally:
            async with self._changed:
                self.in_flight -= 1
                if answered:
                    self.observe(time.monotonic() - started, sent_with, number)
                self._changed.notify_all()

    def observe(self, latency: float, sent_with: int, number: int) -> None:
        """Adjust the window after call `number` answered in `latency` s, sent with `sent_with` in flight."""
        self._base = min(self._base, latency)
        queued = sent_with * (1 - self._base / latency) if latency > 0 else 0.0
        if queued >= self.NARROW_ABOVE:
            self._calm = 0
            if self.size > 1 and number > self._narrowed_at:
                self.size -= 1
                self._ceiling = self.size
                self._narrowed_at = self._sent
            return
        if queued > self.WIDEN_BELOW:
            return
        self._calm += 1
        if self._calm >= self.REPROBE_AFTER and self._ceiling < self.maximum:
            self._ceiling += 1
            self._calm = 0
        if sent_with >= self.size and self.size < self._ceiling:
            self.size += 1


class SubmissionIncomplete(Exception):
    """Some JDLs could not be submitted; `created` holds the ids of those that were."""

    def __init__(self, message: str, created: dict[int, int]):
        super().__init__(message)
        self.created = created


@dataclass
class _Batch:
    jdls: Sequence[str]
    since: datetime
    created: dict[int, int] = field(default_factory=dict)  # index in jdls -> job id
    lost: list[int] = field(default_factory=list)  # indices whose fate is unknown
    exclude: set[int] = field(default_factory=set)  # job ids never to adopt
    extra_requests: int = 0  # sends and searches beyond one send per chunk
    owner: dict[str, str] | None = None  # who the server says submits (Owner, OwnerGroup, VO), once asked

    def values(self, attribute: str, indices: Sequence[int]) -> list[str]:
        return sorted({jdl_attribute(self.jdls[i], attribute) for i in indices})


def refusal(exc: BaseException, jdls: Sequence[str]) -> str:
    """What the server said (its `detail`), and what to do when its words mislead."""
    try:
        detail = str(exc.response.json()["detail"])  # type: ignore[attr-defined]
    except Exception:
        return str(exc)
    if detail == "JDL syntax error" and any(jdl_attribute(jdl, "Platform") for jdl in jdls):
        detail += (" (DiracX 0.7 answers this to every JDL with a Platform, known to it or not: its platform "
                   "check fails; leave platform empty)")
    return f"HTTP {getattr(exc, 'status_code', '?')}: {detail}"


def jdl_attribute(jdl: str, attribute: str) -> str:
    """A string attribute of one of our rendered JDLs (one `Name = "value";` per line)."""
    for line in jdl.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == attribute:
            return value.strip().rstrip(";").strip().strip('"')
    return ""


def was_not_sent(exc: BaseException) -> bool:
    """The request provably never reached the server: the connection could not be opened.

    Not azure-core's `ServiceRequestError` as such: its aiohttp transport raises it for
    any aiohttp `ClientError`, including a connection reset after the request was sent;
    only the cause tells (aiohttp's connector errors, a connect timeout)."""
    import aiohttp

    connect_errors: tuple[type[BaseException], ...] = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
    try:
        import httpx2  # diracx-client's own requests (discovery, token refresh)
        connect_errors += (httpx2.ConnectError, httpx2.ConnectTimeout)
    except ImportError:  # pragma: no cover - diracx-client brings httpx2
        pass
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, connect_errors) or isinstance(getattr(seen, "inner_exception", None), connect_errors):
            return True
        seen = seen.__cause__
    return False


async def submit_exactly_once(api: Any, jdls: Sequence[str], *, concurrency: int,
                              classify: Callable[[BaseException], BaseException], reconcile_first: bool = False,
                              since: datetime | None = None, exclude: Sequence[int] = (),
                              policy: SubmitPolicy = SubmitPolicy()) -> tuple[list[int], int]:
    """Job ids in the order of `jdls`, and the number of extra requests it took.
    At most `concurrency` calls are in flight (fewer while the server queues them: `SendWindow`).
    Every JDL must carry a `JobGroup`; `exclude`: ids that belong to something else (e.g.
    the failed jobs a resubmission replaces, which share group and name). Raises `SubmissionIncomplete` when some JDLs still
    have no job after every pass (the created ones are in the exception)."""
    if any(not jdl_attribute(jdl, "JobGroup") for jdl in jdls):
        raise ValueError("every JDL needs a JobGroup: it is how a lost submission is found again")
    batch = _Batch(jdls, (since or datetime.now(timezone.utc)) - CLOCK_MARGIN, exclude=set(exclude))
    limit = SendWindow(concurrency)
    pending = list(range(len(jdls)))
    if reconcile_first:
        batch.lost = pending
        pending = await _reconcile(api, batch, classify, policy)
    for attempt in range(policy.passes + 1):
        chunks = [pending[i:i + MAX_JDLS_PER_CALL] for i in range(0, len(pending), MAX_JDLS_PER_CALL)]
        refused = [r for r in await asyncio.gather(*(_send(api, batch, c, limit, classify, policy) for c in chunks))
                   if r is not None]
        if refused:
            raise SubmissionIncomplete(f"DiracX refused the submission: {refusal(refused[0], jdls)}",
                                       batch.created) from refused[0]
        if not batch.lost:
            break
        if attempt == policy.passes:
            break
        await asyncio.sleep(policy.grace)
        pending = await _reconcile(api, batch, classify, policy)
        if not pending:
            break
    missing = [i for i in range(len(jdls)) if i not in batch.created]
    if missing:
        raise SubmissionIncomplete(
            f"{len(missing)} of {len(jdls)} DIRAC job(s) could not be confirmed after {policy.passes} "
            f"reconciliation(s); they were not sent again, to avoid duplicates", batch.created)
    return [batch.created[i] for i in range(len(jdls))], batch.extra_requests


async def _send(api: Any, batch: _Batch, chunk: list[int], limit: SendWindow,
                classify: Callable[[BaseException], BaseException], policy: SubmitPolicy) -> BaseException | None:
    """Send one chunk: ids recorded, or its indices marked lost; returns a final refusal, if any."""
    for attempt in range(policy.attempts):
        if attempt:
            batch.extra_requests += 1
            await asyncio.sleep(policy.delay(attempt - 1))
        try:
            async with limit.slot():
                inserted = await api.jobs.submit_jdl_jobs([batch.jdls[i] for i in chunk])
        except Exception as exc:
            if not isinstance(classify(exc), TransientServiceError):
                return classify(exc)
            if was_not_sent(exc):
                continue
            logger.warning("A DiracX submit call of %d job(s) failed after it may have reached the server "
                           "(%s); asking the server what it created before sending anything again",
                           len(chunk), type(exc).__name__)
            batch.lost += chunk
            return None
        batch.created.update(zip(chunk, (j.job_id for j in inserted)))
        return None
    batch.lost += chunk  # never sent: reconciliation will find nothing and send them again
    return None


async def _reconcile(api: Any, batch: _Batch, classify: Callable[[BaseException], BaseException],
                     policy: SubmitPolicy) -> list[int]:
    """Adopt the jobs the server created for lost JDLs (matched by group and name, in id order);
    the rest are to send."""
    lost, batch.lost = sorted(batch.lost), []
    known = set(batch.created.values()) | batch.exclude
    found = await _search_created(api, batch, lost, classify, policy)
    # (group, name as written) → ids in id order; a stored name holding its own id is indexed
    # by the name with `%j` back in its place, then checked exactly
    by_identity: dict[tuple[str, str], deque[int]] = defaultdict(deque)
    names: dict[int, str] = {}
    for row in sorted(found, key=lambda r: int(r["JobID"])):
        job_id, name = int(row["JobID"]), str(row.get("JobName", ""))
        if job_id in known:
            continue
        names[job_id] = name
        group = str(row.get("JobGroup", ""))
        by_identity[(group, name)].append(job_id)
        if str(job_id) in name:
            by_identity[(group, name.replace(str(job_id), "%j"))].append(job_id)
    adopted: set[int] = set()
    resend = []
    for index in lost:
        jdl = batch.jdls[index]
        group, name = jdl_attribute(jdl, "JobGroup"), jdl_attribute(jdl, "JobName")
        queue = by_identity.get((group, name), deque())
        while queue and (queue[0] in adopted or names[queue[0]] != stored_name(name, queue[0])):
            queue.popleft()  # adopted under its other key, or (a name with digits like its id) not this one
        if queue:
            batch.created[index] = job = queue.popleft()
            adopted.add(job)
        else:
            resend.append(index)
    logger.info("Reconciled %d lost DIRAC submission(s): %d created by the server, %d to send again",
                len(lost), len(lost) - len(resend), len(resend))
    return resend


def stored_name(name: str, job_id: int) -> str:
    """The JobName DiracX stores for `name`: it replaces `%j` with the job's id."""
    return name.replace("%j", str(job_id))


async def _search_created(api: Any, batch: _Batch, lost: list[int],
                          classify: Callable[[BaseException], BaseException], policy: SubmitPolicy) -> list[dict]:
    """The jobs the submitter created in the batch's groups since it began.

    Only the submitter's own (Owner, OwnerGroup and VO, as the server names them for our
    token): DiracX 0.7 shows a normal user the jobs of every user and VO, and somebody
    else's job of the same group and name must never be adopted. A JobName with `%j` is
    stored with the job's id in it, so those names are matched after the search."""
    names = batch.values("JobName", lost)
    for attempt in range(policy.attempts):
        batch.extra_requests += 1
        try:
            if batch.owner is None:
                me = await api.auth.userinfo()
                batch.owner = {"Owner": me.preferred_username, "OwnerGroup": me.dirac_group, "VO": me.vo}
                batch.extra_requests += 1
            conditions = [
                {"parameter": "JobGroup", "operator": "in", "values": batch.values("JobGroup", lost)},
                {"parameter": "SubmissionTime", "operator": "gt",
                 "value": batch.since.strftime("%Y-%m-%d %H:%M:%S")},
                *({"parameter": attribute, "operator": "eq", "value": value} for attribute, value in batch.owner.items()),
            ]
            if not any("%j" in name for name in names):
                conditions.append({"parameter": "JobName", "operator": "in", "values": names})
            return list(await api.jobs.search(
                parameters=["JobID", "JobGroup", "JobName", "Owner", "OwnerGroup", "VO"], search=conditions,
                page=1, per_page=10_000))
        except Exception as exc:
            if not isinstance(classify(exc), TransientServiceError) or attempt == policy.attempts - 1:
                raise classify(exc) from None
            await asyncio.sleep(policy.delay(attempt))
    raise AssertionError("unreachable")
