"""EGI Check-in: one identity (an OIDC access token) behind every EGI service.

Layers: `tokens`, `sources`, `oidc` and `provider` are plain Python (no Prefect);
`block` holds the Prefect block and task built on them.
"""

from typing import TYPE_CHECKING

from tasks._lazy import lazy_exports

_EXPORTS = {
    "CheckinCredentials": "tasks.checkin.block",
    "aget_checkin_token": "tasks.checkin.block",
    "get_checkin_token": "tasks.checkin.block",
    **dict.fromkeys(["CheckinError", "IssuerUnreachableError", "MalformedTokenError", "NoTokenError",
                     "TokenEndpointError", "TokenExpiredError", "TokenVerificationError"], "tasks.checkin.errors"),
    "EGI_CHECKIN_ISSUER": "tasks.checkin.oidc",
    "OidcClient": "tasks.checkin.oidc",
    "TokenProvider": "tasks.checkin.provider",
    "AccessToken": "tasks.checkin.tokens",
    "TokenClaims": "tasks.checkin.tokens",
    "parse_token": "tasks.checkin.tokens",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:
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
