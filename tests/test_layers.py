"""The package's shape, checked on its source: layers, imports, the public API.

- Each service is an access layer (plain Python: no Prefect, anywhere in the module, nor in
  anything it imports from the package), a block and its tasks; the engine is plain Python.
  Which modules may use Prefect is decided by name (`PREFECT_LAYER`), so a new service's
  `client.py` or `adapter.py` is checked without being listed anywhere.
- No import cycle inside the package, counting imports inside functions too (a lazy import
  hides a cycle from Python, not from the reader).
- `prefect_egi.tasks` never imports `prefect_egi.flows`; neither imports the sandbox, except
  the CLI commands that start it (`egi-flows demo`, `egi-flows sandbox`).
- The public API's index (`_PUBLIC`) and what type checkers see (`if TYPE_CHECKING:`) agree,
  every concrete block is in `BLOCKS`, and the documentation imports only public names.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"prefect_egi.tasks": REPO / "tasks", "prefect_egi.flows": REPO / "flows",
           "prefect_egi.sandbox": REPO / "deployments" / "sandbox"}
#: modules of prefect_egi.tasks that may import Prefect: blocks, tasks and their bases, Prefect reporting,
#: the `dirac` worker type
PREFECT_LAYER = {"block", "tasks", "blocks", "block_base", "task_base", "reporting", "job_ledger", "worker"}
#: flows modules that start the sandbox (the demo and `egi-flows sandbox`)
SANDBOX_FRONTS = {"prefect_egi.flows.demo", "prefect_egi.flows.cli_journey"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path) -> set[str]:
    """Every module `path` imports (at module level or inside functions), not counting
    imports only type checkers see; `from package import name` counts `package.name` when
    that is a module."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


IMPORTS = {module: _imports(path) for module, path in MODULES.items()}


def _internal(module: str) -> set[str]:
    return {m for m in IMPORTS[module] if m in MODULES}


def _layer(module: str) -> str:
    if not module.startswith("prefect_egi.tasks"):
        return module.split(".")[1]
    return "prefect" if module.rsplit(".", 1)[-1] in PREFECT_LAYER else "access"


ACCESS = sorted(m for m in MODULES if _layer(m) == "access")


def test_the_layers_are_where_the_names_say():
    assert {"prefect_egi.tasks.remote", "prefect_egi.tasks.faults", "prefect_egi.tasks.dataminer.client",
            "prefect_egi.tasks.dirac.adapter", "prefect_egi.tasks.fedcloud.client",
            "prefect_egi.tasks.notebooks.adapter", "prefect_egi.tasks.checkin.provider"} <= set(ACCESS)
    for service in ("checkin", "dataminer", "dirac", "fedcloud", "notebooks"):
        assert {f"prefect_egi.tasks.{service}.block", f"prefect_egi.tasks.{service}.tasks"} <= set(MODULES), service


@pytest.mark.parametrize("module", ACCESS)
def test_an_access_layer_module_imports_no_prefect(module):
    prefect = sorted(m for m in IMPORTS[module] if m == "prefect" or m.startswith("prefect."))
    assert not prefect, f"{module} imports {prefect}: the access layer is plain Python"
    leaking = sorted(m for m in _internal(module) if _layer(m) != "access")
    assert not leaking, f"{module} imports {leaking}, which use Prefect"


