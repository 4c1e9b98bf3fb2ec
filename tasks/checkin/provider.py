"""The one Check-in token provider every EGI service uses.

It hands out a valid access token and keeps it valid for as long as a flow runs
(DIRAC waits last hours; a Check-in access token lives under one hour):

- the cached token is reused until `margin` seconds before its expiry (at most
  half its lifetime, for tokens living less than twice the margin), or until
  its source holds a newer one (a rotated notebook token file);
- then the sources are tried again in order and the first fresh token wins;
- concurrent callers — threads and asyncio tasks alike — share one refresh;
- optionally (`keep_alive`), a short-lived token is exchanged once (RFC 8693) for
  a refresh token, so the flow outlives the mounted token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timezone

from prefect_egi.tasks.checkin.errors import (
    CheckinError,
    IssuerUnreachableError,
    MalformedTokenError,
    NoTokenError,
    SourceAttempt,
    TokenExpiredError,
)
from prefect_egi.tasks.checkin.oidc import OidcClient
from prefect_egi.tasks.checkin.sources import RefreshTokenSource, SourceUnavailable, TokenSource
from prefect_egi.tasks.checkin.tokens import AccessToken

logger = logging.getLogger("prefect_egi.checkin")

DEFAULT_MARGIN_SECONDS = 60.0


class TokenProvider:
    """Yields a valid access token from an ordered list of sources."""

    def __init__(
        self,
        sources: Sequence[TokenSource],
        *,
        margin: float = DEFAULT_MARGIN_SECONDS,
        oidc: OidcClient | None = None,
        keep_alive: bool = False,
        verify_signature: bool = False,
    ):
        self.sources = list(sources)
        self.margin = margin
        self.oidc = oidc
        self.keep_alive = keep_alive
        self.verify_signature = verify_signature
        self._lock = threading.Lock()
        self._current: tuple[AccessToken, TokenSource] | None = None

    # -- public API ---------------------------------------------------------------
    def get_token(self) -> AccessToken:
        """A token valid for more than its margin (`margin_for`), or the best still-valid one."""
        token = self._cached()
        if token is not None:
            return token
        with self._lock:
            token = self._cached()  # another caller may have refreshed while we waited
            if token is not None:
                return token
            return self._refresh()

    def get_access_token(self) -> str:
        return self.get_token().value

    async def aget_token(self) -> AccessToken:
        """Async variant: the fast path stays on the loop, a refresh runs in a thread."""
        token = self._cached()
        if token is not None:
            return token
        return await asyncio.to_thread(self.get_token)

    async def aget_access_token(self) -> str:
        return (await self.aget_token()).value

    def margin_for(self, token: AccessToken) -> float:
        """How long before `token` expires it is refreshed: `margin`, but at most half the
        token's lifetime (exp - iat) — a token living less than the margin would otherwise
        never count as fresh and be fetched again on every call."""
        issued, expires = token.claims.issued_at, token.expires_at
        if issued is None or expires is None or expires <= issued:
            return self.margin
        return min(self.margin, (expires - issued).total_seconds() / 2)

    def invalidate(self) -> None:
        """Forget the cached token (e.g. after a service answered 401 to it)."""
        with self._lock:
            self._current = None

    # -- internals ------------------------------------------------------------------
    def _cached(self) -> AccessToken | None:
        current = self._current
        if current is None:
            return None
        token, source = current
        if token.is_fresh(self.margin_for(token)) and source.unchanged(token):
            return token
        return None

    def _refresh(self) -> AccessToken:
        now = datetime.now(timezone.utc)
        attempts: list[SourceAttempt] = []
        stale: tuple[AccessToken, TokenSource] | None = None  # valid, but inside the margin
        expired: AccessToken | None = None
        malformed: list[str] = []
        endpoint_error: CheckinError | None = None

        for source in self.sources:
            try:
                token = source.fetch()
                if self.verify_signature and self.oidc is not None:
                    self.oidc.verify_signature(token)
            except SourceUnavailable as unavailable:
                attempts.append(SourceAttempt(source.name, unavailable.reason, unavailable.hint))
                continue
            except MalformedTokenError as exc:
                malformed.append(str(exc))
                attempts.append(SourceAttempt(source.name, str(exc), "replace it with a valid access token"))
                continue
            except CheckinError as exc:
                endpoint_error = endpoint_error or exc
                attempts.append(SourceAttempt(source.name, str(exc)))
                continue
            if token.is_fresh(self.margin_for(token), now):
                return self._adopt(token, source, malformed)
            if not token.is_expired(now):
                stale = stale or (token, source)
                attempts.append(SourceAttempt(source.name, f"token expires within {self.margin_for(token):.0f} s"))
            else:
                expired = expired or token
                assert token.expires_at is not None
                attempts.append(
                    SourceAttempt(source.name, f"token expired at {token.expires_at.isoformat(timespec='seconds')}")
                )

        if stale is not None:
            logger.warning(
                "Using a Check-in token from %s that expires in %.0f s; no source has a fresher one.",
                stale[1].name, stale[0].seconds_left(now) or 0,
            )
            return self._adopt(*stale, malformed, cache=False)
        if malformed and expired is None:
            raise MalformedTokenError("\n".join(["No usable EGI Check-in access token:"] + [a.describe() for a in attempts]))
        if expired is not None:
            assert expired.expires_at is not None
            others = [a for a in attempts if a.source != expired.source]
            raise TokenExpiredError(expired.source, expired.expires_at, others) from endpoint_error
        transient = isinstance(endpoint_error, IssuerUnreachableError)
        raise NoTokenError(attempts, transient=transient) from endpoint_error

    def _adopt(self, token: AccessToken, source: TokenSource, malformed: list[str], cache: bool = True) -> AccessToken:
        for problem in malformed:
            logger.warning("Ignored a malformed token: %s", problem)
        if cache:
            self._current = (token, source)
        logger.debug(
            "Check-in token from %s, valid until %s", source.name,
            token.expires_at.isoformat(timespec="seconds") if token.expires_at else "unknown (opaque token)",
        )
        if self.keep_alive and not source.can_refresh:
            self._install_refresh_token(token)
        return token

    def _install_refresh_token(self, token: AccessToken) -> None:
        """Exchange `token` once for a refresh token and add it as a fallback source."""
        if self.oidc is None or not self.oidc.client_id:
            return
        refreshers = [s for s in self.sources if isinstance(s, RefreshTokenSource)]
        if any(s.configured for s in refreshers):
            return
        try:
            refresh_token = self.oidc.exchange_for_refresh_token(token.secret)
        except CheckinError as exc:
            logger.warning("Could not exchange the Check-in token for a refresh token (keep_alive): %s", exc)
            return
        if refreshers:
            refreshers[0].set_refresh_token(refresh_token)
        else:
            self.sources.append(RefreshTokenSource(self.oidc, refresh_token, origin="exchanged refresh token"))
        logger.info("Exchanged the Check-in access token for a refresh token (RFC 8693); flows can now outlive it.")
