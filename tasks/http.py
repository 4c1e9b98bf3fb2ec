"""Bounded retries for HTTP calls to EGI services, and the TLS rules they follow.

Transient faults (`prefect_egi.tasks.faults`: 5xx, 429, timeouts, connection resets)
are retried with exponential backoff up to a fixed number of attempts, then reported
as one clear error. Anything else (4xx) is returned to the caller to interpret.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx

from prefect_egi.tasks.faults import NOT_SENT, REFUSED_STATUS, TRANSIENT_STATUS, TRANSIENT_TRANSPORT, describe


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: `attempts` in total, sleeping `backoff * 2**n` (capped) between."""

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.backoff * (2**attempt), self.max_backoff)


class TransientHTTPError(Exception):
    """Raised after the last attempt; the message says what was tried and what failed."""


class OutcomeUnknown(Exception):
    """A request that is not safe to repeat failed after it may have reached the server."""


class TLSVerificationError(Exception):
    """The server's certificate did not verify. Not transient: retrying cannot help."""


def require_https(url: str, what: str) -> str:
    """`url` without a trailing slash, if it is https — plain http only on this machine
    (127.0.0.1/localhost: tests and the sandbox), so no credential crosses a network in clear."""
    url = url.rstrip("/")
    if not url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
        raise ValueError(f"{what} must be an https:// URL (plain http only for 127.0.0.1/localhost)")
    return url


_warned_unverified: set[str] = set()


def tls_verify(verify: bool = True, ca_bundle: str | None = None, *, what: str = "a server") -> bool | ssl.SSLContext:
    """What to give httpx's `verify`: on by default, a CA bundle when one is named.
    Verification is only ever off when a user turns `verify_tls` off explicitly — and
    then never silently: a warning (once per service and process) says what it costs."""
    if ca_bundle:
        return ssl.create_default_context(cafile=ca_bundle)
    if not verify and what not in _warned_unverified:
        _warned_unverified.add(what)
        logging.getLogger("prefect_egi.tls").warning(
            "TLS certificate verification is OFF for %s (verify_tls=False): anyone on the network path can "
            "read the credentials sent to it. Give the CA bundle that signed its certificate (ca_bundle) instead.",
            what)
    return verify


def is_certificate_failure(exc: BaseException) -> bool:
    """Whether `exc` (or anything it was raised from) is a failed certificate verification."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def certificate_error(what: str, url: str) -> TLSVerificationError:
    return TLSVerificationError(f"{what} ({url}): the server's TLS certificate did not verify; "
                                "give the CA bundle that signed it (ca_bundle) — verification stays on")


def _judge(what: str, url: str, outcome: httpx.Response | BaseException,
           idempotent: bool) -> httpx.Response | None:
    """The response to return, or None to try again; certificate failures raise at once,
    and so does a non-idempotent request whose failure does not prove it was never sent."""
    if isinstance(outcome, BaseException):
        if is_certificate_failure(outcome):
            raise certificate_error(what, url) from None
        if not idempotent and not isinstance(outcome, NOT_SENT):
            raise OutcomeUnknown(f"{what}: {describe(outcome)} after the request may have reached the "
                                 "server; not sent again, to avoid doing the work twice") from None
        return None
    retry_on = TRANSIENT_STATUS if idempotent else REFUSED_STATUS
    return None if outcome.status_code in retry_on else outcome


def _exhausted(what: str, url: str, policy: RetryPolicy, last: httpx.Response | BaseException) -> TransientHTTPError:
    return TransientHTTPError(f"{what} ({url}) failed {policy.attempts} times; last failure: {describe(last)}")


def request_with_retries(
    client: httpx.Client, method: str, url: str, *, policy: RetryPolicy, what: str, **kwargs: Any
) -> httpx.Response:
    """Send a request, retrying transient failures; return the first non-transient response."""
    outcome: httpx.Response | BaseException | None = None
    for attempt in range(policy.attempts):
        if attempt:
            time.sleep(policy.delay(attempt - 1))
        try:
            outcome = client.request(method, url, **kwargs)
        except TRANSIENT_TRANSPORT as exc:
            outcome = exc
        if (response := _judge(what, url, outcome, idempotent=True)) is not None:
            return response
    assert outcome is not None
    raise _exhausted(what, url, policy, outcome)


async def arequest_with_retries(
    client: httpx.AsyncClient, method: str, url: str, *, policy: RetryPolicy, what: str, idempotent: bool = True,
    **kwargs: Any
) -> httpx.Response:
    """Async twin of `request_with_retries`. `idempotent=False` (e.g. a WPS Execute): only
    failures proving the request was never sent are retried; others raise `OutcomeUnknown`."""
    import asyncio

    outcome: httpx.Response | BaseException | None = None
    for attempt in range(policy.attempts):
        if attempt:
            await asyncio.sleep(policy.delay(attempt - 1))
        try:
            outcome = await client.request(method, url, **kwargs)
        except TRANSIENT_TRANSPORT as exc:
            outcome = exc
        if (response := _judge(what, url, outcome, idempotent)) is not None:
            return response
    assert outcome is not None
    raise _exhausted(what, url, policy, outcome)
