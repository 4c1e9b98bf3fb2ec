"""`egi-flows demo`: the whole journey on this machine, no credentials, no internet.

Starts the sandbox (`prefect_egi.sandbox.stack`), saves blocks pointing at
it, runs `egi-pipeline` on Prefect's embedded (ephemeral) API, prints what
happened and the artifacts the UI would show, runs one D4Science CCP method
(`ccp-run` of `ccp-write-files`) and prints what it produced, and stops everything. It runs
in a private PREFECT_HOME so it never touches your own blocks or runs; pass
`keep` to look at them afterwards (`PREFECT_HOME=<dir> prefect server start`).
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

QUIET = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}


def _warm_up_prefect() -> None:
    """Start the embedded API (it migrates a fresh database) while the sandbox starts."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.hello()


def run_demo(home: str | None = None, say: Callable[[str], None] = print, hub: bool = False) -> dict:
    """Run the demo; returns what it printed as data (for tests): stages, artifacts, times."""
    home = home or tempfile.mkdtemp(prefix="prefect-egi-demo-")
    os.environ.update(QUIET | {"PREFECT_HOME": home})
    os.environ.pop("PREFECT_API_URL", None)  # the embedded API, whatever the user's profile says
    started = time.monotonic()
    from prefect_egi.sandbox.stack import Sandbox, describe, save_blocks

    sandbox = Sandbox(Path(home) / "sandbox", hub=hub)
    say(f"Starting the local EGI sandbox and Prefect's embedded API (home: {home}) …")
    try:
        with ThreadPoolExecutor(2) as pool:
            prefect_ready = pool.submit(_warm_up_prefect)
            info = sandbox.start()
            prefect_ready.result()
        for what, where in describe(info):
            say(f"  {what:<24} {where}")
        save_blocks(info)
        say(f"Blocks saved: egi-checkin, dataminer, diracx, fedcloud, ccp ({time.monotonic() - started:.0f} s).")
        say("Running the egi-pipeline flow: Check-in → DataMiner → DIRAC → DataMiner → FedCloud …")
        from prefect_egi.flows.pipeline import egi_pipeline

        outputs = Path(home) / "pipeline-outputs"
        state = egi_pipeline(destination=str(outputs), return_state=True)
        if not state.is_completed():
            say(f"The pipeline ended {state.name}: {state.message}")
            return {"state": state.name, "home": home}
        report = state.result()
        shown = _show(state.state_details.flow_run_id, say)
        ccp = _run_ccp_method(Path(home) / "ccp-outputs", say)
        if ccp is None:
            return {"state": "Failed", "home": home, "report": report, "artifacts": shown}
        say(f"Done in {time.monotonic() - started:.0f} s. Outputs under {outputs} and {Path(home) / 'ccp-outputs'}.")
        return {"state": state.name, "home": home, "report": report, "artifacts": shown, "ccp": ccp,
                "seconds": time.monotonic() - started}
    finally:
        sandbox.stop()
        say("Sandbox stopped.")


#: the CCP method the demo runs, and its inputs: it writes files, CCP returns them as output.zip
CCP_METHOD, CCP_INPUTS = "ccp-write-files", {"count": 3, "prefix": "demo"}


def _run_ccp_method(destination: Path, say: Callable[[str], None]) -> Any:
    """Run one CCP method with the `ccp-run` flow; print its values and the files it wrote.
    Returns its `CCPResult`, or None (said why) when the run did not complete."""
    from prefect_egi.flows.ccp import ccp_run

    say(f"Running the ccp-run flow: D4Science CCP method {CCP_METHOD} {CCP_INPUTS} …")
    state = ccp_run(method=CCP_METHOD, inputs=CCP_INPUTS, destination=str(destination), return_state=True)
    if not state.is_completed():
        say(f"The ccp-run flow ended {state.name}: {state.message}")
        return None
    result = state.result()
    say(f"  CCP {result.process}: {result.state}, job <{result.status_url}>")
    for name, value in result.values.items():
        say(f"  value {name} = {value}")
    say(f"  {len(result.unpacked)} file(s) unpacked from output.zip into {result.folder}:")
    for name in result.unpacked:
        say(f"      {name}")
    return result


def _show(flow_run_id: object, say: Callable[[str], None]) -> list[str]:
    """Print the run's artifacts as the UI shows them: the report's markdown, tables as rows,
    progress as a percentage."""
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    artifacts = sorted(artifacts, key=lambda a: str(a.created or ""))
    say("Artifacts in the Prefect UI:")
    for artifact in artifacts:
        title = artifact.key or artifact.description or artifact.type
        if artifact.type == "progress":
            say(f"  [progress] {artifact.description}: {float(artifact.data or 0):.0f} %")
        elif artifact.type == "table":
            rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
            say(f"  [table] {title}: {len(rows)} row(s)")
            for row in rows[:4]:
                say("      " + " | ".join(str(v) for v in (row.values() if isinstance(row, dict) else row)))
        elif artifact.type == "markdown" and artifact.key != "egi-pipeline":
            say(f"  [markdown] {title}")
    report = next((a for a in artifacts if a.key == "egi-pipeline"), None)
    if report is not None:
        say("")
        say(str(report.data))
        say("")
    return [a.key or a.type or "" for a in artifacts]
