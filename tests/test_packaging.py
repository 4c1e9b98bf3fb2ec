"""The distribution as installed: one namespace, entry points, console script, a cheap import."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib.metadata import distribution, entry_points
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _fresh(code: str, cwd: Path | None = None) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel .` builds from a copy of this checkout (setuptools leaves a `build/`
    folder behind, whose stale files a later build would package)."""
    import shutil

    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md", "tasks", "flows", "deployments"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                           if (REPO / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("prefect_egi-*.whl")
    return built


def test_the_wheel_installs_one_top_level_package_and_every_module(wheel):
    """Nothing but `prefect_egi` lands in site-packages' top level (a user's own `tasks.py`,
    `tasks/` or `flows/` keep working), and every module of the repository's folders is in it."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert archive.read(top_level).decode().split() == ["prefect_egi"]
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"prefect_egi"}
    expected = {f"prefect_egi/{package}/{path.relative_to(REPO / folder).as_posix()}"
                for package, folder in (("tasks", "tasks"), ("flows", "flows"), ("sandbox", "deployments/sandbox"))
                for path in (REPO / folder).rglob("*.py") if "__pycache__" not in path.parts}
    assert expected - set(names) == set()  # a new subpackage must be listed in pyproject.toml


def test_prefect_collection_entry_point_points_at_the_blocks():
    (entry,) = [e for e in entry_points(group="prefect.collections") if e.name == "prefect_egi"]
    assert entry.value == "prefect_egi.tasks.blocks"
    assert entry.dist.name == "prefect-egi"


def test_every_block_is_known_to_prefect_after_it_loads_the_collections():
    """Prefect's loader defines every block (`BLOCKS`, the one list), and every concrete block
    class of the package is in that list."""
    from prefect_egi.tasks.blocks import BLOCKS

    code = ("from prefect.plugins import load_prefect_collections; from prefect.blocks.core import Block; "
            "load_prefect_collections(); from prefect_egi.tasks.blocks import BLOCKS; "
            "print(sorted(Block.get_block_class_from_key(b.get_block_type_slug()).__name__ for b in BLOCKS))")
    assert _fresh(code) == str(sorted(b.__name__ for b in BLOCKS))
    assert [b.get_block_type_slug() for b in BLOCKS] == [
        "egi-checkin-credentials", "egi-dataminer", "egi-ccp", "egi-diracx", "egi-fedcloud", "egi-notebooks-hub"]


def test_import_defines_nothing_until_a_name_is_used():
    """`import prefect_egi.tasks` leaves Prefect's task/flow machinery and the blocks unloaded;
    the public names still work, and `dir()` lists them (`prefect block register -m` walks it)."""
    code = ("import sys, inspect, prefect_egi.tasks as t; before = sorted(m for m in ('prefect.main', "
            "'prefect_egi.tasks.dataminer.tasks', 'prefect_egi.tasks.checkin.block') if m in sys.modules); "
            "from prefect.blocks.core import Block; "
            "blocks = [n for n, c in inspect.getmembers(t) if Block.is_block_class(c)]; "
            "print(before, blocks, t.run_algorithm.name, "
            "t.DataMiner is sys.modules['prefect_egi.tasks.dataminer.block'].DataMiner)")
    assert _fresh(code) == ("[] ['CCP', 'CheckinCredentials', 'DataMiner', 'DiracX', 'FedCloud', 'NotebooksHub'] "
                            "dataminer-run True")


def test_console_script_is_installed():
    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == "egi-flows"]
    assert entry.value == "prefect_egi.flows.cli:main"
    assert distribution("prefect-egi").requires is not None


def test_import_keeps_heavy_clients_out():
    code = (
        # (diracx-client's own .pth imports the `diracx` namespace at interpreter start: check its client)
        "import sys, prefect_egi.tasks, prefect_egi.flows; heavy = [m for m in ('owslib', 'diracx.client', "
        "'diracx.api', 'novaclient', 'keystoneauth1', 'lxml') "
        "if any(k == m or k.startswith(m + '.') for k in sys.modules)]; print(heavy)"
    )
    assert _fresh(code) == "[]"


def test_every_deployment_entrypoint_loads_a_flow_installed_and_from_a_checkout():
    """prefect.yaml names each flow by module (`prefect_egi.flows.x:fn`: a worker needs only
    the installed package); the same flow also loads as a file of a checkout (`flows/x.py:fn`,
    what `prefect deploy` of a copied project would name), and both agree on its parameters."""
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert config["deployments"]
    for deployment in config["deployments"]:
        assert deployment["work_pool"]["name"] == "egi-process"
        module, _, name = deployment["entrypoint"].partition(":")
        assert module.startswith("prefect_egi.flows."), deployment["entrypoint"]
        installed = load_flow_from_entrypoint(deployment["entrypoint"])
        checkout = load_flow_from_entrypoint(f"{REPO / 'flows' / module.rsplit('.', 1)[1]}.py:{name}")
        assert installed.name == checkout.name
        assert installed.parameters.properties.keys() == checkout.parameters.properties.keys()
        assert set(deployment.get("parameters", {})) <= set(installed.parameters.properties)
