"""The base of prefect-egi's blocks: `load` and `save` give values, everywhere.

Prefect's own `Block.load` / `Block.save` return a coroutine whenever an event
loop is running — in a Jupyter cell, that is always — so
`DataMiner.load("dataminer")` in a notebook silently yields a coroutine instead
of the block (and `save` silently saves nothing). Our blocks answer the same
call with the value in scripts, cells, flows and workers alike; async code
uses `await X.aload(...)` / `await x.asave(...)`, as with any Prefect block.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.blocks.core import Block
from typing_extensions import Self


def _value(awaitable: Any) -> Any:
    from prefect.utilities.asyncutils import run_coro_as_sync

    return run_coro_as_sync(awaitable)


class EgiBlock(Block):
    """A Prefect block whose `load` and `save` never return a coroutine."""

    @classmethod
    def load(cls, name: str, validate: bool = True, client: Any = None, **_: Any) -> Self:  # type: ignore[override]
        """The saved block named `name` (`await cls.aload(name)` in async code)."""
        return _value(cls.aload(name, validate=validate, client=client))

    @classmethod
    def resolve(cls, block: "Self | str") -> Self:
        """The block itself, or the saved block of that name: how our tasks accept either."""
        return block if isinstance(block, cls) else cls.load(block)

    def save(self, name: str | None = None, overwrite: bool = False, client: Any = None,  # type: ignore[override]
             **_: Any) -> UUID:
        """Save this block as `name` (`await block.asave(name)` in async code)."""
        return _value(self.asave(name, overwrite=overwrite, client=client))
