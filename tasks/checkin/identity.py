"""Who a token belongs to: subject, VOs and validity, as `fedcloud token check`
and `token list-vos` report them.

VOs are asked from the issuer's userinfo endpoint (the authoritative list:
Check-in access tokens do not always carry entitlements) — but only when the
token says it was issued by the configured issuer, so a token is never sent to
a host it does not belong to. Otherwise the token's own entitlements are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from prefect_egi.tasks.checkin.errors import CheckinError
from prefect_egi.tasks.checkin.oidc import OidcClient
from prefect_egi.tasks.checkin.tokens import AccessToken, entitlements_of, vos_from_entitlements


@dataclass(frozen=True)
class Identity:
    """What a token says about its owner; holds no secret, safe to log and persist."""

    source: str
    is_jwt: bool
    subject: str | None
    issuer: str | None
    username: str | None
    vos: tuple[str, ...]
    vos_from: str  # "userinfo" or "token"
    expires_at: datetime | None
    note: str = ""

    def seconds_left(self, now: datetime | None = None) -> float | None:
        if self.expires_at is None:
            return None
        return (self.expires_at - (now or datetime.now(timezone.utc))).total_seconds()


def identify(token: AccessToken, oidc: OidcClient | None = None, ask_issuer: bool = True) -> Identity:
    claims = token.claims
    vos, origin, note = tuple(claims.vos), "token", ""
    issued_by_configured = oidc is not None and (claims.issuer or "").rstrip("/") == oidc.issuer
    if ask_issuer and issued_by_configured:
        assert oidc is not None
        try:
            info = oidc.userinfo(token)
            vos, origin = tuple(vos_from_entitlements(entitlements_of(info))), "userinfo"
        except CheckinError as exc:
            note = f"userinfo failed ({exc}); VOs are those in the token itself"
    elif ask_issuer and oidc is not None and claims.issuer:
        note = f"the token was issued by {claims.issuer}, not {oidc.issuer}: VOs are those in the token itself"
    return Identity(
        source=token.source,
        is_jwt=token.is_jwt,
        subject=claims.subject,
        issuer=claims.issuer,
        username=claims.username,
        vos=vos,
        vos_from=origin,
        expires_at=claims.expires_at,
        note=note,
    )
