"""Every benchmark, side by side with its baseline, in one table of ratios.

    python tests/benchmarks/run_all.py [--quick] [--out tests/benchmarks/latest.md]

Runs, one after the other, each as its own process writing its numbers with
`--json` (its own table is printed as it goes; its log goes to a file):

- `bench_dataminer.py`  WPS waits vs owslib `monitorExecution(sleepSecs=5)`:
  2, 10 and 30 s jobs (the issue's), one run each; 24 jobs of mixed lengths
  (1.5–60 s) waited for concurrently, the medians the targets speak of; then the
  token revoked mid-job;
- `bench_ccp.py`        CCP (OGC API – Processes) waits vs CCP's fixed-interval loop
  (`GET /jobs/{id}` every 5 s) and vs owslib's Execute + a 5 s poll loop: 2, 10 and
  30 s jobs, one run each; 20 jobs of mixed lengths (1.5–60 s) waited for
  concurrently, the medians the targets speak of (issue 16);
- `sim_pacing.py`       the same wait loop over 2,000 simulated WPS jobs vs owslib's
  5 s loop (requests and latency by job length; seconds, no peer);
- `bench_dirac.py`      DIRAC submission of 1,000 jobs vs a raw chunked
  diracx-client loop and vs one by one (medians of 3), waiting on 1,000 jobs vs
  per-job polling, one poll cycle over 10,000 jobs (requests, memory);
- `bench_worker.py`     the `dirac` worker: flow-run start latency and status requests
  per cycle for 1, 10 and 100 runs at once vs per-run polling (issue 17);
- `bench_inventory.py`  VM inventory of 30 sites vs the slowest single site,
  a sequential loop and a process per site (medians of 3);
- `bench_overhead.py`   `import prefect_egi.tasks` over `import prefect` and over a minimal
  Prefect plugin (7 fresh interpreters each); the pipeline flow vs its stages
  called without Prefect (3 runs each).

then prints ONE markdown table — metric | ours | baseline | ratio (ours /
baseline) | target | met? — with the targets of issues 3, 4, 5, 7 and 16, and
writes it to `--out`.

About 25 minutes on 2 cores (CCP about 5 of them, the dirac worker about 8; much longer when the machine is busy: the
process-per-site baseline alone starts 30 Python processes at once).
The DataMiner jobs run once each by default: a WPS wait is bound by the job's
own duration, so medians of 3 would add about three minutes; ask for them by running
`bench_dataminer.py --durations 2 10 30 --repeat 3` alone.

`--quick` (a routine check, about half the time): DataMiner and CCP 2 and 10 s jobs
(no 30 s job); DIRAC, inventory and the pipeline once each instead of medians
of 3; the same workload sizes, so the targets still apply — but single runs
are noisier. `--only NAME …` runs a subset; `--json-dir DIR`
keeps the numbers (and the logs) there; `--table-only` renders the table from
a `--json-dir` of an earlier run without running anything.
Benchmarks are CPU-sensitive: the table records the load average before and after.
Exit status 1 when a benchmark did not complete (a missed target is a ✗, not an error).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# name: (script, full arguments, --quick arguments)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "dataminer": ("bench_dataminer.py", ["--durations", "2", "10", "30", "--repeat", "1"],
                  ["--durations", "2", "10", "--repeat", "1"]),
    "ccp": ("bench_ccp.py", ["--durations", "2", "10", "30", "--repeat", "1", "--population", "20"],
            ["--durations", "2", "10", "--repeat", "1", "--population", "20"]),
    "pacing": ("sim_pacing.py", ["--jobs", "2000"], ["--jobs", "2000"]),
    "dirac": ("bench_dirac.py", ["--jobs", "1000", "--big", "10000", "--repeat", "3"],
              ["--jobs", "1000", "--big", "10000", "--repeat", "1"]),
    "worker": ("bench_worker.py", ["--runs", "1", "10", "100"], ["--runs", "1", "10"]),
    "inventory": ("bench_inventory.py", ["--sites", "30", "--repeat", "3"], ["--sites", "30", "--repeat", "1"]),
    "overhead": ("bench_overhead.py", ["--imports", "7", "--runs", "3"], ["--imports", "7", "--runs", "1"]),
}

YES, NO, NONE = "✓", "✗", "—"
MB = 1e6 / 2**20  # 1 MB in MiB


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def run_benchmark(name: str, quick: bool, folder: Path) -> dict:
    """Run one benchmark as a subprocess; its stdout is shown and kept, its stderr kept."""
    script, full, short = BENCHMARKS[name]
    target = folder / f"{name}.json"
    target.unlink(missing_ok=True)
    command = [sys.executable, str(HERE / script), *(short if quick else full), "--json", str(target)]
    print(f"\n## {name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    with (folder / f"{name}.out").open("w") as out, (folder / f"{name}.err").open("w") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO,
                                   env={**os.environ, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            out.write(line)
        code = process.wait()
    seconds = time.perf_counter() - started
    status = {"seconds": seconds, "exit": code, "command": " ".join(command[1:])}
    (folder / f"{name}.status.json").write_text(json.dumps(status))
    if code != 0:
        tail = (folder / f"{name}.err").read_text().splitlines()[-15:]
        print(f"{name} FAILED (exit {code}) after {seconds:.0f} s; last lines of its log:", *tail, sep="\n  ")
    else:
        print(f"({name}: {seconds:.0f} s)", flush=True)
    return status


# -- the table ---------------------------------------------------------------------------------------

def number(value: float | int | None, unit: str = "") -> str:
    if value is None:
        return NONE
    if isinstance(value, int) or (unit != "s" and float(value).is_integer()):
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 0.1 or value == 0 else f"{value:.3f}"


def ratio(ours: float | None, baseline: float | None) -> str:
    if ours is None or not baseline:
        return NONE
    r = ours / baseline
    if r >= 10:
        return f"{r:.1f}"
    return f"{r:.2f}" if r >= 0.1 else f"{r:.2g}"


def how_many(runs: int, what: str = "run") -> str:
    return f"one {what}" if runs == 1 else f"medians of {runs} {what}s"


def met(condition: bool | None) -> str:
    return NONE if condition is None else (YES if condition else NO)


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []
        self.notes: list[str] = []

    def add(self, metric: str, ours: float | None, baseline: float | None, target: str, ok: bool | None,
            unit: str = "", baseline_text: str | None = None) -> None:
        self.rows.append((metric, number(ours, unit), baseline_text or number(baseline, unit), ratio(ours, baseline),
                          target, met(ok)))

    def missing(self, what: str, why: str) -> None:
        self.rows.append((what, NONE, NONE, NONE, why, NO))

    def markdown(self) -> str:
        lines = ["| metric | ours | baseline | ratio (ours/baseline) | target | met? |",
                 "|---|--:|--:|--:|---|:-:|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def wps_group_rows(table: Table, what: str, groups: dict, baseline: str = "owslib", label: str = "owslib",
                   per_job: bool = False, targets: bool = True) -> None:
    """The issue's WPS targets, over a population of jobs: median latency up to 10 s
    (≤ 0.5 s) and beyond (≤ 10 % of the runtime); never more requests than the baseline
    (`baseline` names its keys; `per_job`: for every job too, not only in total;
    `targets=False`: the numbers are only reported)."""
    for name, g in groups.items():
        if name == "up to 10 s":
            ok = g["ours_median_latency_s"] <= 0.5
            table.add(f"{what} up to 10 s ({g['jobs']:,}): median detection latency (s) vs {label}",
                      g["ours_median_latency_s"], g[f"{baseline}_median_latency_s"], "≤ 0.5 s" if targets else NONE,
                      ok if targets else None, unit="s")
        else:
            ok = g["ours_median_share"] <= 0.1
            table.add(f"{what} beyond 10 s ({g['jobs']:,}): median detection latency, share of the runtime vs {label}",
                      g["ours_median_share"], g[f"{baseline}_median_share"], "≤ 10 % (0.10)" if targets else NONE,
                      ok if targets else None)
        ok = g["ours_requests"] <= g[f"{baseline}_requests"] and (not per_job or g["requests_ok"] == 1)
        target = (f"≤ {label} per job and in total (per job: {g['requests_ok']:.0%} of the jobs)" if per_job else
                  f"≤ {label} (ours ≤ {label} for {g['requests_ok']:.0%} of the jobs)")
        table.add(f"{what} {name}: status requests in total vs {label}", g["ours_requests"],
                  g[f"{baseline}_requests"], target if targets else f"reported (ours ≤ for {g['requests_ok']:.0%} "
                                                                     "of the jobs)", ok if targets else None)


def dataminer_rows(table: Table, data: dict) -> None:
    for job in data["jobs"]:
        d = job["seconds"]
        table.add(f"WPS detection latency, one {d:g} s job (s) vs owslib", job["ours_latency_s"],
                  job["owslib_latency_s"], "reported (one draw; the targets: the mixed jobs below)", None, unit="s")
        table.add(f"WPS status requests, one {d:g} s job vs owslib", job["ours_requests"], job["owslib_requests"],
                  "≤ owslib", job["ours_requests"] <= job["owslib_requests"])
    if "population" in data:
        wps_group_rows(table, "WPS, real jobs of mixed lengths", data["population"]["groups"])
    revoked = data["revoked"]
    ours, theirs, step = revoked["ours"], revoked["owslib"], revoked["error_backoff_s"]
    # one request per backoff step: the first request, then at most one per `step` seconds
    table.add("WPS requests/s with the token revoked vs owslib", ours["requests"] / ours["seconds"],
              theirs["requests"] / theirs["seconds"], f"≤ 1 per backoff step (steps ≥ {step:g} s)",
              ours["requests"] <= 1 + ours["seconds"] / step)
    table.notes.append(f"Token revoked mid-job: ours sent {ours['requests']} status requests in {ours['seconds']:.1f} s, "
                       f"then {ours['outcome']}; owslib sent {theirs['requests']} in {theirs['seconds']:.1f} s "
                       f"({theirs['outcome']}).")
    table.notes.append(f"WPS: {how_many(data['repeat'])} per job length; latency = when the waiter "
                       "noticed the end − when the server wrote the final status document. One job of a length is "
                       "one draw (where its end falls between two polls), so the targets are judged on the mixed "
                       "jobs: lengths log-uniform over 1.5–60 s, 4–20 progress steps, started 0–5 s apart, "
                       "waited for concurrently by ours, then the same list by owslib"
                       + (f" (seed {data['population']['seed']})." if "population" in data else "."))


def ccp_rows(table: Table, data: dict) -> None:
    """Issue 16's targets for CCP: those of DataMiner, against CCP's fixed-interval loop."""
    step = data["fixed_sleep_s"]
    fixed = f"the fixed {step:g} s loop"
    for job in data["jobs"]:
        d = job["seconds"]
        table.add(f"CCP detection latency, one {d:g} s job (s) vs {fixed}", job["ours_latency_s"],
                  job["fixed_latency_s"], "reported (one draw; the targets: the mixed jobs below)", None, unit="s")
        table.add(f"CCP status requests, one {d:g} s job vs {fixed}", job["ours_requests"], job["fixed_requests"],
                  f"≤ {fixed}", job["ours_requests"] <= job["fixed_requests"])
    if "population" in data:
        groups = data["population"]["groups"]
        wps_group_rows(table, "CCP, real jobs of mixed lengths", groups["fixed"], baseline="fixed", label=fixed,
                       per_job=True)
        wps_group_rows(table, "CCP, real jobs of mixed lengths", groups["owslib"], baseline="owslib",
                       label=f"owslib + a {step:g} s poll loop", targets=False)
    singles = "; ".join(f"{j['seconds']:g} s job {j['owslib_latency_s']:.2f} s, {j['owslib_requests']} requests"
                        for j in data["jobs"])
    policy = data["policy"]
    table.notes.append(
        f"CCP: ours = `watch` with `CCP_WAIT` (first look after {policy['first_interval']:g} s, request budget "
        f"{policy['request_budget']:g} s); {fixed} = Execute, then `GET /jobs/{{id}}` with the UMA token at once and "
        f"every {step:g} s (CCP's generated code polls in a loop; its interval is not verified, so {step:g} s); "
        f"owslib 0.35 = `Processes.execute(…, async_=True)` and a `requests.get` loop every {step:g} s (owslib has "
        f"no job status call); {how_many(data['repeat'])} per job length (`ccp-progress`, 5 progress steps; a "
        f"length that is a multiple of {step:g} s can let a fixed loop look just after the end), owslib on those: "
        f"{singles}. Latency = when the waiter returned − the job's `finished` time; mixed "
        "jobs as for WPS (1.5–60 s, 4–20 steps, started 0–5 s apart, concurrently; ours, then the fixed loop, "
        "then owslib"
        + (f", seed {data['population']['seed']})." if "population" in data else ")."))


def pacing_rows(table: Table, data: dict) -> None:
    wps_group_rows(table, "WPS pacing, simulated jobs", data["groups"])
    table.notes.append(f"WPS pacing: `sim_pacing.py` runs the engine's real wait loop on a virtual clock against "
                       f"{data['jobs']:,} model jobs (1.5–300 s, log-uniform; 4–100 progress steps; started 0–0.3 s "
                       "after Execute) and owslib's 5 s loop against the same jobs: the same targets over many more "
                       "jobs than the real run can afford (every length band: `python tests/benchmarks/sim_pacing.py`).")


def dirac_rows(table: Table, data: dict) -> None:
    n, submit, wait, big = data["jobs"], data["submit"], data["wait"], data["big"]
    table.add(f"DIRAC submit {n:,} jobs (s) vs raw chunked diracx-client loop", submit["ours_s"],
              submit["raw_chunked_s"], "≤ 1.5×", submit["ours_s"] <= 1.5 * submit["raw_chunked_s"], unit="s")
    table.add(f"DIRAC submit {n:,} jobs (s) vs one by one", submit["ours_s"], submit["one_by_one_s"],
              "≥ 10× faster (≤ 0.10)", submit["ours_s"] * 10 <= submit["one_by_one_s"], unit="s")
    per_cycle = wait["ours_requests"] / wait["ours_cycles"]
    table.add(f"DIRAC status requests per poll cycle, {n:,} jobs vs per-job polling", per_cycle,
              wait["per_job_requests"] / wait["per_job_cycles"], "1 per cycle", per_cycle == 1)
    table.add(f"DIRAC status requests in total, waiting on {n:,} jobs vs per-job polling", wait["ours_requests"],
              wait["per_job_requests"], "≥ 100× fewer (≤ 0.01)", wait["ours_requests"] * 100 <= wait["per_job_requests"])
    big_per_cycle = big["requests"] / big["cycles"]
    table.add(f"DIRAC status requests per poll cycle, {big['jobs']:,} jobs vs per-job polling", big_per_cycle,
              big["jobs"], "1 per cycle", big_per_cycle == 1, baseline_text=f"{big['jobs']:,} (1 per job)")
    table.add(f"DIRAC tracking {big['jobs']:,} jobs: Python memory peak (MiB)", big["peak_mib"], None,
              f"< 100 MB ({100 * MB:.1f} MiB)", big["peak_mib"] < 100 * MB)
    table.notes.append(f"DIRAC: submission {how_many(data['repeat'], 'round')} (interleaved) after a warm-up; "
                       f"waiting: ours {wait['ours_requests']} requests in {wait['ours_cycles']} cycles "
                       f"({wait['ours_s']:.1f} s), per-job polling {wait['per_job_requests']} requests in "
                       f"{wait['per_job_cycles']} cycles ({wait['per_job_s']:.1f} s; its requests per cycle are a mean, fewer as "
                       f"jobs finish); the {big['jobs']:,}-job poll cycle took {big['seconds']:.2f} s (memory: "
                       "tracemalloc peak of Python allocations during it). The baseline of that row is what "
                       "per-job polling needs by construction, not a run.")


def worker_rows(table: Table, data: dict) -> None:
    for b in data["batches"]:
        n = b["runs"]
        table.add(f"dirac worker, {n} run(s) at once: status requests per poll cycle vs per-run polling",
                  1.0 if b["worker_requests"] else None, b["per_run_requests_per_cycle"],
                  "1 per cycle, shared by the runs", bool(b["worker_requests"]) and (
                      n == 1 or b["most_jobs_in_one_request"] > 1))
        table.add(f"dirac worker, {n} run(s) at once: status requests in total vs per-run polling",
                  b["worker_requests"], b["per_run_requests"], "≥ 5× fewer (≤ 0.20)" if n >= 10 else NONE,
                  b["worker_requests"] * 5 <= b["per_run_requests"] if n >= 10 else None)
        table.add(f"dirac worker, {n} run(s) at once: flow-run start latency, median (s)",
                  b["start_latency_median_s"], None, NONE, None, unit="s",
                  baseline_text=f"max {b['start_latency_max_s']} s")
    table.notes.append("dirac worker: each run is a DIRAC job whose engine starts on the local site's node "
                       "(32 slots, 2 cores: the start latency of 100 runs is mostly 100 engines starting on 2 cores); "
                       "per-run polling is what one loop per run would send at the worker's own cycles (each "
                       "search's ids, counted by the server). A target is met when one request asked about every "
                       "job of the batch.")


def inventory_rows(table: Table, data: dict) -> None:
    s, ours = data["sites"], data["ours_s"]
    table.add(f"VM inventory, {s} sites (s) vs the slowest single site", ours, data["slowest_site_s"], "≤ 1.5×",
              ours <= 1.5 * data["slowest_site_s"], unit="s")
    table.add(f"VM inventory, {s} sites (s) vs a sequential loop", ours, data["sequential_s"], "≥ 10× faster (≤ 0.10)",
              ours * 10 <= data["sequential_s"], unit="s")
    table.add(f"VM inventory, {s} sites (s) vs a process per site", ours, data["process_per_site_s"], NONE, None,
              unit="s")
    table.notes.append(f"Inventory: {s} stand-in sites answering every request 50–200 ms late, 20 VMs each; "
                       f"{how_many(data['repeat'])} (process per site: one run).")


def overhead_rows(table: Table, data: dict) -> None:
    if "imports" in data:
        medians = data["imports"]["median_s"]
        for what, variant, label, key in (
                ("`import prefect, prefect_egi.tasks`", "prefect + tasks", "`import prefect` alone", "prefect"),
                ("`import prefect, prefect_egi.tasks.blocks` (every block and task defined)", "prefect + every block",
                 "a minimal Prefect plugin", "minimal plugin")):
            if variant not in medians:  # a JSON file from before the variant existed
                continue
            ours, delta = medians[variant], medians[variant] - medians[key]
            table.add(f"import time: {what} (s) vs {label}", ours, medians[key],
                      f"Δ ≤ +0.2 s (Δ = {delta:+.2f} s)", delta <= 0.2, unit="s")
        table.notes.append(f"Import time: medians of {data['imports']['rounds']} fresh interpreters per variant, "
                           f"interleaved, bytecode cached as after any install; a bare interpreter takes "
                           f"{medians['bare interpreter']:.2f} s (diracx-client's "
                           "`.pth` imports diracx at every start, on both sides). The minimal plugin does "
                           "`from prefect import task, flow` and defines one Block subclass and one task.")
    if "pipeline" in data:
        p = data["pipeline"]
        delta = p["ours_s"] - p["baseline_s"]
        w = p["work"]
        table.add("Prefect overhead per pipeline run (s): flow vs its stages via `.fn`", p["ours_s"], p["baseline_s"],
                  f"reported (Δ = {delta:+.2f} s)", None, unit="s")
        table.notes.append(f"Pipeline: `egi-pipeline` under Prefect's test harness vs the same stages and service "
                           f"tasks called through `.fn` (no flow/task runs, persistence, artifacts, events); "
                           f"{how_many(p['runs'])} (interleaved) after a warm-up; each run: {w['work_items']} work "
                           f"items, {w['grid_jobs']} grid jobs, a summary, {w['vms']} VMs "
                           f"(runs: ours {', '.join(f'{s:.2f}' for s in p['ours_runs_s'])} s; "
                           f"baseline {', '.join(f'{s:.2f}' for s in p['baseline_runs_s'])} s).")


ROWS = {"dataminer": dataminer_rows, "ccp": ccp_rows, "pacing": pacing_rows, "dirac": dirac_rows, "worker": worker_rows, "inventory": inventory_rows, "overhead": overhead_rows}


def render(folder: Path, names: list[str], quick: bool, header: dict) -> str:
    table = Table()
    for name in names:
        data_file, status_file = folder / f"{name}.json", folder / f"{name}.status.json"
        status = json.loads(status_file.read_text()) if status_file.exists() else {}
        if status.get("exit", 0) != 0 or not data_file.exists():
            table.missing(f"{name} benchmark", f"did not complete (exit {status.get('exit', '?')}; see {name}.err)")
            continue
        try:
            ROWS[name](table, json.loads(data_file.read_text()))
        except (KeyError, ZeroDivisionError, ValueError) as exc:
            table.missing(f"{name} benchmark", f"unreadable numbers ({type(exc).__name__}: {exc})")
    times = []
    for name in names:
        status_file = folder / f"{name}.status.json"
        if status_file.exists():
            times.append(f"{name} {json.loads(status_file.read_text())['seconds']:.0f} s")
    missed = [row[0] for row in table.rows if row[-1] == NO]
    lines = [
        f"`python tests/benchmarks/run_all.py{' --quick' if quick else ''}` — {header['when']}, "
        f"{header['machine']}; total {header['total']:.0f} s ({', '.join(times)}); "
        f"load average (1, 5, 15 min) before {header['load_before']}, after {header['load_after']}.",
        "",
        table.markdown(),
        "",
        f"Targets met: {sum(1 for r in table.rows if r[-1] == YES)} of "
        f"{sum(1 for r in table.rows if r[-1] != NONE)}" + (f"; missed: {'; '.join(missed)}." if missed else "."),
        "",
        *[f"- {note}" for note in table.notes],
    ]
    return "\n".join(lines) + "\n"


def machine() -> str:
    import importlib.metadata

    try:
        prefect = importlib.metadata.version("prefect")
    except importlib.metadata.PackageNotFoundError:
        prefect = "?"
    return (f"{os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, Prefect {prefect}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="single runs, fewer job lengths (see above)")
    parser.add_argument("--out", default=str(HERE / "latest.md"), help="where to write the table (markdown)")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--json-dir", help="keep each benchmark's JSON numbers and logs here (default: a temp dir)")
    parser.add_argument("--table-only", action="store_true", help="render the table from --json-dir, run nothing")
    args = parser.parse_args()
    names = args.only or list(BENCHMARKS)
    if args.table_only and not args.json_dir:
        parser.error("--table-only needs --json-dir")
    folder = Path(args.json_dir or tempfile.mkdtemp(prefix="prefect-egi-benchmarks-"))
    folder.mkdir(parents=True, exist_ok=True)

    header = {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
              "load_before": load_average(), "quick": args.quick}
    started = time.perf_counter()
    if args.table_only:
        header.update(json.loads((folder / "run.json").read_text()))
    else:
        print(f"Benchmarks: {', '.join(names)}{' (quick)' if args.quick else ''}; numbers and logs in {folder}")
        for name in names:
            run_benchmark(name, args.quick, folder)
        header.update(total=time.perf_counter() - started, load_after=load_average())
        (folder / "run.json").write_text(json.dumps(header))
    text = render(folder, names, header["quick"], header)
    print("\n" + text)
    Path(args.out).write_text(text)
    print(f"(written to {args.out})")
    failed = [n for n in names if json.loads((folder / f"{n}.status.json").read_text()).get("exit") != 0]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
