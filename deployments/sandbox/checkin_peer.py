"""A local EGI Check-in: a small but real OIDC provider on 127.0.0.1.

No PyPI package fits (see shared notes): this one speaks what Check-in's
Keycloak speaks, at the same paths under `/auth/realms/egi`:

- discovery, JWKS (RS256), userinfo, token introspection, revocation;
- the authorization endpoint (authorization code + PKCE S256) that approves
  the peer's "browser user" at once — what a device-flow login (DiracX) needs;
- token endpoint grants `authorization_code` (with an `id_token`),
  `refresh_token`, RFC 8693 token exchange and `client_credentials`, with client authentication by HTTP Basic or form
  fields (both at once, as EGI's scripts send them, is accepted when they agree),
  and RFC 6749 error bodies (`invalid_grant`, `invalid_client`, …);
- the UMA grant as D4Science's Keycloak answers it (`grant_type=urn:ietf:params:oauth:grant-type:uma-ticket`,
  `audience=<VRE context>` — as is or percent-encoded —, the user's access token as the bearer, no
  client authentication): a member of the VRE gets an RPT (`aud` = the audience as sent,
  `authorization.permissions`, `"upgraded": false`, a refresh token that renews the RPT); anyone
  else Keycloak's 403 `{"error": "access_denied", "error_description": "not_authorized"}`.
  Memberships: `DEFAULT_VRES`, changed with `/_peer/vre` (context, users);
- access tokens are RS256 JWTs with Check-in's claims and a lifetime you choose,
  so expiry in the middle of a flow can be tested. A user's groups are released in the
  claims `entitlements` (the RFC 9068 name Check-in's Keycloak now releases; see
  EGI-Federation/documentation#799) and `eduperson_entitlement` (the older name, still
  released), in tokens, userinfo and introspection; `/_peer/config` with
  `entitlement_claims` releases only some of them, as a given Check-in client sees;
- a mytoken server (oidc-mytoken/server's API v0) under `/mytoken`: its discovery
  document (`/mytoken/.well-known/mytoken-configuration`) and access token endpoint
  (`POST /mytoken/api/v0/token/access`, `grant_type=mytoken`, JSON or form), with
  mytokens as the real server makes them (JWTs naming their server in `iss`, `seq_no`,
  `capabilities`, `rotation`), rotation on each access token (`on_AT`), revocation of
  a rotated-away mytoken and, with `auto_revoke`, of its whole family when it is used
  again, and the server's error bodies (`invalid_token` 401, `insufficient_capabilities`
  403, `invalid_request` 400 for another provider's mytoken, `invalid_grant` 400).

For tests and the sandbox it also serves `/_peer/*`: mint a login (`login`) or a
mytoken (`mytoken`: user, capabilities, rotation, expires_in) for a user, read request
counters, change lifetimes and released claims, and inject faults (5xx bursts, delays).

Run: `python checkin_peer.py --port 0` prints one JSON line with its URLs.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import ssl
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

REALM = "/auth/realms/egi"
OIDC = f"{REALM}/protocol/openid-connect"
EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
UMA_GRANT = "urn:ietf:params:oauth:grant-type:uma-ticket"
#: D4Science VREs (contexts) and their members: alice is in the first, nobody in the second
DEFAULT_VRES = {
    "/d4science.research-infrastructures.eu/D4OS/Blue-Cloud2026Lab": ["alice"],
    "/gcube/devsec/devVRE": [],
}
ACCESS_TYPE = "urn:ietf:params:oauth:token-type:access_token"
REFRESH_TYPE = "urn:ietf:params:oauth:token-type:refresh_token"
DEFAULT_SCOPE = "openid profile eduperson_entitlement offline_access"
#: The claims a user's groups are released in (see the module docstring).
ENTITLEMENT_CLAIMS = ("entitlements", "eduperson_entitlement")
MYTOKEN = "/mytoken"  # the mytoken server's path on this peer (its `issuer` is base_url + MYTOKEN)
MYTOKEN_CLIENT = "mytoken"  # the OIDC client the mytoken server holds users' refresh tokens as
MYTOKEN_VERSION = "0.7"  # oidc-mytoken/api v0 TokenVer

DEFAULT_USERS = {
    "alice": {
        "sub": "0f4b2a0c8d3e4e1b9f5a6c7d8e9f0a1b@egi.eu",
        "name": "Alice Researcher",
        "email": "alice@example.org",
        "eduperson_entitlement": [
            "urn:mace:egi.eu:group:vo.access.egi.eu:role=member#aai.egi.eu",
            "urn:mace:egi.eu:group:vo.access.egi.eu:role=vm_operator#aai.egi.eu",
            "urn:mace:egi.eu:group:vo.notebooks.egi.eu:role=member#aai.egi.eu",
            "urn:mace:egi.eu:group:eosc-synergy.eu:subgroup:role=member#aai.egi.eu",
        ],
    },
    "bob": {
        "sub": "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d@egi.eu",
        "name": "Bob NoVO",
        "email": "bob@example.org",
        "eduperson_entitlement": [],
    },
    # a researcher of the EGI Notebooks VO only (no cloud VO, not a hub admin)
    "carol": {
        "sub": "5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f@egi.eu",
        "name": "Carol Notebooks",
        "email": "carol@example.org",
        "eduperson_entitlement": [
            "urn:mace:egi.eu:group:vo.notebooks.egi.eu:role=member#aai.egi.eu",
        ],
    },
}
DEFAULT_CLIENTS = {
    "prefect-egi": {"secret": "prefect-egi-client-secret", "exchange": True},
    "public-cli": {"secret": None, "exchange": False},
    # DiracX logs its users in through Check-in as a public client (authorization code + PKCE)
    "diracx": {"secret": None, "exchange": False, "redirect_prefixes": ["http://127.0.0.1:", "http://localhost:"]},
}
CODE_LIFETIME = 60


@dataclass
class Grant:
    """A refresh token's server-side record."""

    user: str
    client_id: str
    scope: str
    expires_at: float
    revoked: bool = False
    audience: str | None = None  # an RPT's refresh token renews the RPT of this VRE


