"""DataMiner waits: ours vs owslib's `monitorExecution(sleepSecs=5)`, in one run.

    python tests/benchmarks/bench_dataminer.py [--durations 2 10 30] [--repeat 3] [--json PATH]

Against the local PyWPS DataMiner peer, for SLOW_COUNTER jobs of each duration:
- detection latency: when the waiter saw the end − when the server wrote the
  final status document (its file's mtime, ns precision);
- status requests per job (the peer's counter).
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
import os
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pydantic import SecretStr  # noqa: E402

from deployments.sandbox.peers import start_peer  # noqa: E402
from tasks.dataminer import DataMiner, process_id, submit_execution  # noqa: E402
from tasks.remote import WatchGaveUp, WatchPolicy, watch  # noqa: E402

PROCESS = process_id("SLOW_COUNTER")


def finished_at(workdir: str, job_url: str) -> float:
    uuid = parse_qs(urlsplit(job_url).query)["id"][0]
    return (Path(workdir) / "outputs" / f"{uuid}.xml").stat().st_mtime


def status_requests(peer) -> int:
    return peer.stats().get("status", 0)


def ours(peer, block: DataMiner, seconds: float) -> tuple[float, int]:
    job = asyncio.run(submit_execution(block, "SLOW_COUNTER", {"seconds": seconds, "steps": 5}))
    before = status_requests(peer)
    asyncio.run(watch(block.job_adapter(), [job], WatchPolicy()))
    seen = time.time()
    return seen - finished_at(peer.info["workdir"], job), status_requests(peer) - before


def owslib_execution(peer, seconds: float):
    from owslib.wps import ASYNC, WebProcessingService

    wps = WebProcessingService(peer.info["wps_url"], headers={"gcube-token": peer.info["token"]}, skip_caps=True)
    return wps.execute(PROCESS, [("seconds", str(seconds)), ("steps", "5")], output=[("count", False, None)],
                       mode=ASYNC)


def baseline(peer, seconds: float) -> tuple[float, int]:
    from owslib.wps import monitorExecution

    execution = owslib_execution(peer, seconds)
    before = status_requests(peer)
    monitorExecution(execution, sleepSecs=5)
    seen = time.time()
    return seen - finished_at(peer.info["workdir"], execution.statusLocation), status_requests(peer) - before


def _owslib_spin(wps_url: str, token: str, status_location: str) -> None:
    from owslib.wps import WPSExecution, monitorExecution

    execution = WPSExecution(url=wps_url, headers={"gcube-token": token})
    execution.statusLocation = status_location
    monitorExecution(execution, sleepSecs=5)


def revoked(peer, block: DataMiner) -> tuple[str, str, dict]:
    """What each waiter does once the token is revoked mid-job (texts, and the numbers)."""
    import threading

    from owslib.wps import monitorExecution

    token = peer.info["token"]
    job = asyncio.run(submit_execution(block, "SLOW_COUNTER", {"seconds": 20, "steps": 5}))
    peer.control("revoke", token=token)
    before, started = status_requests(peer), time.time()
    try:
        asyncio.run(watch(block.job_adapter(), [job], WatchPolicy()))
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
    parser.add_argument("--json", help="also write the measured numbers to this file")
    args = parser.parse_args()
    measured: dict = {"repeat": args.repeat, "jobs": []}
    peer = start_peer("dataminer", "dataminer_peer.py")
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
        ours_text, theirs_text, measured["revoked"] = revoked(peer, block)
        measured["revoked"]["error_backoff_s"] = WatchPolicy().error_backoff
        print(f"token revoked mid-job — ours: {ours_text}; owslib: {theirs_text}")
        if args.json:
            Path(args.json).write_text(json.dumps(measured, indent=2))
    finally:
        peer.stop()


if __name__ == "__main__":
    main()
