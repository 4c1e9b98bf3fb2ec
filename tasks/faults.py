"""Which failures are worth trying again: the one classification every service uses.

A remote call can fail in three ways that matter to a caller:

- *transient*: the service could not answer now (5xx from it or a front, 429, a
  timeout, a reset connection) — try again later, with a backoff;
- *credentials rejected*: HTTP 401 — renew the credentials, then try again;
- anything else is final (a 4xx, a malformed answer): report it.

The HTTP retry helper (`prefect_egi.tasks.http`), the wait loop
(`prefect_egi.tasks.remote.watch`), the job ledger's calls to the Prefect API and
each service's own error mapping (DiracX's azure-core errors, the hub front) all
decide with the names below, so "transient" means the same everywhere.

No Prefect imports: this is the plain-Python base of the engine.
"""

from __future__ import annotations

import httpx

#: HTTP statuses meaning "not now": rate limited, or the server (or a front) failed
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
#: HTTP statuses proving a request was refused unread (a front shedding load): safe to
#: send again even when the request is not idempotent
REFUSED_STATUS = frozenset({429, 503})
#: httpx failures of the transport: the answer did not come (in full)
TRANSIENT_TRANSPORT: tuple[type[BaseException], ...] = (
    httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
#: httpx failures proving the request never left: no connection was made
NOT_SENT: tuple[type[BaseException], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class TransientServiceError(Exception):
    """The service could not answer now (5xx, timeout, reset): try again later."""


class CredentialsRejected(Exception):
    """The service answered 401: renew the credentials, then try again."""


def is_transient_status(status: int | None) -> bool:
    """Whether an HTTP status says "try again later"."""
    return status in TRANSIENT_STATUS


def classify(exc: BaseException) -> type[Exception] | None:
    """`TransientServiceError`, `CredentialsRejected`, or None (final) for any failure:
    ours (or a service's subclass of them, e.g. CCP's `CCPTokenRejected`), httpx's transport
    errors, or an `httpx.HTTPStatusError`."""
    if isinstance(exc, TransientServiceError):
        return TransientServiceError
    if isinstance(exc, CredentialsRejected):
        return CredentialsRejected
    if isinstance(exc, TRANSIENT_TRANSPORT):
        return TransientServiceError
    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        if code == 401:
            return CredentialsRejected
        if is_transient_status(code):
            return TransientServiceError
    return None


def describe(failure: BaseException | httpx.Response) -> str:
    """A failure in a few words, for messages: `HTTP 503 Service Unavailable`,
    `timed out (ReadTimeout)`, `ConnectError: …`."""
    if isinstance(failure, httpx.Response):
        return f"HTTP {failure.status_code} {failure.reason_phrase}".rstrip()
    if isinstance(failure, httpx.HTTPStatusError):
        return f"HTTP {failure.response.status_code}"
    if isinstance(failure, httpx.TimeoutException):
        return f"timed out ({type(failure).__name__})"
    text = str(failure)
    return f"{type(failure).__name__}: {text}" if text else type(failure).__name__
