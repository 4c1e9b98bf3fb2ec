"""prefect-egi: Prefect blocks and tasks for the EGI e-infrastructure.

Importing this package registers the blocks with Prefect (it is the
`prefect.collections` entry point) and switches on log redaction of every token
and block secret this process handles. Heavy service clients are imported only
inside the functions that use them.
"""

from tasks.checkin import CheckinCredentials, aget_checkin_token, get_checkin_token
from tasks.dataminer import DataMiner, run_algorithm
from tasks.dirac import DiracJob, DiracX
from tasks.notebooks import NotebooksHub
from tasks.openstack import FedCloud
from tasks.redaction import install_log_redaction, redact_errors

install_log_redaction()

__all__ = [
    "CheckinCredentials",
    "DataMiner",
    "DiracJob",
    "DiracX",
    "FedCloud",
    "NotebooksHub",
    "aget_checkin_token",
    "get_checkin_token",
    "redact_errors",
    "run_algorithm",
]
