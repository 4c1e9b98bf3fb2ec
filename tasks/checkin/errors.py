"""Errors of the Check-in layer.

Every message names what went wrong *and* how to fix it, and never contains a
token: callers may log or persist these texts freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


class CheckinError(Exception):
    """Base class of every Check-in error raised by prefect-egi."""


class MalformedTokenError(CheckinError):
    """A value that should be an access token is not one (empty, whitespace, garbage)."""


@dataclass(frozen=True)
class SourceAttempt:
    """Why one token source did not yield a usable token."""

    source: str
    reason: str
    hint: str = ""

    def describe(self) -> str:
        text = f"- {self.source}: {self.reason}"
        return f"{text} (fix: {self.hint})" if self.hint else text


class NoTokenError(CheckinError):
    """No source yielded a token; lists each source tried and why it failed."""

    GENERAL_FIX = (
        "Fix one of: enable the EGI Notebooks token mount "
        "(/var/run/secrets/egi.eu/access_token), export OIDC_ACCESS_TOKEN, export MYTOKEN (a mytoken "
        "made at https://mytoken.data.kit.edu), or configure a refresh token (with its client id) on the "
        "CheckinCredentials block."
    )

    def __init__(self, attempts: list[SourceAttempt], transient: bool = False):
        self.attempts = list(attempts)
        #: True when a source failed only because the issuer was unreachable: worth a retry.
        self.transient = transient
        lines = ["No EGI Check-in access token could be obtained. Sources tried, in order:"]
        lines += [attempt.describe() for attempt in self.attempts] or ["- (every source is switched off)"]
        lines.append(self.GENERAL_FIX)
        super().__init__("\n".join(lines))

    def __reduce__(self):  # Prefect pickles exceptions into results: keep the fields
        return (type(self), (self.attempts, self.transient))


class TokenExpiredError(CheckinError):
    """The only token found has expired and nothing can refresh it."""

    def __init__(self, source: str, expired_at: datetime, attempts: list[SourceAttempt] | None = None):
        self.source = source
        self.expired_at = expired_at
        self.attempts = list(attempts or [])
        lines = [
            f"The EGI Check-in access token from {source} expired at "
            f"{expired_at.isoformat(timespec='seconds')} and no refresh source is available.",
        ]
        if self.attempts:
            lines.append("Other sources tried:")
            lines += [attempt.describe() for attempt in self.attempts]
        lines.append(
            "Fix: get a fresh token (e.g. `oidc-token egi` or the EGI Check-in token portal), "
            "or configure a refresh token so flows can renew it themselves."
        )
        super().__init__("\n".join(lines))

    def __reduce__(self):
        return (type(self), (self.source, self.expired_at, self.attempts))


class TokenEndpointError(CheckinError):
    """The issuer's token endpoint refused a request with an RFC 6749 error code."""

    def __init__(self, error: str, description: str, endpoint: str, hint: str = ""):
        self.error = error
        self.description = description
        self.endpoint = endpoint
        self.hint = hint
        text = f"Token endpoint {endpoint} answered {error!s}"
        if description:
            text += f": {description}"
        if hint:
            text += f". Fix: {hint}"
        super().__init__(text)

    def __reduce__(self):
        return (type(self), (self.error, self.description, self.endpoint, self.hint))


class IssuerUnreachableError(CheckinError):
    """The issuer (discovery, token endpoint, userinfo…) failed after bounded retries."""


class TokenVerificationError(CheckinError):
    """A token's signature or claims do not verify against the issuer's JWKS."""
