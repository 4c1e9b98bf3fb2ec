"""Package attributes imported on first use (PEP 562), the way `prefect` itself exports.

Why: defining a Prefect block or task pulls in `prefect.main`, Prefect's logging
set-up and the blocks' JSON schemas (~0.25 s). The plain-Python layers
(`prefect_egi.tasks.checkin.tokens`, `prefect_egi.tasks.fedcloud.client`,
`prefect_egi.tasks.remote`, …) need none of that, and
nor does a process that only imports one service. So a package `__init__` names
what it exports and where it lives; the module is imported when a name is first
read (or listed by `dir()`, which `prefect block register -m prefect_egi.tasks` relies on).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(namespace: dict[str, Any],
                 exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for the package whose `globals()` is `namespace`:
    `exports` maps each public name to the (full dotted) module that defines it."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later reads skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
