"""`ccp-run`: run one D4Science CCP method and bring its results back.

    from prefect_egi.flows import ccp_run
    ccp_run(method="my-method", inputs={"count": 3})

Check the inputs against the method's JSON Schema → execute → wait (live progress in the
UI) → results (values, files, `output.zip` unpacked): the `run_ccp_method` task. A
transient failure is retried where it happens; an Execute whose answer was lost is looked
up by its marker, never sent blindly again; a retried flow run resumes watching the job it
started; cancelling the run dismisses the job; a crash leaves it running, and
`prefect flow-run retry <id>` resumes watching it.
"""

from dataclasses import replace
from typing import Annotated, Any

from pydantic import Field

from prefect_egi.flows.base import egi_flow, load_block
from prefect_egi.tasks import CCP, CCP_WAIT, CCPResult, run_ccp_method


@egi_flow(name="ccp-run", description="Run a D4Science CCP method, wait for it, collect its results.")
def ccp_run(
    method: str,
    inputs: dict[str, Any] = {},  # noqa: B006 - Prefect copies parameters; shown as {} in the UI form
    ccp_block: str = "ccp",
    destination: str = "ccp-outputs",
    deadline_hours: Annotated[float, Field(gt=0)] = 24.0,
) -> CCPResult:
    """Run a D4Science CCP method, wait for it, collect its results.

    Args:
        method: The method's id (as `list_ccp_methods` shows it).
        inputs: Input name → value, as the method's JSON Schema wants them; a list repeats
            an input, {"href": "https://…"} is a file CCP fetches.
        ccp_block: Name of the D4Science CCP block to use.
        destination: Folder for the results (output.zip is unpacked there).
        deadline_hours: Give up waiting after this many hours (the job may go on).
    """
    block = load_block(CCP, ccp_block, "ccp_block")
    return run_ccp_method(block, method, inputs, destination, replace(CCP_WAIT, deadline=deadline_hours * 3600))
