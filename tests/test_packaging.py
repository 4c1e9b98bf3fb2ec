"""The distribution as installed: entry points, console script, a cheap `import tasks`."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import distribution, entry_points


def test_prefect_collection_entry_point_points_at_tasks():
    (entry,) = [e for e in entry_points(group="prefect.collections") if e.name == "prefect_egi"]
    assert entry.value == "tasks"
    assert entry.dist.name == "prefect-egi"


def test_console_script_is_installed():
    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == "egi-flows"]
    assert entry.value == "flows.cli:main"
    assert distribution("prefect-egi").requires is not None


def test_import_tasks_keeps_heavy_clients_out():
    code = (
        # (diracx-client's own .pth imports the `diracx` namespace at interpreter start: check its client)
        "import sys, tasks; heavy = [m for m in ('owslib', 'diracx.client', 'diracx.api', 'novaclient', "
        "'keystoneauth1', 'lxml') "
        "if any(k == m or k.startswith(m + '.') for k in sys.modules)]; print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_deployment_entrypoint_loads_a_flow():
    from pathlib import Path

    import yaml
    from prefect.flows import load_flow_from_entrypoint

    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((root / "prefect.yaml").read_text())
    assert config["deployments"]
    for deployment in config["deployments"]:
        assert deployment["work_pool"]["name"] == "egi-process"
        path, _, name = deployment["entrypoint"].partition(":")
        loaded = load_flow_from_entrypoint(f"{root / path}:{name}")
        assert set(deployment.get("parameters", {})) <= set(loaded.parameters.properties)
