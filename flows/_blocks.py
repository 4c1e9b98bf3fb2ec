"""Loading the blocks a flow names in its parameters, with errors that say how to fix it."""

from __future__ import annotations

from typing import TypeVar

from prefect.blocks.core import Block

B = TypeVar("B", bound=Block)


def _missing(block_class: type[Block], name: str, parameter: str) -> ValueError:
    kind = block_class.get_block_type_name()
    return ValueError(
        f"{parameter}: there is no {kind} block named {name!r}. Create it in the Prefect UI "
        f"(Blocks → {kind}) or in Python with {block_class.__name__}(...).save({name!r})."
    )


def load_named(block_class: type[B], name: str, parameter: str) -> B:
    try:
        return block_class.load(name, _sync=True)  # type: ignore[call-arg,return-value]
    except ValueError:
        raise _missing(block_class, name, parameter) from None


def load_all(wanted: dict[str, tuple[type[Block], str]]) -> dict[str, Block]:
    """Load several blocks (parameter → (class, name)); one error naming every missing one."""
    loaded: dict[str, Block] = {}
    problems: list[str] = []
    for parameter, (block_class, name) in wanted.items():
        try:
            loaded[parameter] = load_named(block_class, name, parameter)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("\n".join(problems))
    return loaded
