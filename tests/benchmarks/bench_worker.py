"""The `dirac` worker: flow-run start latency and status requests per cycle for 1, 10 and
100 concurrent runs, beside what per-run polling would send.

    python tests/benchmarks/bench_worker.py [--runs 1 10 100] [--json PATH]

One stack (`tests/grid_stack.py`: Prefect server, `prefect worker start` of a `dirac` pool,
DiracX recording every job search, the local site's pilot with 32 slots). For each batch
size N, N runs of a trivial flow are created at once and waited for; then:

- start latency: a run's `start_time` (its engine began on the node) minus its creation,
  median and max — the worker's submission, the site's matching and the engine's start;
- status requests: the worker's job searches about the batch's jobs, counted by the
  server; "per-run polling" is what one loop per run would have sent at the same cycles
  (one request per pending job per cycle: the ids each search held).

`--json PATH` also writes the numbers (for `run_all.py`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # grid_stack, prefect_stack

from grid_stack import grid_stack  # noqa: E402


def _seconds(later: str, earlier: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def batch(grid, deployment: str, n: int) -> dict:
    began = time.monotonic()
    runs = [grid.run(deployment, name=f"b{n}-{i}") for i in range(n)]
    finished = [grid.stack.wait_for_flow_run(r, timeout=1800) for r in runs]
    wall = time.monotonic() - began
    states = [r["state"]["type"] for r in finished]
    jobs = {int(r["infrastructure_pid"]) for r in finished if r.get("infrastructure_pid")}
    for run_id in runs:  # every job ended, so every search about them was sent
        grid.job_ended(run_id, timeout=300)
    searches = grid.worker_searches(jobs)
    latencies = sorted(_seconds(r["start_time"], r["created"]) for r in finished if r.get("start_time"))
    asked = [len(set(s["ids"]) & jobs) for s in searches]
    return {
        "runs": n, "completed": states.count("COMPLETED"), "jobs": len(jobs), "wall_s": round(wall, 1),
        "start_latency_median_s": round(statistics.median(latencies), 2) if latencies else None,
        "start_latency_max_s": round(latencies[-1], 2) if latencies else None,
        "worker_requests": len(searches), "per_run_requests": sum(asked),
        "requests_per_cycle": 1.0 if searches else None,
        "per_run_requests_per_cycle": round(sum(asked) / len(searches), 1) if searches else None,
        "most_jobs_in_one_request": max(asked, default=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--json", help="also write the measured numbers to this file")
    args = parser.parse_args()
    measured = {"batches": []}
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as folder, grid_stack(Path(folder)) as grid:
        deployment = grid.deployment("bench")
        for n in args.runs:
            result = batch(grid, deployment, n)
            measured["batches"].append(result)
            print(json.dumps(result), flush=True)
    print("\n| runs at once | completed | start latency median / max (s) | worker status requests "
          "(per cycle) | per-run polling would send (per cycle) | ratio |")
    print("|---|---|---|---|---|---|")
    for b in measured["batches"]:
        ratio = b["worker_requests"] / b["per_run_requests"] if b["per_run_requests"] else None
        print(f"| {b['runs']} | {b['completed']} | {b['start_latency_median_s']} / {b['start_latency_max_s']} | "
              f"{b['worker_requests']} (1) | {b['per_run_requests']} ({b['per_run_requests_per_cycle']}) | "
              f"{ratio:.2f} |" if ratio is not None else "| — |")
    if args.json:
        Path(args.json).write_text(json.dumps(measured, indent=2))


if __name__ == "__main__":
    main()
