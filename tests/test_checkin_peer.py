"""The Check-in peer speaks OIDC as Check-in's Keycloak does (so our client is
tested against the protocol, not against itself)."""

from __future__ import annotations

import pytest


def token_url(checkin) -> str:
    return f"{checkin.issuer}/protocol/openid-connect/token"


def test_discovery_and_jwks(checkin, http):
    doc = http.get(f"{checkin.issuer}/.well-known/openid-configuration").json()
    assert doc["issuer"] == checkin.issuer
    assert doc["token_endpoint"] == token_url(checkin)
    keys = http.get(doc["jwks_uri"]).json()["keys"]
    assert keys[0]["kty"] == "RSA" and keys[0]["alg"] == "RS256" and "d" not in keys[0]


@pytest.mark.parametrize("auth", ["basic", "post", "both"])
def test_client_authentication_methods(checkin, http, auth):
    refresh = checkin.login()["refresh_token"]
    form = {"grant_type": "refresh_token", "refresh_token": refresh}
    kwargs = {}
    if auth in ("basic", "both"):
        kwargs["auth"] = (checkin.client_id, checkin.client_secret)
    if auth in ("post", "both"):
        form |= {"client_id": checkin.client_id, "client_secret": checkin.client_secret}
    response = http.post(token_url(checkin), data=form, **kwargs)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["refresh_token"]


def test_rfc6749_error_bodies(checkin, http):
    bad_client = http.post(token_url(checkin), data={"grant_type": "refresh_token", "refresh_token": "x"},
                           auth=(checkin.client_id, "wrong"))
    assert bad_client.status_code == 401 and bad_client.json()["error"] == "invalid_client"
    assert bad_client.headers["WWW-Authenticate"].startswith("Basic")
    bad_grant = http.post(token_url(checkin), data={"grant_type": "refresh_token", "refresh_token": "x"},
                          auth=(checkin.client_id, checkin.client_secret))
    assert bad_grant.status_code == 400 and bad_grant.json() == {
        "error": "invalid_grant", "error_description": "Invalid refresh token"}
    unsupported = http.post(token_url(checkin), data={"grant_type": "password"},
                            auth=(checkin.client_id, checkin.client_secret))
    assert unsupported.json()["error"] == "unsupported_grant_type"


def test_client_credentials_only_for_confidential_clients(checkin, http):
    ok = http.post(token_url(checkin), data={"grant_type": "client_credentials"},
                   auth=(checkin.client_id, checkin.client_secret))
    assert ok.status_code == 200 and "refresh_token" not in ok.json()
    public = http.post(token_url(checkin), data={"grant_type": "client_credentials", "client_id": "public-cli"})
    assert public.status_code == 401 and public.json()["error"] == "unauthorized_client"


def test_userinfo_introspection_and_revocation(checkin, http):
    login = checkin.login()
    bearer = {"Authorization": f"Bearer {login['access_token']}"}
    info = http.get(f"{checkin.issuer}/protocol/openid-connect/userinfo", headers=bearer).json()
    assert info["preferred_username"] == "alice" and len(info["eduperson_entitlement"]) == 4
    introspect = f"{checkin.issuer}/protocol/openid-connect/token/introspect"
    auth = (checkin.client_id, checkin.client_secret)
    assert http.post(introspect, data={"token": login["access_token"]}, auth=auth).json()["active"] is True
    assert http.post(introspect, data={"token": login["refresh_token"]}, auth=auth).json()["active"] is True
    http.post(f"{checkin.issuer}/protocol/openid-connect/revoke", data={"token": login["refresh_token"]}, auth=auth)
    assert http.post(introspect, data={"token": login["refresh_token"]}, auth=auth).json() == {"active": False}
    refreshed = http.post(token_url(checkin), data={"grant_type": "refresh_token", "refresh_token": login["refresh_token"]},
                          auth=auth)
    assert refreshed.json()["error"] == "invalid_grant"
    expired = checkin.login(access_token_lifetime=-1)["access_token"]
    denied = http.get(f"{checkin.issuer}/protocol/openid-connect/userinfo", headers={"Authorization": f"Bearer {expired}"})
    assert denied.status_code == 401 and 'error="invalid_token"' in denied.headers["WWW-Authenticate"]


def test_lifetime_and_counters_are_configurable(checkin, http):
    checkin.configure(access_token_lifetime=30)
    refresh = checkin.login()["refresh_token"]
    body = http.post(token_url(checkin), data={"grant_type": "refresh_token", "refresh_token": refresh},
                     auth=(checkin.client_id, checkin.client_secret)).json()
    assert body["expires_in"] == 30
    assert checkin.refresh_grants() == 1 and checkin.token_requests() == 1


