"""The engine's pacing over many simulated WPS jobs, against owslib's 5 s loop.

    python tests/benchmarks/sim_pacing.py [--jobs 2000] [--seed 7] [--json PATH]

`bench_dataminer.py` measures a handful of job lengths against the real peer;
each is one draw of luck (where a job's end falls between two polls). This runs
the real `prefect_egi.tasks.remote.watch` loop — its `Pacer`, unchanged — on a virtual clock
against a model job, so thousands of jobs can be compared with owslib's
`monitorExecution(sleepSecs=5)` (a status request at once, then one every 5 s):
- each job runs T seconds (log-uniform over 1.5–300 s), starts 0–0.3 s after
  Execute returned and reports progress in equal steps (4, 5, 10, 20 or 100 of
  them), as DataMiner algorithms do when they report any; a status request
  takes 4 ms;
- per job: status requests and detection latency (end seen − end) on each side.
Targets of issue 3: median latency ≤ 0.5 s over the jobs up to 10 s and ≤ 10 %
of the runtime beyond; no more status requests than owslib. Printed by job
length: the requests, the median latency, and how often each target holds job by
job; then the two groups the targets speak of. No wall-clock time is spent waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


from prefect_egi.tasks import DATAMINER_WAIT, JobState, JobStatus, RemoteJobAdapter, watch

REQUEST_SECONDS = 0.004
OWSLIB_SLEEP = 5.0
BANDS = ((0, 3), (3, 10), (10, 30), (30, 100), (100, 301))


@dataclass(frozen=True)
class Job:
    seconds: float  # how long it computes
    delay: float    # from Execute's answer to its start
    steps: int      # progress reports: 0, 100/steps, … (steps-1)·100/steps

    @property
    def end(self) -> float:
        return self.delay + self.seconds

    def progress(self, at: float) -> float | None:
        """The progress a status request at `at` reads; None once finished."""
        if at >= self.end:
            return None
        done = max(0.0, at - self.delay) / self.seconds
        return 100.0 * min(self.steps - 1, math.floor(done * self.steps)) / self.steps


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


class ModelAdapter(RemoteJobAdapter):
    """One simulated job, read through the engine's adapter interface."""

    service = "simulated WPS"

    def __init__(self, job: Job, clock: VirtualClock):
        self.job, self.clock, self.requests, self.seen_end = job, clock, 0, None

    async def poll(self, job_ids: Sequence[str]) -> Mapping[str, JobStatus]:
        self.requests += 1
        self.clock.now += REQUEST_SECONDS
        progress = self.job.progress(self.clock.now)
        if progress is None:
            self.seen_end = self.clock.now
            return {job_ids[0]: JobStatus(job_ids[0], JobState.SUCCEEDED, 100.0)}
        return {job_ids[0]: JobStatus(job_ids[0], JobState.RUNNING, progress)}

    async def cancel(self, job_ids: Sequence[str]) -> Mapping[str, JobStatus]:
        raise NotImplementedError


def ours(job: Job) -> tuple[int, float]:
    clock = VirtualClock()
    adapter = ModelAdapter(job, clock)
    asyncio.run(watch(adapter, ["job"], DATAMINER_WAIT, sleep=clock.sleep, clock=clock))
    return adapter.requests, adapter.seen_end - job.end


def owslib(job: Job) -> tuple[int, float]:
    """monitorExecution: checkStatus at once, then after every sleepSecs."""
    now, requests = 0.0, 0
    while True:
        requests += 1
        now += REQUEST_SECONDS
        if now >= job.end:
            return requests, now - job.end
        now += OWSLIB_SLEEP


def target_groups(seconds: Sequence[float], ours: Sequence[tuple[float, int]],
                  owslib: Sequence[tuple[float, int]], baseline: str = "owslib") -> dict[str, dict]:
    """The two groups issue 3's targets speak of — jobs up to 10 s (median latency
    ≤ 0.5 s) and beyond (median latency ≤ 10 % of the runtime) — from each job's
    length and (latency, status requests) on each side. Shared with bench_dataminer
    and bench_ccp; `baseline` names the other side in the keys (`owslib_requests`, …)."""
    groups = {}
    for name, keep in (("up to 10 s", lambda s: s <= 10), ("beyond 10 s", lambda s: s > 10)):
        picked = [i for i, s in enumerate(seconds) if keep(s)]
        if not picked:
            continue
        groups[name] = {
            "jobs": len(picked),
            "ours_median_latency_s": statistics.median(ours[i][0] for i in picked),
            f"{baseline}_median_latency_s": statistics.median(owslib[i][0] for i in picked),
            "ours_median_share": statistics.median(ours[i][0] / seconds[i] for i in picked),
            f"{baseline}_median_share": statistics.median(owslib[i][0] / seconds[i] for i in picked),
            "ours_requests": sum(ours[i][1] for i in picked),
            f"{baseline}_requests": sum(owslib[i][1] for i in picked),
            "requests_ok": sum(ours[i][1] <= owslib[i][1] for i in picked) / len(picked),
        }
    return groups