def test_access_layer_modules_load_no_prefect_in_a_fresh_interpreter():
    code = (f"import importlib, sys; [importlib.import_module(m) for m in {ACCESS!r}]; "
            "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in _internal(node):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in _internal(node):
                found.append(sorted(component))

    for module in sorted(MODULES):
        if module not in index:
            connect(module)
    return found


def test_no_import_cycle_inside_the_package():
    assert _cycles() == []


def test_the_cycle_check_finds_a_cycle():
    """The check itself: two modules importing each other (inside functions) is a cycle."""
    saved = dict(IMPORTS)
    try:
        IMPORTS["prefect_egi.tasks.faults"] = IMPORTS["prefect_egi.tasks.faults"] | {"prefect_egi.tasks.remote"}
        assert ["prefect_egi.tasks.faults", "prefect_egi.tasks.remote"] in _cycles()
    finally:
        IMPORTS.clear()
        IMPORTS.update(saved)


def test_tasks_never_import_flows_and_production_never_imports_the_sandbox():
    for module in MODULES:
        internal = _internal(module)
        if module.startswith("prefect_egi.tasks"):
            assert not [m for m in internal if not m.startswith("prefect_egi.tasks")], module
        elif module.startswith("prefect_egi.flows") and module not in SANDBOX_FRONTS:
            assert not [m for m in internal if m.startswith("prefect_egi.sandbox")], module


def _type_checking_names(path: Path) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.body:
                assert isinstance(child, ast.ImportFrom), ast.dump(child)
                names.setdefault(child.module or "", []).extend(a.name for a in child.names)
    return names


@pytest.mark.parametrize("package", ["prefect_egi.tasks", "prefect_egi.flows"])
def test_the_public_index_and_what_type_checkers_see_agree(package):
    import importlib

    public = importlib.import_module(package)._PUBLIC
    seen = _type_checking_names(MODULES[package])
    assert {m: sorted(n) for m, n in public.items()} == {m: sorted(n) for m, n in seen.items()}
    for module, names in public.items():
        loaded = importlib.import_module(module)
        assert all(hasattr(loaded, name) for name in names), module


def test_every_concrete_block_is_in_the_one_list():
    import importlib

    from prefect_egi.tasks.block_base import EgiBlock
    from prefect_egi.tasks.blocks import BLOCKS

    for module in MODULES:
        if module.startswith("prefect_egi.tasks"):
            importlib.import_module(module)

    def concrete(cls: type) -> set[type]:
        below = set()
        for sub in cls.__subclasses__():
            below |= concrete(sub)
            if not getattr(sub, "__abstractmethods__", None):
                below.add(sub)
        return below

    assert {b for b in concrete(EgiBlock) if b.__module__.startswith("prefect_egi.")} == set(BLOCKS)


def _documented_imports() -> list[tuple[str, str, str]]:
    """(document, module, name) of every `from prefect_egi… import …` in the READMEs and the notebook."""
    texts = {name: (REPO / name).read_text() for name in ("README.md", "deployments/README.md")}
    notebook = json.loads((REPO / "deployments" / "notebooks" / "egi-pipeline.ipynb").read_text())
    texts["the notebook"] = "\n".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
    found = []
    for document, text in texts.items():
        old = re.findall(r"^\s*(?:from|import) (?:tasks|flows|deployments)\b.*$", text, re.M)
        assert not old, f"{document} still imports the old top-level packages: {old}"
        for module, names in re.findall(r"from (prefect_egi[\w.]*) import ([\w, ]+)", text):
            found += [(document, module, name.strip()) for name in names.split(",") if name.strip()]
    return found


def test_the_documentation_imports_only_public_names():
    import importlib

    documented = _documented_imports()
    assert len(documented) >= 10
    for document, module, name in documented:
        if document == "the notebook" and module == "prefect_egi.sandbox.stack":
            continue  # the notebook starts the local sandbox
        assert module in ("prefect_egi.tasks", "prefect_egi.flows"), f"{document}: from {module} import {name}"
        assert name in importlib.import_module(module).__all__, f"{document}: {module}.{name} is not exported"


def test_every_block_documents_its_fields_and_an_example():
    """What the Prefect UI shows on the block's page (Prefect reads its docstring)."""
    import inspect

    from prefect_egi.tasks.blocks import BLOCKS

    for block in BLOCKS:
        doc = inspect.getdoc(block) or ""
        assert "Args:" in doc and "Example:" in doc, block.__name__
        assert all(field.description for field in block.model_fields.values()), block.__name__


def test_the_hooks_reach_job_services_through_their_declared_interface():
    """The ledger's hooks load a record's block as a `JobServiceBlock` (its `job_adapter()`),
    and refuse a block type that does not declare one."""
    import asyncio

    from prefect_egi.tasks.block_base import JobServiceBlock
    from prefect_egi.tasks.blocks import BLOCKS

    assert {b.get_block_type_slug() for b in BLOCKS if issubclass(b, JobServiceBlock)} == {
        "egi-ccp", "egi-dataminer", "egi-diracx"}
    with pytest.raises(TypeError, match="'egi-fedcloud' is not a prefect-egi job service"):
        asyncio.run(JobServiceBlock.from_ledger("egi-fedcloud", "any"))
