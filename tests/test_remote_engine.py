"""The wait loop's arithmetic, with a scripted adapter and a virtual clock (the
HTTP behaviour is tested against the real peers in the service tests)."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest

from prefect_egi.tasks import (
    JobState,
    JobStatus,
    RemoteJobAdapter,
    WatchDeadlineExceeded,
    WatchGaveUp,
    WatchPolicy,
    watch,
)
from prefect_egi.tasks.remote import overall_progress


class VirtualTime:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 4))
        self.now += seconds


class Scripted(RemoteJobAdapter):
    """Answers each poll from a script: a list of {job: state} dicts or exceptions."""

    service = "scripted"

    def __init__(self, script, renewable=True):
        self.script = list(script)
        self.polls: list[list[str]] = []
        self.renewals = 0
        self.renewable = renewable

    async def poll(self, job_ids):
        self.polls.append(list(job_ids))
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, BaseException):
            raise step
        return {j: JobStatus(j, JobState(step[j][0]), step[j][1]) for j in job_ids if j in step}

    async def cancel(self, job_ids):
        return {j: JobStatus(j, JobState.CANCELLED) for j in job_ids}

    async def renew_credentials(self) -> bool:
        self.renewals += 1
        return self.renewable


def run(adapter, policy, ids=("a",)):
    time = VirtualTime()
    result = asyncio.run(watch(adapter, list(ids), policy, sleep=time.sleep, clock=time.clock))
    return result, time


def http_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://svc/status")
    return httpx.HTTPStatusError("x", request=request, response=httpx.Response(code, request=request))


def test_interval_backs_off_to_the_cap():
    script = [{"a": ("running", None)}] * 5 + [{"a": ("succeeded", None)}]
    _, time = run(Scripted(script), WatchPolicy(first_interval=0.5, backoff_factor=2, max_interval=4))
    assert time.sleeps == [0.5, 0.5, 1.0, 2.0, 4.0, 4.0]


def test_a_state_change_makes_polling_fast_again():
    script = [{"a": ("queued", None)}] * 3 + [{"a": ("running", None)}] * 2 + [{"a": ("succeeded", None)}]
    _, time = run(Scripted(script), WatchPolicy(first_interval=0.5, backoff_factor=2, max_interval=4))
    assert time.sleeps == [0.5, 0.5, 1.0, 2.0, 0.5, 1.0]


class Stepping(RemoteJobAdapter):
    """A job of `duration` virtual seconds reporting progress in 20 % steps."""

    service = "stepping"

    def __init__(self, time: "VirtualTime", duration: float):
        self.time, self.duration, self.polls = time, duration, 0

    async def poll(self, job_ids):
        self.polls += 1
        t = self.time.now
        if t >= self.duration:
            return {j: JobStatus(j, JobState.SUCCEEDED, 100) for j in job_ids}
        return {j: JobStatus(j, JobState.RUNNING, 20 * int(5 * t / self.duration)) for j in job_ids}

    async def cancel(self, job_ids):
        return {}


@pytest.mark.parametrize("duration", [2.0, 7.0, 10.0, 30.0, 120.0, 600.0])
def test_progress_is_extrapolated_to_poll_near_the_end(duration):
    """Detection at most 1 s late (10 % of the runtime for long jobs), with about as many
    polls as owslib's fixed 5 s sleep (duration/5 + 1) for short jobs and far fewer for long ones;
    a 10 s job is seen ending within 0.5 s in 5 polls."""
    time = VirtualTime()
    adapter = Stepping(time, duration)
    asyncio.run(watch(adapter, ["a"], WatchPolicy(), sleep=time.sleep, clock=time.clock))
    assert time.now - duration <= max(1.0, 0.1 * duration)
    assert adapter.polls <= duration / 5 + 3
    if duration >= 120:
        assert adapter.polls <= 0.75 * (duration / 5 + 1)
    if duration == 10.0:
        assert time.now - duration <= 0.5 and adapter.polls <= 5


class Delayed(RemoteJobAdapter):
    """A job that starts `delay` s after the watch, runs `duration` s and reports
    progress in `steps` equal steps (None: no progress at all); with `rush` > 1 the
    progress runs that much ahead and then sits on its last step (a lying job)."""

    service = "delayed"

    def __init__(self, time: "VirtualTime", duration: float, delay: float, steps: int | None, rush: float = 1.0):
        self.time, self.duration, self.delay, self.steps, self.rush, self.polls = time, duration, delay, steps, rush, 0

    @property
    def end(self) -> float:
        return self.delay + self.duration

    async def poll(self, job_ids):
        self.polls += 1
        t = self.time.now
        if t >= self.end:
            return {j: JobStatus(j, JobState.SUCCEEDED, 100) for j in job_ids}
        done = self.rush * max(0.0, t - self.delay) / self.duration
        progress = None if self.steps is None else 100 * min(self.steps - 1, int(done * self.steps)) // self.steps
        return {j: JobStatus(j, JobState.RUNNING, progress) for j in job_ids}

    async def cancel(self, job_ids):
        return {}


def fixed_loop_requests(end: float, every: float) -> int:
    """owslib's monitorExecution(sleepSecs=every): a look at once, then one every `every` s."""
    return 1 + math.ceil(end / every)