def describe_groups(groups: dict[str, dict], baseline: str = "owslib", label: str | None = None) -> list[str]:
    label = label or baseline
    lines = []
    for name, g in groups.items():
        met = (g["ours_median_latency_s"] <= 0.5 if name == "up to 10 s" else g["ours_median_share"] <= 0.1)
        met = met and g["ours_requests"] <= g[f"{baseline}_requests"]
        lines.append(f"{g['jobs']} jobs {name}: median latency ours {g['ours_median_latency_s']:.2f} s "
                     f"({g['ours_median_share']:.1%} of the run), {label} {g[f'{baseline}_median_latency_s']:.2f} s "
                     f"({g[f'{baseline}_median_share']:.1%}); status requests ours {g['ours_requests']}, {label} "
                     f"{g[f'{baseline}_requests']} (ours ≤ {label} for {g['requests_ok']:.0%} of the jobs) — "
                     f"target {'met' if met else 'missed'}")
    return lines


def target_latency(job: Job) -> float:
    return 0.5 if job.seconds <= 10 else 0.1 * job.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    jobs = [Job(math.exp(rng.uniform(math.log(1.5), math.log(300))), rng.uniform(0, 0.3),
                rng.choice((4, 5, 10, 20, 100))) for _ in range(args.jobs)]
    rows = []
    for job in jobs:
        (n, lat), (bn, blat) = ours(job), owslib(job)
        rows.append({"seconds": job.seconds, "steps": job.steps, "ours_requests": n, "owslib_requests": bn,
                     "ours_latency_s": lat, "owslib_latency_s": blat,
                     "requests_ok": n <= bn, "latency_ok": lat <= target_latency(job)})

    print(f"{len(jobs)} simulated jobs (seed {args.seed}); ours = prefect_egi.tasks.remote.watch, owslib = monitorExecution(5 s)")
    print(f"{'job length':>11} {'jobs':>5} {'req ours/owslib':>16} {'median lat ours':>16} {'owslib':>7} "
          f"{'req ≤ owslib':>13} {'lat ≤ target':>13} {'both':>6}")
    summary: dict = {"jobs": len(jobs), "seed": args.seed, "bands": []}
    for low, high in [*BANDS, (0, 301)]:
        band = [r for r in rows if low <= r["seconds"] < high]
        if not band:
            continue
        ratio = sum(r["ours_requests"] for r in band) / sum(r["owslib_requests"] for r in band)
        lat = statistics.median(r["ours_latency_s"] for r in band)
        blat = statistics.median(r["owslib_latency_s"] for r in band)
        req_ok = sum(r["requests_ok"] for r in band) / len(band)
        lat_ok = sum(r["latency_ok"] for r in band) / len(band)
        both = sum(r["requests_ok"] and r["latency_ok"] for r in band) / len(band)
        label = "all" if (low, high) == (0, 301) else f"{low}–{min(high, 300)} s"
        print(f"{label:>11} {len(band):>5} {ratio:>16.2f} {lat:>15.2f}s {blat:>6.2f}s "
              f"{req_ok:>12.0%} {lat_ok:>12.0%} {both:>6.0%}")
        summary["bands"].append({"band": label, "jobs": len(band), "requests_ratio": ratio,
                                 "ours_median_latency_s": lat, "owslib_median_latency_s": blat,
                                 "requests_ok": req_ok, "latency_ok": lat_ok, "both_ok": both})
    summary["groups"] = target_groups(
        [r["seconds"] for r in rows], [(r["ours_latency_s"], r["ours_requests"]) for r in rows],
        [(r["owslib_latency_s"], r["owslib_requests"]) for r in rows])
    print(*describe_groups(summary["groups"]), sep="\n")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
