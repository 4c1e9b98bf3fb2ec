"""Access tokens and their claims, read the way `fedcloud token check` reads them.

Claims are decoded *without* a signature check: the services verify the token,
we only need its expiry, subject, issuer and VOs to decide when to refresh and
what to show. Signature verification against the issuer's JWKS lives in
`tasks.checkin.oidc` and is opt-in. Opaque (non-JWT) tokens are accepted with an
unknown expiry.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import SecretStr

from prefect_egi.tasks.checkin.errors import MalformedTokenError
from prefect_egi.tasks.checkin.mytoken import MYTOKEN_TOKEN_TYPE

# Check-in entitlement of a VO member, as fedcloudclient's `token list-vos` reads it:
# group 1 is the VO, optional sub-groups follow before `role=member`.
VO_ENTITLEMENT = re.compile(r"^urn:mace:egi\.eu:group:(.+?):(.+:)*role=member#aai\.egi\.eu$")

# RFC 6750 b64token: what a bearer token may be made of.
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")

#: The claims that carry a Check-in user's groups, in the order they are read:
#: `entitlements` (the RFC 9068 / SCIM name Check-in's Keycloak releases, in tokens and
#: in userinfo answers) and `eduperson_entitlement` (the older name, still released and
#: the only one fedcloudclient reads). A token may carry either or both.
ENTITLEMENT_CLAIMS = ("entitlements", "eduperson_entitlement")


def entitlements_of(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """Every entitlement in a token's payload or a userinfo answer, from all of
    `ENTITLEMENT_CLAIMS`, in order and without duplicates.

    A claim may hold one string, a list of strings, or (SCIM, RFC 7643 §4.1.2) a list of
    `{"value": …}` objects; anything else in it is ignored rather than failing the token.
    """
    found: dict[str, None] = {}
    for name in ENTITLEMENT_CLAIMS:
        value = claims.get(name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                item = item.get("value")
            if isinstance(item, str) and item:
                found.setdefault(item, None)
    return tuple(found)


def vos_from_entitlements(entitlements: Iterable[str]) -> list[str]:
    """The VOs a user is a member of, sorted and de-duplicated."""
    found = {m.group(1) for e in entitlements if (m := VO_ENTITLEMENT.match(e))}
    return sorted(found)


def _timestamp(claims: dict[str, Any], name: str) -> datetime | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedTokenError(f"the token's '{name}' claim is not a number of seconds")
    return datetime.fromtimestamp(value, tz=timezone.utc)


@dataclass(frozen=True)
class TokenClaims:
    """The claims prefect-egi reads from a Check-in access token."""

    subject: str | None = None
    issuer: str | None = None
    audience: tuple[str, ...] = ()
    expires_at: datetime | None = None
    issued_at: datetime | None = None
    scope: str | None = None
    username: str | None = None
    entitlements: tuple[str, ...] = ()

    @property
    def vos(self) -> list[str]:
        return vos_from_entitlements(self.entitlements)

    @classmethod
    def from_payload(cls, claims: dict[str, Any]) -> "TokenClaims":
        audience = claims.get("aud") or ()
        if isinstance(audience, str):
            audience = (audience,)
        return cls(
            subject=claims.get("sub"),
            issuer=claims.get("iss"),
            audience=tuple(str(a) for a in audience),
            expires_at=_timestamp(claims, "exp"),
            issued_at=_timestamp(claims, "iat"),
            scope=claims.get("scope"),
            username=claims.get("preferred_username"),
            entitlements=entitlements_of(claims),
        )


@dataclass(frozen=True)
class AccessToken:
    """A bearer token with the claims read from it and where it came from.

    The value is a `SecretStr` so that printing, logging or pickling this object by
    accident shows `**********`, never the token.
    """

    secret: SecretStr = field(repr=False)
    claims: TokenClaims
    source: str
    is_jwt: bool

    @property
    def value(self) -> str:
        return self.secret.get_secret_value()

    @property
    def expires_at(self) -> datetime | None:
        return self.claims.expires_at

    def seconds_left(self, now: datetime | None = None) -> float | None:
        """Seconds until expiry (negative once expired); None for an opaque token."""
        if self.expires_at is None:
            return None
        now = now or datetime.now(timezone.utc)
        return (self.expires_at - now).total_seconds()

    def is_expired(self, now: datetime | None = None) -> bool:
        left = self.seconds_left(now)
        return left is not None and left <= 0

    def is_fresh(self, margin: float, now: datetime | None = None) -> bool:
        """True while the token stays valid for more than `margin` seconds (opaque: always)."""
        left = self.seconds_left(now)
        return left is None or left > margin


def _b64url_json(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise MalformedTokenError(f"the token looks like a JWT but its {what} is not base64url JSON") from None
    if not isinstance(data, dict):
        raise MalformedTokenError(f"the token looks like a JWT but its {what} is not a JSON object")
    return data


def parse_token(raw: str | SecretStr | None, source: str = "the given value") -> AccessToken:
    """Turn a raw string into an `AccessToken`, or raise `MalformedTokenError`.

    Accepts what users paste: surrounding whitespace and a leading `Bearer ` are
    dropped. Empty values, inner whitespace and characters a bearer token cannot
    contain are rejected with a message naming the source — never echoing the value.
    """
    if isinstance(raw, SecretStr):
        raw = raw.get_secret_value()
    text = (raw or "").strip()
    if text[:7].lower() == "bearer ":
        text = text[7:].strip()
    if not text:
        raise MalformedTokenError(f"{source} is empty: expected an access token")
    if not _B64TOKEN.match(text):
        raise MalformedTokenError(
            f"{source} does not contain an access token (it has whitespace or characters "
            "a bearer token cannot contain); paste only the token itself"
        )
    parts = text.split(".")
    looks_like_jwt = len(parts) == 3 and text.startswith("eyJ")
    if not looks_like_jwt:
        return AccessToken(SecretStr(text), TokenClaims(), source, is_jwt=False)
    try:
        header = _b64url_json(parts[0], "header")
        payload = _b64url_json(parts[1], "payload")
        claims = TokenClaims.from_payload(payload)
    except MalformedTokenError as exc:
        raise MalformedTokenError(f"{source}: {exc}") from None
    if "alg" not in header:
        raise MalformedTokenError(f"{source}: the JWT header has no 'alg'")
    if payload.get("token_type") == MYTOKEN_TOKEN_TYPE:
        raise MalformedTokenError(f"{source} holds a mytoken, not an access token: give it as a mytoken "
                                  "(MYTOKEN, or mytoken on the CheckinCredentials block)")
    return AccessToken(SecretStr(text), claims, source, is_jwt=True)
