"""The identity behind the CCP peer: the Check-in peer's UMA grant, as D4Science's Keycloak
answers it, and the front that accepts only the UMA token (RPT) of its VRE."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import httpx
from joserfc import jwt
from joserfc.jwk import RSAKey

UMA = "urn:ietf:params:oauth:grant-type:uma-ticket"


def claims_of(token: str) -> dict:
    """A JWT's claims, unverified (the tests read what the peer issued)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_a_member_of_the_vre_gets_an_rpt_for_it(ccp):
    response = ccp.uma("alice")
    assert response.status_code == 200
    body = response.json()
    assert body["upgraded"] is False and body["token_type"] == "Bearer" and body["refresh_token"]
    claims = claims_of(body["access_token"])
    assert claims["aud"] == ccp.context and claims["iss"] == ccp.checkin.issuer
    assert claims["authorization"]["permissions"][0]["rsname"]


def test_the_audience_may_be_percent_encoded_as_d4science_clients_send_it(ccp):
    encoded = quote(ccp.context, safe="")
    response = ccp.uma("alice", audience=encoded)
    assert response.status_code == 200
    assert claims_of(response.json()["access_token"])["aud"] == encoded
    with httpx.Client(timeout=10) as http:  # the front accepts it too
        answer = http.get(f"{ccp.url}/processes", headers={"Authorization": f"Bearer {response.json()['access_token']}"})
    assert answer.status_code == 200


def test_a_user_outside_the_vre_gets_keycloaks_403(ccp):
    response = ccp.uma("bob")
    assert response.status_code == 403
    assert response.json() == {"error": "access_denied", "error_description": "not_authorized"}
    other = ccp.uma("alice", audience="/gcube/devsec/devVRE")
    assert other.status_code == 403 and other.json()["error_description"] == "not_authorized"


def test_the_uma_grant_needs_a_valid_user_token(ccp):
    response = ccp.uma(access_token="not-a-token")
    assert response.status_code == 401 and response.json()["error"] == "invalid_grant"


def test_the_rpts_refresh_token_renews_the_rpt(ccp, checkin):
    refresh = ccp.uma("alice").json()["refresh_token"]
    response = httpx.post(f"{checkin.issuer}/protocol/openid-connect/token", timeout=10,
                          data={"grant_type": "refresh_token", "refresh_token": refresh,
                                "client_id": checkin.client_id, "client_secret": checkin.client_secret})
    assert response.status_code == 200
    assert claims_of(response.json()["access_token"])["aud"] == ccp.context
    assert "authorization" in claims_of(response.json()["access_token"])


def test_membership_can_change(ccp, checkin):
    checkin.process.control("vre", context=ccp.context, users=["alice", "bob"])
    assert ccp.uma("bob").status_code == 200
    checkin.reset()
    assert ccp.uma("bob").status_code == 403


def test_the_front_accepts_only_a_valid_rpt_of_its_vre(ccp, checkin):
    """Forged (another key), foreign issuer, plain user token, no token: 401 with an RFC 7807
    body and a Bearer challenge; the RPT passes."""
    good = ccp.rpt()
    claims = claims_of(good)
    forger = RSAKey.generate_key(2048, parameters={"kid": "forged"})
    forged = jwt.encode({"alg": "RS256", "kid": "forged"}, claims, forger)
    foreign = jwt.encode({"alg": "RS256", "kid": "forged"}, {**claims, "iss": "https://elsewhere"}, forger)
    plain = checkin.login("alice")["access_token"]
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{ccp.url}/processes", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        for token, reason in ((forged, "signature"), (foreign, "signature"), (plain, "not for this VRE"),
                              (None, "no bearer token")):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            answer = http.get(f"{ccp.url}/jobs", headers=headers)
            assert answer.status_code == 401, reason
            assert reason in answer.json()["detail"]
            assert answer.headers["www-authenticate"].startswith("Bearer ")
    assert ccp.stats()["unauthorized"] == 4  # (an expired RPT is refused: tests/test_ccp_client.py)
