"""The Notebooks peer behaves as EGI's `/services/jwt` front (EGI-Federation/egi-notebooks-hub
`services/api_wrapper.py`) on a real JupyterHub whose `jwt_login` does what EGI's
`EGICheckinAuthenticator` does: every call first trades the bearer JWT at jwt_login,
the hub's status is folded into a 200 body, empty answers become `""`, a user the hub
does not admit reaches the hub without credentials, and server start/stop goes through
the hub's own spawn machinery."""

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
    """`api(method, path, who, **httpx kwargs)`: `who` is alice (hub admin), carol (member of the
    Notebooks VO) or bob (no VO: not admitted) — one Check-in login per test, like a client
    reusing its token — a raw bearer token, or None for no header."""
    logins: dict[str, str] = {}

    with httpx.Client(timeout=20) as client:
        def call(method: str, path: str, who: str | None = "alice", **kwargs: Any) -> httpx.Response:
            if who in ("alice", "bob", "carol"):
                if who not in logins:
                    logins[who] = checkin.login(user=who)["access_token"]
                who = logins[who]
            headers = {**({"Authorization": f"Bearer {who}"} if who is not None else {}), **kwargs.pop("headers", {})}
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
    """The hub's groups are the user's Check-in entitlements (EGI's authenticator manages them)."""
    from prefect_egi.sandbox.checkin_peer import DEFAULT_USERS

    answer = api("GET", "/user")
    assert answer.status_code == 200
    user = answer.json()
    assert user["name"] == "alice" and user["admin"] is True
    assert sorted(user["groups"]) == sorted(DEFAULT_USERS["alice"]["eduperson_entitlement"])
    assert user["servers"] == {} and user["last_activity"] and user["kind"] == "user"
    assert notebooks.stats()["hub_tokens_minted"] == 1


def test_admin_lists_users_and_others_see_status_in_body(api):
    api("GET", "/user", "carol")  # carol exists in the hub once she has called
    names = {user["name"] for user in api("GET", "/users").json()}
    assert {"alice", "carol"} <= names
    listing = api("GET", "/users", "carol")
    assert listing.status_code == 200 and listing.json() == {
        "status": 403, "message": "Action is not authorized with current scopes; requires any of [list:users]"}
    other = api("GET", "/users/alice", "carol")
    assert other.status_code == 200 and other.json()["status"] == 404
    own = api("GET", "/users/carol", "carol").json()
    assert own["name"] == "carol" and own["admin"] is False
    assert api("POST", "/users/alice/server", "carol").json()["status"] == 404


def test_each_call_costs_a_jwt_login_and_the_hub_token_is_reused_per_jwt(api, notebooks, checkin):
    """As EGI's JWTHandler: the first login introspects the JWT at Check-in and mints a hub token;
    later calls with the same JWT reuse that token (no introspection)."""
    introspect = "POST /auth/realms/egi/protocol/openid-connect/token/introspect"
    for _ in range(3):
        assert api("GET", "/user").json()["name"] == "alice"
    stats = notebooks.stats()
    assert stats["GET /services/jwt/user"] == 3 and stats["jwt_logins"] == 3 and stats["hub_tokens_minted"] == 1
    assert checkin.stats()[introspect] == 1


def test_a_user_the_hub_does_not_admit_gets_a_reasonless_403_for_every_call(api, notebooks):
    """jwt_login refuses bob (no Notebooks VO) with 403; EGI's front swallows that and calls the
    hub without credentials, so the hub's answer says nothing about why."""
    assert api("GET", "/user", "bob").json() == {"status": 403, "message": None}
    assert api("GET", "/users/bob", "bob").json() == {"status": 403, "message": "Missing or invalid credentials."}
    assert api("POST", "/users/bob/server", "bob").json() == {"status": 403, "message": "Missing or invalid credentials."}
    assert api("GET", "/user", None).json() == {"status": 403, "message": None}  # no token at all: the same
    assert api("GET", "/user", "bob").text == '{"status":403,"message":null}'  # FastAPI's compact JSON
    assert notebooks.stats()["not_admitted"] == 4  # each of bob's calls; the tokenless one never asked


def test_expired_token_is_401_json_with_the_hubs_page_in_detail(api, checkin, notebooks):
    """The hub's jwt_login answers 401 with its HTML error page (EGI's templates/401.html, captured in
    tests/data/notebooks/egi-templates); the front answers FastAPI's `{"detail": <that page>}`."""
    from prefect_egi.tasks import parse_token

    token = checkin.login(access_token_lifetime=5)["access_token"]
    assert api("GET", "/user", token).json()["name"] == "alice"
    time.sleep(max(0.0, parse_token(token).seconds_left()) + 0.2)  # past the token's exp
    answer = api("GET", "/user", token)
    assert answer.status_code == 401 and answer.headers["Content-Type"] == "application/json"
    detail = answer.json()["detail"]
    assert "<html" in detail and "You are trying to access a restricted instance of the EGI Notebooks service" in detail
    assert notebooks.stats()["unauthorized"] == 1


