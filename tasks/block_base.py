"""The base of prefect-egi's blocks: what every service's block declares.

Every service has the same three parts: an access layer (plain Python: its client and,
for job services, its `RemoteJobAdapter`), a block (configuration and secrets) and its
tasks. The block is where the two meet, and these bases say how:

- `EgiBlock.client()`: the service's access-layer client, built from the block's
  configuration (`CheckinCredentials` → its token provider, `DataMiner` → a WPS client,
  `DiracX` → a DiracX client, `FedCloud` → its site pool, `NotebooksHub` → a hub client);
- `JobServiceBlock.job_adapter()`: the engine adapter of a service that runs remote jobs.
  The job ledger records which saved block submitted which jobs (`ledger_reference()`),
  and the cancellation and crash hooks — which Prefect runs in another process — load
  that block again and ask its adapter to cancel or poll: the interface declared here,
  not whatever attributes a block happens to have.

`load` and `save` give values, everywhere: Prefect's own `Block.load` / `Block.save`
return a coroutine whenever an event loop is running — in a Jupyter cell, that is
always — so `DataMiner.load("dataminer")` in a notebook would silently yield a
coroutine instead of the block (and `save` would silently save nothing). Our blocks
answer the same call with the value in scripts, cells, flows and workers alike; async
code uses `await X.aload(...)` / `await x.asave(...)`, as with any Prefect block.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any
from uuid import UUID

from prefect.blocks.core import Block
from typing_extensions import Self

if TYPE_CHECKING:
    from prefect_egi.tasks.checkin.provider import TokenProvider
    from prefect_egi.tasks.remote import RemoteJobAdapter


def _value(awaitable: Any) -> Any:
    from prefect.utilities.asyncutils import run_coro_as_sync

    return run_coro_as_sync(awaitable)


class ProviderSlot:
    """Holds a block's live token provider (Check-in's, CCP's UMA token). Copies and
    pickles of the block get an empty slot: a provider holds locks and cached tokens,
    and a token must never travel into a pickle (Prefect persists results and hashes
    task inputs)."""

    __slots__ = ("provider", "warned_unsaved_rotation")

    def __init__(self) -> None:
        self.provider: "TokenProvider | None" = None
        self.warned_unsaved_rotation = False

    def __deepcopy__(self, memo: dict[int, Any]) -> "ProviderSlot":
        return ProviderSlot()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (ProviderSlot, ())


class EgiBlock(Block, ABC):
    """A prefect-egi block: configuration and secrets of one service, and its client.

    `load` and `save` never return a coroutine (see the module's docstring)."""

    @abstractmethod
    def client(self) -> Any:
        """The service's access-layer client, configured from this block."""

    @classmethod
    def load(cls, name: str, validate: bool = True, client: Any = None, **_: Any) -> Self:  # type: ignore[override]
        """The saved block named `name` (`await cls.aload(name)` in async code). Prefect's
        `_sync=…` is accepted and changes nothing: the answer is always the block.

        Raises:
            ValueError: there is no saved block of this type by that name.
        """
        return _value(cls.aload(name, validate=validate, client=client))

    @classmethod
    def resolve(cls, block: "Self | str") -> Self:
        """The block itself, or the saved block of that name: how our tasks accept either."""
        return block if isinstance(block, cls) else cls.load(block)

    def save(self, name: str | None = None, overwrite: bool = False, client: Any = None,  # type: ignore[override]
             **_: Any) -> UUID:
        """Save this block as `name` (`await block.asave(name)` in async code); its id."""
        return _value(self.asave(name, overwrite=overwrite, client=client))


class JobServiceBlock(EgiBlock, ABC):
    """The block of a service that runs remote jobs the engine waits for."""

    @abstractmethod
    def job_adapter(self) -> RemoteJobAdapter:
        """The engine adapter for this service's jobs (use it with `async with`)."""

    def ledger_reference(self) -> tuple[str, str | None]:
        """(block type slug, saved name or None): how the job ledger records who submitted
        a job, so that a hook in another process can load this block again."""
        return self.get_block_type_slug(), self._block_document_name

    @classmethod
    async def from_ledger(cls, block_type: str, block_name: str) -> "JobServiceBlock":
        """The saved block a ledger record names (what the hooks cancel and poll with)."""
        block_class = Block.get_block_class_from_key(block_type)
        if not (isinstance(block_class, type) and issubclass(block_class, JobServiceBlock)):
            raise TypeError(f"block type {block_type!r} is not a prefect-egi job service")
        return await block_class.aload(block_name)
