"""The Notebooks peer behaves like EGI's `/services/jwt` front on a real JupyterHub:
Check-in JWTs checked and introspected, the hub's status folded into a 200 body,
and server start/stop going through the hub's own spawn machinery."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from prefect_egi.sandbox.peers import PeerProcess


@pytest.fixture
def api(notebooks: PeerProcess, checkin) -> Iterator[Callable[..., httpx.Response]]:
    """`api(method, path, who, **httpx kwargs)`: `who` is alice or bob (one Check-in login per
    test, like a client reusing its token), a raw bearer token, or None for no header."""
    logins: dict[str, str] = {}

    with httpx.Client(timeout=20) as client:
        def call(method: str, path: str, who: str | None = "alice", **kwargs: Any) -> httpx.Response:
            if who in ("alice", "bob"):
                if who not in logins:
                    logins[who] = checkin.login(user=who)["access_token"]
                who = logins[who]
            headers = {"Authorization": f"Bearer {who}"} if who is not None else {}
            return client.request(method, notebooks.info["api_url"] + path, headers=headers, **kwargs)

        yield call


def until(predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll as a client of the real service would; return the first truthy value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_version_without_token(notebooks):
    answer = httpx.get(notebooks.info["api_url"] + "/")
    assert answer.status_code == 200
    assert answer.json() == {"version": notebooks.info["hub_version"]} and notebooks.info["hub_version"].startswith("6.")


def test_user_model(api, notebooks):
    answer = api("GET", "/user")
    assert answer.status_code == 200
    user = answer.json()
    assert user["name"] == "alice" and user["admin"] is True and user["groups"] == []
    assert user["servers"] == {} and user["last_activity"] and user["kind"] == "user"
    assert notebooks.stats()["hub_tokens_minted"] == 1


def test_admin_lists_users_and_others_see_status_in_body(api):
    api("GET", "/user", "bob")  # bob exists in the hub once he has called
    names = {user["name"] for user in api("GET", "/users").json()}
    assert {"alice", "bob"} <= names
    listing = api("GET", "/users", "bob")
    assert listing.status_code == 200 and listing.json()["status"] == 403
    other = api("GET", "/users/alice", "bob")
    assert other.status_code == 200 and other.json()["status"] == 404
    own = api("GET", "/users/bob", "bob").json()
    assert own["name"] == "bob" and own["admin"] is False
    assert api("POST", "/users/alice/server", "bob").json()["status"] == 404


def test_hub_token_is_minted_once_per_jwt_but_each_call_is_introspected(api, notebooks):
    for _ in range(3):
        assert api("GET", "/user").json()["name"] == "alice"
    stats = notebooks.stats()
    assert stats["GET /services/jwt/user"] == 3 and stats["introspections"] == 3 and stats["hub_tokens_minted"] == 1


def test_expired_token_is_401_html(api, checkin, notebooks):
    from prefect_egi.tasks import parse_token

    token = checkin.login(access_token_lifetime=5)["access_token"]
    assert api("GET", "/user", token).json()["name"] == "alice"
    time.sleep(max(0.0, parse_token(token).seconds_left()) + 0.2)  # past the token's exp
    answer = api("GET", "/user", token)
    assert answer.status_code == 401 and answer.headers["Content-Type"].startswith("text/html")
    assert "<html>" in answer.text
    assert notebooks.stats()["unauthorized"] == 1


@pytest.mark.parametrize("token", [None, "garbage", "a.b.c"])
def test_missing_or_garbage_token_is_401(api, token):
    answer = api("GET", "/users", token)
    assert answer.status_code == 401 and answer.headers["Content-Type"].startswith("text/html")


def test_foreign_signature_and_revoked_token_are_401(api, checkin, notebooks):
    forged_key = RSAKey.generate_key(2048, parameters={"kid": uuid.uuid4().hex})
    now = int(time.time())
    forged = jwt.encode({"alg": "RS256", "kid": forged_key.kid},
                        {"iss": checkin.issuer, "exp": now + 600, "iat": now, "preferred_username": "alice"}, forged_key)
    assert api("GET", "/user", forged).status_code == 401
    assert notebooks.stats().get("introspections", 0) == 0  # rejected before asking Check-in
    token = checkin.login()["access_token"]
    httpx.post(f"{checkin.issuer}/protocol/openid-connect/revoke", data={"token": token},
               auth=(checkin.client_id, checkin.client_secret)).raise_for_status()
    assert api("GET", "/user", token).status_code == 401  # signed and unexpired, but inactive
    assert notebooks.stats()["introspections"] == 1


def test_default_server_start_and_stop(api):
    started = api("POST", "/users/alice/server")
    assert started.status_code == 200 and started.json() is None  # the hub's 202 has no body
    first = api("GET", "/users/alice").json()["servers"][""]
    assert first["pending"] == "spawn" and first["ready"] is False and first["stopped"] is False
    ready = until(lambda: (s := api("GET", "/users/alice").json()["servers"].get("")) and s["ready"] and s)
    assert ready["pending"] is None and ready["url"] == "/user/alice/" and ready["started"]
    again = api("POST", "/users/alice/server").json()
    assert again["status"] == 400 and "already running" in again["message"]
    stopped = api("DELETE", "/users/alice/server")
    assert stopped.status_code == 200 and stopped.json() is None
    until(lambda: "" not in api("GET", "/users/alice").json()["servers"])


def test_named_server_with_options(api):
    started = api("POST", "/users/alice/servers/lab", json={"user_options": {"profile": "cpu"}, "display_name": "Lab"})
    assert started.status_code == 200 and started.json() is None
    server = until(lambda: (s := api("GET", "/users/alice/servers/lab").json()) and s.get("ready") and s)
    assert server["name"] == "lab" and server["display_name"] == "Lab" and server["user_options"] == {"profile": "cpu"}
    assert api("DELETE", "/users/alice/servers/lab", json={"remove": True}).json() is None
    until(lambda: api("GET", "/users/alice/servers/lab").json().get("status") == 404)
