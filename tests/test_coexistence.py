"""prefect-egi lives beside a user's own `tasks` and `flows`: the plugin installs nothing but
`prefect_egi`, so the generic names stay the user's.

The wheel used to install top-level packages named `tasks`, `flows` and `deployments`. Then:

- in a folder holding its own `tasks.py`, `import flows.pipeline` failed (`No module named
  'tasks.artifacts'; 'tasks' is not a package`), and Prefect's collection loader, importing the
  `prefect.collections` entry point, executed the user's `tasks.py` and printed
  `Failed to load collection 'prefect_egi'`;
- a user's own Prefect project with `tasks/` and `flows/` folders without `__init__.py` could no
  longer import its modules (a regular package in site-packages wins over a namespace folder,
  even with the project first on sys.path), so a worker failed to load the user's unrelated flow.

Each check starts a fresh interpreter IN the user's folder (as `python -c` there: the folder
first on sys.path), or, last, a real server, work pool and worker running the user's deployment.
User modules append their name to `imported.log` when executed, so a test sees who ran them.
`EGI_COEXIST_PYTHON` names another interpreter for the plain-interpreter checks (e.g. a venv
with an older prefect-egi, to see them fail); by default it is this one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import prefect
import pytest
from prefect_stack import PREFECT, start_server, wait_until

PYTHON = os.environ.get("EGI_COEXIST_PYTHON", sys.executable)
LOG = "imported.log"
GREETING = "hello from the user's own tasks.helpers"
POOL = "user-process"
WORKER_ENV = {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5",
              "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_WORKER_HEARTBEAT_SECONDS": "5"}

# Run in the user's folder before each check: `facts(**kw)` prints them as the last line.
PRELUDE = """\
import json, sys, types

def facts(**found):
    print(json.dumps(found))

def collection(name="prefect_egi"):
    from prefect.plugins import load_prefect_collections
    entry = load_prefect_collections().get(name)
    return {"module": isinstance(entry, types.ModuleType), "entry": getattr(entry, "__name__", repr(entry))}
"""


# --------------------------------------------------------------------------- the user's files


def write_user_module(path: Path, body: str = "") -> None:
    """A user module whose execution is visible: it appends its name to `imported.log` (in the
    folder the interpreter started in) and prints it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'import pathlib\nwith open(pathlib.Path.cwd() / "{LOG}", "a") as _log:\n'
                    f'    _log.write(__name__ + "\\n")\nprint("USER MODULE", __name__)\n{body}')


def user_folder(root: Path) -> Path:
    """A folder of scripts: its own `tasks.py` and `flows.py`."""
    write_user_module(root / "tasks.py", "OWNER = 'user'\n")
    write_user_module(root / "flows.py", "OWNER = 'user'\n")
    return root


def user_project(root: Path, packages: bool) -> Path:
    """A user's Prefect project: `tasks/helpers.py` and `flows/hello.py` (a flow using the helper),
    as regular packages (`packages`) or as namespace folders without `__init__.py`."""
    write_user_module(root / "tasks" / "helpers.py", f"def greeting() -> str:\n    return {GREETING!r}\n")
    write_user_module(root / "flows" / "hello.py", textwrap.dedent("""
        from prefect import flow, get_run_logger
        import tasks.helpers

        @flow
        def hello() -> str:
            message = tasks.helpers.greeting()
            get_run_logger().info("%s (%s)", message, tasks.helpers.__file__)
            return message
        """))
    if packages:
        for folder in ("tasks", "flows"):
            (root / folder / "__init__.py").write_text("")
    return root


def executed(folder: Path) -> list[str]:
    """The user modules executed in `folder`, in order."""
    log = folder / LOG
    return log.read_text().split() if log.exists() else []


