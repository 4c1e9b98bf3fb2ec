"""What Prefect and this plugin cost a user, measured against baselines in one run.

    python tests/benchmarks/bench_overhead.py [--imports 9] [--runs 3] [--json PATH]

1. Import time, in fresh interpreters (one subprocess per measurement; the
   variants interleaved, `--imports` rounds after one warm-up round; medians):
   - `import prefect` alone;
   - a minimal Prefect plugin: `import prefect`, `from prefect import task, flow`
     and one trivial `Block` subclass. `from prefect import task` and subclassing
     `Block` pull modules Prefect loads lazily, so this is the fair floor for any
     plugin that offers tasks and blocks;
   - ours: `import prefect, prefect_egi.tasks` (the package names its API and imports each
     part on first use, as `prefect` itself does), against `import prefect`;
   - ours with everything defined: `import prefect, prefect_egi.tasks.blocks` (every block,
     and the tasks of their modules — what Prefect's collection loader and any
     flow using a block pay), against the minimal plugin.
   Reported: medians, ours − baseline (target: at most +0.2 s) and ours / baseline. A bare interpreter (`python -c pass`) is
   measured too: diracx-client installs a `.pth` file that imports diracx at
   every interpreter start, so it is paid by every variant alike.

2. Prefect overhead per pipeline run: the `egi-pipeline` flow (`prefect_egi.flows.pipeline`,
   default parameters: 5 work items, the summary, the VM snapshot) run `--runs`
   times against the sandbox's peers (`prefect_egi.sandbox.stack`, without the
   Notebooks hub and with the test pilot's failure rate at 0 so every run does the
   same remote work) under Prefect's test harness (a real API server subprocess on
   a temporary SQLite database) — versus the same remote work without Prefect
   orchestration: each stage's task called through `.fn` exactly as the flow
   body calls it, with the service tasks those stages call (`vm_inventory`,
   `run_algorithm` and the `execute_process`/`wait_for_executions`/`fetch_outputs`
   inside it, `run_batch` and the `submit_jobs`/`wait_for_jobs`/`resubmit_jobs`/
   `fetch_job_outputs` inside it) replaced by their `.fn` too, so the
   same code (submit, the shared wait engine with the same policies, output
   download) runs with no flow run, no task runs, no result persistence, no
   ledger in the API, no artifacts, events or API logs. The baseline's blocks are
   fresh in-memory copies of the saved ones (no API reads; each run obtains its
   own Check-in token, as the flow does). One warm-up run of each first, then the
   two interleaved (alternating which goes first); medians. Ours is timed until
   the flow call returns; Prefect's log and event workers are then drained
   untimed, so their background work does not land in the baseline's time.
   Reported: per-run wall time of each, overhead = ours − baseline, ours / baseline.
   Remote work still dominates (DataMiner executions and 1 s grid jobs, polled by
   the engine's adaptive 1, 2, 4 … s intervals), so a delay of Prefect's can also
   move a poll to the next interval: that is part of the overhead a user sees.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[2]

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.pop("PREFECT_API_URL", None)  # the harness's API, whatever the user's profile says
HOME = tempfile.mkdtemp(prefix="prefect-egi-bench-")
os.environ["PREFECT_HOME"] = HOME  # results, storage and profiles of this run only
atexit.register(shutil.rmtree, HOME, ignore_errors=True)

IMPORTS = {
    "bare interpreter": "pass",
    "prefect": "import prefect",
    "minimal plugin": (
        "import prefect\n"
        "from prefect import flow, task\n"
        "from prefect.blocks.core import Block\n"
        "class MinimalBlock(Block):\n"
        "    value: str = 'x'\n"
        "@task\n"
        "def one() -> int:\n"
        "    return 1\n"
    ),
    "prefect + tasks": "import prefect, prefect_egi.tasks",
    "prefect + every block": "import prefect, prefect_egi.tasks.blocks",
}


def import_times(rounds: int) -> dict[str, list[float]]:
    """Seconds per fresh interpreter for each variant; interleaved, rotating the order.

    Bytecode caching is on (PYTHONDONTWRITEBYTECODE dropped), as for anyone who
    installed the package: Prefect's modules come precompiled from pip, so ours
    must not be recompiled from source at every start either."""
    names = list(IMPORTS)
    times: dict[str, list[float]] = {name: [] for name in names}
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    for index in range(rounds + 1):  # round 0 warms the disk and bytecode caches and is dropped
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", IMPORTS[name]], check=True, capture_output=True, cwd=REPO, env=env)
            if index:
                times[name].append(time.perf_counter() - started)
    return times


def drain_prefect() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)


def ours(destination: Path) -> tuple[float, object]:
    from prefect_egi.flows import egi_pipeline

    started = time.perf_counter()
    state = egi_pipeline(destination=str(destination), return_state=True)
    seconds = time.perf_counter() - started
    if not state.is_completed():
        raise RuntimeError(f"the pipeline ended {state.name}: {state.message}")
    report = state.result()
    drain_prefect()
    return seconds, report


def baseline(templates: dict, destination: Path) -> tuple[float, object]:
    """The flow body's stages through `.fn`, the service tasks they call through `.fn`."""
    from prefect_egi.flows import pipeline
    from prefect_egi.tasks.dataminer import tasks as dataminer_tasks
    from prefect_egi.tasks.dirac import tasks as dirac_tasks

    async def stages(credentials, dataminer, diracx, fedcloud):
        work, grid, summary = pipeline.WorkItems(), pipeline.GridJobs(), pipeline.Summary()
        who = await pipeline.identity_stage.fn(credentials)
        listed = await pipeline.work_items_stage.fn(dataminer, work, str(destination / "work-items"))
        batch = await pipeline.grid_stage.fn(diracx, grid, listed.items, str(destination / "grid"), 48.0)
        summarised = await pipeline.summary_stage.fn(dataminer, summary, listed.items, batch,
                                                     str(destination / "summary"))
        snapshot = await pipeline.vms_stage.fn(fedcloud, None)
        report = pipeline.PipelineReport(identity=who, work_items=listed, grid=batch, summary=summarised,
                                         vms=snapshot)
        report.markdown()
        return report

    calls = {pipeline: ("run_algorithm", "run_batch", "vm_inventory"),
             dataminer_tasks: ("execute_process", "wait_for_executions", "fetch_outputs"),
             dirac_tasks: ("submit_jobs", "wait_for_jobs", "resubmit_jobs", "fetch_job_outputs")}
    with ExitStack() as patches:
        for module, names in calls.items():
            for name in names:
                patches.enter_context(mock.patch.object(module, name, getattr(module, name).fn))
        started = time.perf_counter()
        blocks = {name: block.model_copy(deep=True) for name, block in templates.items()}
        report = asyncio.run(stages(blocks["checkin"], blocks["dataminer"], blocks["diracx"], blocks["fedcloud"]))
        return time.perf_counter() - started, report


