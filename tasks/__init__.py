"""prefect-egi: Prefect blocks and tasks for the EGI e-infrastructure.

`import tasks` is cheap: it switches on log redaction of every token and block
secret this process handles, and names the public API, which is imported on first
use (`tasks._lazy`). Prefect's collection loader imports `tasks.blocks` (the
`prefect.collections` entry point), which defines and so registers every block.
Heavy service clients are imported only inside the functions that use them.
"""

from typing import TYPE_CHECKING

from tasks._lazy import lazy_exports
from tasks.redaction import install_log_redaction

install_log_redaction()

_EXPORTS = {
    "CheckinCredentials": "tasks.checkin.block",
    "aget_checkin_token": "tasks.checkin.block",
    "get_checkin_token": "tasks.checkin.block",
    "DataMiner": "tasks.dataminer",
    "run_algorithm": "tasks.dataminer",
    "DiracJob": "tasks.dirac",
    "DiracX": "tasks.dirac",
    "FedCloud": "tasks.openstack",
    "NotebooksHub": "tasks.notebooks",
    "redact_errors": "tasks.redaction",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from tasks.checkin.block import CheckinCredentials, aget_checkin_token, get_checkin_token
    from tasks.dataminer import DataMiner, run_algorithm
    from tasks.dirac import DiracJob, DiracX
    from tasks.notebooks import NotebooksHub
    from tasks.openstack import FedCloud
    from tasks.redaction import redact_errors
