"""What every prefect-egi flow has, for your own flows too: `egi_flow` and `load_block`.

    from prefect_egi.flows import egi_flow, load_block
    from prefect_egi.tasks import DiracX, DiracJob, run_batch

    @egi_flow(name="my-analysis")
    def my_analysis(diracx_block: str = "diracx"):
        diracx = load_block(DiracX, diracx_block, "diracx_block")
        return run_batch(diracx, DiracJob(executable="analyse.sh", parameters=[1, 2, 3]))

`egi_flow` is `@flow` plus the guarantees of the shipped flows:

- cancelling the run (UI, CLI) kills the DIRAC jobs, dismisses the CCP jobs and marks
  the DataMiner executions it submitted (`cancel_remote_jobs`, an `on_cancellation` hook: Prefect runs it in
  another process, which finds the jobs in the run's job ledger);
- a crash leaves them running and logs how to resume watching them with
  `prefect flow-run retry <id>` (`keep_remote_jobs_on_crash`, an `on_crashed` hook);
- an exception that carries a secret (a token in a message) is masked before Prefect
  records it in the run's state, events or results (`redact_errors`).

Hooks you pass (`on_cancellation=[…]`, `on_crashed=[…]`) run before ours.
"""

from collections.abc import Callable
from typing import Any, TypeVar

from prefect import flow
from prefect.blocks.core import Block

from prefect_egi.tasks.job_ledger import cancel_remote_jobs, keep_remote_jobs_on_crash
from prefect_egi.tasks.redaction import redact_errors

F = TypeVar("F", bound=Callable[..., Any])
B = TypeVar("B", bound=Block)


def egi_flow(fn: F | None = None, /, **options: Any) -> Any:
    """`@flow` (same options) with the cancellation and crash hooks and error redaction.

    Usable bare (`@egi_flow`) or with options (`@egi_flow(name="x", retries=1)`).
    Write flows as plain `def` so that calling one gives its result in a script, a
    Jupyter cell or a worker; the service tasks inside give values there too.
    """

    def decorate(function: F) -> Any:
        hooks = {"on_cancellation": [*(options.pop("on_cancellation", None) or []), cancel_remote_jobs],
                 "on_crashed": [*(options.pop("on_crashed", None) or []), keep_remote_jobs_on_crash]}
        return flow(redact_errors(function), **hooks, **options)

    return decorate(fn) if fn is not None else decorate


def _missing(block_class: type[Block], name: str, parameter: str) -> ValueError:
    kind = block_class.get_block_type_name()
    return ValueError(
        f"{parameter}: there is no {kind} block named {name!r}. Create it in the Prefect UI "
        f"(Blocks → {kind}) or in Python with {block_class.__name__}(...).save({name!r})."
    )


def load_block(block_class: type[B], name: str, parameter: str) -> B:
    """The saved block `name` (a value, also under a running event loop), or an error naming
    the flow `parameter` and how to create it."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    try:
        return run_coro_as_sync(block_class.aload(name))  # type: ignore[return-value]
    except ValueError:
        raise _missing(block_class, name, parameter) from None


def load_blocks(wanted: dict[str, tuple[type[Block], str]]) -> dict[str, Block]:
    """Load several blocks (parameter → (class, name)); one error naming every missing one."""
    loaded: dict[str, Block] = {}
    problems: list[str] = []
    for parameter, (block_class, name) in wanted.items():
        try:
            loaded[parameter] = load_block(block_class, name, parameter)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("\n".join(problems))
    return loaded