@pytest.mark.parametrize("steps", [None, 4, 5, 20, 100])
def test_a_request_budget_never_sends_more_than_the_fixed_loop(steps):
    """Over job lengths from 1.5 to 100 s and start delays up to 1 s, with or without
    progress: never a request more than owslib's 5 s loop would send. Progress that
    runs ahead of the truth can cost one: the look at the end of a window the job
    did not end in."""
    cases = [(duration, delay, rush, policy)
             for duration in [1.5 * 1.13 ** i for i in range(35)]
             for delay, rush in ((0.0, 1.0), (0.3, 1.0), (1.0, 1.0), (0.1, 2.0), (0.1, 5.0))
             for policy in (WatchPolicy(first_interval=2.0, request_budget=5.0),  # DataMiner's
                            WatchPolicy(first_interval=0.5, max_interval=1.0, request_budget=5.0))]
    for duration, delay, rush, policy in cases:
        time = VirtualTime()
        adapter = Delayed(time, duration, delay, steps, rush)
        asyncio.run(watch(adapter, ["a"], policy, sleep=time.sleep, clock=time.clock))
        lies = rush > 1
        assert adapter.polls <= fixed_loop_requests(adapter.end, 5.0) + lies, (duration, delay, rush, policy)
        assert time.now >= adapter.end


@pytest.mark.parametrize(("duration", "polls", "late"), [(2.0, 2, 0.5), (30.0, 8, 3.0), (120.0, 25, 12.0)])
def test_within_the_budget_progress_still_places_the_look_near_the_end(duration, polls, late):
    """2 s in 20 % steps: seen within 0.5 s in 2 requests (owslib: 2, 2.9 s late)."""
    time = VirtualTime()
    adapter = Delayed(time, duration, 0.1, 5)
    asyncio.run(watch(adapter, ["a"], WatchPolicy(first_interval=2.0, request_budget=5.0),
                      sleep=time.sleep, clock=time.clock))
    assert time.now - adapter.end <= late
    assert adapter.polls <= min(polls, fixed_loop_requests(adapter.end, 5.0))


def test_progress_that_stalls_falls_back_to_backoff_instead_of_a_busy_loop():
    """Stuck at 80 % for ten minutes: the end window passes, then polls back off to the cap."""
    time = VirtualTime()
    script = [{"a": ("running", 0)}, {"a": ("running", 20)}, {"a": ("running", 40)}] + [{"a": ("running", 80)}] * 200

    class Stalled(Scripted):
        async def poll(self, job_ids):
            if time.now > 600:
                return {"a": JobStatus("a", JobState.SUCCEEDED, 100)}
            return await super().poll(job_ids)

    adapter = Stalled(script)
    asyncio.run(watch(adapter, ["a"], WatchPolicy(), sleep=time.sleep, clock=time.clock))
    assert len(adapter.polls) <= 600 / 10 + 15
    assert min(time.sleeps) >= 0.05
    assert time.sleeps[-20:] == [10.0] * 20


def test_polls_are_bulk_and_only_for_unfinished_jobs():
    script = [{"a": ("running", None), "b": ("queued", None)},
              {"a": ("succeeded", None), "b": ("running", None)},
              {"b": ("failed", None)}]
    adapter = Scripted(script)
    final, _ = run(adapter, WatchPolicy(), ids=("a", "b", "a"))
    assert adapter.polls == [["a", "b"], ["a", "b"], ["b"]]
    assert {j: s.state for j, s in final.items()} == {"a": JobState.SUCCEEDED, "b": JobState.FAILED}


def test_transient_errors_back_off_exponentially_then_give_up():
    adapter = Scripted([http_error(503)])
    with pytest.raises(WatchGaveUp, match="failed 5 times in a row; last: HTTP 503") as caught:
        run(adapter, WatchPolicy(error_backoff=1, max_error_backoff=4, max_consecutive_errors=5))
    assert caught.value.transient
    assert len(adapter.polls) == 5


def test_errors_are_absorbed_and_the_count_resets_on_success():
    done = {"a": ("succeeded", 100)}
    script = [httpx.ConnectError("reset"), httpx.ReadTimeout("slow"), http_error(502), {"a": ("running", None)},
              httpx.ConnectError("reset"), done]
    final, time = run(Scripted(script), WatchPolicy(first_interval=0.5, error_backoff=1, max_consecutive_errors=4))
    assert final["a"].state is JobState.SUCCEEDED
    assert time.sleeps == [0.5, 1, 2, 4, 0.5, 1]


