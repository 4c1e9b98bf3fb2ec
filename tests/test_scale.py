"""The scale run, small enough for CI: SQLite, one process worker, 5 concurrent dirac-batch runs
× 40 DIRAC jobs, through the same code as `tests/scale/run_scale.py` (PostgreSQL, 2 workers,
50 runs, 10,000 jobs: see deployments/README.md, "Growing beyond one machine")."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "scale" / "run_scale.py"

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

# Bounds for the worker's memory. Measured here (one worker, five concurrent dirac-batch runs):
# the worker itself ~115 MiB, each flow-run process ~150-250 MiB. The bound leaves room for a
# slower or different machine, but a leak per job (40 per run) or per run would cross it.
WORKER_OWN_MIB = 300
FLOW_RUN_MIB = 500


def _scale():
    """The script as a module (it lives outside the test path on purpose)."""
    if "run_scale" not in sys.modules:
        spec = importlib.util.spec_from_file_location("run_scale", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["run_scale"] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["run_scale"]


def test_scale_script_is_not_collected():
    """The full-size script is run by hand, never by pytest."""
    assert not SCRIPT.name.startswith("test_") and not SCRIPT.name.endswith("_test.py")


def test_small_scale_on_sqlite_with_one_worker(tmp_path):
    scale = _scale()
    config = scale.ScaleConfig(database="sqlite", workers=1, runs=5, jobs_per_run=40, flow="dirac-batch",
                               pilot_duration=1.0, timeout=420, workdir=tmp_path / "scale", progress=False)
    report = scale.run_scale(config)
    print(report.text())  # shown with -s, and in the failure output below

    assert report.completed == 5, f"runs {report.runs}: {report.failures}\n{report.text()}"
    assert report.expected_jobs == 200 and report.server_jobs == 200, report.text()
    assert report.duplicates == 0 and report.duplicate_names == 0, report.text()
    assert report.lost == 0 and report.flows_succeeded_jobs == 200, report.text()
    assert report.server_statuses == {"Done": 200}, report.text()
    # one bulk status request per poll cycle per flow, as the DiracX server saw them
    assert len(report.polling) == 5 and all(p.jobs == 40 and p.cycles >= 1 for p in report.polling), report.text()
    assert report.unattributed_searches == 0, report.text()
    assert report.max_requests_per_cycle == 1.0, report.text()
    # memory: the worker stays small; each flow run's process is bounded
    (worker,) = report.worker_peaks().values()
    mib = 1024 * 1024
    assert worker["own"] < WORKER_OWN_MIB * mib, report.text()
    assert worker["largest_child_tree"] < FLOW_RUN_MIB * mib, report.text()
    assert worker["tree"] < WORKER_OWN_MIB * mib + 5 * FLOW_RUN_MIB * mib, report.text()
    assert worker["children"] <= 5, report.text()