def same_work(report) -> tuple:
    """What both sides must have done alike."""
    return (len(report.work_items.items), report.grid.submitted, report.grid.succeeded, len(report.grid.failed),
            len(report.summary.files) if report.summary else 0, len(report.vms.vms) if report.vms else 0)


def pipeline_runs(runs: int) -> dict:
    from prefect.testing.utilities import prefect_test_harness

    from prefect_egi.sandbox.stack import Sandbox, save_blocks
    from prefect_egi.tasks import CheckinCredentials, DataMiner, DiracX, FedCloud

    work = Path(HOME)
    sandbox = Sandbox(work / "sandbox", hub=False, failure_rate=0.0)
    try:
        with ThreadPoolExecutor(1) as pool:
            starting = pool.submit(sandbox.start)
            with prefect_test_harness(server_startup_timeout=120):
                info = starting.result()
                save_blocks(info)
                templates = {"checkin": CheckinCredentials.load("egi-checkin"), "dataminer": DataMiner.load("dataminer"),
                             "diracx": DiracX.load("diracx"), "fedcloud": FedCloud.load("fedcloud")}
                times: dict[str, list[float]] = {"ours": [], "baseline": []}
                warm: dict[str, float] = {}
                work_done = set()
                for index in range(runs + 1):  # index 0: one warm-up run of each, dropped
                    order = ("ours", "baseline") if index % 2 == 0 else ("baseline", "ours")
                    for side in order:
                        out = work / "outputs" / f"{side}-{index}"
                        seconds, report = ours(out) if side == "ours" else baseline(templates, out)
                        work_done.add(same_work(report))
                        if index:
                            times[side].append(seconds)
                        else:
                            warm[side] = seconds
                        print(f"  {'warm-up' if not index else f'run {index}'} {side:<8} {seconds:6.2f} s",
                              flush=True)
                if len(work_done) != 1:
                    raise RuntimeError(f"the runs did not all do the same remote work: {sorted(work_done)}")
    finally:
        sandbox.stop()
    (items, jobs, done, failed, files, vms), = work_done
    return {"runs": runs, "ours_runs_s": times["ours"], "baseline_runs_s": times["baseline"], "warm_up_s": warm,
            "ours_s": statistics.median(times["ours"]), "baseline_s": statistics.median(times["baseline"]),
            "work": {"work_items": items, "grid_jobs": jobs, "grid_done": done, "grid_failed": failed,
                     "summary_files": files, "vms": vms}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imports", type=int, default=9, help="fresh interpreters per variant (after a warm-up)")
    parser.add_argument("--runs", type=int, default=3, help="pipeline runs of each side (after a warm-up)")
    parser.add_argument("--skip-imports", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--json", help="also write the measured numbers to this file")
    args = parser.parse_args()
    measured: dict = {}

    if not args.skip_imports:
        times = import_times(args.imports)
        medians = {name: statistics.median(values) for name, values in times.items()}
        measured["imports"] = {"rounds": args.imports, "median_s": medians, "runs_s": times}
        ours_s = medians["prefect + tasks"]
        print(f"import time, fresh interpreters (medians of {args.imports}, interleaved)")
        print(f"{'variant':<22} {'median s':>9} {'ours − it':>10} {'ours / it':>10}")
        for name, seconds in medians.items():
            print(f"{name:<22} {seconds:>9.3f} {ours_s - seconds:>+10.3f} {ours_s / seconds:>10.2f}")
        every = medians["prefect + every block"]
        print(f"import prefect_egi.tasks adds {ours_s - medians['prefect']:+.3f} s to import prefect (target <= +0.2 s); "
              f"every block and task defined: {every - medians['minimal plugin']:+.3f} s over a minimal Prefect "
              "plugin", flush=True)

    if not args.skip_pipeline:
        print(f"egi-pipeline against the sandbox: {args.runs} run(s) of each after a warm-up", flush=True)
        result = pipeline_runs(args.runs)
        measured["pipeline"] = result
        ours_s, base_s = result["ours_s"], result["baseline_s"]
        w = result["work"]
        print(f"each run: {w['work_items']} work items, {w['grid_jobs']} grid jobs ({w['grid_done']} done), "
              f"summary ({w['summary_files']} file(s)), {w['vms']} VMs")
        print(f"{'per pipeline run':<36} {'median s':>9}  runs")
        print(f"{'ours (Prefect flow, test harness)':<36} {ours_s:>9.2f}  "
              + " ".join(f"{s:.2f}" for s in result["ours_runs_s"]))
        print(f"{'baseline (stages via .fn)':<36} {base_s:>9.2f}  "
              + " ".join(f"{s:.2f}" for s in result["baseline_runs_s"]))
        print(f"Prefect overhead per run: {ours_s - base_s:+.2f} s (ours / baseline {ours_s / base_s:.2f})")

    if args.json:
        Path(args.json).write_text(json.dumps(measured, indent=2))


if __name__ == "__main__":
    main()
