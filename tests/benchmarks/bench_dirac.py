"""DIRAC submission and waiting: ours vs raw diracx-client loops, in one run.

    python tests/benchmarks/bench_dirac.py [--jobs 1000] [--big 10000] [--repeat 3] [--json PATH]

Against the local DiracX server:
- submit N jobs: our `submit` (render + chunks of 20, 4 at a time + ledger) vs a
  raw sequential chunked `submit_jdl_jobs` loop vs one job per call;
- wait for N jobs (a pilot finishes them after ~3 s): status requests per cycle
  and in total, ours (one paged `search` per cycle) vs a loop polling each job;
- one poll cycle over `--big` jobs: requests and Python memory (tracemalloc peak).
Targets: ≤ 1.5× the raw chunked loop, ≥ 10× faster than one-by-one, one request
per cycle up to 10,000 jobs, ≥ 100× fewer requests than per-job polling, < 100 MB.
`--json PATH` also writes the measured numbers there (for `run_all.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect_egi.sandbox.dirac_pilot import Pilot
from prefect_egi.sandbox.peers import start_peer
from prefect_egi.tasks import DiracJob, DiracX, WatchPolicy, watch
from prefect_egi.tasks.dirac.tasks import submit

JDL = 'Executable = "echo";\nArguments = "{i}";\nJobName = "bench";\nOutputSandbox = {{"std.out"}};'


async def raw_chunked(block: DiracX, n: int) -> list[int]:
    async with block.client().session() as api:
        ids: list[int] = []
        for start in range(0, n, 20):
            inserted = await api.jobs.submit_jdl_jobs([JDL.format(i=i) for i in range(start, min(n, start + 20))])
            ids += [j.job_id for j in inserted]
        return ids


async def one_by_one(block: DiracX, n: int) -> list[int]:
    async with block.client().session() as api:
        return [(await api.jobs.submit_jdl_jobs([JDL.format(i=i)]))[0].job_id for i in range(n)]


async def per_job_polling(block: DiracX, ids: list[int], interval: float) -> tuple[int, int]:
    """The loop people write: one request per job per cycle. Returns (requests, cycles)."""
    requests = cycles = 0
    pending = set(ids)
    async with block.client().session() as api:
        while pending:
            cycles += 1
            for job in list(pending):
                requests += 1
                (row,) = await api.jobs.search(parameters=["JobID", "Status"],
                                               search=[{"parameter": "JobID", "operator": "eq", "value": job}])
                if row["Status"] in ("Done", "Failed", "Killed"):
                    pending.discard(job)
            await asyncio.sleep(interval)
    return requests, cycles


def timed(coro) -> tuple[float, object]:
    started = time.perf_counter()
    result = asyncio.run(coro)
    return time.perf_counter() - started, result


def finish_later(pilot: Pilot, ids: list[int], after: float) -> threading.Thread:
    return pilot.run_in_background(ids, start_after=after, duration=0.5)


def count_polls(adapter) -> dict[str, int]:
    """Count the engine's poll cycles on `adapter` (for requests per cycle); nothing else changes."""
    counter = {"cycles": 0}
    poll = adapter.poll

    async def counted(job_ids):
        counter["cycles"] += 1
        return await poll(job_ids)

    adapter.poll = counted
    return counter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--big", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="also write the measured numbers to this file")
    args = parser.parse_args()
    n = args.jobs
    peer = start_peer("diracx", "diracx_peer.py", timeout=120)
    try:
        (vo, creds), = peer.info["vos"].items()
        block = DiracX(url=peer.info["url"], vo=vo, group=creds["group"], credentials_path=creds["user"])
        pilot = Pilot(peer.info["url"], creds["pilot"])
        timed(raw_chunked(block, 40))  # warm-up: client discovery, first writes of a fresh server
        rounds = []
        for _ in range(args.repeat):  # interleaved, so none of the three always meets a fuller database
            ours_s, ours_ids = timed(submit(block, [DiracJob(executable="echo", arguments="%s",
                                                             parameters=list(range(n)))]))
            raw_s, raw_ids = timed(raw_chunked(block, n))
            single_s, _ = timed(one_by_one(block, n))
            rounds.append((ours_s, raw_s, single_s))
        ours_s, raw_s, single_s = (sorted(r[i] for r in rounds)[len(rounds) // 2] for i in range(3))
        print(f"submit {n} jobs (median of {args.repeat}): ours {ours_s:.2f} s, raw chunked {raw_s:.2f} s "
              f"(ratio {ours_s / raw_s:.2f}), one by one {single_s:.2f} s (ours {single_s / ours_s:.1f}x faster)")
        measured: dict = {"jobs": n, "repeat": args.repeat, "submit": {
            "ours_s": ours_s, "raw_chunked_s": raw_s, "one_by_one_s": single_s, "rounds": rounds}}

        adapter = block.job_adapter()
        cycles = count_polls(adapter)
        finisher = finish_later(pilot, list(ours_ids), 3.0)
        started = time.perf_counter()
        asyncio.run(watch(adapter, [str(i) for i in ours_ids], WatchPolicy(first_interval=1, backoff_factor=1,
                                                                           max_interval=1)))
        ours_wait = time.perf_counter() - started
        finisher.join()
        finisher = finish_later(pilot, list(raw_ids), 3.0)
        started = time.perf_counter()
        base_requests, base_cycles = asyncio.run(per_job_polling(block, list(raw_ids), 1.0))
        base_wait = time.perf_counter() - started
        finisher.join()
        print(f"wait for {n} jobs: ours {adapter.searches} requests in {ours_wait:.1f} s (1 per cycle); "
              f"per-job polling {base_requests} requests in {base_cycles} cycles, {base_wait:.1f} s "
              f"({base_requests / adapter.searches:.0f}x more)")
        measured["wait"] = {"ours_requests": adapter.searches, "ours_cycles": cycles["cycles"], "ours_s": ours_wait,
                            "per_job_requests": base_requests, "per_job_cycles": base_cycles,
                            "per_job_s": base_wait}

        big_ids = asyncio.run(submit(block, [DiracJob(executable="echo", arguments="%s",
                                                      parameters=list(range(args.big)))]))
        big = block.job_adapter()
        big_cycles = count_polls(big)
        tracemalloc.start()
        started = time.perf_counter()
        statuses = asyncio.run(big.poll([str(i) for i in big_ids]))
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"one poll cycle over {len(statuses)} jobs: {big.searches} request(s), {elapsed:.2f} s, "
              f"Python memory peak {peak / 2**20:.1f} MiB")
        measured["big"] = {"jobs": len(statuses), "requests": big.searches, "cycles": big_cycles["cycles"],
                           "seconds": elapsed, "peak_mib": peak / 2**20}
        if args.json:
            Path(args.json).write_text(json.dumps(measured, indent=2))
    finally:
        peer.stop()


if __name__ == "__main__":
    main()
