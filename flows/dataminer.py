"""`dataminer-run`: run one D4Science DataMiner algorithm and bring its outputs back.

    from prefect_egi.flows import dataminer_run
    dataminer_run(process="CSV_SUMMARY", inputs={"table": "https://…/data.csv"})

Submit → wait (live progress in the UI) → download: the `run_algorithm` task. Transient
failures are retried where they happen (lookups, the wait, downloads — never the
Execute itself); a retried flow run resumes watching the execution it already started;
cancelling the run marks the execution cancelled (WPS 1.0 cannot stop it); a crash
leaves it running, and `prefect flow-run retry <id>` resumes watching it.
"""

from dataclasses import replace
from typing import Annotated, Any

from pydantic import Field

from prefect_egi.flows.base import egi_flow, load_block
from prefect_egi.tasks import DATAMINER_WAIT, DataMiner, DataMinerResult, run_algorithm


@egi_flow(name="dataminer-run", description="Run a D4Science DataMiner algorithm, wait for it, download its outputs.")
def dataminer_run(
    process: str,
    inputs: dict[str, Any] = {},  # noqa: B006 - Prefect copies parameters; shown as {} in the UI form
    dataminer_block: str = "dataminer",
    destination: str = "dataminer-outputs",
    deadline_hours: Annotated[float, Field(gt=0)] = 24.0,
) -> DataMinerResult:
    """Run a D4Science DataMiner algorithm, wait for it, download its outputs.

    Args:
        process: The algorithm: its short name (CSV_SUMMARY) or its full DataMiner id.
        inputs: Input name → value. Lists repeat an input; http(s) URLs and local
            file paths feed file inputs.
        dataminer_block: Name of the D4Science DataMiner block to use.
        destination: Folder for the downloaded outputs.
        deadline_hours: Give up waiting after this many hours (the job may go on).
    """
    block = load_block(DataMiner, dataminer_block, "dataminer_block")
    return run_algorithm(block, process, inputs, destination, replace(DATAMINER_WAIT, deadline=deadline_hours * 3600))
