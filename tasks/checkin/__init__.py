"""EGI Check-in: one identity (an OIDC access token) behind every EGI service.

Layers: `tokens`, `sources`, `oidc` and `provider` are plain Python (no Prefect);
`block` holds the Prefect block and task built on them.
"""

from tasks.checkin.block import CheckinCredentials, aget_checkin_token, get_checkin_token
from tasks.checkin.errors import (
    CheckinError,
    IssuerUnreachableError,
    MalformedTokenError,
    NoTokenError,
    TokenEndpointError,
    TokenExpiredError,
    TokenVerificationError,
)
from tasks.checkin.oidc import EGI_CHECKIN_ISSUER, OidcClient
from tasks.checkin.provider import TokenProvider
from tasks.checkin.tokens import AccessToken, TokenClaims, parse_token

__all__ = [
    "EGI_CHECKIN_ISSUER",
    "AccessToken",
    "CheckinCredentials",
    "CheckinError",
    "IssuerUnreachableError",
    "MalformedTokenError",
    "NoTokenError",
    "OidcClient",
    "TokenClaims",
    "TokenEndpointError",
    "TokenExpiredError",
    "TokenProvider",
    "TokenVerificationError",
    "aget_checkin_token",
    "get_checkin_token",
    "parse_token",
]
