"""The distribution as installed: entry points, console script, a cheap `import tasks`."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import distribution, entry_points


def test_prefect_collection_entry_point_points_at_the_blocks():
    (entry,) = [e for e in entry_points(group="prefect.collections") if e.name == "prefect_egi"]
    assert entry.value == "tasks.blocks"
    assert entry.dist.name == "prefect-egi"


def _fresh(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_every_block_is_known_to_prefect_after_it_loads_the_collections():
    code = ("from prefect.plugins import load_prefect_collections; from prefect.blocks.core import Block; "
            "load_prefect_collections(); print(sorted(Block.get_block_class_from_key(k).__name__ for k in "
            "('egi-checkin-credentials', 'egi-dataminer', 'egi-diracx', 'egi-fedcloud', 'egi-notebooks-hub')))")
    assert _fresh(code) == "['CheckinCredentials', 'DataMiner', 'DiracX', 'FedCloud', 'NotebooksHub']"


def test_import_tasks_defines_nothing_until_a_name_is_used():
    """`import tasks` leaves Prefect's task/flow machinery and the blocks unloaded; the public
    names still work, and `dir()` lists them (`prefect block register -m tasks` walks it)."""
    code = ("import sys, inspect, tasks; before = sorted(m for m in ('prefect.main', 'tasks.dataminer', "
            "'tasks.checkin.block') if m in sys.modules); from prefect.blocks.core import Block; "
            "blocks = [n for n, c in inspect.getmembers(tasks) if Block.is_block_class(c)]; "
            "print(before, blocks, tasks.run_algorithm.name, tasks.DataMiner is sys.modules['tasks.dataminer'].DataMiner)")
    assert _fresh(code) == ("[] ['CheckinCredentials', 'DataMiner', 'DiracX', 'FedCloud', 'NotebooksHub'] "
                            "dataminer-run True")


def test_plain_python_layers_import_without_prefect():
    code = ("import sys, tasks.checkin.tokens, tasks.checkin.provider, tasks.fedcloud, tasks.remote; "
            "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))")
    assert _fresh(code) == "[]"


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