@pytest.mark.parametrize("token", ["garbage", "a.b.c"])
def test_a_token_that_is_not_a_jwt_is_401(api, token):
    answer = api("GET", "/users", token)
    assert answer.status_code == 401 and "<html" in answer.json()["detail"]


def test_a_forged_or_revoked_jwt_is_not_admitted(api, checkin, notebooks):
    """EGI's jwt_login does not check the signature: Check-in's introspection says `active: false`,
    the login fails (403) and the front goes on without credentials."""
    forged_key = RSAKey.generate_key(2048, parameters={"kid": uuid.uuid4().hex})
    now = int(time.time())
    forged = jwt.encode({"alg": "RS256", "kid": forged_key.kid},
                        {"iss": checkin.issuer, "exp": now + 600, "iat": now, "preferred_username": "alice"}, forged_key)
    assert api("GET", "/user", forged).json() == {"status": 403, "message": None}
    token = checkin.login()["access_token"]
    httpx.post(f"{checkin.issuer}/protocol/openid-connect/revoke", data={"token": token},
               auth=(checkin.client_id, checkin.client_secret)).raise_for_status()
    assert api("GET", "/user", token).json() == {"status": 403, "message": None}
    assert notebooks.stats()["not_admitted"] == 2


def test_the_front_drops_the_query_string(api):
    """api_wrapper forwards the path only: a page after the first comes back as the first."""
    api("GET", "/user", "carol")
    paged = {"Accept": "application/jupyterhub-pagination+json"}
    page = api("GET", "/users?offset=1&limit=1", headers=paged).json()
    assert page["_pagination"]["offset"] == 0 and page["_pagination"]["limit"] == 50 and len(page["items"]) >= 2


def test_default_server_start_and_stop(api):
    started = api("POST", "/users/alice/server")
    assert started.status_code == 200 and started.text == '""'  # the hub's empty 202, re-encoded by FastAPI
    first = api("GET", "/users/alice").json()["servers"][""]
    assert first["pending"] == "spawn" and first["ready"] is False and first["stopped"] is False
    ready = until(lambda: (s := api("GET", "/users/alice").json()["servers"].get("")) and s["ready"] and s)
    assert ready["pending"] is None and ready["url"] == "/user/alice/" and ready["started"]
    again = api("POST", "/users/alice/server").json()
    assert again["status"] == 400 and "already running" in again["message"]
    stopped = api("DELETE", "/users/alice/server")
    assert stopped.status_code == 200 and stopped.json() == ""
    until(lambda: "" not in api("GET", "/users/alice").json()["servers"])


def test_named_server_with_options(api):
    started = api("POST", "/users/alice/servers/lab", json={"user_options": {"profile": "cpu"}, "display_name": "Lab"})
    assert started.status_code == 200 and started.json() == ""
    server = until(lambda: (s := api("GET", "/users/alice/servers/lab").json()) and s.get("ready") and s)
    assert server["name"] == "lab" and server["display_name"] == "Lab" and server["user_options"] == {"profile": "cpu"}
    assert api("DELETE", "/users/alice/servers/lab").json() == ""
    until(lambda: not api("GET", "/users/alice/servers/lab").json().get("ready"))


def test_a_get_or_delete_with_a_body_is_a_500(api):
    """api_wrapper forwards a body with `client.delete(url, content=…)`, which httpx's `delete` (and
    `get`) do not take: the TypeError is Starlette's plain 500, so `{"remove": true}` cannot pass."""
    for method in ("DELETE", "GET"):
        answer = api(method, "/users/alice/servers/lab", json={"remove": True})
        assert answer.status_code == 500 and answer.text == "Internal Server Error"
        assert answer.headers["Content-Type"].startswith("text/plain")


def test_a_failed_spawn_tells_its_reason_in_the_progress_stream(api):
    """The hub keeps a failed spawn's reason for its progress endpoint (text/event-stream); through
    the front the stream arrives as one JSON string."""
    assert api("POST", "/users/alice/servers/broken", json={"image": "unknown/no-such"}).json() == ""
    until(lambda: "broken" not in api("GET", "/users/alice").json()["servers"])
    stream = api("GET", "/users/alice/servers/broken/progress").json()
    assert isinstance(stream, str) and stream.strip().startswith("data: ")
    assert 'Spawn failed: Back-off pulling image \\"unknown/no-such\\"' in stream and '"failed": true' in stream


def test_a_slow_stop_is_pending_and_the_hub_refuses_a_start_meanwhile(api, notebooks):
    notebooks.control("config", stop_seconds=4)  # longer than the peer's --slow-stop-timeout (1 s)
    api("POST", "/users/alice/servers/slowstop")
    until(lambda: (api("GET", "/users/alice/servers/slowstop").json() or {}).get("ready"))
    assert api("DELETE", "/users/alice/servers/slowstop").json() == ""
    assert api("GET", "/users/alice/servers/slowstop").json()["pending"] == "stop"
    refused = api("POST", "/users/alice/servers/slowstop").json()
    assert refused == {"status": 400, "message": "alice:slowstop is pending stop"}
    until(lambda: not api("GET", "/users/alice/servers/slowstop").json().get("pending"))
