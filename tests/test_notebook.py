"""The example notebook, executed headless by a real Jupyter kernel (nbclient): every
cell runs as written — blocks load and save as values inside the kernel's loop, the
pipeline is a plain call, an async flow is awaited."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "deployments" / "notebooks" / "egi-pipeline.ipynb"


def test_the_example_notebook_runs_as_written(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel: its own Prefect home on the embedded API, telemetry off; only the installed
    # package is importable (the kernel starts in a temporary folder, not in the checkout)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    outputs = {}
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            text = "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                           + o.get("data", {}).get("text/markdown", "") for o in cell.outputs)
            outputs[index] = text
            assert not any(o.get("output_type") == "error" for o in cell.outputs), text
    everything = "\n".join(outputs.values())
    assert "coroutine" not in everything
    assert "alice" in everything and "['cell-000', 'cell-001', 'cell-002']" in everything
    assert "3/3 grid jobs done" in everything or "grid jobs done" in everything
    assert "# EGI pipeline" in everything
    assert "hello hello" in everything
    assert "ACTIVE VM(s);" in everything and "DataMiner algorithms" in everything
    assert (tmp_path / "outputs" / "grid").is_dir()