@dataclass
class AuthorizationCode:
    """What an authorization code stands for, until it is redeemed (once)."""

    user: str
    client_id: str
    redirect_uri: str
    scope: str
    challenge: str | None
    nonce: str | None
    expires_at: float


@dataclass
class MytokenRecord:
    """A mytoken's server-side record: its family (jti) and which sequence number is current."""

    user: str
    seq_no: int
    capabilities: list[str]
    rotation: dict[str, Any] | None
    expires_at: float
    revoked: bool = False


class MytokenError(Exception):
    """An error answer of the mytoken server: `{"error", "error_description"?}` (omitted when empty)."""

    def __init__(self, status: int, error: str, description: str = ""):
        super().__init__(error)
        self.status, self.error, self.description = status, error, description


@dataclass
class Fault:
    status: int = 503
    delay: float = 0.0
    remaining: int = 1


@dataclass
class PeerState:
    base_url: str = ""
    access_token_lifetime: int = 3600
    default_access_token_lifetime: int = 3600
    refresh_token_lifetime: int = 30 * 24 * 3600
    users: dict[str, dict[str, Any]] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_USERS)))
    clients: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEFAULT_CLIENTS))
    grants: dict[str, Grant] = field(default_factory=dict)
    codes: dict[str, AuthorizationCode] = field(default_factory=dict)
    mytokens: dict[str, MytokenRecord] = field(default_factory=dict)  # jti -> record
    entitlement_claims: tuple[str, ...] = ENTITLEMENT_CLAIMS
    browser_user: str = "alice"  # who is "logged in" at the authorization endpoint
    revoked_jti: set[str] = field(default_factory=set)
    vres: dict[str, list[str]] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_VRES)))
    counters: Counter[str] = field(default_factory=Counter)
    faults: dict[str, Fault] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)  # every token minted, for leak sweeps; never reset
    lock: threading.Lock = field(default_factory=threading.Lock)
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": uuid.uuid4().hex, "use": "sig", "alg": "RS256"}))

    def count(self, name: str) -> None:
        with self.lock:
            self.counters[name] += 1

    @property
    def issuer(self) -> str:
        return self.base_url + REALM

    @property
    def mytoken_issuer(self) -> str:
        return self.base_url + MYTOKEN

    def groups(self, profile: dict[str, Any]) -> dict[str, list[str]]:
        """The user's entitlements, under each claim name this peer releases."""
        entitlements = list(profile.get("eduperson_entitlement", []))
        return {name: list(entitlements) for name in self.entitlement_claims}

    # -- tokens ------------------------------------------------------------------
    def access_token(self, user: str, client_id: str, scope: str, lifetime: int | None = None) -> tuple[str, int]:
        lifetime = self.access_token_lifetime if lifetime is None else lifetime
        now = int(time.time())
        profile = self.users[user]
        claims = {
            "iss": self.issuer,
            "sub": profile["sub"],
            "aud": ["account", client_id],
            "azp": client_id,
            "typ": "Bearer",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
            "scope": scope,
            "preferred_username": user,
            **self.groups(profile),
        }
        header = {"alg": "RS256", "typ": "JWT", "kid": self.key.kid}
        return self.minted(jwt.encode(header, claims, self.key)), lifetime

    def refresh_token(self, user: str, client_id: str, scope: str, audience: str | None = None) -> str:
        token = secrets.token_urlsafe(48)
        self.grants[token] = Grant(user, client_id, scope, time.time() + self.refresh_token_lifetime,
                                   audience=audience)
        return self.minted(token)

    def uma_response(self, user: str, client_id: str, scope: str, audience: str) -> dict[str, Any]:
        """An RPT for the VRE `audience` names (as sent), as Keycloak answers the UMA grant;
        raises Keycloak's 403 `not_authorized` when the user is not a member of the VRE."""
        context = unquote(audience)
        if user not in self.vres.get(context, ()):
            raise OAuthError(403, "access_denied", "not_authorized")
        lifetime = self.access_token_lifetime
        now = int(time.time())
        claims = {
            "iss": self.issuer, "sub": self.users[user]["sub"], "aud": audience, "azp": client_id, "typ": "Bearer",
            "iat": now, "nbf": now, "exp": now + lifetime, "jti": uuid.uuid4().hex, "scope": scope,
            "preferred_username": user,
            "authorization": {"permissions": [{"rsid": str(uuid.uuid5(uuid.NAMESPACE_URL, context)),
                                               "rsname": "Default Resource"}]},
        }
        token = self.minted(jwt.encode({"alg": "RS256", "typ": "JWT", "kid": self.key.kid}, claims, self.key))
        return {"upgraded": False, "access_token": token, "expires_in": lifetime,
                "refresh_expires_in": self.refresh_token_lifetime,
                "refresh_token": self.refresh_token(user, client_id, scope, audience=audience),
                "token_type": "Bearer", "not-before-policy": 0}

    def decode(self, token: str) -> dict[str, Any] | None:
        """Claims of one of our valid, unrevoked access tokens, else None."""
        try:
            claims = jwt.decode(token, self.key, algorithms=["RS256"]).claims
        except (JoseError, ValueError):
            return None
        if claims.get("iss") != self.issuer or claims.get("exp", 0) <= time.time():
            return None
        if claims.get("jti") in self.revoked_jti:
            return None
        return claims

    def user_of(self, claims: dict[str, Any]) -> str | None:
        return next((name for name, p in self.users.items() if p["sub"] == claims.get("sub")), None)

    def id_token(self, user: str, client_id: str, nonce: str | None) -> str:
        now = int(time.time())
        profile = self.users[user]
        claims = {"iss": self.issuer, "sub": profile["sub"], "aud": client_id, "azp": client_id, "iat": now,
                  "exp": now + self.access_token_lifetime, "auth_time": now, "typ": "ID",
                  "preferred_username": user, "name": profile.get("name", user), "email": profile.get("email")}
        if nonce:
            claims["nonce"] = nonce
        return self.minted(jwt.encode({"alg": "RS256", "typ": "JWT", "kid": self.key.kid}, claims, self.key))

    def minted(self, token: str) -> str:
        self.issued.append(token)
        return token

    # -- mytokens -----------------------------------------------------------------
    def mytoken(self, user: str, capabilities: list[str], rotation: dict[str, Any] | None,
                expires_in: int) -> dict[str, Any]:
        """A new mytoken family for `user`, as the server's mytoken endpoint answers it."""
        jti = str(uuid.uuid4())
        self.mytokens[jti] = MytokenRecord(user, 0, list(capabilities), rotation, time.time() + expires_in)
        return self.mytoken_response(jti)

    def mytoken_response(self, jti: str) -> dict[str, Any]:
        """The current mytoken of a family (a MytokenResponse of oidc-mytoken/api v0)."""
        record = self.mytokens[jti]
        profile = self.users[record.user]
        now = int(time.time())
        claims: dict[str, Any] = {
            "ver": MYTOKEN_VERSION, "token_type": "mytoken", "iss": self.mytoken_issuer,
            "sub": hashlib.sha256(f"{profile['sub']}@{self.issuer}".encode()).hexdigest(),
            "exp": int(record.expires_at), "nbf": now, "iat": now, "auth_time": now, "jti": jti,
            "seq_no": record.seq_no, "aud": self.mytoken_issuer, "oidc_sub": profile["sub"],
            "oidc_iss": self.issuer, "capabilities": record.capabilities,
        }
        if record.rotation:
            claims["rotation"] = record.rotation
        header = {"alg": "RS256", "typ": "MT+JWT", "kid": self.key.kid}
        answer: dict[str, Any] = {"mytoken": self.minted(jwt.encode(header, claims, self.key)),
                                  "mytoken_type": "token", "expires_in": max(0, int(record.expires_at) - now),
                                  "capabilities": record.capabilities}
        if record.rotation:
            answer["rotation"] = record.rotation
        return answer

    def redeem_mytoken(self, form: dict[str, str]) -> dict[str, Any]:
        """The access token endpoint: checks in the order the real server makes them."""
        if form.get("grant_type") != "mytoken":
            raise MytokenError(400, "invalid_grant", "Unsupported grant_type")
        presented = form.get("mytoken") or form.get("refresh_token") or ""
        if not presented:
            raise MytokenError(401, "invalid_token", "no mytoken found in request")
        try:
            claims = jwt.decode(presented, self.key, algorithms=["RS256"]).claims
            jwt.JWTClaimsRegistry(exp={"essential": True}).validate(claims)
        except (JoseError, ValueError) as exc:
            raise MytokenError(401, "invalid_token", type(exc).__name__) from None
        record = self.mytokens.get(str(claims.get("jti")))
        if record is None or record.revoked or claims.get("seq_no") != record.seq_no:
            if record is not None and (record.rotation or {}).get("auto_revoke"):
                record.revoked = True  # a rotated-away mytoken came back: the family is compromised
            raise MytokenError(401, "invalid_token")
        if "AT" not in record.capabilities:
            raise MytokenError(403, "insufficient_capabilities",
                               "The provided token does not have the required capability for this operation")
        requested = form.get("oidc_issuer") or claims["oidc_iss"]
        if requested != claims["oidc_iss"]:
            raise MytokenError(400, "invalid_request", "token not for specified issuer")
        scope = form.get("scope") or DEFAULT_SCOPE
        access, lifetime = self.access_token(record.user, MYTOKEN_CLIENT, scope)
        answer: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": lifetime,
                                  "scope": scope}
        if (record.rotation or {}).get("on_AT"):
            record.seq_no += 1
            if record.rotation.get("lifetime"):
                record.expires_at = time.time() + int(record.rotation["lifetime"])
            answer["token_update"] = self.mytoken_response(str(claims["jti"]))
        return answer

    def mytoken_configuration(self) -> dict[str, Any]:
        """The discovery document (oidc-mytoken/api v0 MytokenConfiguration)."""
        base = self.mytoken_issuer
        return {
            "issuer": base,
            "access_token_endpoint": f"{base}/api/v0/token/access",
            "mytoken_endpoint": f"{base}/api/v0/token/my",
            "tokeninfo_endpoint": f"{base}/api/v0/tokeninfo",
            "revocation_endpoint": f"{base}/api/v0/token/revoke",
            "usersettings_endpoint": f"{base}/api/v0/settings",
            "jwks_uri": f"{base}/jwks",
            "providers_supported": [{"issuer": self.issuer, "name": "EGI Check-in",
                                     "scopes_supported": DEFAULT_SCOPE.split()}],
            "token_signing_alg_value": "RS256",
            "access_token_endpoint_grant_types_supported": ["mytoken"],
            "mytoken_endpoint_grant_types_supported": ["oidc_flow", "mytoken"],
            "mytoken_endpoint_oidc_flows_supported": ["authorization_code"],
            "response_types_supported": ["token"],
            "restriction_claims_supported": ["nbf", "exp", "scope", "audience", "hosts", "usages_AT"],
            "token_endpoint": f"{base}/api/v0/token/access",
            "version": "checkin-peer",
        }

    def token_response(self, user: str, client_id: str, scope: str, refresh: bool = True) -> dict[str, Any]:
        access, lifetime = self.access_token(user, client_id, scope)
        body: dict[str, Any] = {
            "access_token": access,
            "expires_in": lifetime,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "session_state": uuid.uuid4().hex,
            "scope": scope,
        }
        if refresh and "offline_access" in scope.split():
            body["refresh_token"] = self.refresh_token(user, client_id, scope)
            body["refresh_expires_in"] = 0  # offline tokens: Keycloak reports 0
        return body


class OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str = ""):
        super().__init__(error)
        self.status, self.error, self.description = status, error, description


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "checkin-peer/1"
    state: PeerState  # set on the subclass made by `make_server`

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read counters
        pass

    # -- plumbing ------------------------------------------------------------------
    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        if self.headers.get("Content-Type", "").startswith("application/json"):
            data = json.loads(raw or "{}")
            return data if isinstance(data, dict) else {}
        return {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    def _bearer(self) -> str | None:
        header = self.headers.get("Authorization", "")
        return header[7:].strip() if header[:7].lower() == "bearer " else None

    def _fault(self, endpoint: str) -> bool:
        """Apply an injected fault for this endpoint; True when the request was answered."""
        with self.state.lock:
            fault = self.state.faults.get(endpoint)
            if fault is None or fault.remaining <= 0:
                return False
            fault.remaining -= 1
        if fault.delay:
            time.sleep(fault.delay)
        if fault.status:
            self._send(fault.status, {"error": "server_error", "error_description": "injected fault"})
            return True
        return False

    def _client(self, form: dict[str, str]) -> str:
        """Authenticate the OAuth client (Basic and/or form fields); return its id."""
        basic_id = basic_secret = None
        header = self.headers.get("Authorization", "")
        if header[:6].lower() == "basic ":
            try:
                basic_id, _, basic_secret = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                raise OAuthError(401, "invalid_client", "malformed Basic credentials") from None
        form_id, form_secret = form.get("client_id"), form.get("client_secret")
        if basic_id and form_id and (basic_id != form_id or (form_secret and form_secret != basic_secret)):
            raise OAuthError(400, "invalid_request", "client credentials in header and body disagree")
        client_id = basic_id or form_id
        secret = basic_secret if basic_id else form_secret
        client = self.state.clients.get(client_id or "")
        if client is None:
            raise OAuthError(401, "invalid_client", "Invalid client or Invalid client credentials")
        if client["secret"] is not None and secret != client["secret"]:
            raise OAuthError(401, "invalid_client", "Invalid client or Invalid client credentials")
        return str(client_id)

    # -- routes ----------------------------------------------------------------------
    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        self.state.count(f"GET {path}")
        if self._fault(path):
            return
        if path == f"{REALM}/.well-known/openid-configuration":
            return self._send(200, self.discovery())
        if path == f"{OIDC}/certs":
            return self._send(200, {"keys": [self.state.key.as_dict(private=False)]})
        if path == f"{OIDC}/userinfo":
            return self.userinfo()
        if path == f"{OIDC}/auth":
            return self.authorize(parse_qs(urlsplit(self.path).query))
        if path == "/_peer/stats":
            with self.state.lock:
                counters = dict(self.state.counters)
            return self._send(200, counters)
        if path == "/_peer/issued":
            return self._send(200, list(self.state.issued))
        if path == f"{MYTOKEN}/.well-known/mytoken-configuration":
            return self._send(200, self.state.mytoken_configuration())
        self._send(404, {"error": "not_found"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        self.state.count(f"POST {path}")
        form = self._form()  # read the body first: a keep-alive connection must not keep it
        if self._fault(path):
            return
        try:
            if path == f"{OIDC}/token":
                return self._send(200, self.token(form))
            if path == f"{OIDC}/token/introspect":
                return self._send(200, self.introspect(form))
            if path == f"{OIDC}/revoke":
                self._client(form)
                self.revoke(form.get("token", ""))
                return self._send(200, b"")
            if path == f"{OIDC}/userinfo":
                return self.userinfo()
            if path == f"{MYTOKEN}/api/v0/token/access":
                with self.state.lock:
                    return self._send(200, self.state.redeem_mytoken(form))
            if path.startswith("/_peer/"):
                return self._send(200, self.control(path[len("/_peer/"):], form))
        except MytokenError as exc:
            body = {"error": exc.error, **({"error_description": exc.description} if exc.description else {})}
            return self._send(exc.status, body)
        except OAuthError as exc:
            headers = {"WWW-Authenticate": 'Basic realm="egi"'} if exc.status == 401 else None
            return self._send(exc.status, {"error": exc.error, "error_description": exc.description}, headers)
        self._send(404, {"error": "not_found"})

    def discovery(self) -> dict[str, Any]:
        issuer = self.state.issuer
        return {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/protocol/openid-connect/auth",
            "token_endpoint": f"{issuer}/protocol/openid-connect/token",
            "introspection_endpoint": f"{issuer}/protocol/openid-connect/token/introspect",
            "userinfo_endpoint": f"{issuer}/protocol/openid-connect/userinfo",
            "revocation_endpoint": f"{issuer}/protocol/openid-connect/revoke",
            "jwks_uri": f"{issuer}/protocol/openid-connect/certs",
            "grant_types_supported": ["authorization_code", "refresh_token", EXCHANGE_GRANT, "client_credentials",
                                      UMA_GRANT],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": DEFAULT_SCOPE.split() + ["email"],
            "claims_supported": ["sub", "iss", "name", "email", "preferred_username", *ENTITLEMENT_CLAIMS],
        }

    def token(self, form: dict[str, str]) -> dict[str, Any]:
        state = self.state
        grant_type = form.get("grant_type", "")
        if grant_type == UMA_GRANT and self._bearer() is not None:
            state.count(f"grant {grant_type}")
            return self.uma(form)
        client_id = self._client(form)
        state.count(f"grant {grant_type}")
        with state.lock:
            if grant_type == "authorization_code":
                return self.redeem(form, client_id)
            if grant_type == "refresh_token":
                grant = state.grants.get(form.get("refresh_token", ""))
                if grant is None or grant.revoked or grant.expires_at < time.time():
                    raise OAuthError(400, "invalid_grant", "Invalid refresh token")
                if grant.client_id != client_id:
                    raise OAuthError(400, "invalid_grant", "Invalid refresh token. Token client and authorized client don't match")
                scope = form.get("scope") or grant.scope
                if not set(scope.split()) <= set(grant.scope.split()) | {"openid"}:
                    raise OAuthError(400, "invalid_scope", "Invalid scopes: " + scope)
                if grant.audience is not None:  # Keycloak renews an RPT as an RPT
                    return state.uma_response(grant.user, client_id, scope, grant.audience)
                return state.token_response(grant.user, client_id, scope)
            if grant_type == EXCHANGE_GRANT:
                if not state.clients[client_id].get("exchange"):
                    raise OAuthError(403, "access_denied", "Client not allowed to exchange")
                if form.get("subject_token_type", ACCESS_TYPE) != ACCESS_TYPE:
                    raise OAuthError(400, "invalid_request", "unsupported subject_token_type")
                claims = state.decode(form.get("subject_token", ""))
                user = state.user_of(claims) if claims else None
                if user is None:
                    raise OAuthError(400, "invalid_token", "subject_token validation failure")
                scope = form.get("scope") or DEFAULT_SCOPE
                requested = form.get("requested_token_type", ACCESS_TYPE)
                if requested == REFRESH_TYPE:
                    body = state.token_response(user, client_id, scope)
                    body["issued_token_type"] = REFRESH_TYPE
                    return body
                body = state.token_response(user, client_id, scope, refresh=False)
                body["issued_token_type"] = ACCESS_TYPE
                return body
            if grant_type == "client_credentials":
                if state.clients[client_id]["secret"] is None:
                    raise OAuthError(401, "unauthorized_client", "Public client not allowed to retrieve service account")
                service_user = f"service-account-{client_id}"
                state.users.setdefault(service_user, {"sub": uuid.uuid5(uuid.NAMESPACE_URL, client_id).hex, "eduperson_entitlement": []})
                return state.token_response(service_user, client_id, form.get("scope") or "openid", refresh=False)
        raise OAuthError(400, "unsupported_grant_type", f"Unsupported grant_type {grant_type!r}")

    def uma(self, form: dict[str, str]) -> dict[str, Any]:
        """The UMA grant with the user's access token as the bearer (D4Science's way: no
        ticket, an `audience`; the client is the one the user's token was issued to)."""
        state = self.state
        claims = state.decode(self._bearer() or "")
        user = state.user_of(claims) if claims else None
        if user is None:
            raise OAuthError(401, "invalid_grant", "Invalid bearer token")
        audience = form.get("audience", "")
        if not audience:
            raise OAuthError(400, "invalid_request", "You must provide the audience")  # unverified wording
        with state.lock:
            return state.uma_response(user, str(claims.get("azp")), str(claims.get("scope") or "openid"), audience)

    def authorize(self, query: dict[str, list[str]]) -> None:
        """The authorization endpoint: the browser user is logged in and consents at once."""
        arg = {k: v[-1] for k, v in query.items()}
        state = self.state
        client = state.clients.get(arg.get("client_id", ""))
        redirect = arg.get("redirect_uri", "")
        if client is None or not any(redirect.startswith(p) for p in client.get("redirect_prefixes", [])):
            # never redirect to an unregistered URI: answer the browser instead (as Keycloak does)
            return self._send(400, {"error": "invalid_request", "error_description": "Invalid client or redirect_uri"})
        answer = {"state": arg["state"]} if "state" in arg else {}
        if arg.get("response_type") != "code":
            answer.update(error="unsupported_response_type")
        elif client["secret"] is None and arg.get("code_challenge_method") != "S256":
            answer.update(error="invalid_request", error_description="Missing parameter: code_challenge_method")
        else:
            code = secrets.token_urlsafe(32)
            with state.lock:
                state.codes[code] = AuthorizationCode(
                    state.browser_user, arg["client_id"], redirect, arg.get("scope", "openid"),
                    arg.get("code_challenge"), arg.get("nonce"), time.time() + CODE_LIFETIME)
            answer.update(code=code)
        separator = "&" if "?" in redirect else "?"
        self.send_response(302)
        self.send_header("Location", redirect + separator + urlencode(answer))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def redeem(self, form: dict[str, str], client_id: str) -> dict[str, Any]:
        """`authorization_code` grant: single-use code, same client and redirect, PKCE verifier."""
        state = self.state
        grant = state.codes.pop(form.get("code", ""), None)
        if grant is None or grant.expires_at < time.time() or grant.client_id != client_id:
            raise OAuthError(400, "invalid_grant", "Code not valid")
        if form.get("redirect_uri") != grant.redirect_uri:
            raise OAuthError(400, "invalid_grant", "Incorrect redirect_uri")
        if grant.challenge is not None:
            verifier = form.get("code_verifier", "")
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if digest != grant.challenge:
                raise OAuthError(400, "invalid_grant", "PKCE verification failed: Code mismatch")
        body = state.token_response(grant.user, client_id, grant.scope)
        if "openid" in grant.scope.split():
            body["id_token"] = state.id_token(grant.user, client_id, grant.nonce)
        return body

    def userinfo(self) -> None:
        claims = self.state.decode(self._bearer() or "")
        user = self.state.user_of(claims) if claims else None
        if user is None:
            return self._send(
                401, {"error": "invalid_token", "error_description": "Token verification failed"},
                {"WWW-Authenticate": 'Bearer realm="egi", error="invalid_token"'},
            )
        profile = self.state.users[user]
        self._send(200, {
            "sub": profile["sub"],
            "name": profile.get("name", user),
            "email": profile.get("email"),
            "preferred_username": user,
            "voperson_id": profile["sub"],
            **self.state.groups(profile),
        })

    def introspect(self, form: dict[str, str]) -> dict[str, Any]:
        self._client(form)
        token = form.get("token", "")
        claims = self.state.decode(token)
        if claims:
            return {"active": True, "client_id": claims["azp"], "username": claims["preferred_username"],
                    "token_type": "Bearer", **claims}
        grant = self.state.grants.get(token)
        if grant and not grant.revoked and grant.expires_at > time.time():
            return {"active": True, "client_id": grant.client_id, "token_type": "Refresh",
                    "scope": grant.scope, "sub": self.state.users[grant.user]["sub"]}
        return {"active": False}

    def revoke(self, token: str) -> None:
        with self.state.lock:
            if token in self.state.grants:
                self.state.grants[token].revoked = True
            claims = self.state.decode(token)
            if claims:
                self.state.revoked_jti.add(claims["jti"])

    def control(self, action: str, form: dict[str, Any]) -> dict[str, Any]:
        """Test controls: `login`, `mytoken`, `config`, `fault`, `reset`, `user`, `vre`."""
        state = self.state
        with state.lock:
            if action == "login":
                user, client_id = form.get("user", "alice"), form.get("client_id", "prefect-egi")
                if user not in state.users or client_id not in state.clients:
                    raise OAuthError(400, "invalid_request", "unknown user or client")
                body = state.token_response(user, client_id, form.get("scope") or DEFAULT_SCOPE)
                if "access_token_lifetime" in form:
                    body["access_token"], body["expires_in"] = state.access_token(
                        user, client_id, body["scope"], int(form["access_token_lifetime"]))
                return body
            if action == "mytoken":
                user = form.get("user", "alice")
                if user not in state.users:
                    raise OAuthError(400, "invalid_request", "unknown user")
                return state.mytoken(user, list(form.get("capabilities") or ["AT"]), form.get("rotation"),
                                     int(form.get("expires_in", 30 * 24 * 3600)))
            if action == "config":
                for name in ("access_token_lifetime", "refresh_token_lifetime"):
                    if name in form:
                        setattr(state, name, int(form[name]))
                if "browser_user" in form:
                    state.browser_user = form["browser_user"]
                if "entitlement_claims" in form:
                    state.entitlement_claims = tuple(form["entitlement_claims"])
                return {"access_token_lifetime": state.access_token_lifetime,
                        "entitlement_claims": list(state.entitlement_claims)}
            if action == "fault":
                endpoint = form["endpoint"]
                state.faults[endpoint] = Fault(int(form.get("status", 503)), float(form.get("delay", 0)), int(form.get("count", 1)))
                return {"ok": True}
            if action == "reset":
                state.counters.clear()
                state.faults.clear()
                state.access_token_lifetime = state.default_access_token_lifetime
                state.browser_user = "alice"
                state.entitlement_claims = ENTITLEMENT_CLAIMS
                state.vres = json.loads(json.dumps(DEFAULT_VRES))
                return {"ok": True}
            if action == "user":
                state.users[form["name"]] = form["profile"]
                return {"ok": True}
            if action == "vre":  # who is a member of a D4Science VRE (context)
                state.vres[form["context"]] = list(form.get("users") or [])
                return {"ok": True}
        raise OAuthError(404, "not_found", action)


def make_server(host: str = "127.0.0.1", port: int = 0, tls: tuple[str, str] | None = None,
                access_token_lifetime: int = 3600) -> tuple[ThreadingHTTPServer, PeerState]:
    state = PeerState(access_token_lifetime=access_token_lifetime, default_access_token_lifetime=access_token_lifetime)
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    scheme = "http"
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    state.base_url = f"{scheme}://{host}:{server.server_address[1]}"
    return server, state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port")
    parser.add_argument("--access-token-lifetime", type=int, default=3600, help="seconds")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args(argv)
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    server, state = make_server(args.host, args.port, tls, args.access_token_lifetime)
    print(json.dumps({"url": state.base_url, "issuer": state.issuer,
                      "clients": {k: v["secret"] for k, v in state.clients.items()}}), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
