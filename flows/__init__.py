"""prefect-egi flows: chains of the tasks in `prefect_egi.tasks`, ready to run or deploy.

    from prefect_egi.flows import egi_pipeline, dirac_batch, egi_flow

Each shipped flow is a plain `def` flow (calling it gives its result, in a script, a
notebook cell or a worker) with a deployment in the repository's `prefect.yaml`.
`egi_flow` gives your own flows what the shipped ones have (the cancellation and crash
hooks, error redaction); `load_block` loads a saved block with an error that says how to
create it. Names are imported on first use, so `egi-flows --help` stays instant.
"""

from typing import TYPE_CHECKING

from prefect_egi.tasks._lazy import lazy_exports

_PUBLIC = {
    "prefect_egi.flows.base": ["egi_flow", "load_block", "load_blocks"],
    "prefect_egi.flows.identity": ["egi_identity", "IdentityReport"],
    "prefect_egi.flows.dataminer": ["dataminer_run"],
    "prefect_egi.flows.ccp": ["ccp_run"],
    "prefect_egi.flows.dirac": ["dirac_batch"],
    "prefect_egi.flows.inventory": ["fedcloud_vm_inventory"],
    "prefect_egi.flows.notebooks": ["notebooks_server"],
    "prefect_egi.flows.pipeline": ["egi_pipeline", "WorkItems", "GridJobs", "Summary", "PipelineReport"],
}
_EXPORTS = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see (tests/test_layers.py checks it matches _PUBLIC)
    from prefect_egi.flows.base import egi_flow, load_block, load_blocks
    from prefect_egi.flows.ccp import ccp_run
    from prefect_egi.flows.dataminer import dataminer_run
    from prefect_egi.flows.dirac import dirac_batch
    from prefect_egi.flows.identity import IdentityReport, egi_identity
    from prefect_egi.flows.inventory import fedcloud_vm_inventory
    from prefect_egi.flows.notebooks import notebooks_server
    from prefect_egi.flows.pipeline import GridJobs, PipelineReport, Summary, WorkItems, egi_pipeline
