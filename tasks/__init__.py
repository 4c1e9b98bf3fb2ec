"""prefect-egi: Prefect blocks and tasks for the EGI e-infrastructure.

    from prefect_egi.tasks import CheckinCredentials, DataMiner, run_algorithm, vm_inventory

Every name a user needs is exported here: the blocks (one per service), the tasks
(callable from sync code, awaitable from async code), their results and errors, and the
remote-job engine for building on. Each service has the same three parts — an access
layer (plain Python: its client and, for job services, its engine adapter), a block and
its tasks — in a subpackage of its own: `checkin`, `ccp`, `dataminer`, `dirac`,
`fedcloud`, `notebooks`.

`import prefect_egi.tasks` is cheap: it switches on log redaction of every token and
block secret this process handles, and names the public API, which is imported on
first use (`_lazy`). Prefect's collection loader imports `prefect_egi.tasks.blocks` (the
`prefect.collections` entry point), which defines and so registers every block.
Heavy service clients are imported only inside the functions that use them.
"""

from typing import TYPE_CHECKING

from prefect_egi.tasks._lazy import lazy_exports
from prefect_egi.tasks.redaction import install_log_redaction

install_log_redaction()

_PUBLIC = {
    # Check-in
    "prefect_egi.tasks.checkin.block": ["CheckinCredentials"],
    "prefect_egi.tasks.checkin.tasks": ["get_checkin_token", "aget_checkin_token"],
    "prefect_egi.tasks.checkin.errors": ["CheckinError", "IssuerUnreachableError", "MalformedTokenError",
                                         "NoTokenError", "TokenEndpointError", "TokenExpiredError",
                                         "TokenVerificationError"],
    "prefect_egi.tasks.checkin.identity": ["Identity"],
    "prefect_egi.tasks.checkin.oidc": ["EGI_CHECKIN_ISSUER", "OidcClient"],
    "prefect_egi.tasks.checkin.provider": ["TokenProvider"],
    "prefect_egi.tasks.checkin.tokens": ["AccessToken", "TokenClaims", "parse_token"],
    # DataMiner
    "prefect_egi.tasks.dataminer.block": ["DataMiner"],
    "prefect_egi.tasks.dataminer.tasks": ["list_processes", "describe_process", "execute_process",
                                          "wait_for_executions", "fetch_outputs", "run_algorithm"],
    "prefect_egi.tasks.dataminer.adapter": ["DATAMINER_WAIT", "DataMinerAdapter"],
    "prefect_egi.tasks.dataminer.outputs": ["DataMinerResult", "OutputFile", "DataMinerExecutionFailed"],
    "prefect_egi.tasks.dataminer.client": ["LocalFile", "Reference", "BoundingBox", "ProcessSummary",
                                           "ProcessDescription", "InputSpec", "ValueRange", "WPSError", "WPSAuthError", "WPSServiceError", "InputValidationError",
                                           "ExecuteOutcomeUnknown"],
    # D4Science CCP (OGC API – Processes)
    "prefect_egi.tasks.ccp.block": ["CCP"],
    "prefect_egi.tasks.ccp.tasks": ["list_ccp_methods", "describe_ccp_method", "execute_ccp_method",
                                    "wait_for_ccp_jobs", "collect_ccp_results", "run_ccp_method"],
    "prefect_egi.tasks.ccp.adapter": ["CCP_WAIT", "CCPAdapter"],
    "prefect_egi.tasks.ccp.outputs": ["CCPResult", "CCPMethodFailed"],
    "prefect_egi.tasks.ccp.inputs": ["CCPInputError"],
    "prefect_egi.tasks.ccp.client": ["CCPClient", "CCPError", "CCPTokenRejected", "CCPNoSuchProcess", "CCPNoSuchJob",
                                     "CCPJobFailed", "LostExecute"],
    # DIRAC
    "prefect_egi.tasks.dirac.block": ["DiracX"],
    "prefect_egi.tasks.dirac.tasks": ["submit_jobs", "wait_for_jobs", "fetch_job_outputs", "resubmit_jobs",
                                      "kill_jobs", "dirac_login", "run_batch", "DiracBatchReport", "FailedJob"],
    "prefect_egi.tasks.dirac.jdl": ["DiracJob", "ParameterSequence"],
    "prefect_egi.tasks.dirac.adapter": ["DiracAdapter"],
    "prefect_egi.tasks.dirac.outputs": ["JobOutput"],
    "prefect_egi.tasks.dirac.client": ["ExpiredCredentials"],
    "prefect_egi.tasks.dirac.login": ["DiracLoginFailed"],
    "prefect_egi.tasks.dirac.submission": ["SubmissionIncomplete"],
    "prefect_egi.tasks.dirac.worker": ["DiracWorker", "DiracJobConfiguration", "DiracVariables", "on_dirac"],
    # FedCloud
    "prefect_egi.tasks.fedcloud.block": ["FedCloud"],
    "prefect_egi.tasks.fedcloud.tasks": ["list_servers", "vm_inventory"],
    "prefect_egi.tasks.fedcloud.client": ["Site", "VM", "SiteServers", "SiteFailure"],
    "prefect_egi.tasks.fedcloud.inventory": ["Inventory"],
    # Notebooks
    "prefect_egi.tasks.notebooks.block": ["NotebooksHub"],
    "prefect_egi.tasks.notebooks.tasks": ["hub_version", "hub_user", "hub_users", "start_server", "stop_server",
                                          "ServerWaitFailed"],
    "prefect_egi.tasks.notebooks.client": ["HubUser", "HubServer", "HubError", "HubTokenRejected",
                                           "HubUserNotAdmitted", "HubListingIncomplete"],
    # the engine, the job ledger and its hooks, secrets — for building on
    "prefect_egi.tasks.remote": ["watch", "WatchPolicy", "RemoteJobAdapter", "JobState", "JobStatus",
                                 "WatchReporter", "WatchError", "WatchDeadlineExceeded", "WatchGaveUp"],
    "prefect_egi.tasks.faults": ["TransientServiceError", "CredentialsRejected"],
    "prefect_egi.tasks.http": ["TLSVerificationError"],
    "prefect_egi.tasks.reporting": ["PrefectReporter"],
    "prefect_egi.tasks.job_ledger": ["cancel_remote_jobs", "keep_remote_jobs_on_crash", "cancel_submissions"],
    "prefect_egi.tasks.task_base": ["egi_task", "EgiTask"],
    "prefect_egi.tasks.redaction": ["redact_errors", "register_secret"],
}
_EXPORTS = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see (tests/test_layers.py checks it matches _PUBLIC)
    from prefect_egi.tasks.ccp.adapter import CCP_WAIT, CCPAdapter
    from prefect_egi.tasks.ccp.block import CCP
    from prefect_egi.tasks.ccp.client import (
        CCPClient,
        CCPError,
        CCPJobFailed,
        CCPNoSuchJob,
        CCPNoSuchProcess,
        CCPTokenRejected,
        LostExecute,
    )
    from prefect_egi.tasks.ccp.inputs import CCPInputError
    from prefect_egi.tasks.ccp.outputs import CCPMethodFailed, CCPResult
    from prefect_egi.tasks.ccp.tasks import (
        collect_ccp_results,
        describe_ccp_method,
        execute_ccp_method,
        list_ccp_methods,
        run_ccp_method,
        wait_for_ccp_jobs,
    )
    from prefect_egi.tasks.checkin.block import CheckinCredentials
    from prefect_egi.tasks.checkin.errors import (
        CheckinError,
        IssuerUnreachableError,
        MalformedTokenError,
        NoTokenError,
        TokenEndpointError,
        TokenExpiredError,
        TokenVerificationError,
    )
    from prefect_egi.tasks.checkin.identity import Identity
    from prefect_egi.tasks.checkin.oidc import EGI_CHECKIN_ISSUER, OidcClient
    from prefect_egi.tasks.checkin.provider import TokenProvider
    from prefect_egi.tasks.checkin.tasks import aget_checkin_token, get_checkin_token
    from prefect_egi.tasks.checkin.tokens import AccessToken, TokenClaims, parse_token
    from prefect_egi.tasks.dataminer.adapter import DATAMINER_WAIT, DataMinerAdapter
    from prefect_egi.tasks.dataminer.block import DataMiner
    from prefect_egi.tasks.dataminer.client import (
        BoundingBox,
        ExecuteOutcomeUnknown,
        InputSpec,
        InputValidationError,
        LocalFile,
        ProcessDescription,
        ProcessSummary,
        Reference,
        ValueRange,
        WPSAuthError,
        WPSError,
        WPSServiceError,
    )
    from prefect_egi.tasks.dataminer.outputs import DataMinerExecutionFailed, DataMinerResult, OutputFile
    from prefect_egi.tasks.dataminer.tasks import (
        describe_process,
        execute_process,
        fetch_outputs,
        list_processes,
        run_algorithm,
        wait_for_executions,
    )
    from prefect_egi.tasks.dirac.adapter import DiracAdapter
    from prefect_egi.tasks.dirac.block import DiracX
    from prefect_egi.tasks.dirac.client import ExpiredCredentials
    from prefect_egi.tasks.dirac.jdl import DiracJob, ParameterSequence
    from prefect_egi.tasks.dirac.login import DiracLoginFailed
    from prefect_egi.tasks.dirac.outputs import JobOutput
    from prefect_egi.tasks.dirac.submission import SubmissionIncomplete
    from prefect_egi.tasks.dirac.tasks import (
        DiracBatchReport,
        FailedJob,
        dirac_login,
        fetch_job_outputs,
        kill_jobs,
        resubmit_jobs,
        run_batch,
        submit_jobs,
        wait_for_jobs,
    )
    from prefect_egi.tasks.dirac.worker import DiracJobConfiguration, DiracVariables, DiracWorker, on_dirac
    from prefect_egi.tasks.faults import CredentialsRejected, TransientServiceError
    from prefect_egi.tasks.fedcloud.block import FedCloud
    from prefect_egi.tasks.fedcloud.client import VM, Site, SiteFailure, SiteServers
    from prefect_egi.tasks.fedcloud.inventory import Inventory
    from prefect_egi.tasks.fedcloud.tasks import list_servers, vm_inventory
    from prefect_egi.tasks.http import TLSVerificationError
    from prefect_egi.tasks.job_ledger import cancel_remote_jobs, cancel_submissions, keep_remote_jobs_on_crash
    from prefect_egi.tasks.notebooks.block import NotebooksHub
    from prefect_egi.tasks.notebooks.client import (
        HubError,
        HubListingIncomplete,
        HubServer,
        HubTokenRejected,
        HubUser,
        HubUserNotAdmitted,
    )
    from prefect_egi.tasks.notebooks.tasks import (
        ServerWaitFailed,
        hub_user,
        hub_users,
        hub_version,
        start_server,
        stop_server,
    )
    from prefect_egi.tasks.redaction import redact_errors, register_secret
    from prefect_egi.tasks.remote import (
        JobState,
        JobStatus,
        RemoteJobAdapter,
        WatchDeadlineExceeded,
        WatchError,
        WatchGaveUp,
        WatchPolicy,
        WatchReporter,
        watch,
    )
    from prefect_egi.tasks.reporting import PrefectReporter
    from prefect_egi.tasks.task_base import EgiTask, egi_task
