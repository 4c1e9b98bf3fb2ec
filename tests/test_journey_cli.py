"""The journey from the command line, as a newcomer types it: `egi-flows demo`,
`egi-flows sandbox up|status|down`, `egi-flows run` — real subprocesses, and no
process left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

EGI_FLOWS = str(Path(sys.executable).with_name("egi-flows"))
QUIET = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def processes_marked(mark: str) -> set[int]:
    """Processes that inherited `EGI_TEST_MARK=<mark>`: whatever a command started, and left."""
    needle = f"EGI_TEST_MARK={mark}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def egi_flows(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([EGI_FLOWS, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **QUIET, **(env or {})})


@pytest.mark.timeout(1000)  # the demo's own 900 s, not the suite's 300
def test_the_demo_runs_the_pipeline_and_cleans_up(tmp_path):
    mark = uuid.uuid4().hex
    # PREFECT_API_URL is ignored: the demo runs on the embedded API; a whole pipeline, slow on a busy machine
    done = egi_flows("demo", env={"PREFECT_API_URL": "http://127.0.0.1:9/api", "EGI_TEST_MARK": mark}, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for line in ("Starting the local EGI sandbox", "D4Science CCP", "Blocks saved: egi-checkin, dataminer, diracx, "
                 "fedcloud, ccp", "# EGI pipeline", "| work items | 5 from DataMiner GRID_SPLITTER |", "DIRAC jobs done",
                 "VM(s) of vo.access.egi.eu on 2/4 site(s)", "Artifacts in the Prefect UI:", "Sandbox stopped."):
        assert line in out, line
    assert "[progress] " in out and " 100 %" in out and "[table] vm-inventory: 6 row(s)" in out
    assert "| item | job | printed | output |" in out and "| `processing " in out  # what the grid jobs printed
    # one CCP method, through the D4Science-like front with alice's UMA token for the VRE: its values,
    # and the files of its output.zip, unpacked
    assert "Running the ccp-run flow: D4Science CCP method ccp-write-files" in out
    assert "  CCP ccp-write-files: succeeded, job <http://127.0.0.1:" in out
    assert "  value files = ['demo_1.csv', 'demo_2.csv', 'demo_3.csv']\n  value rows = 6\n" in out
    assert "  4 file(s) unpacked from output.zip into " in out
    for name in ("ccp_data/demo_1.csv", "ccp_data/demo_3.csv", "ccp_data/logs/method.log"):
        assert f"      {name}\n" in out, name
    assert processes_marked(mark) == set()


@pytest.mark.prefect
def test_sandbox_up_run_status_down(prefect_db, tmp_path):
    from prefect.settings import PREFECT_API_URL

    mark = uuid.uuid4().hex
    env = {"PREFECT_EGI_SANDBOX_DIR": str(tmp_path / "sandbox"), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "EGI_TEST_MARK": mark}
    try:
        up = egi_flows("sandbox", "up", "--no-hub", env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "The sandbox is up:" in up.stdout and "Blocks saved in your Prefect API: egi-checkin" in up.stdout
        again = egi_flows("sandbox", "up", env=env)
        assert again.returncode == 0 and "already up" in again.stdout

        status = egi_flows("sandbox", "status", env=env)
        assert status.returncode == 0 and "DiracX" in status.stdout and "FedCloud site CESNET-MCC" in status.stdout

        who = egi_flows("run", "identity", "-p", "credentials_block=egi-checkin", env=env)
        assert who.returncode == 0, who.stderr[-2000:]
        assert "alice" in who.stdout and "vo.access.egi.eu" in who.stdout
        echo = egi_flows("run", "dataminer", "-p", "process=FAST_ECHO", "-p", 'inputs={"text": "hi", "times": 2}',
                         "-p", f"destination={tmp_path / 'dm'}", env=env)
        assert echo.returncode == 0, echo.stderr[-2000:]
        assert "hihi" in echo.stdout or "hi hi" in echo.stdout
        bad = egi_flows("run", "dataminer", "-p", "proces=FAST_ECHO", env=env)
        assert bad.returncode == 2 and "dataminer has no parameter proces" in bad.stderr
    finally:
        down = egi_flows("sandbox", "down", env=env)
    assert down.returncode == 0 and "The sandbox is down." in down.stdout
    assert egi_flows("sandbox", "status", env=env).returncode == 1
    assert processes_marked(mark) == set()
