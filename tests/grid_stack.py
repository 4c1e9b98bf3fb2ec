"""A `dirac` work pool on a real stack, for tests and benchmarks: a Prefect server, the
pool made with `prefect work-pool create --type dirac`, a DiracX 0.7 that records every job
search, the local site's pilot (it really runs each job's script: here a flow run's engine),
a DiracX block and `prefect worker start` of the installed package.

The flows live in a project folder (not in prefect-egi): a deployment made through the API
names `grid_flows.py:<flow>` as its entrypoint, without pull steps, and the file travels to
the node in each job's input sandbox — what a researcher does on EGI when the node cannot
clone a repository.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from prefect_stack import start_server, wait_until

FLOWS = textwrap.dedent('''
    import os
    import time
    from pathlib import Path

    from prefect import flow, get_run_logger


    @flow
    def grid_hello(name: str = "grid", seconds: float = 0.0) -> str:
        here = os.getcwd()
        Path("hello.txt").write_text(f"hello {name} from {here}\\n")
        get_run_logger().info("grid_hello ran in %s", here)
        time.sleep(seconds)
        return here
''')
API_KEY = "pnu_prefect-egi-test-key-0123456789abcdef"  # the worker's; must never reach a JDL or a log
SITE = "DIRAC.Sandbox.local"


class Grid:
    """The stack of this module's tests."""

    def __init__(self, root: Path, diracx, stack, pilot, project: Path, searches: Path):
        self.root, self.diracx, self.stack, self.pilot = root, diracx, stack, pilot
        self.project, self.searches = project, searches
        self.outputs = root / "outputs"
        self.deployments: dict[str, str] = {}
        self.worker = None

    def start_worker(self, name: str = "grid-worker"):
        self.worker = self.stack.start_worker(
            "grid", name=name, PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="5",
            PREFECT_WORKER_HEARTBEAT_SECONDS="5", PREFECT_API_KEY=API_KEY)
        return self.worker

    def deployment(self, name: str, entry: str = "grid_hello", **job_variables) -> str:
        """A deployment of `grid_flows.py:<entry>` on the pool (made once per name)."""
        if name not in self.deployments:
            flow = self.stack.api("POST", "/flows/", json={"name": entry.replace("_", "-")})
            variables = {"input_sandbox": [str(self.project / "grid_flows.py")], "output_sandbox": ["hello.txt"],
                         "fetch_outputs_to": str(self.outputs), **job_variables}
            made = self.stack.api("POST", "/deployments/", json={
                "name": name, "flow_id": flow["id"], "entrypoint": f"grid_flows.py:{entry}",
                "work_pool_name": "grid", "job_variables": variables, "pull_steps": [], "path": None})
            self.deployments[name] = made["id"]
        return self.deployments[name]

    def run(self, deployment_id: str, **parameters) -> str:
        # 20 engines on 2 cores keep the server's SQLite busy: its 503s ("database is locked")
        # are retried longer than the stack's default 30 s (the write was rolled back)
        return self.stack.api("POST", f"/deployments/{deployment_id}/create_flow_run",
                              json={"parameters": parameters}, retry_for=180)["id"]

    def jobs(self, *flow_run_ids: str) -> list[dict]:
        """DiracX's rows for the jobs named after these flow runs."""
        import asyncio

        from prefect_egi.tasks.dirac.worker import job_name

        async def search():
            async with self.diracx_pilot_client() as api:
                return await api.jobs.search(
                    parameters=["JobID", "JobName", "Status", "MinorStatus", "ApplicationStatus"],
                    search=[{"parameter": "JobName", "operator": "in", "values": [job_name(i) for i in flow_run_ids]}],
                    per_page=1000)

        return asyncio.run(search())

    def job_ended(self, flow_run_id: str, timeout: float = 120) -> dict:
        """The run's job once DIRAC has a final status for it."""
        def ended() -> dict | None:
            (job,) = self.jobs(flow_run_id)
            return job if job["Status"] in ("Done", "Failed", "Killed") else None

        return wait_until(ended, timeout, f"the DIRAC job of flow run {flow_run_id} to end")

    def diracx_pilot_client(self):
        from diracx.client.aio import AsyncDiracClient
        from diracx.core.preferences import DiracxPreferences

        (vo, creds), *_ = self.diracx.info["vos"].items()
        return AsyncDiracClient(diracx_preferences=DiracxPreferences(url=self.diracx.info["url"],
                                                                     credentials_path=creds["pilot"]))

    def worker_searches(self, job_ids: set[int]) -> list[dict]:
        """The server's record of the searches about these jobs (the worker's status polls)."""
        rows = [json.loads(line) for line in self.searches.read_text().splitlines() if line.strip()]
        return [r for r in rows if r["ids"] and set(r["ids"]) & job_ids]

    def log_text(self, flow_run_id: str) -> str:
        time.sleep(1)  # the worker's and the node's log batches
        return "\n".join(line["message"] for line in self.stack.api(
            "POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}},
                                          "sort": "TIMESTAMP_ASC", "limit": 200}))

    def log_with(self, flow_run_id: str, text: str, timeout: float = 60) -> str:
        """The run's logs once they hold `text` (the worker sends its log lines in batches)."""
        def found() -> str | None:
            logs = self.log_text(flow_run_id)
            return logs if text in logs else None

        return wait_until(found, timeout, f"{text!r} in the logs of flow run {flow_run_id}",
                          on_timeout=lambda: self.log_text(flow_run_id))

    def wait_for_state(self, flow_run_id: str, state: str, timeout: float = 240) -> dict:
        def reached() -> dict | None:
            run = self.stack.api("GET", f"/flow_runs/{flow_run_id}")
            return run if run["state"]["type"] == state else None

        return wait_until(reached, timeout, f"flow run {flow_run_id} {state}")


