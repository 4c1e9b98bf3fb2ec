"""`egi-flows demo`, `egi-flows sandbox up|down|status` and `egi-flows run`.

Kept apart from the token and DIRAC commands: these start processes and run
flows. Heavy imports (Prefect, the flows) happen inside the commands, so
`egi-flows --help` stays instant.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

SANDBOX_HELP = """The local EGI-like sandbox: Check-in, DataMiner, DiracX (+ a local site that runs the jobs),
FedCloud sites and the Notebooks hub, as processes on 127.0.0.1.

`up` starts it in the background and saves the blocks every flow uses by default
(egi-checkin, dataminer, diracx, fedcloud, notebooks) in your current Prefect API;
`status` says where everything listens; `down` stops it all.
"""
sandbox_app = typer.Typer(help=SANDBOX_HELP, no_args_is_help=True)

FLOWS = {
    "pipeline": ("prefect_egi.flows.pipeline", "egi_pipeline"),
    "identity": ("prefect_egi.flows.identity", "egi_identity"),
    "dataminer": ("prefect_egi.flows.dataminer", "dataminer_run"),
    "ccp": ("prefect_egi.flows.ccp", "ccp_run"),
    "dirac-batch": ("prefect_egi.flows.dirac", "dirac_batch"),
    "vm-inventory": ("prefect_egi.flows.inventory", "fedcloud_vm_inventory"),
    "notebooks-server": ("prefect_egi.flows.notebooks", "notebooks_server"),
}


def _sandbox_dir() -> Path:
    return Path(os.environ.get("PREFECT_EGI_SANDBOX_DIR", "~/.prefect-egi/sandbox")).expanduser()


def _state() -> dict | None:
    path = _sandbox_dir() / "state.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _print_where(info: dict) -> None:
    from prefect_egi.sandbox.stack import describe

    for what, where in describe(info):
        typer.echo(f"  {what:<24} {where}")


@sandbox_app.command("up")
def sandbox_up(
    hub: Annotated[bool, typer.Option("--hub/--no-hub", help="Also start the EGI Notebooks hub (JupyterHub).")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for everything to listen.")] = 180.0,
) -> None:
    """Start the sandbox in the background and save blocks pointing at it."""
    state = _state()
    if state and _alive(state["supervisor"]):
        typer.echo("The sandbox is already up:")
        _print_where(state)
        return
    folder = _sandbox_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json").unlink(missing_ok=True)
    log = (folder / "sandbox.log").open("ab")
    command = [sys.executable, "-m", "prefect_egi.sandbox.stack", "--state", str(folder / "state.json"),
               "--workdir", str(folder / "work"), *([] if hub else ["--no-hub"])]
    supervisor = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    typer.echo("Starting the sandbox …")
    deadline = time.monotonic() + timeout
    while (state := _state()) is None:
        if supervisor.poll() is not None or time.monotonic() > deadline:
            supervisor.kill() if supervisor.poll() is None else None
            tail = (folder / "sandbox.log").read_text(errors="replace")[-1500:]
            typer.echo(f"The sandbox did not start (see {folder / 'sandbox.log'}):\n{tail}", err=True)
            raise typer.Exit(1)
        time.sleep(0.3)
    from prefect_egi.sandbox.stack import save_blocks

    saved = save_blocks(state)
    typer.echo("The sandbox is up:")
    _print_where(state)
    typer.echo(f"Blocks saved in your Prefect API: {', '.join(saved)}.")
    typer.echo("Try: egi-flows run pipeline        Stop: egi-flows sandbox down")


@sandbox_app.command("status")
def sandbox_status() -> None:
    """Say whether the sandbox is up and where everything listens (exit 1 when it is down)."""
    state = _state()
    if not state or not _alive(state["supervisor"]):
        typer.echo("The sandbox is down. Start it with: egi-flows sandbox up")
        raise typer.Exit(1)
    dead = [name for name, pid in state["pids"].items() if not _alive(pid)]
    typer.echo("The sandbox is up" + (f", but these peers died: {', '.join(dead)}" if dead else "") + ":")
    _print_where(state)


@sandbox_app.command("down")
def sandbox_down(timeout: Annotated[float, typer.Option(help="Seconds to wait before killing.")] = 30.0) -> None:
    """Stop the sandbox and every process it started."""
    state = _state()
    if not state:
        typer.echo("The sandbox is not running.")
        return
    if _alive(state["supervisor"]):
        os.kill(state["supervisor"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(state["supervisor"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in [state["supervisor"], *state["pids"].values()]:  # whatever did not stop by itself
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    (_sandbox_dir() / "state.json").unlink(missing_ok=True)
    typer.echo("The sandbox is down.")


def _value(text: str) -> object:
    """`-p` values: JSON when they parse (numbers, lists, objects, true), else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def run_command(
    flow: Annotated[str, typer.Argument(help=f"One of: {', '.join(FLOWS)}.")],
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="key=value (JSON values allowed), repeatable.")] = None,
) -> None:
    """Run a flow here and now, e.g. egi-flows run dataminer -p process=FAST_ECHO -p 'inputs={"text": "hi"}'."""
    import importlib

    if flow not in FLOWS:
        typer.echo(f"Unknown flow {flow!r}; choose one of: {', '.join(FLOWS)}", err=True)
        raise typer.Exit(2)
    parameters = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            typer.echo(f"-p {item!r}: write key=value", err=True)
            raise typer.Exit(2)
        parameters[key.strip()] = _value(value)
    module, name = FLOWS[flow]
    target = getattr(importlib.import_module(module), name)
    unknown = set(parameters) - set(target.parameters.properties)
    if unknown:
        typer.echo(f"{flow} has no parameter {', '.join(sorted(unknown))}; it takes: "
                   f"{', '.join(target.parameters.properties)}", err=True)
        raise typer.Exit(2)
    state = target(**parameters, return_state=True)
    if not state.is_completed():
        typer.echo(f"{flow} ended {state.name}: {state.message}", err=True)
        raise typer.Exit(1)
    result = state.result()
    typer.echo(result.markdown() if hasattr(result, "markdown") else
               result.model_dump_json(indent=2) if hasattr(result, "model_dump_json") else str(result))


def demo_command(
    keep: Annotated[bool, typer.Option(help="Keep the demo's Prefect home (runs, artifacts) to look at later.")] = False,
) -> None:
    """Run the pipeline and one CCP method against a local EGI sandbox on Prefect's embedded API (under a minute)."""
    import shutil
    import tempfile

    home = tempfile.mkdtemp(prefix="prefect-egi-demo-")
    from prefect_egi.flows.demo import run_demo

    try:
        outcome = run_demo(home, say=typer.echo)
    finally:
        if not keep:
            shutil.rmtree(home, ignore_errors=True)
    if keep:
        typer.echo(f"Kept {home}: PREFECT_HOME={home} prefect server start   # then open the UI")
    else:
        typer.echo("The demo's Prefect home and outputs were removed; --keep keeps them.")
    if outcome.get("state") != "Completed":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
    app.command("run")(run_command)
    app.add_typer(sandbox_app, name="sandbox")