def test_authorization_code_with_pkce(checkin, http):
    """What DiracX's device-flow login needs: code + PKCE S256 for a public client, an id_token,
    single-use codes, exact redirect_uri, and no redirect to an unregistered URI."""
    import base64
    import hashlib
    from urllib.parse import parse_qs, urlsplit

    from joserfc import jwt
    from joserfc.jwk import KeySet

    auth = f"{checkin.issuer}/protocol/openid-connect/auth"
    redirect = "http://127.0.0.1:9/complete"
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = {"response_type": "code", "client_id": "diracx", "redirect_uri": redirect, "scope": "openid profile",
             "state": "abc==", "code_challenge": challenge, "code_challenge_method": "S256"}

    def authorize(**changes) -> dict:
        answer = http.get(auth, params={**query, **changes}, follow_redirects=False)
        assert answer.status_code == 302, answer.text
        assert answer.headers["location"].startswith(redirect + "?")
        return {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["location"]).query).items()}

    def redeem(code: str, **changes):
        form = {"grant_type": "authorization_code", "client_id": "diracx", "code": code,
                "code_verifier": verifier, "redirect_uri": redirect, **changes}
        return http.post(token_url(checkin), data=form)

    granted = authorize()
    assert granted["state"] == "abc=="
    assert redeem(granted["code"], code_verifier="w" * 50).json()["error_description"].startswith("PKCE")
    granted = authorize()
    assert redeem(granted["code"], redirect_uri=redirect + "x").json()["error_description"] == "Incorrect redirect_uri"
    granted = authorize()
    tokens = redeem(granted["code"]).json()
    assert tokens["access_token"] and tokens["token_type"] == "Bearer"
    keys = KeySet.import_key_set(http.get(f"{checkin.issuer}/protocol/openid-connect/certs").json())
    claims = jwt.decode(tokens["id_token"], keys, algorithms=["RS256"]).claims
    assert claims["iss"] == checkin.issuer and claims["aud"] == "diracx" and claims["preferred_username"] == "alice"
    assert redeem(granted["code"]).json()["error"] == "invalid_grant"  # single use

    assert authorize(code_challenge_method="plain")["error"] == "invalid_request"  # public clients need S256
    assert authorize(response_type="token")["error"] == "unsupported_response_type"
    refused = http.get(auth, params={**query, "redirect_uri": "https://evil.example/cb"}, follow_redirects=False)
    assert refused.status_code == 400 and "location" not in refused.headers
    checkin.configure(browser_user="bob")
    code = authorize()["code"]
    assert jwt.decode(redeem(code).json()["id_token"], keys, algorithms=["RS256"]).claims["preferred_username"] == "bob"


def test_groups_are_released_as_entitlements_and_eduperson_entitlement(checkin, http):
    """Check-in's Keycloak releases `entitlements` (EGI-Federation/documentation#799) beside the older
    `eduperson_entitlement`, in tokens and userinfo; a client may see only one of them."""
    from prefect_egi.tasks import parse_token
    from prefect_egi.tasks.checkin.tokens import ENTITLEMENT_CLAIMS

    def released(token: str) -> set[str]:
        info = http.get(f"{checkin.issuer}/protocol/openid-connect/userinfo",
                        headers={"Authorization": f"Bearer {token}"}).json()
        return {claim for claim in ENTITLEMENT_CLAIMS if claim in info}

    both = checkin.login()["access_token"]
    assert released(both) == {"entitlements", "eduperson_entitlement"}
    checkin.configure(entitlement_claims=["entitlements"])
    only_new = checkin.login()["access_token"]
    assert released(only_new) == {"entitlements"}
    assert parse_token(only_new).claims.entitlements == parse_token(both).claims.entitlements


def test_the_mytoken_server_answers_as_oidc_mytoken_does(checkin, http):
    """oidc-mytoken/server v0: grant type first (400 invalid_grant), then the mytoken (401 invalid_token,
    no description once revoked), the AT capability (403), the provider (400); rotation on an access
    token revokes the old mytoken, and with auto_revoke its reuse revokes the family."""
    url = f"{checkin.mytoken_server}/api/v0/token/access"

    def redeem(mytoken: str, **extra):
        return http.post(url, json={"grant_type": "mytoken", "mytoken": mytoken, **extra})

    assert http.post(url, json={"mytoken": "x"}).json() == {"error": "invalid_grant",
                                                             "error_description": "Unsupported grant_type"}
    assert http.post(url, data={"grant_type": "mytoken"}).status_code == 401  # form bodies too
    assert redeem("not-a-mytoken").status_code == 401
    limited = redeem(checkin.mytoken(capabilities=["tokeninfo"]))
    assert limited.status_code == 403 and limited.json()["error"] == "insufficient_capabilities"
    foreign = redeem(checkin.mytoken(), oidc_issuer="https://other.example/realm")
    assert foreign.status_code == 400 and foreign.json()["error_description"] == "token not for specified issuer"

    plain = checkin.mytoken()
    first = redeem(plain).json()
    assert first["token_type"] == "Bearer" and "token_update" not in first and redeem(plain).status_code == 200
    rotating = checkin.mytoken(rotation={"on_AT": True, "auto_revoke": True})
    successor = redeem(rotating).json()["token_update"]["mytoken"]
    assert redeem(rotating).json() == {"error": "invalid_token"}  # rotated away, and now the family too
    assert redeem(successor).status_code == 401