@contextlib.contextmanager
def grid_stack(root: Path, slots: int = 8) -> Iterator[Grid]:
    """The whole stack under `root`, stopped on exit. `slots`: jobs the site runs at once
    (DIRAC's default pilot takes one job per slot; 8 engines at once is what 2 cores and the
    Prefect server's SQLite sustain — the others wait, Waiting, as on a full site)."""
    from prefect_egi.sandbox.peers import start_peer
    from prefect_egi.tasks import DiracX

    searches = root / "searches.jsonl"
    # the servers' SQLite databases on tmpfs when there is one (as tests/scale does): they
    # fsync every commit, and 8 engines, the worker and the pilot writing at once made the
    # Prefect server answer 503 ("database is locked") for minutes on disk
    shm = Path("/dev/shm")
    fast = Path(tempfile.mkdtemp(prefix="prefect-egi-grid-", dir=shm if shm.is_dir() else None))
    diracx = start_peer("diracx-grid", "diracx_peer.py", "--vo", "egi.test:egi_user:alice",
                        "--record-searches", str(searches), "--workdir", str(fast / "diracx"), timeout=120)
    (vo, creds), *_ = diracx.info["vos"].items()
    pilot = start_peer("pilot-grid", "dirac_pilot.py", "--url", diracx.info["url"], "--credentials", creds["pilot"],
                       "--keystore", diracx.info["keystore"], "--job-db", diracx.info["job_db"],
                       "--registry", diracx.info["registry"], "--workdir", str(root / "site"), "--site", SITE,
                       "--slots", str(slots), "--duration", "0", timeout=60)
    stack = start_server(root / "stack", database_url=f"sqlite+aiosqlite:///{fast / 'prefect.db'}")
    project = root / "project"
    project.mkdir(exist_ok=True)
    (project / "grid_flows.py").write_text(FLOWS)
    try:
        stack.cli("work-pool", "create", "grid", "--type", "dirac")
        stack.save_blocks({"diracx": DiracX(url=diracx.info["url"], vo=vo, group=creds["group"],
                                            credentials_path=creds["user"])})
        grid = Grid(root, diracx, stack, pilot, project, searches)
        grid.start_worker()
        yield grid
    finally:
        stack.stop()
        pilot.stop()
        diracx.stop()
        kept = root / "stack" / "server"  # where the session's secret sweep looks (STACK_ROOTS)
        kept.mkdir(parents=True, exist_ok=True)
        for database in fast.glob("prefect.db*"):
            shutil.copy2(database, kept / database.name)
        shutil.rmtree(fast, ignore_errors=True)