def run_in(folder: Path, code: str, timeout: float = 180) -> tuple[dict[str, Any], str]:
    """`python -c PRELUDE + code` started in `folder` (no PYTHONPATH: a user's plain shell);
    the facts it printed last, and its whole output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    result = subprocess.run([PYTHON, "-c", PRELUDE + textwrap.dedent(code)], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=timeout, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return json.loads(result.stdout.strip().splitlines()[-1]), output


# --------------------------------------------------------------------------- plain interpreters


def test_a_folder_with_its_own_tasks_py_imports_it_beside_the_plugins_flows(tmp_path):
    folder = user_folder(tmp_path / "scripts")
    found, output = run_in(folder, """
        import tasks, flows                  # the user's modules, first
        import prefect_egi.flows.pipeline    # then the plugin's flows (they import prefect_egi.tasks.*)
        from prefect_egi.tasks import DataMiner
        facts(tasks=tasks.__file__, owner=sys.modules["tasks"].OWNER, flows=flows.__file__,
              pipeline=prefect_egi.flows.pipeline.__name__, dataminer=DataMiner.__module__)
        """)
    assert found["tasks"] == str(folder / "tasks.py") and found["owner"] == "user", found
    assert found["flows"] == str(folder / "flows.py"), found
    assert found["pipeline"] == "prefect_egi.flows.pipeline", found
    assert found["dataminer"].startswith("prefect_egi.tasks."), found
    assert executed(folder) == ["tasks", "flows"], output


def test_collection_loading_beside_a_users_tasks_py_loads_the_plugin_without_running_it(tmp_path):
    folder = user_folder(tmp_path / "scripts")
    found, output = run_in(folder, """
        loaded = collection()
        before = "tasks" in sys.modules
        import tasks                         # afterwards, `tasks` is still the user's
        facts(collection=loaded, tasks_imported_by_prefect=before, tasks=tasks.__file__)
        """)
    assert found["collection"] == {"module": True, "entry": "prefect_egi.tasks.blocks"}, output
    assert "Failed to load collection" not in output, output
    assert found["tasks_imported_by_prefect"] is False, output
    assert found["tasks"] == str(folder / "tasks.py"), found
    assert executed(folder) == ["tasks"], output  # once: by the user's own import


@pytest.mark.parametrize("packages", [True, False], ids=["with-init-py", "namespace-folders"])
def test_a_users_tasks_and_flows_folders_import_their_own_modules_beside_the_plugin(tmp_path, packages):
    project = user_project(tmp_path / "project", packages)
    found, output = run_in(project, """
        loaded = collection()                # as a worker does before it loads a flow
        import tasks.helpers, flows.hello    # the user's modules
        import prefect_egi.tasks
        facts(collection=loaded, helpers=tasks.helpers.__file__, hello=flows.hello.__file__,
              greeting=tasks.helpers.greeting(), plugin=prefect_egi.tasks.__name__)
        """)
    assert found["collection"] == {"module": True, "entry": "prefect_egi.tasks.blocks"}, output
    assert "Failed to load collection" not in output, output
    assert found["helpers"] == str(project / "tasks" / "helpers.py"), found
    assert found["hello"] == str(project / "flows" / "hello.py"), found
    assert found["greeting"] == GREETING and found["plugin"] == "prefect_egi.tasks", found
    assert executed(project) == ["tasks.helpers", "flows.hello"], output


# --------------------------------------------------------------------------- a real worker


def user_prefect_yaml(project: Path) -> str:
    """The user's own prefect.yaml: one deployment of `flows/hello.py:hello`, run in the project."""
    return textwrap.dedent(f"""\
        name: user-project
        prefect-version: {prefect.__version__}
        build: null
        push: null
        pull:
          - prefect.deployments.steps.set_working_directory:
              directory: {json.dumps(str(project))}
        deployments:
          - name: hello
            entrypoint: flows/hello.py:hello
            work_pool:
              name: {POOL}
        """)


@pytest.mark.prefect
@pytest.mark.timeout(900)
def test_a_worker_runs_the_users_own_deployment_while_the_plugin_is_installed(tmp_path):
    """The user's project (namespace folders) deployed from its own prefect.yaml, a worker started
    in it, prefect-egi installed and its blocks registered: the run completes with the user's helper."""
    project = user_project(tmp_path / "project", packages=False)
    (project / "prefect.yaml").write_text(user_prefect_yaml(project))
    stack = start_server(tmp_path / "stack")
    try:
        stack.create_work_pool(POOL)
        worker = stack.spawn("worker", [*PREFECT, "worker", "start", "--pool", POOL, "--name", "user-worker"],
                             cwd=project, **WORKER_ENV)
        registered = stack.cli("block", "register", "-m", "prefect_egi.tasks.blocks", cwd=project)
        assert "Failed to load collection" not in registered, registered
        deployment = stack.deploy("hello", project_dir=project)
        stack.wait_for_worker(worker, POOL, timeout=180)
        run = stack.run_deployment(deployment["id"])
        final = stack.wait_for_flow_run(run["id"], timeout=300)

        def log_text() -> str:
            return "\n".join(line["message"] for line in stack.logs(run["id"]))

        assert final["state"]["type"] == "COMPLETED", f"{final['state']}\n{log_text()}"
        used = f"{GREETING} ({project / 'tasks' / 'helpers.py'})"
        wait_until(lambda: used in log_text(), 60, "the flow's log line naming the user's helper",
                   on_timeout=log_text)
        worker_log = worker.log.read_text(errors="replace")
        assert "Failed to load collection" not in worker_log, worker_log
    finally:
        stack.stop()
