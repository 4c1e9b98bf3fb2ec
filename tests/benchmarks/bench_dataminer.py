"""DataMiner waits: ours vs owslib's `monitorExecution(sleepSecs=5)`, in one run.

    python tests/benchmarks/bench_dataminer.py [--durations 2 10 30] [--repeat 3] [--population 24] [--json PATH]

Against the local PyWPS DataMiner peer, for SLOW_COUNTER jobs of each duration:
- detection latency: when the waiter saw the end − when the server wrote the
  final status document (its file's mtime, ns precision);
- status requests per job (the peer's counter).
One job of a given length is one draw of luck: where its end falls between two
polls. So a population follows: `--population` jobs with lengths log-uniform over
1.5–60 s and 4–20 progress steps (seeded), started 0–5 s apart and waited for
concurrently, first all by ours, then the same list by owslib; the medians over
the jobs up to 10 s and beyond are what the targets speak of.
Then with the token revoked mid-job: what each waiter does (owslib's is cut
after 2 s). 7 s and 23 s jobs show owslib off its 5 s grid.
Targets: median latency ≤ 0.5 s up to 10 s jobs, ≤ 10% of the runtime beyond,
no more requests than owslib; under errors one request per backoff step.
`--json PATH` also writes the measured numbers there (for `run_all.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pydantic import SecretStr  # noqa: E402
from sim_pacing import describe_groups, target_groups  # noqa: E402  (this folder is on sys.path)

from prefect_egi.sandbox.peers import start_peer
from prefect_egi.tasks import DATAMINER_WAIT, DataMiner, WatchGaveUp, watch
from prefect_egi.tasks.dataminer.adapter import process_id
from prefect_egi.tasks.dataminer.tasks import submit_execution

PROCESS = process_id("SLOW_COUNTER")


def finished_at(workdir: str, job_url: str) -> float:
    uuid = parse_qs(urlsplit(job_url).query)["id"][0]
    return (Path(workdir) / "outputs" / f"{uuid}.xml").stat().st_mtime


def status_requests(peer) -> int:
    return peer.stats().get("status", 0)


def ours(peer, block: DataMiner, seconds: float) -> tuple[float, int]:
    job = asyncio.run(submit_execution(block, "SLOW_COUNTER", {"seconds": seconds, "steps": 5}))
    before = status_requests(peer)
    asyncio.run(watch(block.job_adapter(), [job], DATAMINER_WAIT))
    seen = time.time()
    return seen - finished_at(peer.info["workdir"], job), status_requests(peer) - before


def owslib_execution(peer, seconds: float, steps: int = 5):
    from owslib.wps import ASYNC, WebProcessingService

    wps = WebProcessingService(peer.info["wps_url"], headers={"gcube-token": peer.info["token"]}, skip_caps=True)
    return wps.execute(PROCESS, [("seconds", str(seconds)), ("steps", str(steps))], output=[("count", False, None)],
                       mode=ASYNC)


def baseline(peer, seconds: float) -> tuple[float, int]:
    from owslib.wps import monitorExecution

    execution = owslib_execution(peer, seconds)
    before = status_requests(peer)
    monitorExecution(execution, sleepSecs=5)
    seen = time.time()
    return seen - finished_at(peer.info["workdir"], execution.statusLocation), status_requests(peer) - before


def population(count: int, seed: int) -> list[tuple[float, int, float]]:
    """(seconds, progress steps, start offset) per job: lengths log-uniform over
    1.5–60 s as in sim_pacing, 4–20 steps of at least 0.2 s each."""
    rng = random.Random(seed)
    jobs = []
    for _ in range(count):
        seconds = round(math.exp(rng.uniform(math.log(1.5), math.log(60))), 2)
        steps = min(rng.choice((4, 5, 10, 20)), max(1, int(seconds / 0.2)))
        jobs.append((seconds, steps, rng.uniform(0, 5)))
    return jobs


def uuid_of(status_location: str) -> str:
    return parse_qs(urlsplit(status_location).query)["id"][0]


def ours_population(peer, block: DataMiner, jobs: list[tuple[float, int, float]]) -> list[tuple[float, int]]:
    """Every job submitted at its offset and waited for by its own `watch`, all in one event loop."""
    async def one(seconds: float, steps: int, offset: float) -> tuple[float, str]:
        await asyncio.sleep(offset)
        job = await submit_execution(block, "SLOW_COUNTER", {"seconds": seconds, "steps": steps})
        adapter = block.job_adapter()
        try:
            await watch(adapter, [job], DATAMINER_WAIT)
        finally:
            await adapter.client.aclose()
        return time.time() - finished_at(peer.info["workdir"], job), job

    async def every() -> list[tuple[float, str]]:
        return await asyncio.gather(*(one(*job) for job in jobs))

    seen = asyncio.run(every())
    counts = peer.stats()
    return [(latency, counts.get(f"status:{uuid_of(job)}", 0)) for latency, job in seen]


def owslib_population(peer, jobs: list[tuple[float, int, float]]) -> list[tuple[float, int]]:
    """The same jobs, each in its own thread running monitorExecution(sleepSecs=5)."""
    from owslib.wps import monitorExecution

    seen: list[tuple[float, str] | BaseException | None] = [None] * len(jobs)

    def one(index: int, seconds: float, steps: int, offset: float) -> None:
        try:
            time.sleep(offset)
            execution = owslib_execution(peer, seconds, steps)
            monitorExecution(execution, sleepSecs=5)
            seen[index] = (time.time() - finished_at(peer.info["workdir"], execution.statusLocation),
                           execution.statusLocation)
        except BaseException as error:  # reported below, with the job it belongs to
            seen[index] = error

    threads = [threading.Thread(target=one, args=(i, *job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for job, outcome in zip(jobs, seen):
        if not isinstance(outcome, tuple):
            raise RuntimeError(f"owslib's wait for a {job[0]} s job did not complete: {outcome!r}")
    counts = peer.stats()
    return [(latency, counts.get(f"status:{uuid_of(location)}", 0)) for latency, location in seen]


def _owslib_spin(wps_url: str, token: str, status_location: str) -> None:
    from owslib.wps import WPSExecution, monitorExecution

    execution = WPSExecution(url=wps_url, headers={"gcube-token": token})
    execution.statusLocation = status_location
    monitorExecution(execution, sleepSecs=5)


def revoked(peer, block: DataMiner) -> tuple[str, str, dict]:
    """What each waiter does once the token is revoked mid-job (texts, and the numbers)."""
    from owslib.wps import monitorExecution

    token = peer.info["token"]
    job = asyncio.run(submit_execution(block, "SLOW_COUNTER", {"seconds": 20, "steps": 5}))
    peer.control("revoke", token=token)
    before, started = status_requests(peer), time.time()
    try:
        asyncio.run(watch(block.job_adapter(), [job], DATAMINER_WAIT))
        ours = "kept waiting"
    except WatchGaveUp:
        ours = "then a clear error"
    requests, seconds = status_requests(peer) - before, time.time() - started
    numbers = {"ours": {"requests": requests, "seconds": seconds, "outcome": ours.removeprefix("then ")}}
    if ours != "kept waiting":
        ours = f"{requests} requests in {seconds:.1f} s, {ours}"
    peer.control("restore", token=token)

    execution = owslib_execution(peer, 20)
    peer.control("revoke", token=token)
    before, outcome = status_requests(peer), {}

    def spin() -> None:
        try:
            monitorExecution(execution, sleepSecs=5)
            outcome["end"] = "returned"
        except Exception as exc:
            outcome["end"] = f"raised {type(exc).__name__}: {exc}"

    waiter = threading.Thread(target=spin, daemon=True)
    started = time.time()
    waiter.start()
    waiter.join(2.0)
    requests = status_requests(peer) - before
    seconds = min(time.time() - started, 2.0)
    peer.control("restore", token=token)
    theirs = f"{requests} requests in {seconds:.1f} s, {outcome.get('end', 'still looping')}"
    numbers["owslib"] = {"requests": requests, "seconds": seconds, "outcome": outcome.get("end", "still looping")}
    return ours, theirs, numbers


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--durations", type=float, nargs="+", default=[2, 7, 10, 23, 30])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--population", type=int, default=24, help="jobs of mixed lengths (0: skip)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", help="also write the measured numbers to this file")
    args = parser.parse_args()
    measured: dict = {"repeat": args.repeat, "jobs": []}
    peer = start_peer("dataminer", "dataminer_peer.py", "--parallel", str(max(8, 2 * args.population)))
    try:
        block = DataMiner(url=peer.info["wps_url"], gcube_token=SecretStr(peer.info["token"]))
        print(f"{'job':>6} {'ours lat s':>11} {'owslib lat s':>13} {'ratio':>6} {'ours req':>9} {'owslib req':>11} {'ratio':>6}")
        for seconds in args.durations:
            mine = [ours(peer, block, seconds) for _ in range(args.repeat)]
            theirs = [baseline(peer, seconds) for _ in range(args.repeat)]
            lat_o, lat_b = median([m[0] for m in mine]), median([t[0] for t in theirs])
            req_o, req_b = median([m[1] for m in mine]), median([t[1] for t in theirs])
            print(f"{seconds:>5.0f}s {lat_o:>11.2f} {lat_b:>13.2f} {lat_o / lat_b:>6.2f} {req_o:>9} {req_b:>11} "
                  f"{req_o / req_b:>6.2f}")
            measured["jobs"].append({"seconds": seconds, "ours_latency_s": lat_o, "owslib_latency_s": lat_b,
                                     "ours_requests": req_o, "owslib_requests": req_b,
                                     "ours_runs": mine, "owslib_runs": theirs})
        if args.population:
            jobs = population(args.population, args.seed)
            mine, theirs = ours_population(peer, block, jobs), owslib_population(peer, jobs)
            groups = target_groups([j[0] for j in jobs], mine, theirs)
            measured["population"] = {"seed": args.seed, "groups": groups,
                                      "jobs": [{"seconds": j[0], "steps": j[1], "ours": m, "owslib": t}
                                               for j, m, t in zip(jobs, mine, theirs)]}
            print(*describe_groups(groups), sep="\n")
        ours_text, theirs_text, measured["revoked"] = revoked(peer, block)
        measured["revoked"]["error_backoff_s"] = DATAMINER_WAIT.error_backoff
        print(f"token revoked mid-job — ours: {ours_text}; owslib: {theirs_text}")
        if args.json:
            Path(args.json).write_text(json.dumps(measured, indent=2))
    finally:
        peer.stop()


if __name__ == "__main__":
    main()