def test_401_renews_credentials_and_continues():
    adapter = Scripted([http_error(401), {"a": ("succeeded", 100)}])
    final, _ = run(adapter, WatchPolicy(error_backoff=0.1))
    assert final["a"].state is JobState.SUCCEEDED and adapter.renewals == 1


def test_401_that_cannot_be_renewed_fails_after_one_retry():
    adapter = Scripted([http_error(401)], renewable=False)
    with pytest.raises(WatchGaveUp, match="cannot be renewed") as caught:
        run(adapter, WatchPolicy(error_backoff=0.1))
    assert not caught.value.transient and len(adapter.polls) == 2


def test_deadline():
    adapter = Scripted([{"a": ("running", 5)}])
    with pytest.raises(WatchDeadlineExceeded, match="after the 30 s deadline: a. They may still be running") as caught:
        run(adapter, WatchPolicy(first_interval=1, max_interval=5, deadline=30))
    assert caught.value.statuses["a"].state is JobState.RUNNING


def test_unknown_errors_are_not_swallowed():
    with pytest.raises(ZeroDivisionError):
        run(Scripted([ZeroDivisionError()]), WatchPolicy())


def test_overall_progress_counts_finished_jobs_as_done():
    statuses = {"a": JobStatus("a", JobState.FAILED), "b": JobStatus("b", JobState.RUNNING, 50),
                "c": JobStatus("c", JobState.QUEUED)}
    assert overall_progress(statuses) == 50.0


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError, match="first_interval"):
        WatchPolicy(first_interval=0)
    with pytest.raises(ValueError, match="deadline"):
        WatchPolicy(deadline=-1)
    with pytest.raises(ValueError, match="request_budget"):
        WatchPolicy(request_budget=0)


# -- SharedWatch: the `dirac` worker's one loop for the jobs of all its flow runs


class Live(RemoteJobAdapter):
    """Answers from a mutable table {job: state}; records every poll's ids."""

    service = "live"

    def __init__(self):
        self.table: dict[str, str] = {}
        self.polls: list[list[str]] = []
        self.fail_next: list[BaseException] = []

    async def poll(self, job_ids):
        self.polls.append(sorted(job_ids))
        if self.fail_next:
            raise self.fail_next.pop(0)
        return {j: JobStatus(j, JobState(self.table[j])) for j in job_ids if j in self.table}

    async def cancel(self, job_ids):
        return {}


def test_shared_watch_polls_every_pending_job_in_one_request_and_resolves_each():
    from prefect_egi.tasks.remote import SharedWatch

    async def scenario():
        adapter = Live()
        shared = SharedWatch(adapter, WatchPolicy(first_interval=0.01, max_interval=0.02))
        loop = asyncio.create_task(shared.run())
        futures = {}
        for job in ("1", "2", "3"):
            adapter.table[job] = "running"
            futures[job] = shared.add(job)
        while not adapter.polls:
            await asyncio.sleep(0.005)
        adapter.table["2"] = "succeeded"
        assert (await futures["2"]).state is JobState.SUCCEEDED
        adapter.table["4"] = "queued"
        futures["4"] = shared.add("4")  # joins while the others are watched
        n = len(adapter.polls)
        while len(adapter.polls) < n + 2:
            await asyncio.sleep(0.005)
        for job in ("1", "3", "4"):
            adapter.table[job] = "failed" if job == "3" else "succeeded"
        results = {job: (await future).state for job, future in futures.items()}
        loop.cancel()
        return adapter, shared, results

    adapter, shared, results = asyncio.run(scenario())
    assert results == {"1": JobState.SUCCEEDED, "2": JobState.SUCCEEDED, "3": JobState.FAILED,
                       "4": JobState.SUCCEEDED}
    assert all(len(ids) == len(set(ids)) for ids in adapter.polls)
    assert ["1", "2", "3"] in adapter.polls  # one request held every pending job
    assert ["1", "3", "4"] in adapter.polls
    assert all("2" not in ids for ids in adapter.polls[adapter.polls.index(["1", "3", "4"]):])  # finished: not asked
    assert shared.cycles == len(adapter.polls) and not shared.pending


def test_shared_watch_outlives_errors_of_any_kind():
    """A worker must not stop following its runs because DiracX was away: transient and
    unknown failures alike back off and the loop goes on."""
    from prefect_egi.tasks.remote import SharedWatch

    async def scenario():
        adapter = Live()
        adapter.fail_next = [httpx.ConnectError("down"), RuntimeError("odd answer")]
        shared = SharedWatch(adapter, WatchPolicy(first_interval=0.01, max_interval=0.02, error_backoff=0.01))
        loop = asyncio.create_task(shared.run())
        adapter.table["7"] = "succeeded"
        status = await asyncio.wait_for(shared.add("7"), 10)
        loop.cancel()
        return adapter, status

    adapter, status = asyncio.run(scenario())
    assert status.state is JobState.SUCCEEDED and len(adapter.polls) == 3
