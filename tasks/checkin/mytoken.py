"""A client of a mytoken server: long-lived mytokens redeemed for Check-in access tokens.

mytoken (https://mytoken.data.kit.edu, oidc-mytoken/server) holds a user's refresh
token at the OpenID provider and hands out *mytokens*: bearer tokens that may live for
months, restricted by capabilities and limits. fedcloudclient accepts one (`--mytoken`,
`FEDCLOUD_MYTOKEN`); the exchange, as the server's API (v0) defines it:

- discovery: `GET {server}/.well-known/mytoken-configuration`, whose `issuer` is the
  server itself and whose `access_token_endpoint` is `{server}/api/v0/token/access`;
- `POST {access_token_endpoint}` with JSON `{"grant_type": "mytoken", "mytoken": …,
  "oidc_issuer": …}` answers `{"access_token", "token_type", "expires_in", "scope",
  "token_update"?}`; errors are `{"error", "error_description"?}` with 400/401/403;
- a mytoken with rotation (`rotation.on_AT`) is valid once: the answer's
  `token_update.mytoken` replaces it, and the old one is revoked — with `auto_revoke`,
  presenting the old one again revokes the whole token family.

So a redemption is not safe to repeat blindly: it is retried only when a failure
proves the request never reached the server (no connection, a 429/503 from a front).
A mytoken JWT names its server (`iss`); it is only ever sent to that server.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import SecretStr

from prefect_egi.tasks.checkin.errors import CheckinError, IssuerUnreachableError, TokenEndpointError
from prefect_egi.tasks.faults import TRANSIENT_TRANSPORT, is_transient_status
from prefect_egi.tasks.http import (
    OutcomeUnknown,
    RetryPolicy,
    TLSVerificationError,
    TransientHTTPError,
    _exhausted,
    _judge,
    request_with_retries,
)
from prefect_egi.tasks.redaction import register_secret

#: The mytoken server fedcloudclient uses by default (`mytoken_server` in its configuration).
DEFAULT_MYTOKEN_SERVER = "https://mytoken.data.kit.edu"
#: Where a mytoken is read from when the block holds none: `MYTOKEN`, then fedcloudclient's name.
MYTOKEN_ENVIRONMENT = ("MYTOKEN", "FEDCLOUD_MYTOKEN")
#: The `token_type` claim of a mytoken JWT (oidc-mytoken/api v0 `TokenType`).
MYTOKEN_TOKEN_TYPE = "mytoken"

# What to tell the user for each error the access token endpoint answers (oidc-mytoken/api v0 `apiError.go`).
_ERROR_HINTS = {
    "invalid_token": "the mytoken is expired, revoked, or was replaced by rotation (a rotating mytoken works "
    "once: keep the newest); create a new one at your mytoken server",
    "insufficient_capabilities": "this mytoken may not obtain access tokens: create one with the 'AT' capability "
    "(\"Allows obtaining OpenID Connect Access Tokens\")",
    "usage_restricted": "the mytoken's restrictions (validity period, IP addresses, number of uses, scopes) do not "
    "allow this use now",
    "invalid_request": "the mytoken belongs to another OpenID provider than the block's issuer: set the issuer the "
    "mytoken was made for, or make a mytoken for EGI Check-in",
    "oidc_error": "the OpenID provider refused the refresh token the mytoken server holds for you: create a new "
    "mytoken",
    "invalid_grant": "the server does not redeem mytokens (grant_type=mytoken): check the mytoken server URL",
}


def mytoken_claims(mytoken: SecretStr) -> dict[str, Any] | None:
    """The claims of a mytoken JWT, read without a signature check (only to learn which
    server issued it); None for a short (opaque) mytoken or anything that is not a JWT."""
    parts = mytoken.get_secret_value().strip().split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return payload if isinstance(payload, dict) and payload.get("token_type") == MYTOKEN_TOKEN_TYPE else None


@dataclass(frozen=True)
class MytokenRedemption:
    """One access token from the mytoken server, and the mytoken that replaces ours (rotation)."""

    access_token: SecretStr
    expires_in: float | None
    rotated: SecretStr | None


@dataclass
class MytokenClient:
    """Talks to one mytoken server; endpoints come from its discovery document."""

    server: str = DEFAULT_MYTOKEN_SERVER
    verify: bool | ssl.SSLContext = True  # see tasks.http.tls_verify
    timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    _discovery: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.server = self.server.rstrip("/")

    def _client(self) -> httpx.Client:
        return httpx.Client(verify=self.verify, timeout=self.timeout, follow_redirects=False)

    def discovery(self) -> dict[str, Any]:
        """The server's mytoken configuration (fetched once per client; reads are safe to retry)."""
        with self._lock:
            if self._discovery is None:
                url = f"{self.server}/.well-known/mytoken-configuration"
                try:
                    with self._client() as client:
                        response = request_with_retries(client, "GET", url, policy=self.retry,
                                                        what="mytoken discovery", headers={"Accept": "application/json"})
                except TLSVerificationError as exc:
                    raise CheckinError(str(exc)) from None
                except (TransientHTTPError, httpx.HTTPError) as exc:
                    raise IssuerUnreachableError(f"mytoken discovery ({url}) failed: {exc}") from None
                try:
                    data = response.json() if response.status_code == 200 else None
                except ValueError:
                    data = None
                if not isinstance(data, dict):
                    raise IssuerUnreachableError(
                        f"mytoken discovery ({url}) answered HTTP {response.status_code} without a configuration; "
                        "check the mytoken server URL")
                if str(data.get("issuer", "")).rstrip("/") != self.server:
                    raise IssuerUnreachableError(
                        f"mytoken discovery at {url} names issuer {data.get('issuer')!r}, not {self.server!r}; "
                        "check the mytoken server URL")
                self._discovery = data
            return self._discovery

    def _post_once(self, url: str, body: dict[str, str]) -> httpx.Response:
        """POST `body`, retrying only failures that prove it was never received (the
        shared rule of `tasks.http`, non-idempotent): a redemption may rotate the mytoken."""
        outcome: httpx.Response | BaseException | None = None
        with self._client() as client:
            for attempt in range(self.retry.attempts):
                if attempt:
                    time.sleep(self.retry.delay(attempt - 1))
                try:
                    outcome = client.post(url, json=body, headers={"Accept": "application/json"})
                except TRANSIENT_TRANSPORT as exc:
                    outcome = exc
                if (response := _judge("mytoken access token endpoint", url, outcome, idempotent=False)) is not None:
                    return response
        assert outcome is not None
        raise _exhausted("mytoken access token endpoint", url, self.retry, outcome)

    def redeem(self, mytoken: SecretStr, oidc_issuer: str | None = None) -> MytokenRedemption:
        """Trade the mytoken for an access token (of `oidc_issuer`, when given: the server
        refuses a mytoken made for another provider), keeping any rotated mytoken."""
        url = str(self.discovery().get("access_token_endpoint") or "")
        if not url:
            raise IssuerUnreachableError(f"mytoken server {self.server} does not advertise an access_token_endpoint")
        body = {"grant_type": "mytoken", "mytoken": mytoken.get_secret_value().strip(), "comment": "prefect-egi"}
        if oidc_issuer:
            body["oidc_issuer"] = oidc_issuer
        try:
            response = self._post_once(url, body)
        except TLSVerificationError as exc:
            raise CheckinError(str(exc)) from None
        except TransientHTTPError as exc:
            raise IssuerUnreachableError(str(exc)) from None
        except OutcomeUnknown as exc:
            raise IssuerUnreachableError(f"{exc}. If the mytoken rotates, it may be spent: check it at "
                                         f"{self.server}") from None
        if is_transient_status(response.status_code):  # failed after it may have acted: not sent again
            raise IssuerUnreachableError(
                f"mytoken access token endpoint ({url}) answered HTTP {response.status_code}; not sent again, as the "
                f"server may have rotated the mytoken already. If it rotates, it may be spent: check it at "
                f"{self.server}")
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise TokenEndpointError(f"HTTP {response.status_code}", "the answer is not a JSON object", url,
                                     hint="check the mytoken server URL")
        if response.status_code != 200 or "error" in answer:
            error = str(answer.get("error") or f"HTTP {response.status_code}")
            raise TokenEndpointError(error, str(answer.get("error_description") or ""), url,
                                     hint=_ERROR_HINTS.get(error, ""))
        access = answer.get("access_token")
        if not isinstance(access, str) or not access:
            raise TokenEndpointError("invalid_response", "no access_token in the answer", url)
        register_secret(access)
        update = answer.get("token_update")
        rotated = update.get("mytoken") if isinstance(update, dict) else None
        if isinstance(rotated, str) and rotated:
            register_secret(rotated)
        expires_in = answer.get("expires_in")
        return MytokenRedemption(
            access_token=SecretStr(access),
            expires_in=float(expires_in) if isinstance(expires_in, (int, float)) else None,
            rotated=SecretStr(rotated) if isinstance(rotated, str) and rotated else None,
        )
