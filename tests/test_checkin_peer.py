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
