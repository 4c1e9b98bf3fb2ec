"""A small OIDC client for EGI Check-in: discovery, token endpoint, userinfo, JWKS.

Endpoints always come from discovery of the issuer (never a hard-coded token
URL: Check-in moved from MITREid to Keycloak once already). Client
authentication follows RFC 6749 §2.3: HTTP Basic when the client has a secret,
the `client_id` form field for public clients.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import SecretStr

from prefect_egi.tasks.checkin.errors import (
    CheckinError,
    IssuerUnreachableError,
    TokenEndpointError,
    TokenVerificationError,
)
from prefect_egi.tasks.checkin.tokens import AccessToken, parse_token
from prefect_egi.tasks.http import RetryPolicy, TLSVerificationError, TransientHTTPError, request_with_retries
from prefect_egi.tasks.redaction import register_secret

EGI_CHECKIN_ISSUER = "https://aai.egi.eu/auth/realms/egi"
DEFAULT_SCOPE = "openid profile eduperson_entitlement offline_access"

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
REFRESH_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:refresh_token"
#: Keycloak's UMA grant: the user's access token (bearer) traded for an RPT for an audience
UMA_GRANT = "urn:ietf:params:oauth:grant-type:uma-ticket"

# What to tell the user for each RFC 6749 error code of the token endpoint.
_ERROR_HINTS = {
    "invalid_grant": "the refresh token is expired, revoked or belongs to another client; "
    "get a new one (e.g. from the EGI Check-in token portal) and update the block",
    "invalid_client": "the client id or client secret is wrong for this issuer; "
    "check the CheckinCredentials block's client_id and client_secret",
    "unauthorized_client": "this client may not use this grant; ask the client's owner to enable it",
    "invalid_scope": "the requested scope is not allowed for this client; adjust the block's scope",
    "unsupported_grant_type": "the issuer does not support this grant",
}


@dataclass(frozen=True)
class TokenResponse:
    """What the token endpoint returned; secrets as `SecretStr`."""

    access_token: SecretStr | None
    refresh_token: SecretStr | None
    expires_in: float | None
    scope: str | None
    issued_token_type: str | None = None


@dataclass
class OidcClient:
    """Talks to one issuer on behalf of one OAuth client."""

    issuer: str = EGI_CHECKIN_ISSUER
    client_id: str | None = None
    client_secret: SecretStr | None = None
    scope: str = DEFAULT_SCOPE
    verify: bool | ssl.SSLContext = True  # see tasks.http.tls_verify
    timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    _discovery: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _jwks: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.issuer = self.issuer.rstrip("/")
        register_secret(self.client_secret)

    # -- plumbing -------------------------------------------------------------
    def _send(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        """One call to the issuer with bounded retries; failures become Check-in errors."""
        try:
            with httpx.Client(verify=self.verify, timeout=self.timeout, follow_redirects=False) as client:
                return request_with_retries(client, method, url, policy=self.retry, what=what, **kwargs)
        except TLSVerificationError as exc:
            raise CheckinError(str(exc)) from None
        except TransientHTTPError as exc:
            raise IssuerUnreachableError(str(exc)) from None
        except httpx.HTTPError as exc:
            raise IssuerUnreachableError(f"{what} ({url}) failed: {type(exc).__name__}") from None

    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        response = self._send("GET", url, what, headers={"Accept": "application/json"})
        if response.status_code != 200:
            raise IssuerUnreachableError(f"{what} ({url}) answered HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError:
            raise IssuerUnreachableError(f"{what} ({url}) did not return JSON") from None
        if not isinstance(data, dict):
            raise IssuerUnreachableError(f"{what} ({url}) did not return a JSON object")
        return data

    def discovery(self) -> dict[str, Any]:
        """The issuer's OpenID configuration (fetched once per client)."""
        with self._lock:
            if self._discovery is None:
                url = f"{self.issuer}/.well-known/openid-configuration"
                data = self._get_json(url, "OIDC discovery")
                if data.get("issuer", "").rstrip("/") != self.issuer:
                    raise IssuerUnreachableError(
                        f"OIDC discovery at {url} names issuer {data.get('issuer')!r}, "
                        f"not {self.issuer!r}; check the issuer URL"
                    )
                self._discovery = data
            return self._discovery

    def endpoint(self, name: str) -> str:
        url = self.discovery().get(name)
        if not url:
            raise IssuerUnreachableError(f"issuer {self.issuer} does not advertise a {name}")
        return str(url)

    # -- token endpoint -----------------------------------------------------------
    def _require_client(self, action: str) -> str:
        if not self.client_id:
            raise TokenEndpointError(
                "missing_client", f"{action} needs an OAuth client", self.issuer,
                hint="set client_id (and client_secret for a confidential client) on the block",
            )
        return self.client_id

    def token_request(self, form: dict[str, str], action: str) -> TokenResponse:
        """POST to the token endpoint with client authentication; map RFC 6749 errors."""
        client_id = self._require_client(action)
        url = self.endpoint("token_endpoint")
        form = dict(form)
        auth: tuple[str, str] | None = None
        if self.client_secret is not None and self.client_secret.get_secret_value():
            auth = (client_id, self.client_secret.get_secret_value())
        else:
            form["client_id"] = client_id
        response = self._send(
            "POST", url, f"token endpoint ({action})", data=form, auth=auth, headers={"Accept": "application/json"}
        )
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or "error" in body:
            error = str(body.get("error") or f"HTTP {response.status_code}")
            raise TokenEndpointError(
                error, str(body.get("error_description") or ""), url, hint=_ERROR_HINTS.get(error, "")
            )
        return self._token_response(body, url)

    @staticmethod
    def _token_response(body: dict[str, Any], url: str) -> TokenResponse:
        def secret(name: str) -> SecretStr | None:
            value = body.get(name)
            if not value:
                return None
            register_secret(value)
            return SecretStr(str(value))

        expires_in = body.get("expires_in")
        return TokenResponse(
            access_token=secret("access_token"),
            refresh_token=secret("refresh_token"),
            expires_in=float(expires_in) if isinstance(expires_in, (int, float)) else None,
            scope=body.get("scope"),
            issued_token_type=body.get("issued_token_type"),
        )

    def refresh(self, refresh_token: SecretStr) -> TokenResponse:
        """Redeem a refresh token (the grant EGI's own tools send)."""
        response = self.token_request(
            {
                "grant_type": "refresh_token",
                "refresh_token": refresh_token.get_secret_value(),
                "scope": self.scope,
            },
            "refresh_token grant",
        )
        if response.access_token is None:
            raise TokenEndpointError("invalid_response", "no access_token in the answer", self.issuer)
        return response

    def exchange_for_refresh_token(self, access_token: SecretStr) -> SecretStr:
        """RFC 8693: trade a short-lived access token for a refresh token, as the EGI
        Notebooks hub does, so that a long flow can keep itself alive."""
        response = self.token_request(
            {
                "grant_type": TOKEN_EXCHANGE_GRANT,
                "subject_token": access_token.get_secret_value(),
                "subject_token_type": ACCESS_TOKEN_TYPE,
                "requested_token_type": REFRESH_TOKEN_TYPE,
                "scope": self.scope,
            },
            "token exchange",
        )
        if response.refresh_token is None:
            raise TokenEndpointError(
                "invalid_response", "the token exchange returned no refresh_token", self.issuer,
                hint="the client needs token-exchange permission and the offline_access scope",
            )
        return response.refresh_token

    def uma_token(self, access_token: SecretStr, audience: str) -> TokenResponse:
        """Keycloak's UMA grant as D4Science documents it: the user's access token as the
        bearer (no client authentication: the client is the one the token was issued to),
        `audience` = the resource server (for D4Science, the VRE context). Returns the RPT.

        Keycloak refuses a user without permission with 403 `access_denied` /
        `not_authorized`; that becomes a `TokenEndpointError` with `error="access_denied"`."""
        url = self.endpoint("token_endpoint")
        response = self._send(
            "POST", url, "token endpoint (UMA grant)", data={"grant_type": UMA_GRANT, "audience": audience},
            headers={"Authorization": f"Bearer {access_token.get_secret_value()}", "Accept": "application/json"})
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not isinstance(body, dict) or "error" in body:
            body = body if isinstance(body, dict) else {}
            error = str(body.get("error") or f"HTTP {response.status_code}")
            hint = (f"the user has no access to {audience}: ask to join it (for D4Science, on the VRE's page) and "
                    "try again" if error == "access_denied" else _ERROR_HINTS.get(error, ""))
            raise TokenEndpointError(error, str(body.get("error_description") or ""), url, hint=hint)
        answer = self._token_response(body, url)
        if answer.access_token is None:
            raise TokenEndpointError("invalid_response", "no access_token in the UMA answer", self.issuer)
        return answer

    # -- userinfo and signatures ----------------------------------------------------
    def userinfo(self, token: AccessToken) -> dict[str, Any]:
        """Claims the issuer knows about the token's user (VOs come from here)."""
        url = self.endpoint("userinfo_endpoint")
        response = self._send(
            "GET", url, "userinfo", headers={"Authorization": f"Bearer {token.value}", "Accept": "application/json"}
        )
        if response.status_code == 401:
            raise TokenVerificationError(f"userinfo ({url}) rejected the token (HTTP 401): it is expired or revoked")
        if response.status_code != 200:
            raise IssuerUnreachableError(f"userinfo ({url}) answered HTTP {response.status_code}")
        return response.json()

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            cached = self._jwks
        if cached is None:
            cached = self._get_json(self.endpoint("jwks_uri"), "JWKS")
            with self._lock:
                self._jwks = cached
        return cached

    def verify_signature(self, token: AccessToken) -> None:
        """Check the token's signature against the issuer's JWKS, and its iss and exp."""
        from joserfc import jwt
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        if not token.is_jwt:
            raise TokenVerificationError(f"the token from {token.source} is opaque: it has no signature to verify")
        try:
            keys = KeySet.import_key_set(self.jwks())
            decoded = jwt.decode(token.value, keys, algorithms=["RS256", "RS384", "RS512", "ES256", "PS256"])
            jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": self.issuer}, exp={"essential": True}
            ).validate(decoded.claims)
        except (JoseError, ValueError) as exc:
            raise TokenVerificationError(
                f"the token from {token.source} does not verify against {self.issuer}'s keys: "
                f"{type(exc).__name__}"
            ) from None


def parse_token_response(response: TokenResponse, source: str) -> AccessToken:
    assert response.access_token is not None
    return parse_token(response.access_token, source)
